"""Producers and consumers of the Versatile Data Ingestion Platform (``vdip_client.producer``,
``vdip_client.consumer``)."""

from vdip_client._delivery import Event, uuid7
from vdip_client.errors import (
    BadRequest,
    ClientClosed,
    ClientError,
    Conflict,
    Forbidden,
    GaveUp,
    Invalid,
    NotFound,
    QueueFull,
    Unauthorized,
    VdipClientError,
)
from vdip_client.producer import AsyncClient, Client

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientClosed",
    "ClientError",
    "Conflict",
    "Event",
    "Forbidden",
    "GaveUp",
    "Invalid",
    "NotFound",
    "QueueFull",
    "Unauthorized",
    "VdipClientError",
    "uuid7",
]
