"""``python bench/poll_faults.py``: poll mode's fault counts with thousands of groups.

One embedded PostgreSQL 18 with the benchmark's durable settings; two
``coordinator run`` processes in poll mode share G groups (default 3,000).
Two faults, and what each leaves behind:

1. the leader is SIGSTOPped: the follower's monitor fences it. Counted: the
   ``fenced`` events recorded (one per group is right), and the server log's
   ``is not a PostgreSQL backend process`` warnings (one
   ``pg_terminate_backend`` per group on the same backend makes one per
   group after the first; one per backend makes none);
2. the server is restarted under the new leader: every leadership on its
   shared session is lost. Counted: the ``lost`` events written for them
   afterwards (one per group is right).

Counts, not timings: the script prints them and exits. It runs against
whichever ``coordinator`` package is first on the path, so the same script
measures another checkout with ``PYTHONPATH=<checkout>``; that is why it
imports nothing from ``bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

import coordinator
from coordinator import migrate
from coordinator.testing import CoordinatorProcess, LocalPostgres

#: PostgreSQL's durable defaults, as the benchmarks use them.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
#: Thousands of groups on two shared cores: room for a busy event loop.
TTL, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 10.0, 1.0, 2.0
POLL = ["--wait", "poll", "--poll-interval", "0.5"]
WARNING = "is not a PostgreSQL backend process"


def names(count: int) -> list[str]:
    """``count`` group names; the lock keys of the first 10,000 are all different."""
    if count > 10_000:
        raise SystemExit("at most 10000 groups: beyond that, group names may share a lock key")
    return [f"poll-{serial:05d}" for serial in range(count)]


async def fetchval(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def until(what: str, timeout: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until ``check()`` holds; raise after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - started
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # the server is restarting
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.2)


def instance(dsn: str, groups: list[str], instance_id: str) -> CoordinatorProcess:
    return CoordinatorProcess(
        dsn,
        groups,
        instance_id=instance_id,
        ttl=TTL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        extra_args=POLL,
    )


async def leads(dsn: str, instance_id: str) -> int:
    return await fetchval(
        dsn, "SELECT count(*) FROM coordinator.leader_status WHERE leader = $1", instance_id
    )


async def events(dsn: str, kind: str, instance_id: str) -> int:
    return await fetchval(
        dsn,
        "SELECT count(*) FROM coordinator.events WHERE kind = $1 AND instance_id = $2",
        kind,
        instance_id,
    )


async def measure(server: LocalPostgres, count: int, settle: float) -> dict[str, int]:
    dsn = server.dsn
    await migrate(dsn)
    groups = names(count)
    with instance(dsn, groups, "first") as first, instance(dsn, groups, "second") as second:
        await until("first leads all", 120, lambda: _all(leads(dsn, "first"), count))
        await until(
            "second follows all",
            60,
            lambda: _all(
                fetchval(
                    dsn,
                    "SELECT count(*) FROM coordinator.heartbeats WHERE instance_id = 'second'",
                ),
                count,
            ),
        )
        warnings_before = server.log_path.read_text(errors="replace").count(WARNING)
        first.freeze()
        await until("second leads all", 120, lambda: _all(leads(dsn, "second"), count))
        await asyncio.sleep(settle)  # the monitor's later runs, if any, also write
        fenced = await events(dsn, "fenced", "first")
        warnings = server.log_path.read_text(errors="replace").count(WARNING) - warnings_before
        first.kill()

        lost_before = await events(dsn, "lost", "second")
        await asyncio.to_thread(server.restart)
        await until("second leads all again", 180, lambda: _all(leads(dsn, "second"), count))
        await asyncio.sleep(settle)
        lost = await events(dsn, "lost", "second") - lost_before
        unwritten = sum(_unwritten(record) for record in second.records())
    return {
        "groups": count,
        "fenced events recorded": fenced,
        f"'{WARNING}' warnings": warnings,
        "lost events written after the restart": lost,
        "lost events logged as not recorded": unwritten,
    }


def _unwritten(record: dict[str, object]) -> int:
    """Lost events a log record says were not written (one per line, or a count)."""
    if record.get("event") == "lost_event_not_recorded":
        return 1
    if record.get("event") == "lost_events_not_recorded":
        return int(str(record.get("count", 0)))
    return 0


async def _all(counted: Awaitable[int], count: int) -> bool:
    return await counted >= count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3000)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to let writes land")
    args = parser.parse_args()
    settings = {**DURABLE, "max_locks_per_transaction": "128"}
    with LocalPostgres.embedded(settings=settings) as server:
        figures = asyncio.run(measure(server, args.groups, args.settle))
    print(f"pg-coordinator from {coordinator.__file__}")
    for name, value in figures.items():
        print(f"{name:>45}: {value}")


if __name__ == "__main__":
    main()
