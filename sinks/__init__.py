"""Kafka consumers that write what the pipeline produced: the event store (and, later, tables and webhooks)."""
