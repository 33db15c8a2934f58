"""Fenced transactions: the application's writes, committed only under the current term.

A leader's own belief is not enough: a paused or partitioned leader can wake
up and write after a newer leader took office. So the database judges. A
fenced transaction begins with ``assert_term(group, term)``
(``migrations/0002_fencing.sql``), which holds ``FOR SHARE`` on the group's
leader row until the transaction ends. A new leader's term update needs that
row, so it waits: a write of an old term never commits after a newer term
exists. Just before ``COMMIT`` the leader's trust deadline is read once more,
so that work of a leadership this instance has already given up is rolled
back rather than committed late.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from coordinator._errors import ConnectionFailed, NotLeader, StaleTerm

__all__ = [
    "STALE_TERM_SQLSTATE",
    "FencedTransaction",
    "Leadership",
    "check_still_leading",
    "expected_term",
    "fenced_transaction",
    "stale_term_error",
]

#: The SQLSTATE ``assert_term`` raises when the term is not current.
STALE_TERM_SQLSTATE = "LT001"


class Leadership(Protocol):
    """What fencing needs from a group: its name and its term while it leads."""

    @property
    def name(self) -> str: ...

    @property
    def term(self) -> int | None: ...


@dataclass(frozen=True)
class FencedTransaction:
    """The open transaction: write on ``conn``, and store ``term`` with rows if useful."""

    group: str
    term: int
    #: The connection the transaction runs on: the one given, or one acquired from the pool.
    conn: Any


@contextlib.asynccontextmanager
async def fenced_transaction(
    leadership: Leadership, target: Any, assert_term_sql: str, *, term: int | None = None
) -> AsyncIterator[FencedTransaction]:
    """Run the body in a transaction on ``target`` (a connection or a pool) under the term.

    Raises :class:`NotLeader` when this instance does not lead, and
    :class:`StaleTerm` when ``term`` (default: the current one) is not the
    database's current term or ends before the commit; the transaction is
    then rolled back.
    """
    expected = expected_term(leadership, term)
    async with _connection(target) as conn:
        if conn.is_in_transaction():
            raise RuntimeError(
                "a fenced transaction must be the outermost transaction, but the connection is "
                "already in one: call group.fenced(conn) outside conn.transaction()"
            )
        transaction = conn.transaction()
        await transaction.start()
        try:
            try:
                await conn.execute(assert_term_sql, leadership.name, expected)
            except asyncpg.PostgresError as error:
                if error.sqlstate == STALE_TERM_SQLSTATE:
                    raise stale_term_error(error.message, error.hint) from None
                raise
            yield FencedTransaction(leadership.name, expected, conn)
            check_still_leading(leadership, expected)
        except Exception as error:
            # A term that is over says more than the session it ran on.
            if not isinstance(error, NotLeader) and _session_ended(conn):
                raise ConnectionFailed(
                    f"the server ended the session of a fenced transaction of group "
                    f"{leadership.name!r} in term {expected} before it committed (a terminated "
                    "backend, idle_in_transaction_session_timeout or a restart): nothing was "
                    "committed; run it again, on a new connection"
                ) from error
            await _roll_back(transaction, conn)
            raise
        except BaseException:
            await _roll_back(transaction, conn)
            raise
        await transaction.commit()


async def _roll_back(transaction: Any, conn: Any) -> None:
    try:
        await transaction.rollback()
    except Exception:  # noqa: BLE001 - report the cause, not the failed rollback
        # In a state nobody knows: drop it, so that no pool ever lends it again.
        with contextlib.suppress(asyncpg.InterfaceError):  # a pool took it back already
            conn.terminate()


def _session_ended(conn: Any) -> bool:
    """Whether the connection is gone; a pool's lent connection is taken back once it is."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # "released back to the pool": the pool saw it close
        return True


def check_still_leading(leadership: Leadership, term: int) -> None:
    """Right before COMMIT: raise StaleTerm if the leadership of ``term`` has ended."""
    if leadership.term != term:
        raise StaleTerm(
            f"the leadership of group {leadership.name!r} in term {term} ended "
            "before the fenced transaction committed, so it was rolled back: "
            "stop the work of this term"
        )


def expected_term(leadership: Leadership, term: int | None) -> int:
    """The term a fenced transaction runs under: ``term``, which must be the current one."""
    current = leadership.term
    if current is None and term is None:
        raise NotLeader(
            f"this instance does not lead group {leadership.name!r}: write as leader only "
            "while group.is_leader, for example from a leader-only job"
        )
    if current is None:
        raise StaleTerm(
            f"the leadership of group {leadership.name!r} in term {term} has ended: "
            "stop the work of this term"
        )
    if term is not None and term != current:
        raise StaleTerm(
            f"term {term} of group {leadership.name!r} is not the term this instance leads now "
            f"({current}): stop the work of term {term}"
        )
    return current


def stale_term_error(message: str, hint: str | None) -> StaleTerm:
    """The StaleTerm for the database's refusal of a term (SQLSTATE LT001), with its hint."""
    return StaleTerm(f"{message}: {hint}")


def _connection(target: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    if isinstance(target, asyncpg.Pool):
        return target.acquire()  # type: ignore[no-any-return]
    return contextlib.nullcontext(target)
