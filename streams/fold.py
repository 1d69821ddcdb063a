"""The live statistics fold: the worker folds counted status changes into ``event_statistics``.

Every status change is counted in the PostgreSQL transaction that makes it (statistics as a
whole: ``vdip/statistics.py``); each tick folds the changes counted since the last one, and applies the
live retention at the first tick and hourly. A tick that cannot reach PostgreSQL is retried by the
next one: nothing is lost, the changes wait in ``statistics_changes``.
"""

import logging
import math
import time

import asyncpg

from vdip.db import UNAVAILABLE, create_pool
from vdip.settings import Settings
from vdip.store import statistics

log = logging.getLogger(__name__)


class StatisticsFold:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.retention_applied = -math.inf

    async def tick(self) -> None:
        try:
            if self.pool is None:
                self.pool = await create_pool(self.settings.database_url, min_size=1, max_size=1)
            if time.monotonic() - self.retention_applied > 3600:
                await statistics.set_live_retention(self.pool, self.settings.statistics_live_retention_days)
                self.retention_applied = time.monotonic()
            await statistics.fold(self.pool)
        except UNAVAILABLE as exc:
            log.warning("folding statistics failed, next tick retries: %r", exc)
