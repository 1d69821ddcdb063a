"""The one place configuration comes from: environment variables prefixed ``VDIP_``.

Every default works with the local stack that ``vdip stack up`` starts.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WEBHOOK_LEASE_MARGIN_S = 5.0  # to record an attempt's outcome once it ended


class Settings(BaseSettings):
    # Errors name the setting and the reason, never the values given: passwords are among them.
    model_config = SettingsConfigDict(
        env_prefix="VDIP_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # Kafka
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="host:port[,host:port...]; with kafka_brokers > 1 and unset: every local node.",
    )
    kafka_brokers: int = Field(
        default=1,
        ge=1,
        le=9,
        description="How many Kafka nodes `vdip stack up` runs (each a broker and a controller).",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How every client connects to Kafka: TLS (SSL), SASL, both."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="With SASL_PLAINTEXT or SASL_SSL (required then)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="With SASL (required then).")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="With SASL (required then).")
    kafka_ssl_cafile: FilePath | None = Field(
        default=None,
        description="With SSL or SASL_SSL: PEM CA certificates of the brokers; unset: the system's.",
    )
    kafka_ssl_certfile: FilePath | None = Field(
        default=None, description="With SSL or SASL_SSL: the client's PEM certificate (mutual TLS)."
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        default=None, description="The client certificate's PEM private key (the same file if it holds both)."
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="The password of kafka_ssl_keyfile, when it is encrypted."
    )
    topic_replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="Copies of each topic the system creates; unset: 3 on 3+ brokers, else 1.",
    )
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of those topics; unset: 2 when 3+ copies, else 1.",
    )
    topic_prefix: str = Field(
        default="", description="Prepended to every topic name, to share one broker between stacks."
    )
    produce_timeout_s: float = Field(
        default=5.0, gt=0, description="How long ingest waits for the broker before answering 503."
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 503 answers.")
    conflict_check_timeout_s: float = Field(
        default=0.05,
        gt=0,
        description="How long ingest waits for PostgreSQL to say whether a client-chosen event id is"
        " claimed by another version (409); beyond, the event is accepted unchecked.",
    )
    conflict_check_pause_s: float = Field(
        default=5.0, ge=0, description="After a conflict check timed out or failed, skip it this long."
    )

    # PostgreSQL
    database_url: str = "postgresql://vdip:vdip@127.0.0.1:5432/vdip"

    # Gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the management API; unset: admin calls get 401."
    )
    key_rotation_grace_s: int = Field(
        default=86_400, ge=0, description="How long a rotated-out API key keeps working."
    )
    app_cache_ttl_s: float = Field(
        default=5.0, ge=0, description="How long the gateway caches an application (key, active)."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description='CIDRs whose X-Forwarded-For is believed, e.g. ["10.0.0.0/8"] (JSON list).',
    )
    # Limits: each violation is a clear 4xx naming the field.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="413 above this.")
    max_event_bytes: int = Field(default=65_536, ge=64, description="Serialized payload size cap.")
    max_json_depth: int = Field(default=16, ge=1, description="Nesting depth of a payload.")
    max_json_keys: int = Field(default=1_000, ge=1, description="Object keys in one payload, all levels.")
    max_batch_events: int = Field(default=500, ge=1)
    bulk_batch_events: int = Field(
        default=50,
        ge=1,
        description="A batch of more events than this goes to events.bulk, the bulk lane, so that"
        " single events and small batches are never queued behind it.",
    )
    event_type_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]{0,99}$"
    ingest_capacity_events_per_s: int = Field(
        default=3_000,
        ge=1,
        description="Events per second this deployment routes, stores and counts (about 3,500 with one"
        " worker on 2 cores, BENCHMARKS.md); the default ingest quotas are shares of it.",
    )
    app_quota_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The share of the capacity one application may send by default (its quota,"
        " across all gateway processes); beyond: 429. Set per application through the API.",
    )
    quota_check_timeout_s: float = Field(
        default=0.05,
        gt=0,
        description="How long ingest waits for PostgreSQL's shared quota buckets; beyond (or while"
        " PostgreSQL is away), each gateway process counts the quota on its own.",
    )
    max_inflight_events: int = Field(
        default=20_000, ge=1, description="Events awaiting Kafka's ack at once; beyond: 503."
    )

    # Routing rules
    max_condition_depth: int = Field(default=8, ge=1, description="Nesting of $and/$or/$not.")
    max_condition_clauses: int = Field(default=64, ge=1)
    max_rule_bytes: int = Field(default=16_384, ge=64, description="A condition's serialized size.")
    topics_file: Path = Field(default=Path("topics.yaml"), description="The platform's own topics.")

    # Stream worker
    worker_id: str = "vdip-worker"
    worker_web_port: int = 6066
    worker_datadir: Path = Path(".stack/worker")
    router_batch_size: int = Field(
        default=100,
        ge=1,
        description="Records of events (each an event or a batch) routed, sent and acknowledged together.",
    )
    router_bulk_batch_size: int = Field(
        default=4,
        ge=1,
        description="Records of events.bulk (each a batch of up to max_batch_events) routed together"
        " by the bulk worker.",
    )
    bulk_worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Added to the bulk worker's CPU niceness, so that the interactive lane's worker"
        " and sinks get the CPU first when both have work.",
    )
    router_batch_wait_s: float = Field(
        default=0.005, gt=0, description="How long the router waits for more records before routing a batch."
    )

    statistics_interval_s: float = Field(
        default=1.0, gt=0, description="How often the worker folds counted changes into event_statistics."
    )
    statistics_live_retention_days: float = Field(
        default=35,
        gt=0,
        description="Events received this recently are counted live; older late changes need a refresh.",
    )

    # Event store sink
    sink_group_id: str = "vdip-event-store"
    sink_batch_size: int = Field(default=500, ge=1)
    sink_batch_timeout_ms: int = Field(default=200, ge=1)
    retention_interval_s: float = Field(
        default=600,
        gt=0,
        description="How often the event store deletes the events older than their application's"
        " retention (with their deliveries).",
    )
    retention_batch: int = Field(default=1000, ge=1, description="Events deleted per transaction.")
    job_lease_s: float = Field(
        default=30,
        gt=0,
        description="How long a job runner holds a job without a sign of life: a killed runner's job"
        " is taken up again, from its cursor, this long after its last batch.",
    )
    job_poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often a job runner looks for jobs."
    )
    replay_events_per_s: float = Field(
        default=500,
        gt=0,
        description="The most events a replay goes through per second, so that live traffic keeps its pace.",
    )
    replay_batch: int = Field(default=200, ge=1, description="Events a replay routes per batch.")
    purge_batch: int = Field(
        default=1000, ge=1, description="Events an application's deletion deletes per transaction."
    )
    purge_drain_timeout_s: float = Field(
        default=300,
        gt=0,
        description="How long an application's deletion waits for each process to go through what was"
        " accepted before it; then it purges all the same.",
    )

    # Table sink
    table_sink_group_id: str = "vdip-table-sink"
    tables_schema: str = Field(
        default="vdip_tables",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Where table destinations live.",
    )

    # Webhook dispatcher
    webhook_group_id: str = "vdip-webhooks"
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="One attempt in total, from connecting to the answer's last byte."
    )
    webhook_lease_s: float = Field(
        default=40.0,
        gt=0,
        description="How long a dispatcher holds a claimed delivery; at least the timeout plus 5 s.",
    )
    webhook_retry_schedule_s: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Wait before each retry (±20 % jitter); once exhausted the delivery has failed.",
    )
    webhook_max_retry_after_s: float = Field(
        default=86_400, gt=0, description="Cap on a receiver's Retry-After."
    )
    webhook_disable_after_s: float = Field(
        default=5 * 86_400, gt=0, description="An endpoint failing continuously this long is disabled."
    )
    webhook_concurrency_per_endpoint: int = Field(default=4, ge=1, description="Requests in flight per rule.")
    webhook_secret_grace_s: float = Field(default=86_400, ge=0, description="The old secret signs this long.")
    webhook_allowed_networks: list[str] = Field(
        default=[],
        description="CIDRs webhooks may reach although private or reserved (e.g. 127.0.0.1/32 for tests).",
    )
    webhook_poll_interval_s: float = Field(default=0.2, gt=0)

    # Metrics: the gateway serves /metrics on its own port; the other processes on these (0: off)
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    sink_metrics_port: int = Field(default=9102, ge=0, le=65535)
    table_sink_metrics_port: int = Field(default=9103, ge=0, le=65535)
    webhooks_metrics_port: int = Field(default=9104, ge=0, le=65535)
    bulk_worker_metrics_port: int = Field(default=9105, ge=0, le=65535)

    # Local stack
    stack_dir: Path = Path(".stack")
    kafka_version: str = "4.1.1"
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    stack_timeout_s: float = 120.0

    @model_validator(mode="after")
    def _every_local_node_by_default(self) -> Self:
        """With a local cluster and no bootstrap given, clients know every node (nodes listen on
        every other port from the first: 9092, 9094, 9096, their controllers one above)."""
        if self.kafka_brokers > 1 and "kafka_bootstrap" not in self.model_fields_set:
            host, _, port = self.kafka_bootstrap.partition(",")[0].rpartition(":")
            self.kafka_bootstrap = ",".join(f"{host}:{int(port) + 2 * k}" for k in range(self.kafka_brokers))
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"topic_min_insync_replicas ({self.min_insync_replicas}) exceeds the replication factor"
                f" ({self.replication_factor}): no write could ever be acknowledged"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> Self:
        """Refuse security settings the protocol would not use, and a protocol lacking what it needs."""
        protocol = self.kafka_security_protocol
        sasl = {
            "kafka_sasl_mechanism": self.kafka_sasl_mechanism,
            "kafka_sasl_username": self.kafka_sasl_username,
            "kafka_sasl_password": self.kafka_sasl_password,
        }
        tls = {
            "kafka_ssl_cafile": self.kafka_ssl_cafile,
            "kafka_ssl_certfile": self.kafka_ssl_certfile,
            "kafka_ssl_keyfile": self.kafka_ssl_keyfile,
            "kafka_ssl_key_password": self.kafka_ssl_key_password,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if not value]
            if missing:
                raise ValueError(f"kafka_security_protocol {protocol} needs {', '.join(missing)}")
        elif unused := [name for name, value in sasl.items() if value is not None]:
            raise ValueError(
                f"{', '.join(unused)} set, but kafka_security_protocol {protocol} does not use SASL"
                " (SASL_PLAINTEXT or SASL_SSL do)"
            )
        if protocol not in ("SSL", "SASL_SSL") and (unused := [n for n, v in tls.items() if v is not None]):
            raise ValueError(
                f"{', '.join(unused)} set, but kafka_security_protocol {protocol} does not use TLS"
                " (SSL or SASL_SSL do)"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError(
                "kafka_ssl_certfile and kafka_ssl_keyfile go together (the same file if it holds both)"
            )
        if self.kafka_ssl_key_password is not None and self.kafka_ssl_keyfile is None:
            raise ValueError("kafka_ssl_key_password set without kafka_ssl_keyfile")
        return self

    @property
    def replication_factor(self) -> int:
        return self.topic_replication_factor or min(self.kafka_brokers, 3)

    @property
    def min_insync_replicas(self) -> int:
        if self.topic_min_insync_replicas is not None:
            return self.topic_min_insync_replicas
        return 2 if self.replication_factor >= 3 else 1

    @property
    def bulk_worker_id(self) -> str:
        """The bulk worker's consumer group (the interactive worker's is ``worker_id``)."""
        return f"{self.worker_id}.bulk"

    @property
    def default_quota_events_per_s(self) -> int:
        """An application's ingest quota unless it has its own."""
        return max(1, int(self.ingest_capacity_events_per_s * self.app_quota_share))

    @model_validator(mode="after")
    def _attempts_fit_in_their_lease(self) -> Self:
        """An attempt must end, and its outcome be recorded, before another dispatcher may claim
        the delivery: otherwise the receiver could get it twice at once."""
        if self.webhook_timeout_s + WEBHOOK_LEASE_MARGIN_S > self.webhook_lease_s:
            raise ValueError(
                f"webhook_lease_s ({self.webhook_lease_s}) must exceed webhook_timeout_s"
                f" ({self.webhook_timeout_s}) by at least {WEBHOOK_LEASE_MARGIN_S} s"
            )
        return self

    def topic(self, name: str) -> str:
        """The broker-side name of one of the system's topics."""
        return f"{self.topic_prefix}{name}"

    def as_environment(self) -> dict[str, str]:
        """The ``VDIP_*`` variables that make a process started with them load these settings (a
        setting that is None is left out: the process keeps its default, None)."""
        found = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list | dict):
                value = json.dumps(value)
            found[f"VDIP_{name.upper()}"] = str(value)
        return found


@lru_cache
def get_settings() -> Settings:
    return Settings()
