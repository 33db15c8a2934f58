"""The coordinator: one instance taking part in any number of groups.

Data flows one way: configuration -> coordinator -> per-group elector ->
campaign -> session; callbacks and signals flow out. The coordinator owns
the lifecycle and the groups; the pieces it wires together each live in
their own module: the electors (``_elector``), the campaigns (``_campaign``,
``_shared``), membership and the followers' heartbeat (``_members``), the
control connection and lost-event writer (``_control``), the monitor
(``_monitor``) and the two APScheduler jobs (``_jobs``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator._campaign import BlockingCampaign, Heartbeating
from coordinator._config import CoordinatorConfig
from coordinator._connect import connect
from coordinator._control import ControlConnection, LostEvents
from coordinator._describe import describe_error, name_of
from coordinator._elector import Elector, Role
from coordinator._errors import ConfigurationError, KeyCollisionError
from coordinator._group import Group
from coordinator._jobs import Jobs
from coordinator._keys import first_invalid_group_name, group_lock_keys, validate_group_name
from coordinator._logging import get_logger
from coordinator._members import Members
from coordinator._migrations import check_schema
from coordinator._monitor import Monitor
from coordinator._otel import untraced
from coordinator._shared import BATCH, SharedCampaign
from coordinator._signals import HeartbeatDone, Listener, Signal
from coordinator._sql import Statements
from coordinator._switchover import HandOvers
from coordinator._term import Term

__all__ = ["Coordinator"]

log = get_logger()


class Listeners:
    """The subscribers of one coordinator; :meth:`emit` hands each signal to all of them."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, signal: Signal) -> None:
        for listener in self._listeners:
            try:
                listener(signal)
            except Exception as error:  # noqa: BLE001 - a listener must not break the elector
                log.error(
                    "listener_failed", listener=name_of(listener), error=describe_error(error)
                )


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
        #: Every group joined, with its lock key, in the order joined.
        self._keys_by_name: dict[str, int] = {}
        self._names_by_key: dict[int, str] = {}  # a collision is found in one look-up
        #: The groups and electors made so far: on first use (see add_groups).
        self._groups: dict[str, Group] = {}
        self._electors: dict[str, Elector] = {}
        self._listeners = Listeners()
        self._jobs = Jobs(scheduler)
        self._control = ControlConnection(config)
        self._lost = LostEvents(config, self._sql, self._control)
        self._monitor = Monitor(config, self._sql, self._control, self._leads_any, self._polls)
        self._handovers = HandOvers(config, self._sql, self._control, self._terms)
        self._members: Members | None = None
        self._shared: SharedCampaign | None = None
        self._enlisting: asyncio.Task[None] | None = None
        self._beating: list[Heartbeating] = []
        self._state = RunState.NEW
        self._log = log.bind(instance_id=config.instance_id)
        self._last_heartbeat_job: float | None = None

    @property
    def instance_id(self) -> str:
        return self.config.instance_id

    @property
    def groups(self) -> dict[str, Group]:
        """Every group joined, by name, in the order joined (each made now if not yet)."""
        return {name: self._group(name) for name in self._keys_by_name}

    @property
    def failing(self) -> dict[str, str]:
        """Groups whose election loop cannot make progress now, with the latest reason."""
        if self._shared is not None:  # one session for all, running electors or not
            return self._shared.problems()
        return {
            name: problem
            for name, elector in self._electors.items()
            if (problem := elector.problem) is not None
        }

    def group(self, name: str) -> Group:
        """The group called ``name``, joined on first use (before start)."""
        if name not in self._keys_by_name:
            self.add_groups([name])
        return self._group(name)

    def add_groups(self, names: Iterable[str]) -> None:
        """Join every group of ``names`` (before start), each once, as :meth:`group` does.

        For many groups: a group's :class:`Group` and elector (about 560
        bytes) are made only when first used, by :meth:`group`,
        :attr:`groups` or an election. In poll mode a process of a fleet
        sharing 100,000 groups campaigns for a few thousand of them, and
        making the others took most of its start.
        """
        if self._state is not RunState.NEW:
            raise RuntimeError("add groups before the coordinator starts")
        fresh = [name for name in dict.fromkeys(names) if name not in self._keys_by_name]
        bad = first_invalid_group_name(fresh)
        if bad is not None:
            validate_group_name(fresh[bad])  # raises, saying what is wrong with it
        joining = dict(zip(fresh, group_lock_keys(fresh), strict=True))
        names_by_key = {key: name for name, key in joining.items()}
        if len(names_by_key) < len(joining) or not names_by_key.keys().isdisjoint(
            self._names_by_key
        ):
            self._refuse_shared_keys(joining)
        # All or nothing: a refused list joins none of its groups.
        self._keys_by_name.update(joining)
        self._names_by_key.update(names_by_key)

    def _refuse_shared_keys(self, joining: dict[str, int]) -> None:
        """Raise KeyCollisionError for the first group of ``joining`` whose lock key is taken."""
        names_by_key = dict(self._names_by_key)
        for name, key in joining.items():
            other = names_by_key.setdefault(key, name)
            if other != name:
                raise KeyCollisionError(
                    f"groups {other!r} and {name!r} hash to the same lock key {key}: "
                    "rename one of them"
                )

    def _group(self, name: str) -> Group:
        """The joined group ``name``, made (with its elector) on first use."""
        group = self._groups.get(name)
        if group is None:
            elector = self._electors[name] = Elector(
                name, self.config, emit=self._listeners.emit, record_lost=self._lost.record
            )
            group = self._groups[name] = Group(elector, self._keys_by_name[name], self._sql)
        return group

    def _elector(self, name: str) -> Elector:
        if name not in self._electors:
            self._group(name)
        return self._electors[name]

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(signal)`` for every :mod:`signal <coordinator._signals>` emitted."""
        self._listeners.add(listener)

    @property
    def running(self) -> bool:
        return self._state is RunState.RUNNING

    @property
    def squatters(self) -> dict[str, frozenset[int]]:
        """Backends holding a group's lock that are no coordinator's, as the monitor last saw."""
        return dict(self._monitor.squatters)

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
        if not self._keys_by_name:
            raise ConfigurationError("no groups to join: call coordinator.group(name) first")
        conn = await connect(self.config.connection)
        try:
            await check_schema(conn, self.config.schema, self._sql.schema_version)
            members = self._members = Members(self.config, self._sql, self._keys())
            await members.register(conn)
            beat = None if self._polls() else await members.heartbeat(conn, self._following())
        except BaseException:
            await conn.close()
            raise
        if beat is not None:
            self._listeners.emit(beat)
        self._control.adopt(conn)
        self._state = RunState.RUNNING
        self._jobs.start(
            heartbeat=(self._heartbeat_job, self.config.heartbeat_interval),
            monitor=(self._monitor_job, self.config.monitor_interval or 0.0),
        )
        self._start_electors()
        self._log.info(
            "coordinator_started",
            wait="poll" if self._shared is not None else "block",
            groups=list(self._keys_by_name)
            if len(self._keys_by_name) <= 10
            else len(self._keys_by_name),
            dsn=self.config.redacted_dsn,
            ttl=self.config.ttl,
            heartbeat_interval=self.config.heartbeat_interval,
        )

    def _start_electors(self) -> None:
        if self._polls():
            members = self._members
            assert members is not None  # the electors start after the groups are registered
            shared = self._shared = SharedCampaign(
                self.config, self._sql, members.keys, members.group_set
            )
            self._beating = [shared]
            shared.start()
            self._enlisting = asyncio.create_task(
                self._enlist(shared), name="coordinator-candidacies"
            )
            return
        for name, key in self._keys_by_name.items():
            campaign = BlockingCampaign(self.config, self._sql, name, key)
            self._beating.append(campaign)
            self._elector(name).start(campaign)

    async def _enlist(self, shared: SharedCampaign) -> None:
        """Poll mode: run the elector of every group this instance is a candidate for.

        The others cost no task (see ``coordinator._candidates``): with
        100,000 groups a process runs a few thousand electors. At most a
        :data:`~coordinator._shared.BATCH` start after each poll, the rest
        after the next ones: the first of a fleet started together counts
        itself alone and wants every group, and starting 100,000 electors at
        once would hold the event loop, and so its heartbeat, for seconds.
        """
        idle: collections.deque[str] = collections.deque()
        looked_at = -1
        while True:
            await shared.polled.wait()
            shared.polled.clear()
            if shared.candidacies_changed != looked_at:
                looked_at = shared.candidacies_changed
                idle = collections.deque(
                    name for name in shared.wanted if not self._elector(name).started
                )
            for _ in range(min(BATCH, len(idle))):
                name = idle.popleft()
                elector = self._elector(name)
                if not elector.started and shared.wants(name):
                    elector.start(shared.candidacy(name))

    @untraced
    async def stop(self) -> None:
        """Resign every leadership, leave every group, close everything. Idempotent."""
        if self._state is not RunState.RUNNING:
            return
        self._state = RunState.STOPPING
        for elector in self._electors.values():
            elector.request_stop()
        if self._enlisting is not None:
            self._enlisting.cancel()
            await asyncio.gather(self._enlisting, return_exceptions=True)
        await asyncio.gather(*(elector.stop() for elector in self._electors.values()))
        if self._shared is not None:
            await self._shared.stop()
        await self._jobs.stop(timeout=self.config.heartbeat_timeout)
        await self._handovers.stop()
        await self._lost.stop()
        with contextlib.suppress(Exception):  # members expire on their own anyway
            await self._control.run(
                lambda conn: conn.execute(self._sql.leave_groups, self.instance_id)
            )
        await self._control.close()
        self._state = RunState.STOPPED
        self._log.info("coordinator_stopped")

    # -- the jobs -------------------------------------------------------------

    @untraced
    async def _heartbeat_job(self) -> None:
        """Leaders beat through their campaigns, followers in one statement; all at once."""
        try:
            # Switchover requests are read again every cycle (a notification is
            # only a hint), beside the beat: the job, and so the next beat, never
            # waits for the control connection's other users.
            self._handovers.check_soon()
            sources = (source.heartbeat() for source in self._beating)
            beats = await asyncio.gather(*sources, self._member_heartbeat())
            for beat in beats:
                if beat is not None:
                    self._listeners.emit(beat)
        finally:
            self._last_heartbeat_job = time.monotonic()

    async def _member_heartbeat(self) -> HeartbeatDone | None:
        """Blocking mode's followers, one row per group; in poll mode the session row does it."""
        members = self._members
        assert members is not None  # the jobs start after the groups are registered
        if self._polls():
            return None
        started = time.monotonic()
        try:
            return await self._control.run(lambda conn: members.heartbeat(conn, self._following()))
        except Exception as error:  # noqa: BLE001 - a job never dies; the next beat retries
            self._log.warning("member_heartbeat_failed", error=describe_error(error))
            following = tuple(self._following())
            return HeartbeatDone(following, time.monotonic() - started, ok=False, batch=True)

    @untraced
    async def _monitor_job(self) -> None:
        try:
            fenced = await self._monitor.run()
        except Exception as error:  # noqa: BLE001 - a job never dies; the next run retries
            self._log.warning("monitor_failed", error=describe_error(error))
            return
        for signal in fenced:
            self._listeners.emit(signal)

    def _following(self) -> list[str]:
        """Groups this instance is a candidate in: following, its election loop not failing.

        Blocking mode only (poll mode beats through its session's row), where
        every group gets its elector: even before they start, at the first beat.
        """
        electors = [self._elector(name) for name in self._keys_by_name]
        return [e.name for e in electors if e.role is Role.FOLLOWER and e.problem is None]

    def _terms(self) -> dict[str, Term]:
        return {name: e.term for name, e in self._electors.items() if e.term is not None}

    def _keys(self) -> Mapping[str, int]:
        return self._keys_by_name

    def _polls(self) -> bool:
        return self.config.polls(len(self._keys_by_name))

    def _leads_any(self) -> bool:
        return any(group.is_leader for group in self._groups.values())
