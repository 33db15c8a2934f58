"""APScheduler 4, the measured scheduler peer: several schedulers sharing a PostgreSQL store.

It has no leader to replace, so its failover is the fate of the work: the
driver SIGKILLs the scheduler that ran the schedule last, at a random moment
within the schedule's interval (a crash lands anywhere), and measures the
first run of the schedule on a surviving scheduler: from the kill, and how
late that run started past its due time.

A kill that lands while the victim holds the schedule's lease (30 s by
default) stops the schedule for longer than that: in 4.0.0a6 a scheduler
looks for due schedules again only at the next fire time of an *unleased*
schedule (``get_next_schedule_run_time`` skips leased ones) or when a
schedule is added or changed, so the survivors wait until something else
happens. Such a trial is counted as stuck once no run came within the lease
plus a margin; the replacement scheduler started next picks the schedule up.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass
from pathlib import Path

from bench.children import Child, after, first_record
from bench.database import Database
from bench.emit import now
from bench.stats import Distribution

__all__ = ["START_S", "ApschedulerResults", "measure_apscheduler", "scheduler"]

#: APScheduler 4's default lease on an acquired schedule or job.
LEASE_S = 30.0
START_S = 60.0
_MARGIN_S = 15.0
_SEED = 4


@dataclass(frozen=True)
class ApschedulerResults:
    interval: float
    schedulers: int
    #: From the kill to the first run on a survivor.
    kill_to_run: Distribution
    #: How late that run started past its due time.
    late: Distribution
    #: Trials in which no survivor ran the schedule within ``stuck_after`` seconds.
    stuck: int
    stuck_after: float


def scheduler(db: Database, python: Path, name: str, interval: float, log_dir: Path) -> Child:
    """One scheduler whose schedule runs every ``interval`` s, run by the APScheduler 4 python."""
    return Child(
        name,
        python,
        "bench.subjects.apscheduler4",
        ["--url", db.url("asyncpg"), "--identity", name, "--interval", repr(interval)],
        log_dir,
    )


async def measure_apscheduler(
    db: Database,
    python: Path,
    trials: int,
    interval: float,
    log_dir: Path,
    *,
    schedulers: int = 3,
) -> ApschedulerResults:
    spawned = 0

    async def spawn() -> Child:
        nonlocal spawned
        spawned += 1
        child = scheduler(db, python, f"apscheduler-{spawned}", interval, log_dir)
        await child.start()
        # One at a time: the first creates the tables, which concurrent starts would race on.
        await child.wait_for("started", START_S)
        return child

    members = [await spawn() for _ in range(schedulers)]
    phases = random.Random(_SEED)
    kill_to_run: list[float] = []
    late: list[float] = []
    stuck = 0
    stuck_after = LEASE_S + _MARGIN_S
    try:
        await first_record(members, "ran", START_S)
        for _ in range(trials):
            victim = max(members, key=_last_run)
            survivors = [m for m in members if m is not victim]
            await asyncio.sleep(phases.uniform(0, interval))
            started = now()
            victim.send(signal.SIGKILL)
            try:
                _, ran = await first_record(survivors, "ran", stuck_after, after(started))
            except TimeoutError:
                stuck += 1
            else:
                kill_to_run.append(float(ran["t"]) - started)
                late.append(float(ran["late"]))
            await victim.close()
            members = [*survivors, await spawn()]
    finally:
        for member in members:
            await member.close()
    if not kill_to_run:
        raise RuntimeError(f"the APScheduler 4 schedule got stuck in all {trials} trials")
    return ApschedulerResults(
        interval,
        schedulers,
        Distribution.of(kill_to_run),
        Distribution.of(late),
        stuck,
        stuck_after,
    )


def _last_run(child: Child) -> float:
    return max((float(r["t"]) for r in child.records if r["event"] == "ran"), default=0.0)
