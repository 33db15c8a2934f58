"""The lock session: one dedicated connection that waits for, holds and
releases one group's advisory lock; the blocking campaign's seat.

All statements on the connection are serialised by an asyncio lock, because
an asyncpg connection runs one operation at a time. The lock waits (each
bounded, and taking office once granted) are the exception: while
following, nothing else uses the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from coordinator._config import HOST, CoordinatorConfig
from coordinator._connect import connect
from coordinator._errors import TermExhausted
from coordinator._logging import get_logger
from coordinator._migrations import GRANT_HINT
from coordinator._sql import Statements
from coordinator._term import DemotionReason, Term

__all__ = [
    "RESERVED_SQLSTATE",
    "HeldOff",
    "LockSession",
    "Reserved",
    "log_ended_transactions",
    "refused_as_reserved",
    "resign_and_unlock",
    "term_exhausted",
    "terms_must_fit",
]

log = get_logger(__name__)

#: take_office refused: a switchover reserves the group for another member.
RESERVED_SQLSTATE = "LT003"
#: The largest term: the term column is a bigint.
LAST_TERM = 2**63 - 1


class Reserved(Exception):
    """A switchover reserves the group for another member: unlock and wait again."""


class HeldOff(Exception):
    """The lock was granted, but fenced transactions of the old term held the term off
    past ``office_wait``: the lock is the session's; take office again."""


@contextlib.asynccontextmanager
async def refused_as_reserved() -> AsyncIterator[None]:
    """Raise take_office's refusal (SQLSTATE LT003) as :class:`Reserved`."""
    try:
        yield
    except asyncpg.PostgresError as error:
        if error.sqlstate == RESERVED_SQLSTATE:
            raise Reserved(error.message) from None
        raise


@dataclass(frozen=True)
class _Prepared:
    draw_term: asyncpg.prepared_stmt.PreparedStatement
    campaign: asyncpg.prepared_stmt.PreparedStatement
    take_office: asyncpg.prepared_stmt.PreparedStatement
    heartbeat: asyncpg.prepared_stmt.PreparedStatement
    resign_and_unlock: asyncpg.prepared_stmt.PreparedStatement


async def resign_and_unlock(
    conn: asyncpg.Connection,
    sql: Statements,
    group: str,
    instance_id: str,
    term: int,
    reason: str,
    lock: tuple[int, int],
    prepared: asyncpg.prepared_stmt.PreparedStatement | None = None,
) -> None:
    """Hold the leader row, unlock, then clear the holder, record why and
    notify, in one round trip: the next waiter wakes at once, and its term
    waits for this commit (``prepared`` is that statement on ``conn``).

    A switchover's resignation commits before the unlock instead: it starts
    the last ttl of the switchover's reservation, which the next waiter's
    take_office reads before it waits for the leader row. The session's
    lock_timeout bounds the wait on open fenced transactions of this term;
    if they outlast it, the record is skipped, the lock released alone, and
    the next leader's term update waits for them instead.
    """
    unlocked = False
    try:
        if reason == DemotionReason.SWITCHOVER:
            await conn.execute(sql.resign, group, instance_id, term, reason)
        else:
            args = (group, instance_id, term, reason, *lock)
            if prepared is not None:
                await prepared.fetchrow(*args)
            else:
                await conn.fetchrow(sql.resign_and_unlock, *args)
            unlocked = True
    except asyncpg.LockNotAvailableError:
        log.warning(
            "resign_record_skipped", group=group, term=term, reason="fenced transactions still open"
        )
    if not unlocked:
        await conn.execute(sql.unlock, *lock)


def log_ended_transactions(group: str, office: asyncpg.Record) -> None:
    """One line per fenced transaction of the old term that taking office had to end."""
    for pid in office["ended_backends"]:
        log.warning(
            "fenced_transaction_ended",
            group=group,
            term=office["term"],
            backend_pid=pid,
            reason="it held the new term off past take_office_timeout",
        )


def term_exhausted(groups: Sequence[str]) -> TermExhausted:
    """The error for groups whose next term would not fit in a bigint; it names the fix."""
    names = ", ".join(repr(group) for group in groups)
    return TermExhausted(
        f"the next term of group {names} would not fit in a bigint (the largest term is "
        f"{LAST_TERM}): terms are fencing tokens and never go back, so the group cannot be "
        "led again; use a new group name"
    )


@contextlib.asynccontextmanager
async def terms_must_fit(groups: Sequence[str]) -> AsyncIterator[None]:
    """Taking office past the largest term raises TermExhausted, which names the fix."""
    try:
        yield
    except asyncpg.NumericValueOutOfRangeError as error:
        raise term_exhausted(groups) from error


async def _rehearse_handover(
    conn: asyncpg.Connection, config: CoordinatorConfig, sql: Statements, group: str
) -> None:
    """Have the new session's backend load and plan the hand-over's path now.

    A role granted before schema version 13 may not: the hand-over then
    works as well, only a few milliseconds slower the first time.
    """
    try:
        rehearsed = await conn.fetchval(
            sql.rehearse_handover, config.instance_id, HOST, os.getpid(), config.ttl
        )
    except asyncpg.InsufficientPrivilegeError as error:
        log.warning("handover_rehearsal_refused", group=group, error=error.message, fix=GRANT_HINT)
        return
    if not rehearsed:
        log.debug("handover_rehearsal_skipped", group=group)


class LockSession:
    """One group's advisory lock on its own connection.

    ``on_closed`` runs when the connection ends for any reason, including the
    server terminating it; the campaign ends the current term there.
    """

    def __init__(
        self,
        conn: asyncpg.Connection,
        config: CoordinatorConfig,
        sql: Statements,
        group: str,
        lock_key: int,
        prepared: _Prepared,
    ) -> None:
        self._conn = conn
        self._prepared = prepared
        self._config = config
        self._sql = sql
        self._group = group
        self._lock = (config.lock_namespace, lock_key)
        self._busy = asyncio.Lock()
        self._drawing = True  # until the role turns out not to be granted it

    @classmethod
    async def open(
        cls,
        config: CoordinatorConfig,
        sql: Statements,
        group: str,
        lock_key: int,
        on_closed: Callable[[LockSession], None],
    ) -> LockSession:
        conn = await connect(config.connection)
        try:
            await conn.execute(sql.lock_session_setup, f"{int(config.office_wait * 1000)}ms")
            # Parsed and planned now, while following, so that taking office
            # after a crash, and handing over later, cost execution only.
            prepared = _Prepared(
                draw_term=await conn.prepare(sql.draw_term),
                campaign=await conn.prepare(sql.campaign),
                take_office=await conn.prepare(sql.take_office),
                heartbeat=await conn.prepare(sql.leader_heartbeat),
                resign_and_unlock=await conn.prepare(sql.resign_and_unlock),
            )
            await _rehearse_handover(conn, config, sql, group)
        except BaseException:
            conn.terminate()
            raise
        session = cls(conn, config, sql, group, lock_key, prepared)
        conn.add_termination_listener(lambda _conn: on_closed(session))
        return session

    @property
    def backend_pid(self) -> int:
        return int(self._conn.get_server_pid())

    @property
    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    async def campaign(self, instance_id: str) -> int | None:
        """Wait up to ``lock_wait`` for the lock and, once granted, take office
        in the same statement; return the term, or None if the lock was not
        granted in time (nothing was written: call again).

        Raises :class:`HeldOff` when the lock was granted but no term issued,
        and :class:`Reserved` while a switchover reserves the group for
        another member; either way the lock is this session's. A group
        without a leader row (a server that lost recent commits) is
        registered again, and None returned.

        A cancelled wait races with the grant: the server may have granted the
        lock just before the cancel arrived. After a cancellation we look in
        ``pg_locks`` and release a lock that was granted anyway, so that a
        stopping follower never leaves a held lock behind.
        """
        wait_ms = max(1, int(self._config.lock_wait * 1000))
        args = (self._group, instance_id, HOST, os.getpid(), self._config.ttl, wait_ms)
        await self._draw_term()
        try:
            async with refused_as_reserved(), terms_must_fit([self._group]):
                row = await self._prepared.campaign.fetchrow(*args)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_if_granted())
            raise
        except asyncpg.LockNotAvailableError:
            raise HeldOff from None
        if row is None:
            return None
        if row["term"] is None:
            await self._register_again()
            return None
        log_ended_transactions(self._group, row)
        return int(row["term"])

    async def _draw_term(self) -> None:
        """Have the group's next term drawn durably now, while following, so
        that taking office commits without waiting for a WAL flush.

        A role granted before schema version 15 may not: it takes office as
        before, with the flush on the hand-over's path. Neither can anyone
        while the database is read-only; the follower waits all the same,
        as it always did (taking office then fails, or commits with a flush).
        """
        if not self._drawing:
            return
        try:
            await self._prepared.draw_term.fetchval(self._group)
        except asyncpg.ReadOnlySQLTransactionError:
            return
        except asyncpg.InsufficientPrivilegeError as error:
            self._drawing = False
            log.warning("term_draw_refused", group=self._group, error=error.message, fix=GRANT_HINT)

    async def _release_if_granted(self) -> None:
        try:
            async with asyncio.timeout(self._config.heartbeat_timeout):
                if await self._conn.fetchval(self._sql.lock_is_mine, *self._lock):
                    await self._conn.execute(self._sql.unlock, *self._lock)
                    log.info("lock_released_after_cancel", group=self._group)
        except Exception:  # noqa: BLE001 - closing the session frees the lock anyway
            self.abort()

    async def take_office(self, instance_id: str) -> int | None:
        """Holding the lock, start the next term and return it; None while fenced
        transactions of the old term still hold the leader row. Raises
        :class:`Reserved` while a switchover reserves the group for another.

        The term update waits for in-flight fenced transactions of the old
        term (they hold FOR SHARE on the leader row). The wait is bounded by
        ``office_wait``; the caller logs and tries again. A missing leader row
        (a server that lost recent commits) is made again first.
        """
        args = ([self._group], instance_id, HOST, os.getpid(), self._config.ttl)
        try:
            # The session's lock_timeout is office_wait.
            async with self._busy, refused_as_reserved(), terms_must_fit([self._group]):
                row = await self._prepared.take_office.fetchrow(*args)
                if row is None:
                    await self._register_again()
                    row = await self._prepared.take_office.fetchrow(*args)
        except asyncpg.LockNotAvailableError:
            return None
        if row is None:
            raise RuntimeError(f"group {self._group!r} has no leader row and cannot get one")
        log_ended_transactions(self._group, row)
        return int(row["term"])

    async def _register_again(self) -> None:
        """The group's leader row is gone (a server that lost recent commits): make it again."""
        namespace, key = self._lock
        await self._conn.execute(
            self._sql.register_groups, [self._group], [key], namespace, self._config.ttl
        )
        log.warning("group_registered_again", group=self._group)

    async def unlock(self) -> None:
        """Give the lock back without taking office (a switchover reserves the group)."""
        async with self._busy:
            await self._conn.execute(self._sql.unlock, *self._lock)

    async def heartbeat(self, instance_id: str, term: int) -> bool:
        """Refresh our heartbeat; False means the lock or the term is no longer ours."""
        async with asyncio.timeout(self._config.heartbeat_timeout), self._busy:
            row = await self._prepared.heartbeat.fetchrow(
                instance_id, self._lock[0], [self._group], [term]
            )
        return row is not None

    async def resign(self, term: Term, reason: str) -> None:
        """Clear the holder, record why, notify and unlock: the next waiter wakes at once.

        If that fails, the lock's state is in doubt: the session is dropped,
        and the campaign's next ``win()`` starts on a fresh one.
        """
        try:
            async with asyncio.timeout(self._config.resign_timeout), self._busy:
                # The session's lock_timeout bounds the statement.
                await resign_and_unlock(
                    self._conn,
                    self._sql,
                    self._group,
                    self._config.instance_id,
                    term.number,
                    reason,
                    self._lock,
                    self._prepared.resign_and_unlock,
                )
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the connection now; the server frees the lock when it notices."""
        if not self._conn.is_closed():
            self._conn.terminate()

    async def close(self) -> None:
        try:
            await self._conn.close(timeout=self._config.heartbeat_timeout)
        except Exception:  # noqa: BLE001 - a failed close must still free the socket
            self.abort()
