"""The coordinator's own APScheduler jobs: the heartbeat and the monitor.

They have stable ids (``replace_existing=True``), so an application's own
scheduler can carry them beside its jobs, and run in an executor of their
own, alias ``coordinator``. APScheduler 3 logs every run of every job at
INFO through ``apscheduler.executors.<alias>``; the coordinator's jobs run
several times per heartbeat interval, so that logger is set to WARNING
(unless the application set a level itself): failures and missed runs still
show, routine runs do not, and the application's own jobs log as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator._otel import app_context

__all__ = ["EXECUTOR", "HEARTBEAT_JOB_ID", "MONITOR_JOB_ID", "Jobs"]

HEARTBEAT_JOB_ID = "coordinator.heartbeat"
MONITOR_JOB_ID = "coordinator.monitor"
#: The executor alias the coordinator's jobs run in.
EXECUTOR = "coordinator"

Job = Callable[[], Awaitable[None]]


class Jobs:
    """Adds the two jobs to a scheduler (a new one unless given) and removes them again."""

    def __init__(self, scheduler: AsyncIOScheduler | None) -> None:
        self.scheduler = scheduler
        self._owns_scheduler = scheduler is None
        self._added_executor = False
        self._runs: set[asyncio.Task[Any]] = set()  # runs in progress

    def start(self, heartbeat: tuple[Job, float], monitor: tuple[Job, float]) -> None:
        if self.scheduler is None:
            self.scheduler = AsyncIOScheduler()
        scheduler = self.scheduler
        try:
            scheduler.add_executor(AsyncIOExecutor(), alias=EXECUTOR)
            self._added_executor = True
        except ValueError:  # already there: a coordinator ran in this scheduler before
            pass
        quiet = logging.getLogger(f"apscheduler.executors.{EXECUTOR}")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
        for job_id, (func, seconds) in ((HEARTBEAT_JOB_ID, heartbeat), (MONITOR_JOB_ID, monitor)):
            scheduler.add_job(
                self._tracked(func),
                "interval",
                seconds=seconds,
                id=job_id,
                name=job_id,
                executor=EXECUTOR,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
                # A late heartbeat is still worth running; never skip it as "missed".
                misfire_grace_time=None,
            )
        if not scheduler.running:
            with app_context():  # the application's jobs in it are the application's
                scheduler.start()
            self._owns_scheduler = True

    async def stop(self, timeout: float) -> None:
        """Remove the jobs; let a run in progress end (up to ``timeout``) before a shutdown.

        Shutting a scheduler down cancels the runs in progress, which
        APScheduler would log as a job that raised an exception.
        """
        scheduler = self.scheduler
        if scheduler is None:
            return
        for job_id in (HEARTBEAT_JOB_ID, MONITOR_JOB_ID):
            if scheduler.get_job(job_id) is not None:
                scheduler.remove_job(job_id)
        if self._runs:
            await asyncio.wait(self._runs, timeout=timeout)
        if self._owns_scheduler and scheduler.running:
            scheduler.shutdown(wait=False)
        elif self._added_executor:
            scheduler.remove_executor(EXECUTOR, shutdown=False)
            self._added_executor = False

    def _tracked(self, func: Job) -> Job:
        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None  # a job runs as a task of the scheduler's loop
            self._runs.add(task)
            try:
                await func()
            finally:
                self._runs.discard(task)

        return run
