"""The project's exception tree. Everything we raise on purpose derives from ``VdipError``.

- ``VdipError``: base class.
  - ``StackError``: a local service could not be installed, started or reached.
  - ``MigrationError``: a schema migration failed or was edited after being applied.
  - ``TopicError``: topics.yaml is invalid or could not be applied.
  - ``BrokerUnavailable``: Kafka did not acknowledge a record in time (the gateway answers 503).
  - ``DatabaseUnavailable``: PostgreSQL could not be reached (the gateway answers 503).
  - ``AddressRefused``: a webhook would have connected to a refused address (SSRF protection).
  - ``DestinationOwned``: a rule names a topic or table another application owns (the API: 409).
"""


class VdipError(Exception):
    """Base class of every error this project raises on purpose."""


class StackError(VdipError):
    """A local service could not be installed, started or reached."""


class MigrationError(VdipError):
    """A schema migration failed, or an applied migration was edited."""


class TopicError(VdipError):
    """topics.yaml is invalid, or applying it failed."""


class BrokerUnavailable(VdipError):
    """Kafka did not acknowledge a record within the configured time."""


class DatabaseUnavailable(VdipError):
    """PostgreSQL could not be reached."""


class AddressRefused(VdipError):
    """A webhook URL resolves to an address webhooks may not reach (private, loopback...)."""


class DestinationOwned(VdipError):
    """A rule names a queue topic or destination table that belongs to another application."""

    def __init__(self, destination_type: str, name: str) -> None:
        super().__init__(f"the {destination_type} destination {name!r} belongs to another application")
        self.destination_type = destination_type
        self.name = name
