"""One replica of the job-continuity benchmark: a coordinator, its scheduler, one leader-only job.

Run by path (``python bench/job_subject.py ...``), so that ``coordinator`` is
whichever pg-coordinator the environment puts first: this tree's (the shared
timetable, the job takes its run context and writes through ``run.fenced()``)
or an older one on ``PYTHONPATH`` (jobs in each replica's memory, the job
takes ``term=`` and writes through ``group.fenced``). Each run inserts one row
into ``bench_ticks`` first, then holds its transaction for ``--work`` seconds.
SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import signal
from typing import Any

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator import Coordinator
from coordinator.integrations.apscheduler import LeaderOnlyJobs

GROUP = "bench-jobs"
INSERT = "INSERT INTO bench_ticks (scheduled_at, term, instance_id) VALUES ($1, $2, $3)"


async def serve(args: argparse.Namespace) -> None:
    scheduler = AsyncIOScheduler()
    coordinator = Coordinator(
        args.dsn,
        instance_id=args.instance_id,
        scheduler=scheduler,
        ttl=args.ttl,
        heartbeat_interval=args.heartbeat,
        heartbeat_timeout=args.heartbeat,
    )
    group = coordinator.group(GROUP)
    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=4)
    if "pool" in inspect.signature(LeaderOnlyJobs).parameters:  # the shared timetable
        jobs = LeaderOnlyJobs(scheduler, group, pool=pool, instance_id=args.instance_id)

        async def tick(run: Any) -> None:
            async with run.fenced() as tx:
                await tx.conn.execute(INSERT, run.scheduled_at, run.term, args.instance_id)
                await asyncio.sleep(args.work)

    else:  # jobs in memory, as before
        jobs = LeaderOnlyJobs(scheduler, group)

        async def tick(*, term: int) -> None:  # type: ignore[misc]
            async with group.fenced(pool, term=term) as tx:
                await tx.conn.execute(INSERT, None, term, args.instance_id)
                await asyncio.sleep(args.work)

    jobs.add_job(
        tick,
        "interval",
        seconds=args.interval,
        id="tick",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=args.grace,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    scheduler.start()
    await coordinator.start()
    await stop.wait()
    if hasattr(jobs, "drain"):  # as the FastAPI helper does: drain while still leading
        await jobs.drain()
    await coordinator.stop()
    scheduler.shutdown(wait=False)
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--work", type=float, default=0.3)
    parser.add_argument("--grace", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
