"""Fenced transactions on the application's own driver: psycopg 3 and SQLAlchemy.

The protocol is the asyncpg one (:mod:`coordinator._fencing`), spoken through
another driver: the transaction begins with ``SELECT <schema>.assert_term(group,
term)``, which holds ``FOR SHARE`` on the group's leader row until it ends, and
the trust deadline is read once more right before ``COMMIT``. A term the
database no longer knows as current raises :class:`StaleTerm` and rolls back.

* Sync (:class:`coordinator.sync.Group`): ``psycopg.Connection``,
  SQLAlchemy ``Connection`` and ``Session``.
* Async (:class:`coordinator.Group`): ``psycopg.AsyncConnection``, SQLAlchemy
  ``AsyncConnection`` and ``AsyncSession``, beside asyncpg's own.

Neither driver is a dependency: a connection of one means it is installed.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

from coordinator._fencing import (
    STALE_TERM_SQLSTATE,
    FencedTransaction,
    Leadership,
    check_still_leading,
    expected_term,
    fenced_transaction,
    stale_term_error,
)

__all__ = ["fenced_async", "fenced_sync", "fetch_value_sync"]


@contextlib.contextmanager
def fenced_sync(
    leadership: Leadership, target: Any, assert_term_sql: str, *, term: int | None = None
) -> Iterator[FencedTransaction]:
    """Fenced, on a psycopg ``Connection``, a SQLAlchemy ``Connection`` or ``Session``."""
    kind = _kind(target, _SYNC)
    expected = expected_term(leadership, term)
    _refuse_nested(target, kind)
    with _translated(), target.transaction() if kind == "psycopg" else target.begin():
        target.execute(*_in_style(kind, assert_term_sql, (leadership.name, expected)))
        yield FencedTransaction(leadership.name, expected, target)
        check_still_leading(leadership, expected)


@contextlib.asynccontextmanager
async def fenced_async(
    leadership: Leadership, target: Any, assert_term_sql: str, *, term: int | None = None
) -> AsyncIterator[FencedTransaction]:
    """Fenced, on asyncpg, a psycopg ``AsyncConnection`` or SQLAlchemy's async API."""
    kind = _kind(target, _ASYNC)
    if kind == "asyncpg":
        async with fenced_transaction(leadership, target, assert_term_sql, term=term) as tx:
            yield tx
        return
    expected = expected_term(leadership, term)
    _refuse_nested(target, kind)
    with _translated():
        async with target.transaction() if kind == "psycopg" else target.begin():
            await target.execute(*_in_style(kind, assert_term_sql, (leadership.name, expected)))
            yield FencedTransaction(leadership.name, expected, target)
            check_still_leading(leadership, expected)


#: (kind, module, class) of each connection type that fenced() takes.
_SYNC = (
    ("psycopg", "psycopg", "Connection"),
    ("sqlalchemy", "sqlalchemy", "Connection"),
    ("sqlalchemy", "sqlalchemy.orm", "Session"),
)
_ASYNC = (
    ("asyncpg", "asyncpg", "Connection"),
    ("asyncpg", "asyncpg", "Pool"),
    ("psycopg", "psycopg", "AsyncConnection"),
    ("sqlalchemy", "sqlalchemy.ext.asyncio", "AsyncConnection"),
    ("sqlalchemy", "sqlalchemy.ext.asyncio", "AsyncSession"),
)


def _kind(target: Any, supported: tuple[tuple[str, str, str], ...]) -> str:
    """Which driver ``target`` belongs to, without importing one the app does not use."""
    for kind, module, name in supported:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(target, cls):
            return kind
    wanted = ", ".join(f"{module.split('.')[0]} {name}" for _, module, name in supported)
    raise TypeError(
        f"fenced() takes a connection of one of these: {wanted}; "
        f"this is a {type(target).__module__}.{type(target).__qualname__}"
    )


def _refuse_nested(target: Any, kind: str) -> None:
    if kind == "psycopg":
        nested = target.info.transaction_status != sys.modules["psycopg"].pq.TransactionStatus.IDLE
    else:
        nested = target.in_transaction()
    if nested:
        raise RuntimeError(
            "a fenced transaction must be the outermost transaction, but the connection is "
            "already in one: commit or roll back first (for a SQLAlchemy Session, call "
            "group.fenced(session) before anything else runs on it)"
        )


def fetch_value_sync(target: Any, statement: str, *args: Any) -> Any:
    """The first column of the first row of ``statement`` (``$n`` placeholders) on ``target``."""
    kind = _kind(target, _SYNC)
    result = target.execute(*_in_style(kind, statement, args))
    return result.scalar() if kind == "sqlalchemy" else result.fetchone()[0]


def _in_style(kind: str, statement: str, args: tuple[Any, ...]) -> tuple[Any, Any]:
    """``statement`` and ``args`` in the driver's own placeholder style: named ``p1``, ``p2``..."""
    params = {f"p{number}": value for number, value in enumerate(args, 1)}
    if kind == "psycopg":
        return re.sub(r"\$(\d+)", r"%(p\1)s", statement), params
    from sqlalchemy import text

    return text(re.sub(r"\$(\d+)", r":p\1", statement)), params


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The database's refusal of a term, from any driver (SQLAlchemy wraps it), as StaleTerm."""
    try:
        yield
    except Exception as error:
        cause = getattr(error, "orig", None) or error  # SQLAlchemy's DBAPIError wraps the driver's
        if getattr(cause, "sqlstate", None) != STALE_TERM_SQLSTATE:
            raise
        diag = getattr(cause, "diag", None)  # psycopg
        if diag is not None:
            raise stale_term_error(diag.message_primary, diag.message_hint) from None
        # SQLAlchemy's asyncpg adapter: the asyncpg error is its cause.
        inner = cause.__cause__ or cause
        raise stale_term_error(
            getattr(inner, "message", str(inner)), getattr(inner, "hint", None)
        ) from None
