"""Fenced transactions through psycopg 3 and SQLAlchemy, sync and async, on the real server.

A stale term is the belief of a leader that has not heard of its successor
yet (paused, partitioned): ``Believes`` stands in for it, still claiming
term 1 after term 2 began. The database refuses it, whichever driver asks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from coordinator import StaleTerm, sync
from coordinator._drivers import fenced_async, fenced_sync
from coordinator._sql import Statements
from helpers import FAST, connected, coordinator

GROUP = "ledger"
SLACK = 10.0
ASSERT_TERM = Statements.for_schema("coordinator").assert_term
CREATE = "CREATE TABLE writes (id bigserial PRIMARY KEY, term bigint NOT NULL)"
INSERT = "INSERT INTO writes (term) VALUES ({})"


@dataclass
class Believes:
    """A leader's belief, frozen: what a paused old leader still thinks."""

    name: str
    term: int


def sync_leader(dsn: str) -> sync.Coordinator:
    leader = sync.Coordinator(dsn, instance_id="a", **FAST)
    leader.group(GROUP)
    return leader


def sqlalchemy_url(dsn: str, driver: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


@contextlib.contextmanager
def sync_target(kind: str, dsn: str) -> Iterator[Any]:
    if kind == "psycopg":
        with psycopg.connect(dsn) as conn:
            yield conn
        return
    engine = sqlalchemy.create_engine(sqlalchemy_url(dsn, "psycopg"))
    try:
        if kind == "sqlalchemy-connection":
            with engine.connect() as conn:
                yield conn
        else:
            with Session(engine) as session:
                yield session
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def async_target(kind: str, dsn: str) -> AsyncIterator[Any]:
    if kind == "psycopg-async":
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            yield conn
        return
    driver = "asyncpg" if kind.endswith("asyncpg") else "psycopg"
    engine = create_async_engine(sqlalchemy_url(dsn, driver))
    try:
        if kind.startswith("sqlalchemy-async-connection"):
            async with engine.connect() as conn:
                yield conn
        else:
            async with AsyncSession(engine) as session:
                yield session
    finally:
        await engine.dispose()


def execute(target: Any, sql: str) -> Any:
    return target.execute(
        sqlalchemy.text(sql)
        if not isinstance(target, psycopg.Connection | psycopg.AsyncConnection)
        else sql
    )


@pytest.fixture
async def table(dsn: str) -> str:
    """The database with the table the tests write to."""
    async with connected(dsn) as conn:
        await conn.execute(CREATE)
    return dsn


async def written(dsn: str) -> list[int]:
    async with connected(dsn) as conn:
        return [row["term"] for row in await conn.fetch("SELECT term FROM writes ORDER BY id")]


SYNC = ["psycopg", "sqlalchemy-connection", "sqlalchemy-session"]
ASYNC = [
    "psycopg-async",
    "sqlalchemy-async-connection-psycopg",
    "sqlalchemy-async-session-psycopg",
    "sqlalchemy-async-connection-asyncpg",
]


@pytest.mark.parametrize("kind", SYNC)
async def test_sync_drivers_commit_in_the_current_term_and_the_database_refuses_a_stale_one(
    table: str, kind: str
) -> None:
    dsn = table
    with sync_leader(dsn) as leader:
        group = leader.group(GROUP)
        term = group.wait_elected(SLACK)
        with sync_target(kind, dsn) as target, group.fenced(target) as tx:
            execute(tx.conn, INSERT.format(tx.term))
        group.resign()
        assert group.wait_elected(SLACK) == term + 1
        with sync_target(kind, dsn) as target:
            stale = fenced_sync(Believes(GROUP, term), target, ASSERT_TERM)
            with pytest.raises(StaleTerm, match=f"term {term} of group 'ledger' is not current"):
                stale.__enter__()
            execute(target, "SELECT 1")  # a transaction is open now
            with pytest.raises(RuntimeError, match="outermost transaction"):
                group.fenced(target).__enter__()
    assert await written(dsn) == [term]


@pytest.mark.parametrize("kind", ASYNC)
async def test_async_drivers_commit_in_the_current_term_and_the_database_refuses_a_stale_one(
    table: str, kind: str
) -> None:
    dsn = table
    async with coordinator(dsn, "a", GROUP) as leader:
        group = leader.group(GROUP)
        term = await group.wait_elected(SLACK)
        async with async_target(kind, dsn) as target, group.fenced(target) as tx:
            await execute(tx.conn, INSERT.format(tx.term))
        await group.resign()
        assert await group.wait_elected(SLACK) == term + 1
        async with async_target(kind, dsn) as target:
            stale = fenced_async(Believes(GROUP, term), target, ASSERT_TERM)
            with pytest.raises(StaleTerm, match=f"term {term} of group 'ledger' is not current"):
                await stale.__aenter__()
    assert await written(dsn) == [term]


async def test_a_write_whose_term_ends_before_commit_is_rolled_back(table: str) -> None:
    dsn = table
    belief = Believes(GROUP, 0)
    with sync_leader(dsn) as leader:
        belief.term = leader.group(GROUP).wait_elected(SLACK)
        with sync_target("psycopg", dsn) as target:
            fenced = fenced_sync(belief, target, ASSERT_TERM)
            tx = fenced.__enter__()
            execute(tx.conn, INSERT.format(tx.term))
            belief.term += 1  # as if this instance's leadership ended meanwhile
            with pytest.raises(StaleTerm, match="ended before the fenced transaction committed"):
                fenced.__exit__(None, None, None)
    assert await written(dsn) == []


def test_an_unsupported_connection_is_refused_with_the_types_that_work() -> None:
    with (
        pytest.raises(
            TypeError,
            match=r"psycopg Connection, sqlalchemy Connection, sqlalchemy Session; this is a b",
        ),
        fenced_sync(Believes(GROUP, 1), object(), ASSERT_TERM),
    ):
        pass
