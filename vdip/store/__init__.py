"""PostgreSQL tables, one module each: the only place that writes a table.

Each module holds the SQL of its table (or of a few tables that are written together): plain async
functions taking an asyncpg connection or pool, and SQL constants for callers that run a statement
inside their own transaction or COPY flow. A statement that writes one table and reads others lives
in the module of the table it writes.

- ``events``: ``data_events`` and ``event_claims`` (the first version of each event);
- ``deliveries``: ``deliveries``, the outcome of each (event, rule), and the webhooks' delay queue;
- ``rules``: ``routing_rules``, with each webhook destination's state;
- ``applications``: ``applications`` and their key hashes;
- ``statistics``: ``event_statistics``, ``statistics_changes``, ``event_counted``, ``statistics_live``;
- ``tables``: the destination tables of ``database_table`` rules (names and DDL);
- ``locks``: every advisory-lock id.

``schema_migrations`` belongs to the migration runner, ``vdip.db``.

The status values of events and deliveries are ``schemas.EventStatus`` and
``schemas.DeliveryStatus``; the SQL here quotes them as literals (``tests/unit/test_store.py`` checks
that each is a member). Migrations (``vdip/migrations``) create the tables; this package never
imports the gateway, the worker, the sinks or the CLI.
"""
