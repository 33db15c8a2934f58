"""The coordinator: one instance taking part in any number of groups.

Data flows one way: configuration -> coordinator -> per-group elector ->
lock session. The coordinator owns a control connection (member heartbeats,
the monitor, history) and registers two APScheduler jobs: the heartbeat and
the monitor, with stable ids so that an application's own scheduler can
carry them beside its jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator._config import CoordinatorConfig
from coordinator._connect import TRANSIENT_ERRORS, check_server, connect
from coordinator._errors import ConfigurationError, KeyCollisionError
from coordinator._group import Group, Role
from coordinator._keys import group_lock_key, validate_group_name
from coordinator._logging import get_logger
from coordinator._migrations import check_schema
from coordinator._otel import app_context, untraced
from coordinator._shared import SharedSession
from coordinator._signals import Fenced, HeartbeatDone, Listener, Signal
from coordinator._sql import Statements

__all__ = ["HEARTBEAT_JOB_ID", "MONITOR_JOB_ID", "Coordinator"]

log = get_logger()

HEARTBEAT_JOB_ID = "coordinator.heartbeat"
MONITOR_JOB_ID = "coordinator.monitor"
_PRUNE_EVERY_S = 300.0
#: After these, the control connection may be mid-cancel or dead: drop it.
_CONNECTION_SPOILED: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, asyncio.CancelledError)
_HOST = socket.gethostname()

T = TypeVar("T")


class RunState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Coordinator:
    """Takes part in leader elections, one per named group.

    ``Coordinator(dsn, ttl=..., heartbeat_interval=...)`` accepts every field
    of :class:`CoordinatorConfig` as a keyword, or a ready ``config=``. Pass
    ``scheduler=`` to run the heartbeat and monitor jobs in the application's
    own ``AsyncIOScheduler``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        config: CoordinatorConfig | None = None,
        scheduler: AsyncIOScheduler | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = CoordinatorConfig(dsn=dsn or os.environ.get("COORDINATOR_DSN", ""), **settings)
        elif dsn is not None or settings:
            raise ConfigurationError("pass either config= or a DSN and settings, not both")
        self.config = config
        self._sql = Statements.for_schema(config.schema)
        self._groups: dict[str, Group] = {}
        self._scheduler = scheduler
        self._owns_scheduler = scheduler is None
        self._control: asyncpg.Connection | None = None
        self._control_lock = asyncio.Lock()
        self._state = RunState.NEW
        self._log = log.bind(instance_id=config.instance_id)
        self._last_prune = 0.0
        self._warned_privilege = False
        self._listeners: list[Listener] = []
        self._shared: SharedSession | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._last_heartbeat_job: float | None = None
        self._squatters: dict[str, frozenset[int]] = {}  # group: backends, as last seen

    @property
    def instance_id(self) -> str:
        return self.config.instance_id

    @property
    def groups(self) -> dict[str, Group]:
        return dict(self._groups)

    def group(self, name: str) -> Group:
        """The group called ``name``, created on first use (before start)."""
        if name in self._groups:
            return self._groups[name]
        if self._state is not RunState.NEW:
            raise RuntimeError("add groups before the coordinator starts")
        validate_group_name(name)
        key = group_lock_key(name)
        for other in self._groups.values():
            if other.lock_key == key:
                raise KeyCollisionError(
                    f"groups {other.name!r} and {name!r} hash to the same lock key {key}: "
                    "rename one of them"
                )
        group = Group(name, key, self.config, self._sql, self)
        self._groups[name] = group
        return group

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(signal)`` for every :mod:`signal <coordinator._signals>` emitted."""
        self._listeners.append(listener)

    def emit(self, signal: Signal) -> None:
        for listener in self._listeners:
            try:
                listener(signal)
            except Exception as error:  # noqa: BLE001 - a listener must not break the elector
                self._log.error("listener_failed", listener=repr(listener), error=repr(error))

    @property
    def running(self) -> bool:
        return self._state is RunState.RUNNING

    @property
    def squatters(self) -> dict[str, frozenset[int]]:
        """Backends holding a group's lock that are no coordinator's, as the monitor last saw."""
        return dict(self._squatters)

    @property
    def seconds_since_heartbeat_job(self) -> float | None:
        """Monotonic seconds since the heartbeat job last finished; None before the first run."""
        if self._last_heartbeat_job is None:
            return None
        return time.monotonic() - self._last_heartbeat_job

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @untraced
    async def start(self) -> None:
        """Connect, check the server and schema, register the groups, start electing.

        Every check runs before anything is written or started, so a refusal
        leaves nothing behind.
        """
        if self._state is not RunState.NEW:
            raise RuntimeError(f"a coordinator starts once; this one is {self._state.value}")
        if not self._groups:
            raise ConfigurationError("no groups to join: call coordinator.group(name) first")
        conn = await connect(self.config, check_pooler=True)
        try:
            await check_server(self.config, conn)
            await check_schema(conn, self.config.schema, self._sql.schema_version)
            await self._check_capacity(conn)
            await self._register(conn)
            await self._timed_member_heartbeat(conn)
        except BaseException:
            await conn.close()
            raise
        self._control = conn
        self._state = RunState.RUNNING
        self._start_jobs()
        if self.config.polls(len(self._groups)):
            self._shared = SharedSession(self.config, self._sql, self._groups, self)
            self._shared.start()
        for group in self._groups.values():
            group.start(self._shared)
        self._log.info(
            "coordinator_started",
            wait="poll" if self._shared is not None else "block",
            groups=list(self._groups) if len(self._groups) <= 10 else len(self._groups),
            dsn=self.config.redacted_dsn,
            ttl=self.config.ttl,
            heartbeat_interval=self.config.heartbeat_interval,
        )

    @untraced
    async def stop(self) -> None:
        """Resign every leadership, leave every group, close everything. Idempotent."""
        if self._state is not RunState.RUNNING:
            return
        self._state = RunState.STOPPING
        await asyncio.gather(*(group.stop() for group in self._groups.values()))
        if self._shared is not None:
            await self._shared.stop()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._stop_jobs()
        with contextlib.suppress(*TRANSIENT_ERRORS):  # members expire on their own anyway
            await self._on_control(
                lambda conn: conn.execute(self._sql.leave_groups, self.instance_id)
            )
        if self._control is not None:
            await self._control.close(timeout=self.config.heartbeat_timeout)
        self._state = RunState.STOPPED
        self._log.info("coordinator_stopped")

    # -- jobs -----------------------------------------------------------------

    def _start_jobs(self) -> None:
        if self._scheduler is None:
            self._scheduler = AsyncIOScheduler()
        jobs: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
            (HEARTBEAT_JOB_ID, self._heartbeat_job, self.config.heartbeat_interval),
            (MONITOR_JOB_ID, self._monitor_job, self.config.monitor_interval or 0.0),
        ]
        for job_id, func, seconds in jobs:
            self._scheduler.add_job(
                func,
                "interval",
                seconds=seconds,
                id=job_id,
                name=job_id,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
                # A late heartbeat is still worth running; never skip it as "missed".
                misfire_grace_time=None,
            )
        if not self._scheduler.running:
            with app_context():  # the application's jobs in it are the application's
                self._scheduler.start()
            self._owns_scheduler = True

    def _stop_jobs(self) -> None:
        if self._scheduler is None:
            return
        for job_id in (HEARTBEAT_JOB_ID, MONITOR_JOB_ID):
            if self._scheduler.get_job(job_id) is not None:
                self._scheduler.remove_job(job_id)
        if self._owns_scheduler and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @untraced
    async def _heartbeat_job(self) -> None:
        """Leaders beat on their own lock sessions; followers in one statement together."""
        try:
            async with asyncio.timeout(self.config.heartbeat_timeout):
                await asyncio.gather(
                    *(g.heartbeat() for g in self._groups.values() if g.role is Role.LEADER),
                    *([self._shared.heartbeat()] if self._shared is not None else []),
                    self._timed_member_heartbeat(),
                )
        except TRANSIENT_ERRORS as error:
            self._log.warning("member_heartbeat_failed", error=f"{type(error).__name__}: {error}")
        finally:
            self._last_heartbeat_job = time.monotonic()

    async def _timed_member_heartbeat(self, conn: asyncpg.Connection | None = None) -> None:
        """The followers' heartbeat, on ``conn`` or the control connection, as a signal."""
        started = time.monotonic()
        ok = False
        try:
            if conn is None:
                await self._on_control(self._beat_members)
            else:
                await self._beat_members(conn)
            ok = True
        finally:
            self.emit(HeartbeatDone(None, time.monotonic() - started, ok=ok))

    @untraced
    async def _monitor_job(self) -> None:
        """Fence stale leaders of every group in this schema, not only ours."""
        try:
            async with asyncio.timeout(self.config.heartbeat_timeout):
                rows = await self._on_control(
                    lambda conn: conn.fetch(self._sql.fence_stale_leaders, self.instance_id)
                )
                squatted = await self._on_control(lambda conn: conn.fetch(self._sql.squatted_locks))
                leading = any(g.role is Role.LEADER for g in self._groups.values())
                # Housekeeping is a leader's chore: one instance per group, not every member.
                if leading and time.monotonic() - self._last_prune > _PRUNE_EVERY_S:
                    await self._on_control(self._prune)
                    self._last_prune = time.monotonic()
        except asyncpg.InsufficientPrivilegeError as error:
            if not self._warned_privilege:
                self._warned_privilege = True
                self._log.error(
                    "fence_permission_denied",
                    error=str(error),
                    fix="grant the coordinator's role pg_signal_backend, or run every instance "
                    "as the same role; until then stale leaders are fenced only by their "
                    "own trust deadline and TCP keepalives",
                )
            return
        except TRANSIENT_ERRORS as error:
            self._log.warning("monitor_failed", error=f"{type(error).__name__}: {error}")
            return
        for row in rows:
            event = "leader_fenced" if row["kind"] == "fenced" else "leader_expired"
            self._log.warning(
                event, group=row["group_name"], term=row["term"], holder=row["instance_id"]
            )
            self.emit(Fenced(row["group_name"], row["term"], row["instance_id"], row["kind"]))
        self._report_squatters(squatted)

    def _report_squatters(self, rows: list[asyncpg.Record]) -> None:
        """Log each backend that holds a group's lock without being a coordinator, once."""
        seen: dict[str, set[int]] = {}
        for row in rows:
            group, pid = row["group_name"], row["squatter_pid"]
            seen.setdefault(group, set()).add(pid)
            if pid in self._squatters.get(group, ()):
                continue
            self._log.error(
                "lock_squatted",
                group=group,
                pid=pid,
                user=row["squatter_user"],
                application_name=row["squatter_application"],
                fix="nobody can lead this group while that backend holds its advisory lock: "
                "end it (pg_terminate_backend), and keep other roles from connecting",
            )
        self._squatters = {group: frozenset(pids) for group, pids in seen.items()}

    async def _prune(self, conn: asyncpg.Connection) -> None:
        await conn.execute(self._sql.prune_events, self.config.events_retention)
        await conn.execute(self._sql.prune_job_runs, self.config.events_retention)
        await conn.execute(self._sql.prune_members, self.config.members_retention)

    # -- the control connection ----------------------------------------------

    async def _on_control(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``operation`` on the control connection, reconnecting if it was lost.

        Bounded by the heartbeat timeout. A connection whose operation failed,
        timed out or was cancelled is dropped: on a silent network even the
        cancel request would never finish, and the next caller would wait on it.
        """
        async with self._control_lock:
            conn = self._control
            if conn is None or conn.is_closed():
                conn = self._control = await connect(self.config)
            try:
                async with asyncio.timeout(self.config.heartbeat_timeout):
                    return await operation(conn)
            except _CONNECTION_SPOILED:
                conn.terminate()
                raise

    async def _register(self, conn: asyncpg.Connection) -> None:
        """Record every group and its key, in one transaction that a collision rolls back."""
        ns = self.config.lock_namespace
        names = list(self._groups)
        keys = [group.lock_key for group in self._groups.values()]
        async with conn.transaction():
            await conn.execute(self._sql.register_groups, names, keys, ns, self.config.ttl)
            for row in await conn.fetch(self._sql.group_keys, names, keys, ns):
                wanted = self._groups[row["wanted"]]
                if row["group_name"] != wanted.name:
                    raise KeyCollisionError(
                        f"group {wanted.name!r} hashes to lock key {wanted.lock_key}, which group "
                        f"{row['group_name']!r} already uses in this database: rename one of them"
                    )
                if (row["lock_namespace"], row["lock_key"]) != (ns, wanted.lock_key):
                    raise ConfigurationError(
                        f"group {wanted.name!r} is registered with lock namespace "
                        f"{row['lock_namespace']}, this instance uses {ns}: give every instance "
                        "the same lock_namespace"
                    )

    async def _check_capacity(self, conn: asyncpg.Connection) -> None:
        """Refuse more groups than the server's shared lock table can ever hold."""
        capacity = await conn.fetchval(self._sql.lock_capacity)
        if len(self._groups) > capacity:
            raise ConfigurationError(
                f"{len(self._groups)} groups need as many advisory locks, but this server's lock "
                f"table holds {capacity} in all (max_locks_per_transaction x (max_connections + "
                "max_prepared_transactions)): raise max_locks_per_transaction or use fewer groups"
            )
        if len(self._groups) > capacity // 2:
            self._log.warning(
                "lock_table_nearly_full",
                groups=len(self._groups),
                capacity=capacity,
                fix="raise max_locks_per_transaction; other sessions need lock slots too",
            )

    async def _beat_members(self, conn: asyncpg.Connection) -> None:
        following = [name for name, g in self._groups.items() if g.role is Role.FOLLOWER]
        if following:
            await conn.execute(
                self._sql.member_heartbeat, following, self.instance_id, _HOST, os.getpid()
            )

    def record_lost(self, group: str, term: int, reason: str) -> None:
        """Write a ``lost`` event for a leadership whose session is gone, in the background.

        Best effort: after a database restart it may never be written. It runs
        aside so that the group reconnects without waiting for it.
        """
        task = asyncio.create_task(self._write_lost(group, term, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_lost(self, group: str, term: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.config.heartbeat_timeout):
                await self._on_control(
                    lambda conn: conn.execute(
                        self._sql.record_lost, group, self.instance_id, term, reason
                    )
                )
        except TRANSIENT_ERRORS as error:
            self._log.info(
                "lost_event_not_recorded",
                group=group,
                term=term,
                error=f"{type(error).__name__}: {error}",
            )
