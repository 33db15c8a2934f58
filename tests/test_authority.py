"""The database decides who may lead: squatters are seen, notifications are
hints, old fenced transactions cannot hold a new leader off, and instances
of the previous schema keep electing beside new ones during an upgrade."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from test_observe import watching

from coordinator import migrate
from coordinator._keys import DEFAULT_LOCK_NAMESPACE, group_lock_key
from coordinator._migrations import available_migrations
from coordinator.integrations.http import CoordinatorMetrics
from coordinator.testing import capture_logs
from helpers import connected, coordinator, lock_waiters, wait_until

GROUP = "jobs"
SLACK = 10.0


@pytest.fixture
async def outsider(dsn: str) -> AsyncIterator[str]:
    """The DSN of a role granted nothing: it connects only because PUBLIC may."""
    name = f"outsider_{secrets.token_hex(4)}"
    async with connected(dsn) as conn:
        await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw'")
    rest = dsn.partition("@")[2]
    yield f"postgresql://{name}:pw@{rest}"
    async with connected(dsn) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
        )
        await conn.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


async def test_a_squatted_lock_is_reported_by_the_monitor(dsn: str, outsider: str) -> None:
    """A foreign session holding a group's lock shows in leader_status, the log and a metric."""
    squatter = await asyncpg.connect(outsider, server_settings={"application_name": "intruder"})
    try:
        await squatter.execute(
            "SELECT pg_advisory_lock($1, $2)", DEFAULT_LOCK_NAMESPACE, group_lock_key(GROUP)
        )
        squatter_pid = squatter.get_server_pid()
        coord = coordinator(dsn, "a", GROUP)
        metrics = CoordinatorMetrics(coord, registry=CollectorRegistry())

        def squatted() -> float | None:
            return metrics.registry.get_sample_value("coordinator_lock_squatted", {"group": GROUP})

        with capture_logs() as logs:
            async with coord:
                reports = await wait_until(
                    _found(logs, "lock_squatted"), SLACK, what="the squatter to be reported"
                )
                assert reports[0]["pid"] == squatter_pid
                assert reports[0]["user"] == outsider.split("//")[1].split(":")[0]
                assert reports[0]["application_name"] == "intruder"
                assert squatted() == 1
                assert coord.squatters == {GROUP: frozenset({squatter_pid})}
                async with connected(dsn) as conn:
                    row = await conn.fetchrow(
                        "SELECT leader, squatter_pid, squatter_user, squatter_application "
                        "FROM coordinator.leader_status WHERE group_name = $1",
                        GROUP,
                    )
                assert (row["leader"], row["squatter_pid"], row["squatter_application"]) == (
                    None,
                    squatter_pid,
                    "intruder",
                )
                await squatter.close()
                assert await coord.group(GROUP).wait_elected(SLACK) == 1
                async with connected(dsn) as conn:
                    assert (
                        await conn.fetchval(
                            "SELECT squatter_pid FROM coordinator.leader_status "
                            "WHERE group_name = $1",
                            GROUP,
                        )
                        is None
                    )

                async def cleared() -> bool:
                    return squatted() == 0

                await wait_until(cleared, SLACK, what="the gauge to fall back to 0")
        assert len([log for log in logs if log["event"] == "lock_squatted"]) == 1
    finally:
        if not squatter.is_closed():
            await squatter.close()


def _found(logs: list[dict[str, Any]], event: str) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
    async def check() -> list[dict[str, Any]]:
        return [log for log in logs if log["event"] == event]

    return check


async def test_a_forged_notification_is_neither_yielded_nor_printed(
    dsn: str, outsider: str, tmp_path: Path
) -> None:
    a, b = coordinator(dsn, "a", GROUP), coordinator(dsn, "b", GROUP)
    async with a:
        await a.group(GROUP).wait_elected(SLACK)
        async with watching(dsn, tmp_path / "watch.log") as (observer, watch):
            assert await observer.next() == ("current", 1, "a")
            assert await watch.next() == ("current", 1, "a")
            async with connected(outsider) as forger:
                for payload in (
                    '{"group": "jobs", "kind": "elected", "term": 99, "instance_id": "mallory"}',
                    '{"group": "jobs", "kind": "resigned", "term": 1, "instance_id": "a"}',
                    '{"group": "jobs", "kind": "elected", "term": 1e99, "instance_id": 5}',
                ):
                    await forger.execute("SELECT pg_notify('coordinator_leadership', $1)", payload)
            async with b:
                await wait_until(lambda: lock_waiters(dsn), SLACK, what="b to follow")
                await a.group(GROUP).resign()
                assert await b.group(GROUP).wait_elected(SLACK) == 2
                real = [("resigned", 1, "a"), ("elected", 2, "b")]
                assert [await observer.next() for _ in real] == real
                assert [await watch.next() for _ in real] == real
    assert "observe_notification_unconfirmed" in (tmp_path / "watch.log").read_text()


async def test_a_hanging_fenced_transaction_is_ended_after_take_office_timeout(
    dsn: str,
) -> None:
    """A writer of the old term that turns its idle limit off and hangs holds the next
    leader off only for take_office_timeout; then its backend is terminated."""
    a = coordinator(dsn, "a", GROUP, take_office_timeout=0.3)
    b = coordinator(dsn, "b", GROUP, take_office_timeout=0.3)
    writer = await asyncpg.connect(dsn)
    try:
        with capture_logs() as logs:
            async with a:
                assert await a.group(GROUP).wait_elected(SLACK) == 1
                async with b:  # b starts once a leads, so that a's term is 1
                    await wait_until(lambda: lock_waiters(dsn), SLACK, what="b to follow")
                    transaction = writer.transaction()
                    await transaction.start()
                    await writer.execute("SELECT coordinator.assert_term($1, 1)", GROUP)
                    await writer.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
                    writer_pid = writer.get_server_pid()
                    await a.group(GROUP).resign()
                    assert await b.group(GROUP).wait_elected(SLACK) == 2
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await transaction.commit()
        ended = [log for log in logs if log["event"] == "fenced_transaction_ended"]
        assert [(log["backend_pid"], log["term"]) for log in ended] == [(writer_pid, 2)]
        async with connected(dsn) as conn:
            reasons = await conn.fetch(
                "SELECT term, reason FROM coordinator.events WHERE kind = 'fenced'"
            )
        (fenced,) = reasons
        assert fenced["term"] == 1
        assert f"backend {writer_pid}" in fenced["reason"]
        assert fenced["reason"].endswith("terminated for b")
    finally:
        writer.terminate()


# The previous release's own statements, as it sends them (schema version 2).
_V2_TAKE_OFFICE = """
    WITH office AS (
        UPDATE coordinator.leaders SET term = term + 1, holder = $2, backend_pid = pg_backend_pid(),
               acquired_at = clock_timestamp()
         WHERE group_name = $1 RETURNING group_name, term, acquired_at
    )
    INSERT INTO coordinator.heartbeats (group_name, instance_id, role, term, backend_pid,
                                        heartbeat_at)
    SELECT group_name, $2, 'leader', term, pg_backend_pid(), acquired_at FROM office
    RETURNING term
"""
_V2_HEARTBEAT = """
    UPDATE coordinator.heartbeats SET heartbeat_at = now()
     WHERE group_name = $1 AND instance_id = $2 AND term = $3 AND role = 'leader'
    RETURNING group_name
"""
_V2_RESIGN = """
    UPDATE coordinator.leaders SET holder = NULL, backend_pid = NULL
     WHERE group_name = $1 AND holder = $2 AND term = $3
"""


async def test_an_instance_of_schema_version_2_keeps_leading_through_the_upgrade(
    bare_dsn: str,
) -> None:
    """Migrate while an old instance leads; it keeps beating; a new one follows, then leads."""
    await _migrate_to_version_2(bare_dsn)
    key = group_lock_key(GROUP)
    old = await asyncpg.connect(bare_dsn, server_settings={"application_name": "coordinator:old"})
    try:
        await old.execute(
            "INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key, ttl) "
            "VALUES ($1, $2, $3, '1.5 seconds')",
            GROUP,
            DEFAULT_LOCK_NAMESPACE,
            key,
        )
        await old.execute("SELECT pg_advisory_lock($1, $2)", DEFAULT_LOCK_NAMESPACE, key)
        assert await old.fetchval(_V2_TAKE_OFFICE, GROUP, "old") == 1

        assert await migrate(bare_dsn) == [m.version for m in available_migrations()[2:]]
        assert await old.fetchval(_V2_HEARTBEAT, GROUP, "old", 1) == GROUP
        new = coordinator(bare_dsn, "new", GROUP)
        async with new:
            await wait_until(lambda: lock_waiters(bare_dsn), SLACK, what="the new one to follow")
            assert await old.fetchval(_V2_HEARTBEAT, GROUP, "old", 1) == GROUP
            async with connected(bare_dsn) as conn:
                row = await conn.fetchrow(
                    "SELECT leader, term, squatter_pid FROM coordinator.leader_status"
                )
            assert tuple(row) == ("old", 1, None)
            await old.execute(_V2_RESIGN, GROUP, "old", 1)
            await old.execute("SELECT pg_advisory_unlock($1, $2)", DEFAULT_LOCK_NAMESPACE, key)
            assert await new.group(GROUP).wait_elected(SLACK) == 2
    finally:
        await old.close()


async def _migrate_to_version_2(dsn: str) -> None:
    """What the previous release's `coordinator migrate` left: files 1 and 2, recorded."""
    async with connected(dsn) as conn:
        await conn.execute(
            "CREATE SCHEMA coordinator; CREATE TABLE coordinator.schema_migrations ("
            "version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available_migrations()[:2]:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO coordinator.schema_migrations (version, name, checksum) "
                "VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
