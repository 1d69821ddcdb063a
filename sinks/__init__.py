"""Kafka consumers that write what the pipeline produced: the event store (later tables, webhooks)."""
