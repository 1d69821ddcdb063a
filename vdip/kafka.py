"""How every Kafka client of the platform connects: bootstrap servers, TLS and SASL, from ``Settings``.

Each aiokafka producer, consumer and admin client is built with ``client_options(settings)``, and
the worker's faust app with ``broker_credentials(settings)``: both say the same thing, so no
client connects differently from the others.
"""

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context

from vdip.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): the brokers' certificates checked
    against ``kafka_ssl_cafile`` (or the system's CAs), hostnames checked, and the client's
    certificate when one is set."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    password = settings.kafka_ssl_key_password
    return _ssl_context(
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
        password.get_secret_value() if password else None,
    )


@functools.lru_cache(maxsize=8)
def _ssl_context(
    cafile: Path | None, certfile: Path | None, keyfile: Path | None, password: str | None
) -> ssl.SSLContext:
    """One context per set of files, made once (loading the system's CAs takes about 0.1 s, and
    the dead-letter route makes clients per request); files changed on disk apply at restart."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=cafile, certfile=certfile, keyfile=keyfile, password=password
    )
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of an aiokafka client (``AIOKafkaProducer(**client_options(s), acks=...)``)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_sasl_password is not None:  # the settings refuse SASL fields without SASL
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def broker_credentials(settings: Settings) -> Any:
    """faust's ``broker_credentials`` for the same connection (None: PLAINTEXT). Imported here, not
    at the top: the gateway and the sinks do not load faust."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(ssl_context(settings))
    assert settings.kafka_sasl_password is not None  # the settings refuse SASL without it
    return SASLCredentials(  # SASL_SSL when given a context, SASL_PLAINTEXT without
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context(settings),
    )


@asynccontextmanager
async def plain_consumer(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group (partitions assigned and offsets looked up by hand), started,
    and stopped at the end. It lets the loop run once after its start: aiokafka's group-less
    coordinator starts a task there, and stopped before that task first ran, its ``close()``
    raises ``CancelledError`` (aiokafka 0.14), a request's 500."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await asyncio.sleep(0)
        yield consumer
    finally:
        await consumer.stop()
