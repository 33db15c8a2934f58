"""The floor: how fast PostgreSQL itself hands an advisory lock to a blocked waiter.

Nothing but asyncpg and one lock. The waiter blocks in ``pg_advisory_lock``
on its own session in the driver; the holder either is a separate process
that gets SIGKILL (the floor of a crash failover) or a session that calls
``pg_advisory_unlock`` (the floor of a graceful one). Every failover figure
of a real elector is this plus what the elector does on top; one durable
commit, measured here too, is the usual first thing it does.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg

from bench.children import Child
from bench.database import Database
from bench.emit import now
from bench.stats import Distribution

__all__ = ["measure_commit", "measure_floor_kill", "measure_floor_unlock"]

_KEY = 0x62656E63  # "benc"
_LINE_UP_S = 30.0


async def measure_floor_kill(db: Database, trials: int, log_dir: Path) -> Distribution:
    """SIGKILL of a holder process until the waiter holds the lock."""
    waiter = await asyncpg.connect(db.dsn)
    samples = []
    try:
        for n in range(trials):
            holder = Child(
                f"floor-holder-{n}",
                Path(sys.executable),
                "bench.subjects.lock_holder",
                [db.dsn, str(_KEY)],
                log_dir,
            )
            await holder.start()
            try:
                await holder.wait_for("holding", _LINE_UP_S)
                waiting = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock($1)", _KEY))
                await db.wait_advisory_locks(granted=1, waiting=1, timeout=_LINE_UP_S)
                started = now()
                holder.send(signal.SIGKILL)
                await waiting
                samples.append(now() - started)
                await waiter.execute("SELECT pg_advisory_unlock($1)", _KEY)
            finally:
                await holder.close()
    finally:
        await waiter.close()
    return Distribution.of(samples)


async def measure_floor_unlock(db: Database, trials: int, rest_s: float = 0.0) -> Distribution:
    """``pg_advisory_unlock`` by the holder until the waiter holds the lock, ``rest_s``
    after the waiter lined up (see :func:`measure_commit`)."""
    holder = await asyncpg.connect(db.dsn)
    waiter = await asyncpg.connect(db.dsn)
    samples = []
    try:
        for _ in range(trials):
            await holder.execute("SELECT pg_advisory_lock($1)", _KEY)
            waiting = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock($1)", _KEY))
            await db.wait_advisory_locks(granted=1, waiting=1, timeout=_LINE_UP_S)
            await asyncio.sleep(rest_s)
            started = now()
            unlocking = asyncio.create_task(holder.execute("SELECT pg_advisory_unlock($1)", _KEY))
            await waiting
            samples.append(now() - started)
            await unlocking
            await waiter.execute("SELECT pg_advisory_unlock($1)", _KEY)
    finally:
        await holder.close()
        await waiter.close()
    return Distribution.of(samples)


async def measure_commit(db: Database, trials: int, rest_s: float = 0.0) -> Distribution:
    """One single-row UPDATE in its own transaction: the price of any durable write.

    Taking office commits one transaction, so a pg-coordinator failover costs
    at least the lock handover plus this. Each trial comes ``rest_s`` after the
    last: a hand-over comes after a rest, and on a machine whose processes
    (and, on a virtual machine, whose CPUs) went idle, every process the
    answer passes through has to be woken first.
    """
    conn = await asyncpg.connect(db.dsn)
    samples = []
    try:
        await conn.execute("CREATE TABLE bench_commit (id int PRIMARY KEY, n bigint NOT NULL)")
        await conn.execute("INSERT INTO bench_commit VALUES (1, 0)")
        for _ in range(trials):
            await asyncio.sleep(rest_s)
            started = now()
            await conn.execute("UPDATE bench_commit SET n = n + 1 WHERE id = 1")
            samples.append(now() - started)
    finally:
        await conn.close()
    return Distribution.of(samples)
