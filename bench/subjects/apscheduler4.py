"""One APScheduler 4 scheduler sharing a PostgreSQL data store with the others.

APScheduler 4 has no leader: every scheduler polls the shared store and
whichever acquires a due schedule runs it, holding a lease on it while it
does (30 s by default). The schedule runs ``tick`` every ``interval``
seconds; each run reports which scheduler ran it and how late it started.
Everything else is APScheduler's default. Runs in the APScheduler 4 virtual
environment.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from apscheduler import AsyncScheduler, ConflictPolicy, current_job
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import create_async_engine  # type: ignore[import-not-found]

from bench.emit import emit

SCHEDULE_ID = "bench-tick"


async def tick() -> None:
    wall = time.time()
    due = current_job.get().scheduled_fire_time.timestamp()
    emit("ran", due=due, late=wall - due)


async def _schedule(args: argparse.Namespace) -> None:
    engine = create_async_engine(args.url)
    scheduler = AsyncScheduler(
        SQLAlchemyDataStore(engine),
        AsyncpgEventBroker.from_async_sqla_engine(engine),
        identity=args.identity,
    )
    async with scheduler:
        await scheduler.add_schedule(
            tick,
            IntervalTrigger(seconds=args.interval),
            id=SCHEDULE_ID,
            conflict_policy=ConflictPolicy.do_nothing,
        )
        await scheduler.start_in_background()
        emit("started")
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--interval", type=float, required=True)
    asyncio.run(_schedule(parser.parse_args()))
