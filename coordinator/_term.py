"""A term: one leadership of one group by this instance, as a small lease.

It carries its number (the fencing token), when taking office began
(monotonic clock), the trust deadline, and how it ended. Whoever learns
something about the leadership says so through the term: a heartbeat
extends it, a lost lock or session ends it, a hand-over request ends it
gracefully. The elector waits on :meth:`Term.wait_over`; nobody calls back
into anyone.
"""

from __future__ import annotations

import asyncio
import enum
import time

__all__ = ["GRACEFUL", "DemotionReason", "Term"]


class DemotionReason(enum.StrEnum):
    """Why a leadership ended; passed to ``on_demoted`` and logged."""

    RESIGNED = "resigned"  # resign() was called, or fair spreading handed it over
    STOPPING = "stopping"  # the coordinator is shutting down
    TRUST_EXPIRED = "trust_expired"  # no heartbeat succeeded in time
    LOCK_LOST = "lock_lost"  # the heartbeat found the lock or the term gone
    CONNECTION_LOST = "connection_lost"  # the lock session closed
    SWITCHOVER = "switchover"  # an operator asked for a hand-over (coordinator resign)


#: Endings after which the lock is still ours to hand over (resign) rather than drop.
GRACEFUL = frozenset({DemotionReason.RESIGNED, DemotionReason.STOPPING, DemotionReason.SWITCHOVER})


class Term:
    """Leadership of term ``number``, trusted until ``started + trust_window`` at first."""

    def __init__(self, number: int, started: float, trust_window: float) -> None:
        self.number = number
        self.started = started
        self.trusted_until = started + trust_window
        self.ended: DemotionReason | None = None
        self._window = trust_window
        #: What :meth:`wait_over` waits on, while it waits. A future and a timer, not
        #: an Event and ``asyncio.timeout``: a process with 100,000 leaderships
        #: keeps one term each, and the garbage collector walks every object kept.
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Term {self.number} ended={self.ended}>"

    @property
    def trusted(self) -> bool:
        """Not ended and before the trust deadline: read anew every time."""
        return self.ended is None and time.monotonic() < self.trusted_until

    def extend(self, heartbeat_started: float) -> None:
        """A heartbeat that began at ``heartbeat_started`` (monotonic) succeeded.

        It extends trust only if the term is still trusted now: a slow success
        never revives a term whose deadline has passed.
        """
        if self.trusted:
            self.trusted_until = max(self.trusted_until, heartbeat_started + self._window)

    def end(self, reason: DemotionReason) -> None:
        """End the term (the first reason given wins) and wake whoever waits on it."""
        if self.ended is None:
            self.ended = reason
            _wake(self._waiter)

    async def wait_over(self) -> DemotionReason:
        """Wait until the term ends or its trust deadline passes; return why."""
        loop = asyncio.get_running_loop()
        while self.ended is None:
            remaining = self.trusted_until - time.monotonic()
            if remaining <= 0:
                self.end(DemotionReason.TRUST_EXPIRED)
                break
            waiter = self._waiter = loop.create_future()
            deadline = loop.call_later(remaining, _wake, waiter)
            try:
                await waiter
            finally:
                deadline.cancel()
                self._waiter = None
        assert self.ended is not None
        return self.ended


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
