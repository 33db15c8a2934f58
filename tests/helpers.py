"""Shared test helpers: short timings, both wait modes, and waiting on conditions, not sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import psycopg

from coordinator import Coordinator

#: Short timings so that expiry and fencing happen within a couple of seconds.
FAST: dict[str, float] = {"ttl": 1.5, "heartbeat_interval": 0.2, "heartbeat_timeout": 0.4}


#: How followers wait; the protocol suite runs in each (the ``wait`` fixture).
WAITS = ("block", "poll")
#: Poll mode with polls short enough for the tests' timeouts.
_POLL = {"poll_interval": 0.1}


def wait_settings(wait: str) -> dict[str, Any]:
    """The coordinator settings of wait mode ``wait``."""
    return {"wait": wait, **(_POLL if wait == "poll" else {})}


def wait_args(wait: str) -> list[str]:
    """The same, as ``coordinator run`` options."""
    return [
        arg
        for key, value in wait_settings(wait).items()
        for arg in (f"--{key.replace('_', '-')}", str(value))
    ]


#: Two group names whose lock keys collide (found by search; asserted in test_keys).
COLLIDING_NAMES = ("tenant-5256", "tenant-5447")


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for the test's own queries, closed afterwards."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def coordinator(
    dsn: str, instance_id: str, *groups: str, wait: str = "block", **settings: Any
) -> Coordinator:
    merged = {**FAST, **wait_settings(wait), **settings}
    coord = Coordinator(dsn, instance_id=instance_id, **merged)
    for name in groups or ("scheduler",):
        coord.group(name)
    return coord


async def wait_until(
    condition: Callable[[], Awaitable[Any]], timeout: float, *, what: str, every: float = 0.02
) -> Any:
    """Poll an async condition until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


def eventually(condition: Callable[[], Any], timeout: float, *, what: str) -> Any:
    """:func:`wait_until` for threads: poll a plain condition until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return result


async def leader_row(dsn: str, group: str = "scheduler") -> asyncpg.Record | None:
    async with connected(dsn) as conn:
        return await conn.fetchrow(
            "SELECT * FROM coordinator.leader_status WHERE group_name = $1", group
        )


async def events(dsn: str, group: str = "scheduler") -> list[tuple[str, int, str]]:
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT kind, term, instance_id FROM coordinator.events WHERE group_name = $1 "
            "ORDER BY id",
            group,
        )
    return [(r["kind"], r["term"], r["instance_id"]) for r in rows]


async def current_leader(
    dsn: str, group: str = "scheduler", *, after_term: int = 0
) -> asyncpg.Record | None:
    """The leader_status row once a live leader with a term above ``after_term`` exists."""
    row = await leader_row(dsn, group)
    if row is not None and row["leader"] is not None and row["term"] > after_term:
        return row
    return None


async def lock_waiters(dsn: str) -> int:
    """Sessions blocked in pg_advisory_lock: followers lined up to take over."""
    async with connected(dsn) as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
        )


async def waiting_backends(dsn: str) -> set[int]:
    """The backends of blocking followers: their last statement is a lock wait, and they
    hold no advisory lock (a new leader's last statement may be its winning wait)."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%.campaign(%' "
            "AND pid <> pg_backend_pid() AND pid NOT IN "
            "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        )
    return {row["pid"] for row in rows}


async def followers_ready(dsn: str, wait: str, count: int = 1) -> bool:
    """Whether ``count`` followers are ready to take over at once.

    Blocking: they wait in pg_advisory_lock. Polling: their shared sessions,
    leading nothing, heartbeat recently (their poller tries the free groups
    every poll).
    """
    if wait == "block":
        return await lock_waiters(dsn) >= count
    async with connected(dsn) as conn:
        members = await conn.fetchval(
            "SELECT count(*) FROM coordinator.sessions AS s "
            "WHERE s.heartbeat_at > now() - interval '1 second' AND NOT EXISTS "
            "(SELECT 1 FROM coordinator.leaders AS l WHERE l.holder = s.instance_id)"
        )
    return int(members) >= count


def coordinator_cli(
    *args: str, env: Mapping[str, str] | None = None, inherit: bool = True
) -> subprocess.CompletedProcess[str]:
    """``coordinator ARGS`` as a process, with ``env`` over this environment (if inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**(os.environ if inherit else {}), **(env or {})},
    )


def lock_waiters_now(dsn: str) -> int:
    """:func:`lock_waiters` for threads, on a psycopg connection."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return int(row[0]) if row else 0
