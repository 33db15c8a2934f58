"""One read for the readers' functions: on a given connection, or on a short-lived one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from coordinator._config import ConnectionOptions
from coordinator._connect import connect
from coordinator._migrations import check_schema
from coordinator._sql import Statements

__all__ = ["fetch_rows"]


async def fetch_rows(
    dsn_or_conn: str | asyncpg.Connection,
    schema: str,
    statement: Callable[[Statements], str],
    *args: Any,
) -> list[asyncpg.Record]:
    """Run one of the schema's statements; with a DSN, connect, check the schema, close."""
    sql = Statements.for_schema(schema)
    if not isinstance(dsn_or_conn, str):
        rows: list[asyncpg.Record] = await dsn_or_conn.fetch(statement(sql), *args)
        return rows
    conn = await connect(ConnectionOptions(dsn=dsn_or_conn, application_name="coordinator:reader"))
    try:
        await check_schema(conn, schema, sql.schema_version)
        rows = await conn.fetch(statement(sql), *args)
    finally:
        await conn.close()
    return rows
