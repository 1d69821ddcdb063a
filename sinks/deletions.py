"""A subject's deletion (``POST /api/applications/{app_id}/deletions``), as a job of the event
store's process (``sinks.jobs``): the application's stored events whose payload has one of the
given values at the given path are deleted, with their deliveries and the rows they wrote in the
application's destination tables. With ``suppress``, the API has already published the values'
hashes with the application's rule set, and the router drops every event that carries one.

It first waits until the pipeline has gone through what Kafka held when it began
(``sinks.purge.drained``), so that a matching event accepted before is deleted too; then it deletes
``purge_batch`` events per transaction. Statistics are aggregates and keep their counts. Once
done, the values are forgotten: the job keeps only the path and how many there were.
"""

import asyncio
from typing import Any

import asyncpg

from sinks.purge import drained
from vdip.settings import Settings
from vdip.store import deliveries, events, jobs, owners, statistics, tables


class Eraser:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def run(self, job: Any, stop: asyncio.Event) -> str:
        app_id, job_id, params, settings = job["app_id"], job["job_id"], job["params"], self.settings
        if not await drained(settings, stop, app_id):
            return "stopped"
        owned = await owners.owned_by(self.pool, app_id)
        destination_tables = [d.name for d in owned if d.destination_type == "database_table"]
        path, values = params["path"].split(".")[1:], params["values"]  # the keys inside the payload
        batch, lease_s, schema = settings.purge_batch, settings.job_lease_s, settings.tables_schema
        while not stop.is_set():
            async with self.pool.acquire() as conn, conn.transaction():
                ids = await events.delete_batch_matching(conn, app_id, path, values, batch)
                if ids:
                    await deliveries.delete_of_events(conn, app_id, ids)
                    await statistics.forget_counted(conn, app_id, ids)
                    for table in destination_tables:
                        await tables.delete_rows_of_events(conn, schema, table, app_id, ids)
                state = await jobs.advance(
                    conn, job_id, cursor=None, scanned=len(ids), sent=0, skipped=0, lease_s=lease_s
                )
            if state != "running":
                return state
            if not ids:
                kept = {"path": params["path"], "values": len(values), "suppress": params["suppress"]}
                await jobs.finish(self.pool, job_id, "done", params=kept)
                return "done"
        return "stopped"
