"""Leader-only jobs in the application's own APScheduler 3 scheduler, on a shared timetable.

The application keeps one ``AsyncIOScheduler`` for everything; the
coordinator's heartbeat and monitor run in it on every replica. Jobs added
through :class:`LeaderOnlyJobs` run only on the leader of a group, and
their fire times live in the database (``migrations/0003_jobs.sql``), not
in one replica's memory::

    leader_jobs = LeaderOnlyJobs(scheduler, group, pool=pool)

    @leader_jobs.scheduled_job("interval", seconds=30, id="sweep")
    async def sweep(run: RunContext) -> None:
        async with run.fenced() as tx:      # commits once per tick, or not at all
            await tx.conn.execute("UPDATE invoices SET ...")

How a tick runs: APScheduler fires the job at the time the shared timetable
gives; the leader claims ``(group, job id, fire time)`` under its term (a
tick is claimed once); then the job runs. A new leader reads the timetable
and continues it, applying the job's ``misfire_grace_time`` and
``coalesce`` to ticks missed during the failover (run once if within
grace, else recorded as skipped).

What "once" means:

* a job that asks for its run context (a parameter named ``run``, or one
  annotated :class:`RunContext`) and writes through ``run.fenced()`` has its
  database effects exactly once per tick: the transaction also marks the
  tick done, and a tick whose transaction never committed is run again by
  the next leader, within grace;
* any other job (taking ``term=``, or nothing) runs at most once per tick:
  the claim commits before it starts.

Leadership ending gracefully (resign, stop, switchover, fair spreading) lets runs in
progress finish for up to ``drain_timeout`` before they are cancelled and
the lock is released; a lost leadership cancels them at once. A run that
meets ``NotLeader`` or ``StaleTerm`` ends with one ``leader_job_stale`` line.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, get_type_hints

import asyncpg
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.schedulers.base import BaseScheduler

from coordinator._config import default_instance_id
from coordinator._connect import TRANSIENT_ERRORS
from coordinator._describe import describe_error, name_of
from coordinator._errors import ConfigurationError, NotLeader, StaleTerm
from coordinator._group import Group
from coordinator._logging import get_logger
from coordinator._run import RunContext, ThreadRunContext
from coordinator._sql import Statements
from coordinator._term import GRACEFUL
from coordinator._timetable import Mode, Outcome, Timetable

__all__ = ["LeaderOnlyJobs", "RunContext"]

log = get_logger()

JobFunction = Callable[..., Coroutine[Any, Any, Any]]
F = TypeVar("F", bound=JobFunction)

#: Database failures after which a tick is left for the next fire time or leader.
_DATABASE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, asyncpg.PostgresError)
_RECORD_ERRORS: tuple[type[BaseException], ...] = (*_DATABASE_ERRORS, TimeoutError)
_RECORD_TIMEOUT_S = 2.0
_ADOPT_RETRY_MAX_S = 2.0


@dataclass(frozen=True)
class _Spec:
    """How to call one leader-only job."""

    passes: str | None  # "run", "term" or None: the keyword the job is given
    run_parameter: str = "run"

    @property
    def mode(self) -> Mode:
        return Mode.FENCED if self.passes == "run" else Mode.PLAIN


class _RunLeadership:
    """The leadership a run's fenced transaction checks: its term, also while draining."""

    def __init__(self, jobs: LeaderOnlyJobs, term: int) -> None:
        self._jobs = jobs
        self._term = term

    @property
    def name(self) -> str:
        return self._jobs.group.name

    @property
    def term(self) -> int | None:
        if self._jobs.group.term == self._term or self._jobs.draining == self._term:
            return self._term
        return None


class LeaderOnlyJobs:
    """The jobs of ``scheduler`` that run only on the leader of ``group``, on a shared timetable.

    ``pool`` is the application's asyncpg pool: it carries the claims and
    ``run.fenced()``; set it later (``leader_jobs.pool = pool``) if it is
    created in the application's lifespan, but before the first election.
    ``instance_id`` and ``schema`` should be the coordinator's
    (``coordinator.instance_id``, ``coordinator.config.schema``).
    ``drain_timeout`` bounds how long a graceful hand-over waits for runs in
    progress; keep it below the coordinator's ``callback_timeout``. ``loop``
    is the coordinator's, when the scheduler is not an ``AsyncIOScheduler``
    (:class:`coordinator.sync.LeaderOnlyJobs` passes it).
    """

    def __init__(
        self,
        scheduler: BaseScheduler,
        group: Group,
        *,
        pool: Any = None,
        instance_id: str | None = None,
        schema: str = "coordinator",
        drain_timeout: float = 10.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if drain_timeout < 0:
            raise ConfigurationError(
                f"drain_timeout must be at least 0 seconds, got {drain_timeout!r}"
            )
        self.group = group
        self.drain_timeout = drain_timeout
        #: The term whose runs are draining during a graceful hand-over, else None.
        self.draining: int | None = None
        #: Finished runs by (job id, outcome), and runs that met a stale term by job id.
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stale_runs: collections.Counter[str] = collections.Counter()
        self._scheduler = scheduler
        self._sql = Statements.for_schema(schema)
        self._timetable = Timetable(group.name, self._sql, pool)
        self._instance_id = instance_id or default_instance_id()
        self._specs: dict[str, _Spec] = {}  # insertion-ordered
        self._running: dict[asyncio.Task[Any], int] = {}  # run -> its term
        self._adopting: asyncio.Task[None] | None = None
        self._drained = False  # drain() ran: the hand-over cancels what is left at once
        self._log = log.bind(group=group.name)
        self._executor = f"coordinator.leader_only.{group.name}"
        try:
            scheduler.add_executor(_TimetableExecutor(self, loop), alias=self._executor)
        except ValueError:
            raise ConfigurationError(
                f"the scheduler already has leader-only jobs of group {group.name!r}: "
                "create one LeaderOnlyJobs per group and scheduler"
            ) from None
        group.on_elected(self._on_elected)
        group.on_demoted(self._on_demoted)

    @property
    def pool(self) -> Any:
        return self._timetable.pool

    @pool.setter
    def pool(self, pool: Any) -> None:
        self._timetable.pool = pool

    @property
    def job_ids(self) -> list[str]:
        """The ids of the leader-only jobs, in the order they were added."""
        return list(self._specs)

    def add_job(
        self,
        func: JobFunction,
        trigger: Any = None,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Like ``scheduler.add_job``; ``func`` must be ``async`` and the job needs an ``id``."""
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        spec = _check_job(func, args, kwargs, options)
        options["next_run_time"] = None  # paused until a leader places it on the timetable
        job = self._scheduler.add_job(
            _passed_through(func),
            trigger,
            args=args,
            kwargs=kwargs,
            executor=self._executor,
            **options,
        )
        self._specs[job.id] = spec
        term = self.group.term
        if term is not None:  # added while leading: place it now
            self._start_adopting(term)
        return job

    def scheduled_job(
        self, trigger: Any = None, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_job`; returns the function unchanged."""

        def add(func: F) -> F:
            self.add_job(func, trigger, args, kwargs, **options)
            return func

        return add

    # -- leadership -------------------------------------------------------------

    def _on_elected(self, term: int) -> None:
        self._start_adopting(term)

    def _start_adopting(self, term: int) -> None:
        if self._adopting is not None:
            self._adopting.cancel()
        self._adopting = asyncio.create_task(self._adopt(term), name=f"{self._executor}-adopt")

    async def _adopt(self, term: int) -> None:
        """Continue the shared timetable: place every job, re-run unfinished fenced ticks."""
        if self.pool is None:
            self._log.error(
                "leader_jobs_no_pool",
                term=term,
                fix="give LeaderOnlyJobs the application's asyncpg pool (pool=...) before the "
                "coordinator starts; until then the leader-only jobs do not run",
            )
            return
        failures = 0
        while self.group.term == term:  # until placed, or the term is over
            try:
                async with self.pool.acquire() as conn:  # one connection: fewer round trips
                    await self._place_jobs(term, self._timetable.on(conn))
                return
            except StaleTerm:
                return
            except _DATABASE_ERRORS as error:
                failures += 1
                self._log.warning(
                    "leader_jobs_adopt_failed",
                    term=term,
                    error=describe_error(error),
                    attempt=failures,
                )
                await asyncio.sleep(min(_ADOPT_RETRY_MAX_S, 0.1 * 2**failures))

    async def _place_jobs(self, term: int, timetable: Timetable) -> None:
        rows = await timetable.rows()
        now = datetime.now(UTC)
        plan: list[tuple[str, str, datetime | None]] = []
        unchanged: set[str] = set()
        for job_id in list(self._specs):
            job, row = self._scheduler.get_job(job_id), rows.get(job_id)
            if job is None and row is not None and row.next_fire_at is None:
                plan.append((job_id, row.trigger, None))  # finished (a date job): kept as done
                continue
            if job is None:  # removed from the scheduler: removed from the timetable too
                del self._specs[job_id]
                continue
            trigger = str(job.trigger)
            if row is not None and row.trigger == trigger:
                plan.append((job_id, trigger, row.next_fire_at))
                unchanged.add(job_id)
            else:  # new, or its trigger changed
                plan.append((job_id, trigger, job.trigger.get_next_fire_time(None, now)))
        # A fenced tick that an older term claimed and never committed runs
        # again: the job restarts from it, so that APScheduler's misfire rules
        # (misfire_grace_time, max_instances) apply to it as to any tick. With
        # coalesce, a later tick already due supersedes it: that one runs instead.
        again: dict[str, datetime] = {}
        for tick in await timetable.sync(term, plan):
            job = self._scheduler.get_job(tick.job_id)
            spec = self._specs.get(tick.job_id)
            if (
                job is None
                or spec is None
                or spec.mode is not Mode.FENCED
                or tick.mode is not Mode.FENCED
                or tick.job_id not in unchanged
                or (job.coalesce and _superseded(job, tick.scheduled_at, now))
            ):
                continue
            earliest = again.get(tick.job_id, tick.scheduled_at)
            again[tick.job_id] = min(tick.scheduled_at, earliest)
        abandoned = await timetable.abandon_open(term, keep=list(again))
        if self.group.term != term:
            return
        for job_id, _, next_fire_at in plan:
            if job_id in again:
                next_fire_at = min(again[job_id], next_fire_at or again[job_id])
            if next_fire_at is not None:
                self._scheduler.modify_job(job_id, next_run_time=next_fire_at)
        self._log.info(
            "leader_jobs_resumed",
            term=term,
            jobs=len(plan),
            again=sorted(again),
            abandoned=abandoned,
        )

    async def drain(self) -> None:
        """Start no more runs, and wait up to ``drain_timeout`` for those in progress.

        For a planned stop while still leading (the FastAPI helper calls it
        before stopping the coordinator): heartbeats go on, and every run,
        whether it writes through ``run.fenced()`` or ``group.fenced``, can
        still commit. Runs still going afterwards are cancelled when the
        leadership ends.
        """
        self._pause_jobs()
        runs = list(self._running)
        if runs and self.drain_timeout > 0:
            finished, _ = await asyncio.wait(runs, timeout=self.drain_timeout)
            self._log.info("leader_jobs_drained", runs=len(runs), finished=len(finished))
        self._drained = True

    async def _on_demoted(self, reason: str) -> None:
        """Pause every job; drain (graceful) or cancel (lost) the runs in progress."""
        self._pause_jobs()
        runs = list(self._running)
        drained: set[asyncio.Task[Any]] = set()
        try:
            if runs and reason in GRACEFUL and self.drain_timeout > 0 and not self._drained:
                # The term has ended here: run.fenced() may still commit in it
                # (the database holds the lock until after this), group.fenced not.
                self.draining = self._running[runs[0]]
                drained, _ = await asyncio.wait(runs, timeout=self.drain_timeout)
        finally:
            self.draining = None
            self._drained = False
            cancelled = [run for run in runs if run not in drained]
            for run in cancelled:
                run.cancel()
            await asyncio.gather(*cancelled, return_exceptions=True)
        self._log.info(
            "leader_jobs_paused",
            reason=reason,
            jobs=len(self._specs),
            drained=len(drained),
            cancelled=len(cancelled),
        )

    def _pause_jobs(self) -> None:
        if self._adopting is not None:  # a placement under way would resume them
            self._adopting.cancel()
            self._adopting = None
        for job_id in list(self._specs):
            if self._scheduler.get_job(job_id) is not None:
                self._scheduler.pause_job(job_id)

    # -- one tick ---------------------------------------------------------------

    async def run_ticks(self, job: Job, run_times: list[datetime]) -> list[JobExecutionEvent]:
        """What the executor runs when APScheduler fires a leader-only job."""
        events = []
        for run_time in run_times:
            code, error = await self._tick(job, run_time)
            events.append(
                JobExecutionEvent(code, job.id, job._jobstore_alias, run_time, exception=error)
            )
        return events

    async def _tick(self, job: Job, scheduled_at: datetime) -> tuple[int, BaseException | None]:
        spec = self._specs.get(job.id)
        term = self.group.term
        if spec is None or term is None:
            self._log.info("leader_job_skipped", job=job.id, reason="not the leader")
            return EVENT_JOB_MISSED, None
        missed = _missed(job, scheduled_at, datetime.now(UTC))
        attempt = await self._claim(job, spec, term, scheduled_at, skipped=missed)
        if attempt is None:
            return EVENT_JOB_MISSED, None
        if missed:
            self.outcomes[(job.id, Outcome.SKIPPED.value)] += 1
            self._log.warning(
                "leader_job_missed",
                job=job.id,
                term=term,
                scheduled_at=scheduled_at.isoformat(),
                late_s=round((datetime.now(UTC) - scheduled_at).total_seconds(), 3),
                misfire_grace_time=job.misfire_grace_time,
            )
            return EVENT_JOB_MISSED, None
        task = asyncio.create_task(self._run(job, spec, term, scheduled_at, attempt))
        self._running[task] = term
        return await task

    async def _claim(
        self, job: Job, spec: _Spec, term: int, scheduled_at: datetime, *, skipped: bool = False
    ) -> int | None:
        """Claim a tick under ``term``: its attempt number, or None (taken, stale, failed)."""
        next_fire_at = job.trigger.get_next_fire_time(scheduled_at, datetime.now(UTC))
        try:
            attempt = await self._timetable.claim(
                term,
                job.id,
                scheduled_at,
                self._instance_id,
                spec.mode,
                next_fire_at,
                skipped=skipped,
            )
        except StaleTerm:
            self._stale(job.id, term, scheduled_at)
            return None
        except _DATABASE_ERRORS as error:
            self._log.warning(
                "leader_job_claim_failed",
                job=job.id,
                term=term,
                scheduled_at=scheduled_at.isoformat(),
                error=describe_error(error),
            )
            return None
        if attempt is None:
            self._log.info(
                "leader_job_tick_taken",
                job=job.id,
                term=term,
                scheduled_at=scheduled_at.isoformat(),
            )
        return attempt

    async def _run(
        self, job: Job, spec: _Spec, term: int, scheduled_at: datetime, attempt: int
    ) -> tuple[int, BaseException | None]:
        """Run one claimed tick and record how it ended."""
        started = time.monotonic()
        context = RunContext(
            job.id,
            term,
            scheduled_at,
            attempt,
            leadership=_RunLeadership(self, term),
            timetable=self._timetable,
            assert_term_sql=self._sql.assert_term,
        )
        extra: dict[str, Any] = {}
        if spec.passes == "run":
            extra[spec.run_parameter] = context
        elif spec.passes == "term":
            extra["term"] = term
        code, failure, outcome = EVENT_JOB_EXECUTED, None, Outcome.DONE
        try:
            await job.func(*job.args, **job.kwargs, **extra)
        except (NotLeader, StaleTerm) as error:
            self._stale(job.id, term, scheduled_at, error)
            outcome = Outcome.STALE
        except asyncio.CancelledError:
            outcome = Outcome.CANCELLED
            self._log.warning(
                "leader_job_cancelled",
                job=job.id,
                term=term,
                scheduled_at=scheduled_at.isoformat(),
                reason="leadership ended",
            )
        except Exception as error:  # noqa: BLE001 - the job's own failure, reported like APScheduler does
            if _RunLeadership(self, term).term is None:
                # Whatever broke, it broke after the term ended (a connection
                # cut while frozen, say): that is a stale run, not a bug.
                self._stale(job.id, term, scheduled_at, error)
                outcome = Outcome.STALE
            else:
                code, failure, outcome = EVENT_JOB_ERROR, error, Outcome.FAILED
                self._log.exception(
                    "leader_job_failed",
                    job=job.id,
                    term=term,
                    scheduled_at=scheduled_at.isoformat(),
                )
        finally:
            self._running.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        duration = time.monotonic() - started
        if spec.mode is Mode.FENCED and outcome in (Outcome.CANCELLED, Outcome.STALE):
            outcome = Outcome.INTERRUPTED  # not committed: the next leader may run it again
        if not context.committed:
            await self._record(job.id, term, scheduled_at, outcome, duration)
        self.outcomes[(job.id, outcome.value)] += 1
        self._log.info(
            "leader_job_finished",
            job=job.id,
            term=term,
            scheduled_at=scheduled_at.isoformat(),
            outcome=outcome.value,
            duration_s=round(duration, 4),
        )
        return code, failure

    async def _record(
        self, job_id: str, term: int, scheduled_at: datetime, outcome: Outcome, duration: float
    ) -> None:
        try:
            async with asyncio.timeout(_RECORD_TIMEOUT_S):
                await self._timetable.finish(term, job_id, scheduled_at, outcome, duration)
        except _RECORD_ERRORS as error:
            self._log.warning(
                "leader_job_outcome_not_recorded",
                job=job_id,
                term=term,
                outcome=outcome.value,
                error=describe_error(error),
            )

    def _stale(
        self, job_id: str, term: int, scheduled_at: datetime, error: BaseException | None = None
    ) -> None:
        """The one line a run of an ended term leaves: no traceback."""
        self.stale_runs[job_id] += 1
        self._log.warning(
            "leader_job_stale",
            job=job_id,
            term=term,
            scheduled_at=scheduled_at.isoformat(),
            **({"error": describe_error(error)} if error is not None else {}),
        )


class _TimetableExecutor(BaseExecutor):  # type: ignore[misc]  # APScheduler 3 is untyped
    """Runs fired leader-only jobs through :meth:`LeaderOnlyJobs.run_ticks`, on the loop.

    APScheduler hands an executor the scheduled fire times; the job itself
    never sees them. This executor passes them on, so that each tick is
    claimed by its own fire time. The loop is the scheduler's
    (``AsyncIOScheduler``) or the one given (a scheduler in a thread of its own).
    """

    def __init__(self, jobs: LeaderOnlyJobs, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__()
        self._jobs = jobs
        self._loop = loop
        self._pending: set[concurrent.futures.Future[list[JobExecutionEvent]]] = set()

    def start(self, scheduler: BaseScheduler, alias: str) -> None:
        super().start(scheduler, alias)
        if self._loop is None:
            self._loop = getattr(scheduler, "_eventloop", None)
        if self._loop is None:
            raise ConfigurationError(
                f"leader-only jobs of group {self._jobs.group.name!r} need an asyncio loop: "
                "use an AsyncIOScheduler, or coordinator.sync.LeaderOnlyJobs for a "
                "BackgroundScheduler"
            )

    def shutdown(self, wait: bool = True) -> None:
        for pending in list(self._pending):
            pending.cancel()
        self._pending.clear()

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def finished(future: concurrent.futures.Future[list[JobExecutionEvent]]) -> None:
            self._pending.discard(future)
            events = [] if future.cancelled() else future.result()
            self._run_job_success(job.id, events)

        assert self._loop is not None  # set by start()
        future = asyncio.run_coroutine_threadsafe(self._jobs.run_ticks(job, run_times), self._loop)
        future.add_done_callback(finished)
        self._pending.add(future)


def _passed_through(func: JobFunction) -> JobFunction:
    """The job as APScheduler keeps it: it is called with the run context or term added,
    which APScheduler's own argument check must not refuse; its name stays the job's."""

    async def leader_only(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return functools.update_wrapper(leader_only, func, updated=())


def _superseded(job: Job, scheduled_at: datetime, now: datetime) -> bool:
    following = job.trigger.get_next_fire_time(scheduled_at, now)
    return following is not None and following <= now


def _missed(job: Job, scheduled_at: datetime, now: datetime) -> bool:
    grace = job.misfire_grace_time
    return grace is not None and (now - scheduled_at).total_seconds() > grace


def _check_job(
    func: JobFunction, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> _Spec:
    name = name_of(func)
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(
            f"leader-only job {name} is not a coroutine function: define it with `async def` "
            "(run blocking work inside it with asyncio.to_thread), so that it can be "
            "cancelled when leadership ends"
        )
    if not options.get("id"):
        raise ConfigurationError(
            f'leader-only job {name} has no id: give it a stable id="...", the key of its '
            "row in the shared timetable"
        )
    if "executor" in options:
        raise ConfigurationError(
            f"leader-only job {options['id']} runs in the coordinator's executor: remove executor="
        )
    spec = _Spec(*_passes(func))
    for given in ("term", spec.run_parameter):
        if given in kwargs:
            raise ConfigurationError(
                f"leader-only job {name} gets `{given}` from the coordinator: remove it from kwargs"
            )
    extra = {spec.run_parameter if spec.passes == "run" else "term": None} if spec.passes else {}
    try:
        inspect.signature(func).bind(*args, **kwargs, **extra)
    except TypeError as error:
        raise ConfigurationError(
            f"leader-only job {name} cannot be called with its args and kwargs ({error}): "
            f"fix args= and kwargs=, or the job's parameters"
        ) from None
    return spec


#: The annotations that ask for a run context: the asyncio one and coordinator.sync's.
_RUN_CONTEXTS = {RunContext.__name__, ThreadRunContext.__name__}


def _passes(func: JobFunction) -> tuple[str | None, str]:
    """What the job asks for: its run context (by name ``run`` or annotation), ``term``, or none."""
    parameters = inspect.signature(func).parameters
    hints: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # unresolvable annotations: names and strings decide
        hints = get_type_hints(func)
    for name, parameter in parameters.items():
        annotation = hints.get(name, parameter.annotation)
        if name == "run" or getattr(annotation, "__name__", annotation) in _RUN_CONTEXTS:
            return "run", name
    return ("term" if "term" in parameters else None), "run"
