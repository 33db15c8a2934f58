"""The coordinator's own jobs: their executor, and an application log without their routine."""

from __future__ import annotations

import asyncio
import logging

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator import HEARTBEAT_JOB_ID, MONITOR_JOB_ID, HeartbeatDone, Signal
from helpers import coordinator


async def test_the_coordinators_jobs_run_apart_and_only_their_failures_are_logged(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    scheduler = AsyncIOScheduler()
    app_job_ran = asyncio.Event()
    scheduler.add_job(app_job_ran.set, "interval", seconds=0.1, id="app")
    beats = asyncio.Queue[Signal]()
    coord = coordinator(dsn, "quiet", scheduler=scheduler)
    coord.add_listener(beats.put_nowait)
    async with coord:
        assert {scheduler.get_job(job).executor for job in (HEARTBEAT_JOB_ID, MONITOR_JOB_ID)} == {
            "coordinator"
        }
        seen = 0
        while seen < 5:  # several runs of the heartbeat job: a signal each, not a sleep
            if isinstance(await asyncio.wait_for(beats.get(), 5), HeartbeatDone):
                seen += 1
        await asyncio.wait_for(app_job_ran.wait(), 5)
    routine = [r for r in caplog.records if r.name == "apscheduler.executors.coordinator"]
    assert routine == []
    # The application's own jobs log as APScheduler always did.
    assert any(r.name == "apscheduler.executors.default" for r in caplog.records)
