"""The coordinator for threaded applications: Flask, Django, Celery, scripts.

:class:`Coordinator` runs the asyncio coordinator on an event loop in a
background thread of its own and offers the same group API as blocking
calls. Callbacks run in a thread pool, never on that loop, so they may block.
Fenced transactions take the application's own psycopg 3 connection or
SQLAlchemy ``Connection``/``Session``. :class:`LeaderOnlyJobs` marks jobs of
an APScheduler 3 ``BackgroundScheduler`` as leader-only, on the shared
timetable::

    coordinator = Coordinator(dsn)
    group = coordinator.group("jobs")
    jobs = LeaderOnlyJobs(scheduler, group)

    @jobs.scheduled_job("interval", seconds=30, id="sweep")
    def sweep(run: RunContext) -> None:
        with psycopg.connect(app_dsn) as conn, run.fenced(conn) as tx:   # once per tick
            tx.conn.execute("UPDATE invoices SET ...")

    coordinator.start()  # or: with coordinator: ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import asyncpg
from apscheduler.job import Job
from apscheduler.schedulers.base import BaseScheduler

from coordinator import _coordinator
from coordinator._config import CoordinatorConfig
from coordinator._drivers import fenced_sync
from coordinator._fencing import FencedTransaction
from coordinator._group import Group as AsyncGroup
from coordinator._group import Role
from coordinator._run import RunContext as AsyncRunContext
from coordinator._run import ThreadRunContext as RunContext
from coordinator._signals import Listener
from coordinator._sql import Statements
from coordinator.integrations.apscheduler import LeaderOnlyJobs as AsyncLeaderOnlyJobs

__all__ = ["Coordinator", "Group", "LeaderOnlyJobs", "RunContext"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class _Part(Protocol):
    """Something that starts and stops with the coordinator, on its loop."""

    async def open(self) -> None:
        """Before the coordinator starts."""

    async def drain(self) -> None:
        """Before it stops, while it still leads."""

    async def close(self) -> None:
        """After it stopped (also when its start failed)."""


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
        self._parts: list[_Part] = []

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

    def add_groups(self, names: Iterable[str]) -> None:
        """Join every group of ``names`` (before start); see the asyncio coordinator's."""
        self._inner.add_groups(names)

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
            self.call(self._start_all())
        except BaseException:
            self._close_loop()
            raise

    def stop(self) -> None:
        """Drain leader-only runs, resign every leadership, leave every group, stop the loop.

        Idempotent.
        """
        if self._thread is None or self._loop.is_closed():
            return
        try:
            self.call(self._stop_all())
        finally:
            self._close_loop()

    def _add_part(self, part: _Part) -> None:
        """Open ``part`` before the coordinator starts, drain and close it around its stop."""
        if self._thread is not None:
            raise RuntimeError("add leader-only jobs before the coordinator starts")
        self._parts.append(part)

    async def _start_all(self) -> None:
        try:
            for part in self._parts:
                await part.open()
            await self._inner.start()
        except BaseException:
            await self._close_parts()
            raise

    async def _stop_all(self) -> None:
        try:
            for part in self._parts:
                await part.drain()
            await self._inner.stop()
        finally:
            await self._close_parts()

    async def _close_parts(self) -> None:
        for part in reversed(self._parts):
            await part.close()

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

    def _on_loop(self, function: Callable[[], T]) -> T:
        """``function()`` on the coordinator's loop once it runs; before start, right here."""
        if self._thread is None or not self._loop.is_running():
            return function()

        async def call() -> T:
            return function()

        return self.call(call())

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

    The shared timetable and the rules of
    :class:`coordinator.integrations.apscheduler.LeaderOnlyJobs`, which this
    drives on the coordinator's loop: every job needs an ``id``; a tick is
    claimed once, by the current term; a new leader continues the timetable.
    Jobs are plain functions, called in the coordinator's pool. A job that
    asks for its run context (a parameter named ``run``, or annotated
    :class:`RunContext`) writes through ``run.fenced(conn)`` on the
    application's own connection: its effects commit once per tick. A job
    taking ``term=`` (or nothing) runs at most once per tick.

    The claims go through a small asyncpg pool on the coordinator's DSN,
    opened when the coordinator starts. ``coordinator.stop()`` lets runs in
    progress finish (up to ``drain_timeout``) while still leading. A thread
    cannot be cancelled: a run still going when the leadership is lost goes
    on, and its fenced transactions fail once the term is over.
    """

    def __init__(
        self,
        scheduler: BaseScheduler,
        group: Group,
        *,
        drain_timeout: float = 10.0,
        pool_max_size: int = 4,
    ) -> None:
        self._runner = group._runner
        self._pool_max_size = pool_max_size
        self._jobs = AsyncLeaderOnlyJobs(
            scheduler,
            group.asyncio_group,
            instance_id=self._runner.instance_id,
            schema=self._runner.config.schema,
            drain_timeout=drain_timeout,
            loop=self._runner.loop,
        )
        self._runner._add_part(self)

    @property
    def job_ids(self) -> list[str]:
        return self._jobs.job_ids

    @property
    def asyncio_jobs(self) -> AsyncLeaderOnlyJobs:
        """The leader-only jobs on the coordinator's loop (outcomes, stale runs, draining)."""
        return self._jobs

    def add_job(
        self,
        func: Callable[..., Any],
        trigger: Any = None,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Like ``scheduler.add_job``; ``func`` is a plain function and the job needs an ``id``."""
        return self._runner._on_loop(
            lambda: self._jobs.add_job(self._in_pool(func), trigger, args, kwargs, **options)
        )

    def scheduled_job(
        self, trigger: Any = None, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_job`; returns the function unchanged."""

        def add(func: F) -> F:
            self.add_job(func, trigger, args, kwargs, **options)
            return func

        return add

    async def open(self) -> None:
        # min_size=0: nothing connects yet, so a database still down at start
        # is retried by the placement of the jobs like any transient failure.
        config = self._runner.config
        self._jobs.pool = await asyncpg.create_pool(
            config.dsn, min_size=0, max_size=self._pool_max_size, timeout=config.connect_timeout
        )

    async def drain(self) -> None:
        await self._jobs.drain()

    async def close(self) -> None:
        pool, self._jobs.pool = self._jobs.pool, None
        if pool is not None:
            await pool.close()

    def _in_pool(self, func: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
        pool = self._runner.pool

        async def run_in_pool(*args: Any, **kwargs: Any) -> Any:
            for name, value in kwargs.items():
                if isinstance(value, AsyncRunContext):  # the job asked for its run context
                    kwargs[name] = RunContext(value)
            call = functools.partial(func, *args, **kwargs)
            running = asyncio.get_running_loop().run_in_executor(pool, call)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # The leadership ended: a thread cannot be stopped, so the hand-over waits.
                await asyncio.wait([running])
                raise

        # The job keeps its own name and signature (what it asks for is read from it).
        return functools.update_wrapper(run_in_pool, func)
