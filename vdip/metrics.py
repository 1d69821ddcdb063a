"""Every Prometheus metric of the platform, in one place (``prometheus_client``).

Each process exposes the ones it moves: the gateway at ``/metrics`` on its own port, the worker
and the sinks on ``VDIP_<PROCESS>_METRICS_PORT`` (see ``serve``). Names end in ``_total``
(counters), ``_seconds`` or ``_records`` (histograms) as Prometheus expects.
"""

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Gateway
INGEST_REQUESTS = Counter(
    "vdip_ingest_requests",
    "Ingest requests by outcome (accepted, partial, rejected) and reason",
    ["outcome", "reason"],
)
INGEST_EVENTS = Counter("vdip_ingest_events", "Events accepted, or rejected inside a batch", ["outcome"])
CONFLICT_CHECKS_SKIPPED = Counter(
    "vdip_ingest_conflict_checks_skipped",
    "Ingest requests with client-chosen ids accepted without the conflict check (PostgreSQL slow or away)",
)
INGEST_QUOTA = Gauge(
    "vdip_ingest_quota_events_per_second",
    "Each application's ingest quota, as this gateway applies it",
    ["app_id"],
)
INGEST_QUOTA_BURST = Gauge(
    "vdip_ingest_quota_burst_events", "How many events each application may send at once", ["app_id"]
)
INGEST_THROTTLED = Counter(
    "vdip_ingest_throttled_events",
    "Events refused with 429: their application was over its quota",
    ["app_id"],
)
QUOTA_CHECKS_LOCAL = Counter(
    "vdip_ingest_quota_checks_local",
    "Times this gateway counted quotas in its own memory because PostgreSQL was slow or away",
)
PRODUCE_SECONDS = Histogram("vdip_produce_seconds", "From produce to Kafka's acknowledgement, per send")

# Worker
ROUTER_EVENTS = Counter("vdip_router_events", "Events the router handled, by outcome", ["outcome"])
RULE_MATCHES = Counter("vdip_rule_matches", "Events each rule matched", ["app_id", "rule_id"])
RULES_VERSION = Gauge(
    "vdip_rules_version_seconds",
    "updated_at of the newest rule the router applies, per application",
    ["app_id"],
)
ROUTER_WAITING_FOR_RULES = Gauge(
    "vdip_router_waiting_for_rules", "1 while routing waits to read the newest rules from Kafka"
)
ROUTER_WAITING_FOR_DATABASE = Gauge(
    "vdip_router_waiting_for_database",
    "1 while routing waits for PostgreSQL to claim the events of a batch (offsets stay put)",
)
ROUTER_SEND_FAILURES = Counter(
    "vdip_router_send_failures",
    "Records Kafka refused, and queue topics it did not create (tried again; no offset is committed)",
)
ROUTER_BATCH_RECORDS = Histogram(
    "vdip_router_batch_records",
    "Records of events (an event, or a batch of events) per routed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000),
)
ROUTER_BATCH_EVENTS = Histogram(
    "vdip_router_batch_events",
    "Events per routed batch",
    buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
)

# Every consumer
CONSUMER_LAG = Gauge(
    "vdip_consumer_lag_records",
    "Records between a partition's end and what was handled",
    ["group", "topic", "partition"],
)

# Sinks
SINK_BATCH_RECORDS = Histogram(
    "vdip_sink_batch_records", "Records per batch written", ["sink"], buckets=(1, 10, 50, 100, 250, 500, 1000)
)
SINK_WRITE_SECONDS = Histogram(
    "vdip_sink_write_seconds", "Time to write one batch, retries included", ["sink"]
)
EVENTS_EXPIRED = Counter(
    "vdip_events_expired", "Events deleted for being older than their application's retention", ["app_id"]
)
DEAD_LETTERS = Counter("vdip_dead_letters", "Records sent to events.dlq, by stage", ["stage"])

# Webhooks
WEBHOOK_ATTEMPTS = Counter(
    "vdip_webhook_attempts", "Webhook deliveries settled by an attempt, by outcome", ["outcome"]
)
WEBHOOK_SECONDS = Histogram("vdip_webhook_seconds", "Webhook request latency")


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose this process's metrics on ``host:port`` (0: not at all)."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # a second copy of a process on one machine: it runs, unobserved
        log.error("metrics not served: %s:%d is taken (%s)", host, port, exc)
        return
    log.info("metrics on http://%s:%d/metrics", host, port)
