"""The HTTP gateway: ingest, management and read APIs, health."""
