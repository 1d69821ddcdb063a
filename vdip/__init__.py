"""Versatile Data Ingestion Platform: shared settings, errors, database, topics, stack and CLI."""
