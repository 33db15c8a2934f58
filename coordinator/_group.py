"""``Group``: one election, as the application sees it.

Everything here is the user's API: callbacks, who leads now, waiting for a
change, fenced writes and resigning. The machinery that wins and keeps the
seat is the elector (``coordinator._elector``), which this only reads and
asks. ``is_leader`` is computed from the trust deadline every time it is
read, never from a stored flag.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from coordinator._drivers import fenced_async
from coordinator._elector import DemotedCallback, ElectedCallback, Elector, Role
from coordinator._fencing import FencedTransaction
from coordinator._sql import Statements
from coordinator._term import DemotionReason, Term

__all__ = ["DemotionReason", "Group", "Leadership", "Role"]


@dataclass(frozen=True)
class Leadership:
    """One consistent reading of a group's leadership, taken at one instant.

    ``term`` and ``trusted_until`` (monotonic clock, as ``time.monotonic()``)
    are None unless this instance led the group when it was read.
    """

    term: int | None
    trusted_until: float | None

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    @property
    def trusted_for(self) -> float | None:
        """Seconds of trust left at the reading; None when not leading."""
        if self.trusted_until is None:
            return None
        return max(0.0, self.trusted_until - time.monotonic())


@dataclass(frozen=True)
class _TermOf:
    """What a fenced transaction sees of one term: its number while it is trusted."""

    name: str
    held: Term | None

    @property
    def term(self) -> int | None:
        return self.held.number if self.held is not None and self.held.trusted else None


class Group:
    """One election. Create it with :meth:`Coordinator.group`, not directly."""

    def __init__(self, elector: Elector, lock_key: int, sql: Statements) -> None:
        self._elector = elector
        self._sql = sql
        self.name = elector.name
        self.lock_key = lock_key

    def __repr__(self) -> str:
        return f"<Group {self.name!r} {self.role.value} term={self.term}>"

    def on_elected(self, callback: ElectedCallback) -> ElectedCallback:
        """Register ``callback(term)``, run each time this instance takes office."""
        self._elector.elected_callbacks.append(callback)
        return callback

    def on_demoted(self, callback: DemotedCallback) -> DemotedCallback:
        """Register ``callback(reason)``, run each time a leadership of this instance ends."""
        self._elector.demoted_callbacks.append(callback)
        return callback

    @property
    def role(self) -> Role:
        return self._elector.role

    @property
    def leadership(self) -> Leadership:
        """Leader or not, the term and the trust deadline, all read at the same instant."""
        term = self._elector.term
        if term is None or not term.trusted:
            return Leadership(None, None)
        return Leadership(term.number, term.trusted_until)

    @property
    def is_leader(self) -> bool:
        """True only while this instance leads and its trust deadline has not passed."""
        return self.leadership.is_leader

    @property
    def term(self) -> int | None:
        """The current term while :attr:`is_leader`, else None."""
        return self.leadership.term

    async def wait_elected(self, timeout: float | None = None) -> int:
        """Wait until this instance leads; return the term. Raises TimeoutError."""
        elector = self._elector
        async with asyncio.timeout(timeout), elector.changed:
            await elector.changed.wait_for(lambda: self.is_leader or elector.role is Role.STOPPED)
        term = self.term
        if term is None:
            raise RuntimeError(f"group {self.name!r} stopped before it was elected")
        return term

    async def wait_demoted(self, timeout: float | None = None) -> None:
        """Wait until this instance does not lead and has handed over: ``on_demoted``
        callbacks have run and the lock is released (returns at once if it does not lead)."""
        elector = self._elector
        async with asyncio.timeout(timeout), elector.changed:
            await elector.changed.wait_for(lambda: elector.term is None and not elector.leaving)

    @property
    def trusted_until(self) -> float | None:
        """While :attr:`is_leader`: the ``time.monotonic()`` at which this leadership ends
        unless a heartbeat extends it (``coordinator run --exec`` hands it to its child's
        watchdog). Else None."""
        return self.leadership.trusted_until

    def fenced(
        self, conn: Any, *, term: int | None = None
    ) -> AbstractAsyncContextManager[FencedTransaction]:
        """A transaction on ``conn`` that commits only in ``term``.

        ``conn`` is an asyncpg connection or pool, a psycopg ``AsyncConnection``,
        or a SQLAlchemy ``AsyncConnection`` or ``AsyncSession``. ``term``
        defaults to the current one. Raises NotLeader or StaleTerm; see
        :mod:`coordinator._fencing` for what the database guarantees. The
        transaction is bound to the term leading now, not to the group: a later
        term never makes an earlier transaction commit.
        """
        return fenced_async(
            _TermOf(self.name, self._elector.term), conn, self._sql.assert_term, term=term
        )

    async def resign(self) -> None:
        """Hand leadership over now, then follow again. A no-op when not leading."""
        if self._elector.term is None:
            return
        self._elector.request_resign()
        await self.wait_demoted()
