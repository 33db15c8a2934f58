"""The per-group elector.

One ``Group`` takes part in one election. Its state machine::

                 start
                   |
                   v
     +---------------------------+   lock granted; term = term + 1;   +---------------------+
     | FOLLOWER                  |   first heartbeat; "elected" event | LEADER              |
     | own session, blocked in   | ---------------------------------> | trusted until last  |
     | pg_advisory_lock(ns, key) |                                    | heartbeat start +   |
     |                           | <--------------------------------- | ttl - margin        |
     +---------------------------+   resigned: row cleared, unlock,   +---------------------+
           |        ^                NOTIFY, keep the session                 |
           |        |                                                        |
           |        +--- reconnect with jittered back-off <------------------+
           |             lost: trust expired, lock or row gone,               |
           |             connection closed; session dropped                   |
           | stop                                                        stop |
           v                                                                  v
     +--------------------------------------------------------------------------+
     | STOPPED   (a leader resigns first: on_demoted drained, unlock, NOTIFY)   |
     +--------------------------------------------------------------------------+

The top loop, :meth:`Group._run`, reads like the drawing: open a session,
then ``follow`` and ``lead`` in turn until the session is lost or the group
stops. ``is_leader`` is computed from the trust deadline every time it is
read, never from a stored flag.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coordinator._config import CoordinatorConfig
from coordinator._connect import TRANSIENT_ERRORS
from coordinator._drivers import fenced_async
from coordinator._fencing import FencedTransaction
from coordinator._logging import get_logger
from coordinator._otel import app_context
from coordinator._session import LockSession
from coordinator._signals import Demoted, Elected, HeartbeatDone, Signal
from coordinator._sql import Statements

if TYPE_CHECKING:
    from coordinator._shared import SharedSession

__all__ = ["DemotionReason", "Group", "Role"]

log = get_logger()

ElectedCallback = Callable[[int], Awaitable[None] | None]
DemotedCallback = Callable[[str], Awaitable[None] | None]
C = TypeVar("C", ElectedCallback, DemotedCallback)


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"
    STOPPED = "stopped"


class DemotionReason(enum.StrEnum):
    """Why a leadership ended; passed to ``on_demoted`` and logged."""

    RESIGNED = "resigned"  # resign() was called
    STOPPING = "stopping"  # the coordinator is shutting down
    TRUST_EXPIRED = "trust_expired"  # no heartbeat succeeded in time
    LOCK_LOST = "lock_lost"  # the heartbeat found the lock or the term gone
    CONNECTION_LOST = "connection_lost"  # the lock session closed


_GRACEFUL = (DemotionReason.RESIGNED, DemotionReason.STOPPING)


@dataclass
class _Term:
    """One leadership: its number and how long it may trust itself (monotonic clock)."""

    number: int
    trusted_until: float
    ended: DemotionReason | None = None


class _Seat(Protocol):
    """Where a leadership's lock lives: the group's own session, or the shared one."""

    @property
    def backend_pid(self) -> int: ...

    async def resign(self, instance_id: str, term: int, reason: str) -> None: ...

    def abort(self) -> None: ...


class _Runtime(Protocol):
    """What a group needs from its coordinator."""

    def record_lost(self, group: str, term: int, reason: str) -> None: ...

    def emit(self, signal: Signal) -> None: ...


class Group:
    """One election. Create it with :meth:`Coordinator.group`, not directly."""

    def __init__(
        self,
        name: str,
        lock_key: int,
        config: CoordinatorConfig,
        sql: Statements,
        runtime: _Runtime,
    ) -> None:
        self.name = name
        self.lock_key = lock_key
        self._config = config
        self._sql = sql
        self._runtime = runtime
        self._log = log.bind(group=name, instance_id=config.instance_id)
        self._elected_callbacks: list[ElectedCallback] = []
        self._demoted_callbacks: list[DemotedCallback] = []
        self._role = Role.FOLLOWER
        self._term: _Term | None = None
        self._session: LockSession | None = None  # blocking mode: this group's own
        self._seat: _Seat | None = None  # where the current term's lock lives
        self._leaving = False  # a term has ended; callbacks and hand-over still running
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Condition()
        self._stopping = False
        self._resign_requested = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Group {self.name!r} {self._role.value} term={self.term}>"

    # -- public surface -----------------------------------------------------

    def on_elected(self, callback: ElectedCallback) -> ElectedCallback:
        """Register ``callback(term)``, run each time this instance takes office."""
        self._elected_callbacks.append(callback)
        return callback

    def on_demoted(self, callback: DemotedCallback) -> DemotedCallback:
        """Register ``callback(reason)``, run each time a leadership of this instance ends."""
        self._demoted_callbacks.append(callback)
        return callback

    @property
    def role(self) -> Role:
        return self._role

    @property
    def is_leader(self) -> bool:
        """True only while this instance leads and its trust deadline has not passed."""
        term = self._term
        return term is not None and term.ended is None and time.monotonic() < term.trusted_until

    @property
    def term(self) -> int | None:
        """The current term while :attr:`is_leader`, else None."""
        term = self._term
        return term.number if term is not None and self.is_leader else None

    @property
    def trusted_until(self) -> float | None:
        """While :attr:`is_leader`: the ``time.monotonic()`` at which this leadership ends
        unless a heartbeat extends it (``coordinator run --exec`` hands it to its child's
        watchdog). Else None."""
        term = self._term
        return term.trusted_until if term is not None and self.is_leader else None

    async def wait_elected(self, timeout: float | None = None) -> int:
        """Wait until this instance leads; return the term. Raises TimeoutError."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.is_leader or self._role is Role.STOPPED)
        term = self.term
        if term is None:
            raise RuntimeError(f"group {self.name!r} stopped before it was elected")
        return term

    async def wait_demoted(self, timeout: float | None = None) -> None:
        """Wait until this instance does not lead and has handed over: ``on_demoted``
        callbacks have run and the lock is released (returns at once if it does not lead)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._term is None and not self._leaving)

    def fenced(
        self, conn: Any, *, term: int | None = None
    ) -> AbstractAsyncContextManager[FencedTransaction]:
        """A transaction on ``conn`` that commits only in ``term``.

        ``conn`` is an asyncpg connection or pool, a psycopg ``AsyncConnection``,
        or a SQLAlchemy ``AsyncConnection`` or ``AsyncSession``. ``term``
        defaults to the current one. Raises NotLeader or StaleTerm; see
        :mod:`coordinator._fencing` for what the database guarantees.
        """
        return fenced_async(self, conn, self._sql.assert_term, term=term)

    async def resign(self) -> None:
        """Hand leadership over now, then follow again. A no-op when not leading."""
        if self._term is None:
            return
        self.request_resign()
        await self.wait_demoted()

    # -- driven by the coordinator ------------------------------------------

    def start(self, shared: SharedSession | None = None) -> None:
        """Run the elector: on its own session, or on the process's shared one."""
        run = self._run() if shared is None else self._run_polled(shared)
        self._task = asyncio.create_task(run, name=f"coordinator-group-{self.name}")

    def request_resign(self) -> None:
        """Ask for a hand-over without waiting for it (fair spreading uses this)."""
        if self._term is not None:
            self._resign_requested = True
            self._wakeup.set()

    async def stop(self) -> None:
        """Resign if leading, stop following, and wait until that is done."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def heartbeat(self) -> None:
        """One leader heartbeat on this group's own lock session (blocking mode)."""
        term, session = self._term, self._session
        if term is None or session is None or term.ended is not None:
            return
        started = time.monotonic()
        try:
            still_ours = await session.heartbeat(self._config.instance_id, term.number)
        except TRANSIENT_ERRORS as error:
            self._runtime.emit(HeartbeatDone(self.name, time.monotonic() - started, ok=False))
            self._log.warning("heartbeat_failed", term=term.number, error=_describe(error))
            return
        self._runtime.emit(HeartbeatDone(self.name, time.monotonic() - started, ok=still_ours))
        self.apply_heartbeat(term.number, started, still_ours)

    def apply_heartbeat(self, term: int, started: float, still_ours: bool) -> None:
        """Act on a heartbeat of ``term`` that began at ``started`` (monotonic).

        A heartbeat extends trust only if it began while the term was trusted
        and finished before the deadline passed: a slow success never revives
        a term that has already expired.
        """
        current = self._term
        if current is None or current.number != term or current.ended is not None:
            return
        if not still_ours:
            self._end_term(current, DemotionReason.LOCK_LOST)
        elif time.monotonic() < current.trusted_until:
            current.trusted_until = max(current.trusted_until, started + self._config.trust_window)

    # -- the state machine --------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                session = await LockSession.open(
                    self._config, self._sql, self.name, self.lock_key, self.seat_lost
                )
            except TRANSIENT_ERRORS as error:  # ConnectionFailed is an OSError too
                failures += 1
                self._log.warning(
                    "session_connect_failed", error=_describe(error), attempt=failures
                )
                await self._back_off(failures)
                continue
            self._session = session
            try:
                keep_session = True
                while keep_session and not self._stopping:
                    term = await self._follow(session)
                    if term is None:
                        break
                    failures = 0
                    keep_session = await self._lead(session, term)
            except TRANSIENT_ERRORS as error:
                failures += 1
                self._log.warning("session_lost", error=_describe(error), attempt=failures)
            finally:
                self._session = None
                await session.close()
            if not self._stopping and failures:
                await self._back_off(failures)
        await self._set_role(Role.STOPPED)

    async def _run_polled(self, shared: SharedSession) -> None:
        """The same machine on the shared session: the poller wins the lock and takes office."""
        while not self._stopping:
            await self._set_role(Role.FOLLOWER)
            won = shared.wait_for_office(self)
            stopping = asyncio.create_task(self._wait_for_stop())
            either: set[asyncio.Future[Any]] = {won, stopping}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not won.done():
                shared.cancel_wait(self)
                break
            number, started = won.result()  # won while stopping: _lead resigns at once
            await self._lead(
                shared.seat(self.name), _Term(number, started + self._config.trust_window)
            )
        await self._set_role(Role.STOPPED)

    async def _follow(self, session: LockSession) -> _Term | None:
        """FOLLOWER: wait for the lock, then take office. None when stopping."""
        await self._set_role(Role.FOLLOWER)
        waiting = asyncio.create_task(session.wait_for_lock())
        stopping = asyncio.create_task(self._wait_for_stop())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if self._stopping:
            return None  # closing the session frees a lock granted at the last moment
        waiting.result()  # re-raise a lost connection
        while True:
            started = time.monotonic()
            office = await session.take_office(self._config.instance_id)
            if office is not None:
                return _Term(office.term, trusted_until=started + self._config.trust_window)
            self._log.warning(
                "take_office_waiting",
                reason="fenced transactions of the previous term are still open",
                waited_s=self._config.office_wait,
            )
            if self._stopping:
                return None  # _run closes the session, which frees the lock

    async def _lead(self, seat: _Seat, term: _Term) -> bool:
        """LEADER: serve until the term ends. Returns whether the seat's session can be reused."""
        self._resign_requested = False
        self._seat = seat
        self._term = term
        await self._set_role(Role.LEADER)
        self._log.info("leadership_acquired", term=term.number, backend_pid=seat.backend_pid)
        self._runtime.emit(Elected(self.name, term.number))
        await self._run_callbacks(self._elected_callbacks, term.number, "on_elected")
        reason = await self._hold(term)
        term.ended = reason
        self._leaving = True
        self._term = None
        self._seat = None
        try:
            return await self._leave(seat, term, reason)
        finally:
            self._leaving = False
            await self._notify_changed()

    async def _leave(self, seat: _Seat, term: _Term, reason: DemotionReason) -> bool:
        """After a term: callbacks, then resign (graceful) or drop the session (lost)."""
        await self._set_role(Role.FOLLOWER)
        self._runtime.emit(Demoted(self.name, term.number, reason.value))
        if reason in _GRACEFUL:
            await self._run_callbacks(self._demoted_callbacks, reason.value, "on_demoted")
            try:
                await seat.resign(self._config.instance_id, term.number, reason.value)
            except TRANSIENT_ERRORS as error:
                self._log.warning("resign_failed", term=term.number, error=_describe(error))
                return False
            self._log.info("leadership_released", term=term.number, reason=reason.value)
            return reason is DemotionReason.RESIGNED
        seat.abort()
        self._log.warning("leadership_lost", term=term.number, reason=reason.value)
        await self._run_callbacks(self._demoted_callbacks, reason.value, "on_demoted")
        self._runtime.record_lost(self.name, term.number, reason.value)
        return False

    async def _hold(self, term: _Term) -> DemotionReason:
        """Wait until the term must end, re-reading the trust deadline as heartbeats move it."""
        while True:
            self._wakeup.clear()
            if self._stopping:
                return DemotionReason.STOPPING
            if self._resign_requested:
                return DemotionReason.RESIGNED
            if term.ended is not None:
                return term.ended
            remaining = term.trusted_until - time.monotonic()
            if remaining <= 0:
                return DemotionReason.TRUST_EXPIRED
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    # -- helpers ------------------------------------------------------------

    def seat_lost(self, seat: object) -> None:
        """Termination listener: a leader whose session closed demotes at once."""
        term = self._term
        if term is not None and self._seat is seat:
            self._end_term(term, DemotionReason.CONNECTION_LOST)

    def _end_term(self, term: _Term, reason: DemotionReason) -> None:
        if term.ended is None:
            term.ended = reason
        self._wakeup.set()

    async def _wait_for_stop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _set_role(self, role: Role) -> None:
        self._role = role
        await self._notify_changed()

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _back_off(self, failures: int) -> None:
        """Wait the jittered reconnect delay, cut short by stop()."""
        try:
            async with asyncio.timeout(self._config.reconnect_delay(failures)):
                await self._wait_for_stop()
        except TimeoutError:
            pass

    async def _run_callbacks(self, callbacks: list[C], argument: int | str, kind: str) -> None:
        for callback in callbacks:
            try:
                async with asyncio.timeout(self._config.callback_timeout):
                    with app_context():  # its own queries are traced; the coordinator's are not
                        result = callback(argument)  # type: ignore[arg-type]
                        if inspect.isawaitable(result):
                            await result
            except Exception as error:  # noqa: BLE001 - a failing callback must not stop the elector
                self._log.error(
                    f"{kind}_callback_failed", callback=_name_of(callback), error=_describe(error)
                )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _name_of(callback: object) -> str:
    return getattr(callback, "__qualname__", repr(callback))
