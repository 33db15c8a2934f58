"""The elector: one group's state machine, the same for every campaign.

::

                    start
                      |
                      v
     +------------------------------+  campaign.win(): lock held,   +-------------------------+
     | FOLLOWER                     |  term = term + 1, first beat, | LEADER                  |
     | blocking: own session, in    |  "elected" event              | trusted until the last  |
     |   pg_advisory_lock(ns, key)  | ----------------------------> | heartbeat's start +     |
     | shared: the poller tries the |                               | ttl - margin            |
     |   free groups every poll     | <---------------------------- |                         |
     +------------------------------+  resigned (resign(), fair     +-------------------------+
          |        ^                   spreading): callbacks, row          |
          |        |                   cleared, unlock, NOTIFY             |
          |        |                                                       |
          |        +--- lost: trust expired, lock or term gone, <----------+
          |        |    session closed; callbacks, session dropped,        |
          |        |    "lost" event                                       |
          |        |                                                       |
          |        +--- any error in win(): logged with its cause,         |
          |             jittered back-off, a fresh checked session         |
          | stop                                                      stop |
          v                                                                v
     +--------------------------------------------------------------------------+
     | STOPPED   (a leader resigns first: on_demoted drained, unlock, NOTIFY)   |
     +--------------------------------------------------------------------------+

The top loop reads like the drawing::

    while not stopping:
        seat, term = await campaign.win()
        await lead(seat, term)

The campaign (``coordinator._campaign``) is how the seat is won and kept:
on the group's own blocking session, or on the process's shared one. It
reports only through what it returns and through the term (extended by
heartbeats, ended when the lock or the session is lost); the elector never
gets called back. A loop never dies: whatever ``win()`` raises is logged
once, backed off and retried, and :attr:`Elector.problem` says why
meanwhile, for ``/readyz`` and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from coordinator._campaign import Campaign, Seat
from coordinator._config import CoordinatorConfig
from coordinator._describe import describe_error, name_of
from coordinator._logging import get_logger
from coordinator._otel import app_context
from coordinator._signals import Demoted, Elected, Signal
from coordinator._term import GRACEFUL, DemotionReason, Term

__all__ = ["DemotedCallback", "ElectedCallback", "Elector", "Role"]

log = get_logger()

ElectedCallback = Callable[[int], Awaitable[None] | None]
DemotedCallback = Callable[[str], Awaitable[None] | None]
C = TypeVar("C", ElectedCallback, DemotedCallback)


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"
    STOPPED = "stopped"


class Elector:
    """Drives one group's campaign; its state is what :class:`Group` shows the user."""

    def __init__(
        self,
        name: str,
        config: CoordinatorConfig,
        *,
        emit: Callable[[Signal], None],
        record_lost: Callable[[str, int, str], None],
    ) -> None:
        self.name = name
        self._config = config
        self._campaign: Campaign | None = None
        self._emit = emit
        self._record_lost = record_lost
        self.elected_callbacks: list[ElectedCallback] = []
        self.demoted_callbacks: list[DemotedCallback] = []
        self.role = Role.FOLLOWER
        #: The current term, while leading; None when following.
        self.term: Term | None = None
        #: A term has ended; its callbacks and hand-over are still running.
        self.leaving = False
        self._task: asyncio.Task[None] | None = None
        self._winning = False  # in campaign.win(): stop() cancels the task

    # Made on first use: a process with 100,000 groups keeps 100,000 electors,
    # most of which (in poll mode) never campaign.
    @functools.cached_property
    def _log(self) -> Any:
        return log.bind(group=self.name, instance_id=self._config.instance_id)

    @functools.cached_property
    def changed(self) -> asyncio.Condition:
        """Notified at every change of role or term."""
        return asyncio.Condition()

    @functools.cached_property
    def _stopping(self) -> asyncio.Event:
        return asyncio.Event()

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def problem(self) -> str | None:
        """Why this group's campaign cannot make progress now; None while it can."""
        return self._campaign.problem if self._campaign is not None else None

    def start(self, campaign: Campaign) -> None:
        """Campaign for the seat with ``campaign``, in the background, until :meth:`stop`."""
        self._campaign = campaign
        self._task = asyncio.create_task(self._run(), name=f"coordinator-group-{self.name}")

    def request_resign(self) -> None:
        """Ask for a hand-over without waiting for it."""
        if self.term is not None:
            self.term.end(DemotionReason.RESIGNED)

    def request_stop(self) -> None:
        """End the term now, if leading, and stop campaigning; :meth:`stop` waits for it.

        A coordinator stopping many electors asks them all first, so that
        every leader starts handing over on the loop's next turn.
        """
        self._stopping.set()
        if self.term is not None:
            self.term.end(DemotionReason.STOPPING)

    async def stop(self) -> None:
        """Resign if leading, stop following, and wait until that is done."""
        self.request_stop()
        if self._task is None:  # never campaigned (poll mode: not a candidate)
            await self._set_role(Role.STOPPED)
            return
        if self._winning:
            self._winning = False  # cancelled once, however often stop() is called
            self._task.cancel()
        await self._task

    # -- the state machine --------------------------------------------------

    async def _run(self) -> None:
        assert self._campaign is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                won = await self._win()
            except Exception as error:  # noqa: BLE001 - a loop never dies
                failures += 1
                self._log.warning(
                    "election_attempt_failed", error=describe_error(error), attempt=failures
                )
                await self._back_off(failures)
                continue
            if won is None:
                break  # stopped, or not a candidate any more
            failures = 0
            await self._lead(*won)
        with contextlib.suppress(Exception):
            await self._campaign.close()
        if not self._stopping.is_set():
            self._task = None  # rests, a follower, until started again
            return
        await self._set_role(Role.STOPPED)

    async def _lead(self, seat: Seat, term: Term) -> None:
        """LEADER: serve until the term ends, then hand over or drop the seat."""
        if self._stopping.is_set():
            term.end(DemotionReason.STOPPING)  # won while stopping: resign at once
        self.term = term
        await self._set_role(Role.LEADER)
        self._emit(Elected(self.name, term.number))
        # The leader's own code first: the line is written once on_elected
        # returns or first waits (formatting it costs a few hundred
        # microseconds on a busy machine, which the callback need not wait for).
        asyncio.get_running_loop().call_soon(self._log_acquired, term.number, seat.backend_pid)
        await self._run_callbacks(self.elected_callbacks, term.number, "on_elected")
        reason = await term.wait_over()
        self.leaving = True
        self.term = None
        try:
            await self._leave(seat, term, reason)
        finally:
            self.leaving = False
            await self._notify_changed()

    def _log_acquired(self, term: int, backend_pid: int) -> None:
        self._log.info("leadership_acquired", term=term, backend_pid=backend_pid)

    async def _leave(self, seat: Seat, term: Term, reason: DemotionReason) -> None:
        """After a term: callbacks, then resign (graceful) or drop the session (lost)."""
        await self._set_role(Role.FOLLOWER)
        self._emit(Demoted(self.name, term.number, reason.value))
        if reason in GRACEFUL:
            await self._run_callbacks(self.demoted_callbacks, reason.value, "on_demoted")
            try:
                await seat.resign(term, reason)
            except Exception as error:  # noqa: BLE001 - the seat was dropped; follow again
                self._log.warning("resign_failed", term=term.number, error=describe_error(error))
                return
            self._log.info("leadership_released", term=term.number, reason=reason.value)
            return
        seat.abort()
        self._log.warning("leadership_lost", term=term.number, reason=reason.value)
        await self._run_callbacks(self.demoted_callbacks, reason.value, "on_demoted")
        self._record_lost(self.name, term.number, reason.value)

    # -- helpers ------------------------------------------------------------

    async def _win(self) -> tuple[Seat, Term] | None:
        """``campaign.win()``, or None once stop() cancels it.

        stop() cancels this very task, not a task made for each attempt: a
        process with 100,000 groups would make and cancel 200,000 of them.
        The campaign cleans up after a cancellation itself (a lock granted
        meanwhile is released, a term won meanwhile handed back).
        """
        assert self._campaign is not None
        self._winning = True
        try:
            return await self._campaign.win()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._stopping.is_set() or task is None:
                raise  # not stop()'s
            task.uncancel()
            return None
        finally:
            self._winning = False

    async def _set_role(self, role: Role) -> None:
        self.role = role
        await self._notify_changed()

    async def _notify_changed(self) -> None:
        if "changed" not in self.__dict__:
            return  # never looked at, so nobody waits: a resting elector stops for free
        async with self.changed:
            self.changed.notify_all()

    async def _back_off(self, failures: int) -> None:
        """Wait the jittered reconnect delay, cut short by stop()."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._config.reconnect_delay(failures)):
                await self._stopping.wait()

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
                    f"{kind}_callback_failed",
                    callback=name_of(callback),
                    error=describe_error(error),
                )
