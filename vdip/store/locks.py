"""Every PostgreSQL advisory lock the platform takes, in one place, so that no two uses collide.

Transaction-level locks on a text key hash it with ``hashtextextended(key, seed)``; each use has
its own seed. The statistics triggers (migration 0008, ``count_events``) lock each event with
``uuid_hash_extended(event_id, hashtext(app_id))``, in SQL only; listed here for completeness.
"""

# Session lock held while migrations run (``vdip.db.migrate``): concurrent starts do not race.
MIGRATIONS = 0x7664_6970  # "vdip"

# ``pg_advisory_xact_lock(hashtextextended(app_id, RULE_WRITES))``: one application's rule writes
# at a time, so that the rule set published last is the one committed last (``store.rules``).
RULE_WRITES = 7

# ``pg_advisory_xact_lock(hashtextextended(table, TABLE_CREATION))``: one creation of a
# destination table at a time across table sinks (``store.tables``).
TABLE_CREATION = 11

# Used before migration 0008 by ``count_event(s)`` (``hashtextextended(event_id::text, 13)``);
# kept out of use.
EVENT_COUNTING_0004 = 13
