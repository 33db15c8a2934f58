"""The floor's holder: a bare asyncpg session that takes an advisory lock and keeps it.

It does nothing else, so killing it measures only what PostgreSQL and the
kernel do when a lock holder dies.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from bench.emit import emit


async def _hold(dsn: str, key: int) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    emit("holding", backend_pid=conn.get_server_pid())
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_hold(sys.argv[1], int(sys.argv[2])))
