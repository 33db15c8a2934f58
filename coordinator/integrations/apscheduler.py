"""Leader-only jobs in the application's own APScheduler 3 scheduler.

The application keeps one ``AsyncIOScheduler`` for everything. Passed to
``Coordinator(..., scheduler=scheduler)``, it also carries the coordinator's
heartbeat and monitor jobs (stable ids, ``replace_existing=True``), which
must run on every replica. That is why leadership pauses and resumes the
marked jobs, never the scheduler::

    scheduler = AsyncIOScheduler()
    coordinator = Coordinator(dsn, scheduler=scheduler)
    group = coordinator.group("jobs")
    leader_jobs = LeaderOnlyJobs(scheduler, group)

    @leader_jobs.scheduled_job("interval", seconds=30, id="sweep")
    async def sweep(*, term: int) -> None:
        async with group.fenced(pool, term=term) as tx:
            await tx.conn.execute("UPDATE invoices SET ...")

A marked job is added paused unless this instance leads, resumed when it is
elected and paused again when its leadership ends. Right before each run a
guard reads the trust deadline (``group.term``) once more and skips the run
if it has passed; the job receives the term it runs under as ``term=``.
When a leadership ends, runs still in progress are cancelled and awaited
(within the coordinator's ``callback_timeout``) before the lock is handed
over, so that the next leader's runs never overlap them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler

from coordinator._describe import name_of
from coordinator._errors import ConfigurationError
from coordinator._group import Group
from coordinator._logging import get_logger

__all__ = ["LeaderOnlyJobs"]

log = get_logger()

JobFunction = Callable[..., Coroutine[Any, Any, Any]]
F = TypeVar("F", bound=JobFunction)


class LeaderOnlyJobs:
    """The jobs of ``scheduler`` that run only while this instance leads ``group``."""

    def __init__(self, scheduler: BaseScheduler, group: Group) -> None:
        self._scheduler = scheduler
        self._group = group
        self._job_ids: dict[str, None] = {}  # insertion-ordered set
        self._running: set[asyncio.Task[Any]] = set()
        self._log = log.bind(group=group.name)
        group.on_elected(self._resume)
        group.on_demoted(self._pause)

    @property
    def job_ids(self) -> list[str]:
        """The ids of the leader-only jobs, in the order they were added."""
        return list(self._job_ids)

    def add_job(
        self,
        func: JobFunction,
        trigger: Any = None,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Like ``scheduler.add_job``; ``func`` must be ``async`` and take ``term=``."""
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        _check_job(func, args, kwargs)
        if not self._group.is_leader:
            options["next_run_time"] = None  # added paused
        job = self._scheduler.add_job(
            self._guarded(func), trigger, args=args, kwargs=kwargs, **options
        )
        self._job_ids[job.id] = None
        return job

    def scheduled_job(
        self, trigger: Any = None, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_job`; returns the function unchanged."""

        def add(func: F) -> F:
            self.add_job(func, trigger, args, kwargs, **options)
            return func

        return add

    def _guarded(self, func: JobFunction) -> JobFunction:
        group, running = self._group, self._running
        job_log = self._log.bind(job=name_of(func))

        async def run_as_leader(*args: Any, **kwargs: Any) -> Any:
            term = group.term
            if term is None:
                job_log.info("leader_job_skipped", reason="not the leader")
                return None
            run = asyncio.create_task(func(*args, term=term, **kwargs))
            running.add(run)
            try:
                return await run
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the scheduler itself is shutting down
                job_log.warning("leader_job_cancelled", term=term, reason="leadership ended")
                return None
            finally:
                running.discard(run)

        # The job keeps its own name in APScheduler's logs and job list.
        return functools.update_wrapper(run_as_leader, func, updated=())

    def _resume(self, term: int) -> None:
        self._for_each_job(self._scheduler.resume_job)
        self._log.info("leader_jobs_resumed", term=term, jobs=len(self._job_ids))

    async def _pause(self, reason: str) -> None:
        self._for_each_job(self._scheduler.pause_job)
        runs = list(self._running)
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        self._log.info(
            "leader_jobs_paused", reason=reason, jobs=len(self._job_ids), cancelled=len(runs)
        )

    def _for_each_job(self, action: Callable[[str], object]) -> None:
        """Apply ``action`` to every leader-only job; forget those removed from the scheduler."""
        for job_id in list(self._job_ids):
            try:
                action(job_id)
            except JobLookupError:
                del self._job_ids[job_id]


def _check_job(func: JobFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    name = name_of(func)
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(
            f"leader-only job {name} is not a coroutine function: define it with `async def` "
            "(run blocking work inside it with asyncio.to_thread), so that it can be "
            "cancelled when leadership ends"
        )
    if "term" in kwargs:
        raise ConfigurationError(
            f"leader-only job {name} gets `term` from the coordinator: remove it from kwargs"
        )
    try:
        inspect.signature(func).bind(*args, term=0, **kwargs)
    except TypeError as error:
        raise ConfigurationError(
            f"leader-only job {name} cannot be called with its args, kwargs and term=... "
            f"({error}): give it a keyword parameter `term` (async def {name}(*, term: int))"
        ) from None
