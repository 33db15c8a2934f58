"""The example's scheduled jobs, registered the way task modules usually are: ``register(app)``.

* ``tick`` (leader only) writes one row per tick through its run's fenced
  transaction, which also marks the tick done: its rows are exactly once per
  tick, across crashes, freezes and hand-overs.
* ``report`` (leader only) takes the term and writes through
  ``group.fenced``: at most once per tick.
* ``seen`` runs on every replica and only counts its runs.
"""

from __future__ import annotations

import asyncio

import structlog
from fastapi import FastAPI

from coordinator.integrations.apscheduler import RunContext

__all__ = ["INSERT_TICK", "register"]

log = structlog.get_logger("example")

INSERT_TICK = """
    INSERT INTO example_ticks (job, scheduled_at, term, instance_id)
    VALUES ($1, $2, $3, $4) RETURNING id
"""


def register(app: FastAPI) -> None:
    state = app.state
    settings = state.settings
    # Ticks missed during a failover still run once, as long as they are this late at most.
    options = {
        "coalesce": True,
        "max_instances": 1,
        "misfire_grace_time": max(1, round(settings.grace)),
    }

    async def tick(run: RunContext) -> None:
        async with run.fenced() as tx:
            tick_id = await tx.conn.fetchval(
                INSERT_TICK, "tick", run.scheduled_at, run.term, settings.instance_id
            )
            await asyncio.sleep(settings.work)  # the tick's work, inside its transaction
        state.ticks_written += 1
        log.info("tick_written", id=tick_id, term=run.term, scheduled_at=run.scheduled_at)

    async def report(*, term: int) -> None:
        async with state.group.fenced(state.pool, term=term) as tx:
            await tx.conn.execute(INSERT_TICK, "report", None, term, settings.instance_id)
            await asyncio.sleep(settings.work)

    async def seen() -> None:
        state.seen_runs += 1

    leader_jobs = state.leader_jobs
    leader_jobs.add_job(
        tick,
        "interval",
        seconds=settings.tick_interval,
        id="tick",
        replace_existing=True,
        **options,
    )
    leader_jobs.add_job(
        report,
        "interval",
        seconds=settings.report_interval,
        id="report",
        replace_existing=True,
        **options,
    )
    state.scheduler.add_job(
        seen, "interval", seconds=settings.tick_interval, id="seen", replace_existing=True
    )
