"""Real faults on real processes: kill, stop, terminate, restart the server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from coordinator import Coordinator
from coordinator.testing import CoordinatorProcess
from helpers import (
    FAST,
    connected,
    coordinator,
    current_leader,
    events,
    leader_row,
    wait_args,
    wait_until,
)

pytestmark = [pytest.mark.core, pytest.mark.slow]

Spawn = Callable[..., CoordinatorProcess]
SLACK = 5.0  # generous: the machines are shared; the benchmarks measure the real figures


def start_instances(spawn: Spawn, dsn: str, count: int, wait: str) -> list[CoordinatorProcess]:
    """``count`` instances of one group, as processes, followers waiting as ``wait`` says."""
    return [
        spawn(dsn, ["scheduler"], instance_id=f"p{n}", extra_args=wait_args(wait), **FAST)
        for n in range(1, count + 1)
    ]


def by_id(instances: Sequence[CoordinatorProcess], instance_id: str) -> CoordinatorProcess:
    return next(p for p in instances if p.instance_id == instance_id)


async def wait_leader(dsn: str, after_term: int = 0, timeout: float = 15.0) -> Any:
    return await wait_until(
        lambda: current_leader(dsn, after_term=after_term),
        timeout,
        what=f"a leader with a term above {after_term}",
    )


async def test_killed_leader_is_replaced_and_the_history_says_so(
    spawn: Spawn, dsn: str, wait: str
) -> None:
    instances = start_instances(spawn, dsn, 3, wait)
    first = await wait_leader(dsn)
    old = by_id(instances, first["leader"])
    old.kill()
    second = await wait_leader(dsn, after_term=first["term"], timeout=SLACK)
    assert second["leader"] != old.instance_id
    assert second["term"] == first["term"] + 1
    new = by_id(instances, second["leader"])
    await asyncio.to_thread(new.wait_for, "leadership_acquired", SLACK, term=second["term"])
    history = await events(dsn)
    assert history[:2] == [("elected", 1, old.instance_id), ("elected", 2, new.instance_id)]


async def test_sigterm_resigns_and_hands_over(spawn: Spawn, dsn: str, wait: str) -> None:
    instances = start_instances(spawn, dsn, 2, wait)
    first = await wait_leader(dsn)
    old = by_id(instances, first["leader"])
    old.terminate()
    assert await asyncio.to_thread(old.wait_exit, SLACK) == 0
    released = old.wait_for("leadership_released", 0, term=1)
    assert released["reason"] == "stopping"
    second = await wait_leader(dsn, after_term=1, timeout=SLACK)
    assert second["term"] == 2
    history = await events(dsn)
    assert history[:3] == [
        ("elected", 1, old.instance_id),
        ("resigned", 1, old.instance_id),
        ("elected", 2, second["leader"]),
    ]


async def test_frozen_leader_is_fenced_and_stays_demoted_after_thaw(
    spawn: Spawn, dsn: str, wait: str
) -> None:
    instances = start_instances(spawn, dsn, 2, wait)
    first = await wait_leader(dsn)
    frozen = by_id(instances, first["leader"])
    frozen.freeze()
    try:
        second = await wait_leader(dsn, after_term=1, timeout=FAST["ttl"] + SLACK)
    finally:
        frozen.thaw()
    assert second["leader"] != frozen.instance_id
    assert ("fenced", 1, frozen.instance_id) in await events(dsn)
    lost = await asyncio.to_thread(frozen.wait_for, "leadership_lost", SLACK, term=1)
    assert lost["reason"] in {"trust_expired", "connection_lost"}
    # It follows again: its member heartbeat returns, and it never claims term 1 again.
    await wait_until(
        lambda: _is_follower(dsn, frozen.instance_id, wait), SLACK, what="it to follow"
    )
    acquired = [r for r in frozen.records() if r.get("event") == "leadership_acquired"]
    assert [r["term"] for r in acquired] == [1]
    row = await leader_row(dsn)
    assert row is not None
    assert row["leader"] == second["leader"]


async def _is_follower(dsn: str, instance_id: str, wait: str) -> bool:
    """A fresh member heartbeat: its follower row, or in poll mode its session's one row."""
    beat = (
        "SELECT role = 'follower' AND now() - heartbeat_at < interval '1 second' "
        "FROM coordinator.heartbeats WHERE instance_id = $1"
        if wait == "block"
        else "SELECT now() - heartbeat_at < interval '1 second' "
        "FROM coordinator.sessions WHERE instance_id = $1"
    )
    async with connected(dsn) as conn:
        return bool(await conn.fetchval(beat, instance_id))


async def test_database_restart_under_running_instances_elects_again(
    spawn: Spawn, dsn: str, wait: str, pg_server: Any
) -> None:
    instances = start_instances(spawn, dsn, 3, wait)
    first = await wait_leader(dsn)
    await asyncio.to_thread(pg_server.restart)
    second = await wait_leader(dsn, after_term=first["term"], timeout=30)
    old = by_id(instances, first["leader"])
    await asyncio.to_thread(old.wait_for, "leadership_lost", SLACK, term=first["term"])
    # The database shows the term as soon as it commits; the log line follows.
    new = by_id(instances, second["leader"])
    await asyncio.to_thread(new.wait_for, "leadership_acquired", SLACK, term=second["term"])
    # Exactly one leader: the view's leader holds the lock, and only one process claims the term.
    claims = [
        p.instance_id
        for p in instances
        for r in p.records()
        if r.get("event") == "leadership_acquired" and r.get("term") == second["term"]
    ]
    assert claims == [second["leader"]]
    assert second["lock_held"]


async def test_a_reconnect_that_lands_on_a_standby_is_refused_until_the_primary_is_back(
    dsn: str, wait: str, pg_server: Any
) -> None:
    """A multi-host DSN may reconnect to a standby: every new connection is checked again."""
    if pg_server.local is None:
        pytest.skip("needs a server the suite runs itself")
    standby = await asyncio.to_thread(pg_server.create_standby)
    try:
        parts = urlsplit(dsn)
        both = f"{parts.netloc},{parts.hostname}:{standby.port}"
        coord = coordinator(urlunsplit(parts._replace(netloc=both)), "multi", wait=wait)
        group = coord.group("scheduler")
        async with coord:
            assert await group.wait_elected(SLACK) == 1
            await asyncio.to_thread(pg_server.local.stop)
            failing = await wait_until(
                lambda: _failing(coord), SLACK * 2, what="the loop to refuse the standby"
            )
            assert "is a standby" in failing["scheduler"]
            assert not group.is_leader
            await asyncio.to_thread(pg_server.start)
            assert await group.wait_elected(SLACK * 4) == 2
    finally:
        await asyncio.to_thread(standby.close)


async def _failing(coord: Coordinator) -> dict[str, str]:
    return coord.failing
