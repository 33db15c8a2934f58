"""Campaigns: the ways to win a group's seat and keep it.

A campaign is what the elector drives (control flows one way: elector ->
campaign -> session). :meth:`Campaign.win` returns once this instance holds
the group's lock and has taken office, as a :class:`Seat` (where the lock
lives) and a :class:`~coordinator._term.Term`. From then on the campaign
reports only through the term: a heartbeat extends it, a lost lock or
session ends it.

Two campaigns exist. The :class:`BlockingCampaign` here gives each group its
own session, blocked in ``pg_advisory_lock``: a crashed leader's successor
wakes within milliseconds. The shared campaign (``coordinator._shared``)
holds every lock of the process on one session. Both heartbeat through
:meth:`Campaign.heartbeat`, which the heartbeat job calls.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from coordinator._config import CoordinatorConfig
from coordinator._describe import describe_error
from coordinator._logging import get_logger
from coordinator._session import HeldOff, LockSession, Reserved
from coordinator._signals import HeartbeatDone
from coordinator._sql import Statements
from coordinator._term import DemotionReason, Term

__all__ = ["BlockingCampaign", "Campaign", "Heartbeating", "Seat", "Trouble"]

log = get_logger()


class Seat(Protocol):
    """Where a won term's lock lives."""

    @property
    def backend_pid(self) -> int: ...

    async def resign(self, term: Term, reason: DemotionReason) -> None:
        """Hand the seat over: clear the holder, record why, notify, unlock."""

    def abort(self) -> None:
        """The term ended abnormally: drop the session, which frees the lock."""


class Heartbeating(Protocol):
    """What the heartbeat job beats: a blocking campaign, or the shared campaign for all."""

    async def heartbeat(self) -> HeartbeatDone | None:
        """One leader heartbeat for every term this holds; None if it holds none."""


class Campaign(Protocol):
    """One group's way to win (see the module docstring)."""

    @property
    def problem(self) -> str | None:
        """Why the campaign cannot make progress now; None while it can."""

    async def win(self) -> tuple[Seat, Term] | None:
        """Wait until this instance holds the lock and took office. Cancel it to stop.

        None: this instance is no longer a candidate for the group (the shared
        campaign's candidacies changed); the elector rests until started again.
        """

    async def close(self) -> None:
        """Give up the campaign's session, if it has one of its own."""


class Trouble:
    """A campaign's failures, told once they last: "keeps failing", not "failed once".

    The latest error counts as the campaign's problem after it has failed,
    without a success in between, for longer than one heartbeat cycle: one
    refused reconnect during a failover is normal, a standby behind a
    multi-host DSN for a whole cycle is not.
    """

    def __init__(self, config: CoordinatorConfig) -> None:
        self._grace = config.heartbeat_interval + config.heartbeat_timeout
        self._since: float | None = None
        self._latest: str | None = None

    def failed(self, error: BaseException) -> str:
        """Count ``error``; return its description for the log line."""
        if self._since is None:
            self._since = time.monotonic()
        self._latest = describe_error(error)
        return self._latest

    def cleared(self) -> None:
        self._since = self._latest = None

    @property
    def problem(self) -> str | None:
        if self._since is None or time.monotonic() - self._since < self._grace:
            return None
        return self._latest


class BlockingCampaign:
    """One group on its own session, waiting in ``pg_advisory_lock`` while following
    (bounded waits, sent again, that take office once granted)."""

    def __init__(
        self, config: CoordinatorConfig, sql: Statements, group: str, lock_key: int
    ) -> None:
        self._config = config
        self._sql = sql
        self._group = group
        self._lock_key = lock_key
        self._session: LockSession | None = None
        self._term: Term | None = None
        self._trouble = Trouble(config)
        self._log = log.bind(group=group, instance_id=config.instance_id)

    @property
    def problem(self) -> str | None:
        return self._trouble.problem

    async def win(self) -> tuple[Seat, Term]:
        try:
            session = self._session
            if session is None or session.is_closed:
                session = self._session = await LockSession.open(
                    self._config, self._sql, self._group, self._lock_key, self._closed
                )
            self._trouble.cleared()
            term = await self._win_on(session)
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError):
                self._trouble.failed(error)
            await self.close()  # a lost session, or one whose lock is in doubt: start afresh
            raise
        self._term = term
        return session, term

    async def _win_on(self, session: LockSession) -> Term:
        """Wait for the lock and take office; stand aside while a switchover names another.

        The member it names waits in the same lock queue and is granted the
        lock next; the pause only keeps the others from spinning when it
        never comes (the reservation then expires, one ttl after the hand-over).
        """
        while True:
            try:
                term = await self._campaign_once(session)
            except Reserved as reserved:
                await session.unlock()
                self._log.info("switchover_standing_aside", reason=str(reserved))
                await asyncio.sleep(self._config.poll_interval)
                continue
            if term is not None:
                return await self._confirmed(session, term)

    async def _campaign_once(self, session: LockSession) -> Term | None:
        """One bounded wait for the lock; the term, if it was granted and won.

        The wait and taking office are one statement, so the term is trusted
        from the moment it was sent (``lock_wait`` bounds how long ago that is).
        """
        started = time.monotonic()
        try:
            number = await session.campaign(self._config.instance_id)
        except HeldOff:
            self._log_held_off()
            return await self._take_office(session)
        return None if number is None else Term(number, started, self._config.trust_window)

    async def _take_office(self, session: LockSession) -> Term:
        """Holding the lock, take office until a term is issued."""
        while True:
            started = time.monotonic()
            number = await session.take_office(self._config.instance_id)
            if number is not None:
                return Term(number, started, self._config.trust_window)
            self._log_held_off()

    def _log_held_off(self) -> None:
        self._log.warning(
            "take_office_waiting",
            reason="fenced transactions of the previous term are still open",
            waited_s=self._config.office_wait,
        )

    async def _confirmed(self, session: LockSession, term: Term) -> Term:
        """``term``, confirmed by one heartbeat now if its trust would not last
        until the heartbeat job's next beat (a term that waited long for
        fenced transactions)."""
        cycle = self._config.heartbeat_interval + self._config.heartbeat_timeout
        if term.trusted_until - time.monotonic() >= cycle:
            return term
        started = time.monotonic()
        if await session.heartbeat(self._config.instance_id, term.number):
            term.extend(started)
        else:
            term.end(DemotionReason.LOCK_LOST)
        return term

    async def heartbeat(self) -> HeartbeatDone | None:
        term, session = self._term, self._session
        if term is None or session is None or term.ended is not None:
            return None
        started = time.monotonic()
        try:
            still_ours = await session.heartbeat(self._config.instance_id, term.number)
        except Exception as error:  # noqa: BLE001 - the trust deadline deals with failures
            self._log.warning("heartbeat_failed", term=term.number, error=describe_error(error))
            return HeartbeatDone((self._group,), time.monotonic() - started, ok=False)
        if still_ours:
            term.extend(started)
        else:
            term.end(DemotionReason.LOCK_LOST)
        return HeartbeatDone((self._group,), time.monotonic() - started, ok=still_ours)

    def _closed(self, session: LockSession) -> None:
        """Termination listener: a leader whose session closed demotes at once."""
        if session is self._session and self._term is not None:
            self._term.end(DemotionReason.CONNECTION_LOST)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
