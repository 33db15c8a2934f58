"""The coordinator for threaded applications: Flask, Django, Celery, scripts.

:class:`Coordinator` runs the asyncio coordinator on an event loop in a
background thread of its own and offers the same group API as blocking
calls. Callbacks run in a thread pool, never on that loop, so they may block.
Fenced transactions take the application's own psycopg 3 connection or
SQLAlchemy ``Connection``/``Session``. :class:`LeaderOnlyJobs` marks jobs of
an APScheduler 3 ``BackgroundScheduler`` as leader-only::

    coordinator = Coordinator(dsn)
    group = coordinator.group("jobs")
    jobs = LeaderOnlyJobs(scheduler, group)

    @jobs.scheduled_job("interval", seconds=30, id="sweep")
    def sweep(*, term: int) -> None:
        with psycopg.connect(app_dsn) as conn, group.fenced(conn, term=term) as tx:
            tx.conn.execute("UPDATE invoices SET ...")

    coordinator.start()  # or: with coordinator: ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from apscheduler.executors.base import BaseExecutor, run_coroutine_job
from apscheduler.job import Job
from apscheduler.schedulers.base import BaseScheduler

from coordinator import _coordinator
from coordinator._config import CoordinatorConfig
from coordinator._drivers import fenced_sync
from coordinator._fencing import FencedTransaction
from coordinator._group import Group as AsyncGroup
from coordinator._group import Role
from coordinator._signals import Listener
from coordinator._sql import Statements
from coordinator.integrations.apscheduler import LeaderOnlyJobs as AsyncLeaderOnlyJobs

__all__ = ["Coordinator", "Group", "LeaderOnlyJobs"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The executor alias under which leader-only jobs run on the coordinator's loop.
EXECUTOR_ALIAS = "coordinator"


class Coordinator:
    """A :class:`coordinator.Coordinator` for threads: same settings, blocking methods.

    ``callback_threads`` bounds the pool that runs ``on_elected`` and
    ``on_demoted`` callbacks and leader-only jobs.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        config: CoordinatorConfig | None = None,
        callback_threads: int = 4,
        **settings: Any,
    ) -> None:
        self._inner = _coordinator.Coordinator(dsn, config=config, **settings)
        self._assert_term_sql = Statements.for_schema(self._inner.config.schema).assert_term
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(
            callback_threads, thread_name_prefix="coordinator-callback"
        )
        self._groups: dict[str, Group] = {}

    @property
    def config(self) -> CoordinatorConfig:
        return self._inner.config

    @property
    def instance_id(self) -> str:
        return self._inner.instance_id

    @property
    def running(self) -> bool:
        return self._inner.running

    def group(self, name: str) -> Group:
        """The group called ``name``, created on first use (before start)."""
        if name not in self._groups:
            self._groups[name] = Group(self._inner.group(name), self, self._assert_term_sql)
        return self._groups[name]

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(signal)`` for every signal; it runs on the loop: keep it quick."""
        self._inner.add_listener(listener)

    def start(self) -> None:
        """Start the loop's thread, then the coordinator; raises what its start raises."""
        if self._thread is not None:
            raise RuntimeError("a coordinator starts once")
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="coordinator-loop", daemon=True
        )
        self._thread.start()
        try:
            self.call(self._inner.start())
        except BaseException:
            self._close_loop()
            raise

    def stop(self) -> None:
        """Resign every leadership, leave every group, stop the loop. Idempotent."""
        if self._thread is None or self._loop.is_closed():
            return
        try:
            self.call(self._inner.stop())
        finally:
            self._close_loop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the coordinator's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def in_pool(
        self, callback: Callable[[Any], object]
    ) -> Callable[[Any], Coroutine[Any, Any, None]]:
        """``callback`` as a coroutine function for the loop, run in :attr:`pool`."""

        async def run(argument: Any) -> None:
            await asyncio.get_running_loop().run_in_executor(self.pool, callback, argument)

        return functools.update_wrapper(run, callback)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _close_loop(self) -> None:
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.pool.shutdown(wait=True)


class Group:
    """One election, as seen from threads. Create it with :meth:`Coordinator.group`."""

    def __init__(self, inner: AsyncGroup, runner: Coordinator, assert_term_sql: str) -> None:
        self._inner = inner
        self._runner = runner
        self._assert_term_sql = assert_term_sql

    def __repr__(self) -> str:
        return f"<sync {self._inner!r}>"

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def role(self) -> Role:
        return self._inner.role

    @property
    def is_leader(self) -> bool:
        """True only while this instance leads and its trust deadline has not passed."""
        return self._inner.is_leader

    @property
    def term(self) -> int | None:
        """The current term while :attr:`is_leader`, else None."""
        return self._inner.term

    @property
    def asyncio_group(self) -> AsyncGroup:
        """The group on the coordinator's loop, for code that runs there."""
        return self._inner

    def on_elected(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Register ``callback(term)``, run in the pool each time this instance takes office."""
        self._inner.on_elected(self._runner.in_pool(callback))
        return callback

    def on_demoted(self, callback: Callable[[str], object]) -> Callable[[str], object]:
        """Register ``callback(reason)``, run in the pool each time a leadership ends.

        The hand-over waits for it up to ``callback_timeout``; a thread cannot
        be cancelled, so one that runs longer goes on after the lock is released.
        """
        self._inner.on_demoted(self._runner.in_pool(callback))
        return callback

    def wait_elected(self, timeout: float | None = None) -> int:
        """Block until this instance leads; return the term. Raises TimeoutError."""
        return self._runner.call(self._inner.wait_elected(timeout))

    def wait_demoted(self, timeout: float | None = None) -> None:
        """Block until this instance does not lead and has handed over."""
        self._runner.call(self._inner.wait_demoted(timeout))

    def resign(self) -> None:
        """Hand leadership over now, then follow again. A no-op when not leading."""
        self._runner.call(self._inner.resign())

    def fenced(
        self, conn: Any, *, term: int | None = None
    ) -> contextlib.AbstractContextManager[FencedTransaction]:
        """A transaction on ``conn`` that commits only in ``term`` (default: the current one).

        ``conn`` is a psycopg 3 ``Connection`` or a SQLAlchemy ``Connection``
        or ``Session``. Raises NotLeader or StaleTerm.
        """
        return fenced_sync(self._inner, conn, self._assert_term_sql, term=term)


class LeaderOnlyJobs:
    """Jobs of an APScheduler 3 ``BackgroundScheduler`` that run only while ``group`` leads.

    The same rules as :class:`coordinator.integrations.apscheduler.LeaderOnlyJobs`,
    which this drives: paused unless leading, guarded right before each run,
    ``term=`` passed to the job. Jobs are plain functions; each run is called
    in the coordinator's pool, from its loop (executor ``"coordinator"`` of the
    scheduler). A run still going when the leadership ends cannot be
    cancelled: the hand-over waits for it (up to ``callback_timeout``), and its
    fenced transactions fail once the term is over.
    """

    def __init__(self, scheduler: BaseScheduler, group: Group) -> None:
        self._runner = group._runner
        self._scheduler = scheduler
        if EXECUTOR_ALIAS not in scheduler._executors:  # no public lookup in APScheduler 3
            scheduler.add_executor(_LoopExecutor(self._runner.loop), alias=EXECUTOR_ALIAS)
        self._jobs = AsyncLeaderOnlyJobs(scheduler, group.asyncio_group)

    @property
    def job_ids(self) -> list[str]:
        return self._jobs.job_ids

    def add_job(
        self,
        func: Callable[..., Any],
        trigger: Any = None,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Like ``scheduler.add_job``; ``func`` is a plain function that takes ``term=``."""
        return self._jobs.add_job(
            self._in_pool(func), trigger, args, kwargs, executor=EXECUTOR_ALIAS, **options
        )

    def scheduled_job(
        self, trigger: Any = None, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_job`; returns the function unchanged."""

        def add(func: F) -> F:
            self.add_job(func, trigger, args, kwargs, **options)
            return func

        return add

    def _in_pool(self, func: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
        pool = self._runner.pool

        async def run_in_pool(*args: Any, **kwargs: Any) -> Any:
            call = functools.partial(func, *args, **kwargs)
            running = asyncio.get_running_loop().run_in_executor(pool, call)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # The leadership ended: a thread cannot be stopped, so the hand-over waits.
                await asyncio.wait([running])
                raise

        # The job keeps its own name and signature (term= is checked against it).
        return functools.update_wrapper(run_in_pool, func)


class _LoopExecutor(BaseExecutor):  # type: ignore[misc]  # APScheduler 3 is untyped
    """Runs coroutine jobs on the coordinator's loop, whichever thread the scheduler uses."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def _do_submit_job(self, job: Job, run_times: list[Any]) -> None:
        coroutine = run_coroutine_job(job, job._jobstore_alias, run_times, self._logger.name)
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.add_done_callback(functools.partial(self._finished, job))

    def _finished(self, job: Job, future: concurrent.futures.Future[Any]) -> None:
        try:
            events = future.result()
        except BaseException as error:  # noqa: BLE001 - reported to the scheduler, as APScheduler does
            self._run_job_error(job.id, error, error.__traceback__)
        else:
            self._run_job_success(job.id, events)
