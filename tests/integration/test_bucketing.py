"""One bucketing in two languages: ``vdip.statistics.bucket_start`` (Python: the API's ranges, the
repair) and ``stat_bucket`` (SQL, migrations 0004 and 0007: what counting and the repair's truth
use) give the same bucket start for any moment, period, time zone of the moment and time zone of
the database session."""

from datetime import UTC, datetime, timedelta

import asyncpg
from hypothesis import given, settings
from hypothesis import strategies as st

from vdip.statistics import PERIODS, Period, bucket_start

A_MONDAY = datetime(2026, 3, 9, tzinfo=UTC)

# Moments on and around the edges of hours, days and weeks (a microsecond either side, or up to
# an hour), from 1977 to 2179, and any moment at all.
near_edges = st.builds(
    lambda weeks, days, hours, micros: (
        A_MONDAY + timedelta(weeks=weeks, days=days, hours=hours, microseconds=micros)
    ),
    st.integers(-2500, 8000),
    st.integers(0, 6),
    st.integers(0, 23),
    st.sampled_from([-1, 0, 1]) | st.integers(-3_600_000_000, 3_600_000_000),
)
anywhere = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.just(UTC),
    allow_imaginary=False,
)
moments = st.tuples(near_edges | anywhere, st.timezones()).map(lambda pair: pair[0].astimezone(pair[1]))

# Session time zones with offsets that are not whole hours, east and west, with and without
# daylight saving time: a bucket computed in the session's zone instead of UTC would differ.
SESSION_ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/Los_Angeles",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]


async def database_buckets(pool: asyncpg.Pool, period: str, at: list[datetime], zone: str) -> list[datetime]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('TimeZone', $1, true)", zone)
        rows = await conn.fetch(
            """SELECT stat_bucket($1, t) AS b FROM unnest($2::timestamptz[]) WITH ORDINALITY AS m(t, n)
               ORDER BY n""",
            period,
            at,
        )
    return [row["b"] for row in rows]


@settings(max_examples=150, deadline=None)
@given(
    period=st.sampled_from(PERIODS),
    at=st.lists(moments, min_size=1, max_size=40),
    zone=st.sampled_from(SESSION_ZONES),
)
async def test_python_and_sql_bucket_alike(
    pool: asyncpg.Pool, period: Period, at: list[datetime], zone: str
) -> None:
    assert await database_buckets(pool, period, at, zone) == [bucket_start(t, period) for t in at]


async def test_the_session_zone_matters_to_a_naive_truncation(pool: asyncpg.Pool) -> None:
    """What the test above guards against: truncating in the session's zone gives other buckets."""
    at = datetime(2026, 3, 8, 23, 30, tzinfo=UTC)  # Sunday night in UTC, Monday in Berlin
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('TimeZone', 'Europe/Berlin', true)")
        naive = await conn.fetchval("SELECT date_trunc('week', $1::timestamptz)", at)
    assert naive != bucket_start(at, "weekly") == datetime(2026, 3, 2, tzinfo=UTC)
    assert await database_buckets(pool, "weekly", [at], "Europe/Berlin") == [datetime(2026, 3, 2, tzinfo=UTC)]
