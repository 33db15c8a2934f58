"""The migration runner: fresh, idempotent, concurrent, tamper-evident."""

from __future__ import annotations

import asyncio
import sys

import pytest

from coordinator import MigrationError, migrate
from coordinator._migrations import available_migrations
from helpers import connected


async def _tables(dsn: str, schema: str = "coordinator") -> set[str]:
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    return {r["table_name"] for r in rows}


async def test_fresh_database_gets_every_migration(bare_dsn: str) -> None:
    assert await migrate(bare_dsn) == [m.version for m in available_migrations()]
    assert {
        "leaders",
        "heartbeats",
        "events",
        "leader_status",
        "schema_migrations",
    } <= await _tables(bare_dsn)


async def test_applying_again_is_a_no_op(bare_dsn: str) -> None:
    await migrate(bare_dsn)
    assert await migrate(bare_dsn) == []


async def test_another_schema_can_be_used(bare_dsn: str) -> None:
    await migrate(bare_dsn, schema="elections")
    assert "leaders" in await _tables(bare_dsn, "elections")
    assert "leaders" not in await _tables(bare_dsn, "coordinator")


async def test_concurrent_runs_from_several_processes_apply_once(bare_dsn: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "coordinator",
            "migrate",
            "--dsn",
            bare_dsn,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    said = sorted(out.decode().strip() for out, _ in outputs)
    assert said.count("schema coordinator is up to date") == 3
    async with connected(bare_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM coordinator.schema_migrations") == len(
            available_migrations()
        )


async def test_changed_migration_is_reported_by_checksum(dsn: str) -> None:
    async with connected(dsn) as conn:
        await conn.execute(
            "UPDATE coordinator.schema_migrations SET checksum = 'edited' WHERE version = 1"
        )
    with pytest.raises(MigrationError, match=r"0001_init\.sql was changed after it was applied"):
        await migrate(dsn)


async def test_unknown_newer_migration_in_the_database_is_reported(dsn: str) -> None:
    async with connected(dsn) as conn:
        await conn.execute(
            "INSERT INTO coordinator.schema_migrations (version, name, checksum) "
            "VALUES (999, '0999_future.sql', 'x')"
        )
    with pytest.raises(MigrationError, match="upgrade pg-coordinator"):
        await migrate(dsn)
