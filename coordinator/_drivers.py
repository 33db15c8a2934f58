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

__all__ = ["fenced_async", "fenced_sync"]


@contextlib.contextmanager
def fenced_sync(
    leadership: Leadership, target: Any, assert_term_sql: str, *, term: int | None = None
) -> Iterator[FencedTransaction]:
    """Fenced, on a psycopg ``Connection``, a SQLAlchemy ``Connection`` or ``Session``."""
    expected = expected_term(leadership, term)
    _refuse_nested(target)
    if _is(target, "psycopg", "Connection"):
        with _translated(), target.transaction():
            target.execute(_psycopg_sql(assert_term_sql), (leadership.name, expected))
            yield FencedTransaction(leadership.name, expected, target)
            check_still_leading(leadership, expected)
    elif _is(target, "sqlalchemy", "Connection") or _is(target, "sqlalchemy.orm", "Session"):
        with _translated(), target.begin():
            target.execute(*_sqlalchemy_statement(assert_term_sql, leadership.name, expected))
            yield FencedTransaction(leadership.name, expected, target)
            check_still_leading(leadership, expected)
    else:
        raise TypeError(
            _unsupported(target, "psycopg Connection, SQLAlchemy Connection or Session")
        )


@contextlib.asynccontextmanager
async def fenced_async(
    leadership: Leadership, target: Any, assert_term_sql: str, *, term: int | None = None
) -> AsyncIterator[FencedTransaction]:
    """A fenced transaction on asyncpg, psycopg ``AsyncConnection`` or SQLAlchemy's async API."""
    if _is(target, "asyncpg", "Connection") or _is(target, "asyncpg", "Pool"):
        async with fenced_transaction(leadership, target, assert_term_sql, term=term) as tx:
            yield tx
        return
    expected = expected_term(leadership, term)
    _refuse_nested(target)
    if _is(target, "psycopg", "AsyncConnection"):
        with _translated():
            async with target.transaction():
                await target.execute(_psycopg_sql(assert_term_sql), (leadership.name, expected))
                yield FencedTransaction(leadership.name, expected, target)
                check_still_leading(leadership, expected)
    elif _is(target, "sqlalchemy.ext.asyncio", "AsyncConnection") or _is(
        target, "sqlalchemy.ext.asyncio", "AsyncSession"
    ):
        with _translated():
            async with target.begin():
                await target.execute(
                    *_sqlalchemy_statement(assert_term_sql, leadership.name, expected)
                )
                yield FencedTransaction(leadership.name, expected, target)
                check_still_leading(leadership, expected)
    else:
        raise TypeError(
            _unsupported(
                target,
                "asyncpg Connection or Pool, psycopg AsyncConnection, "
                "SQLAlchemy AsyncConnection or AsyncSession",
            )
        )


def _is(target: Any, module: str, name: str) -> bool:
    """Whether ``target`` is a ``module.name``, without importing a driver the app does not use."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None)
    return isinstance(cls, type) and isinstance(target, cls)


def _refuse_nested(target: Any) -> None:
    if _is(target, "psycopg", "Connection") or _is(target, "psycopg", "AsyncConnection"):
        nested = target.info.transaction_status != sys.modules["psycopg"].pq.TransactionStatus.IDLE
    else:
        nested = target.in_transaction()
    if nested:
        raise RuntimeError(
            "a fenced transaction must be the outermost transaction, but the connection is "
            "already in one: commit or roll back first (for a SQLAlchemy Session, call "
            "group.fenced(session) before anything else runs on it)"
        )


def _psycopg_sql(assert_term_sql: str) -> str:
    return assert_term_sql.replace("$1", "%s").replace("$2", "%s")


def _sqlalchemy_statement(
    assert_term_sql: str, group: str, term: int
) -> tuple[Any, dict[str, Any]]:
    from sqlalchemy import text

    named = assert_term_sql.replace("$1", ":group_name").replace("$2", ":term")
    return text(named), {"group_name": group, "term": term}


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


def _unsupported(target: Any, wanted: str) -> str:
    kind = f"{type(target).__module__}.{type(target).__qualname__}"
    return f"fenced() takes an {wanted}; this is a {kind}"
