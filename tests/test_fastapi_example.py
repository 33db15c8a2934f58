"""The example app, served by uvicorn as separate processes: its job runs on exactly one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from helpers import events, wait_until
from replicas import SLACK, Replica, StartReplica, replica_factory, wait_ready

pytestmark = pytest.mark.slow

GROUP = "example"


@pytest.fixture
async def start_replica(dsn: str) -> AsyncIterator[StartReplica]:
    async with replica_factory(dsn) as start:
        yield start


async def ticks(dsn: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT instance_id, term FROM example_ticks ORDER BY id")
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return [(row["instance_id"], row["term"]) for row in rows]


def ticks_of(dsn: str, term: int, at_least: int) -> Callable[[], Any]:
    async def enough() -> bool:
        return sum(1 for _, t in await ticks(dsn) if t == term) >= at_least

    return enough


async def test_job_runs_on_one_replica_and_moves_on_kill_and_on_sigterm(
    dsn: str, start_replica: StartReplica
) -> None:
    both = [start_replica("replica-a"), start_replica("replica-b")]
    await wait_ready(*both)

    async def job_runner() -> Replica | None:
        running = [replica for replica in both if await replica.runs_the_job()]
        assert len(running) <= 1, "the job runs on two replicas"
        return running[0] if running else None

    first: Replica = await wait_until(job_runner, SLACK, what="one replica to run the job")
    second = next(replica for replica in both if replica is not first)
    await wait_until(ticks_of(dsn, 1, 3), SLACK, what="ticks of term 1")
    follower_state = await second.state()
    assert follower_state is not None
    assert (follower_state["is_leader"], follower_state["jobs"][0]["running_here"]) == (
        False,
        False,
    )
    # Every replica tells who runs the jobs, from the database.
    for replica in both:
        leader = await replica.get("/leader")
        assert (leader["leader"], leader["term"]) == (first.instance_id, 1)
    # Only the leader accepts leader-only requests.
    assert (await second.http.post("/ticks")).status_code == 503
    written = (await first.http.post("/ticks")).json()
    assert (written["instance_id"], written["term"]) == (first.instance_id, 1)

    first.process.send_signal(signal.SIGKILL)
    await wait_until(second.runs_the_job, SLACK, what="the job to move", every=0.05)
    assert (await second.state() or {})["term"] == 2
    await wait_until(ticks_of(dsn, 2, 3), SLACK, what="ticks of term 2")

    # A graceful stop hands over too: the lifespan resigns.
    third = start_replica("replica-c")
    await wait_ready(third)
    second.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then raises the signal again to report it.
    assert await asyncio.to_thread(second.process.wait, SLACK) == -signal.SIGTERM
    await wait_until(third.runs_the_job, SLACK, what="the job to move again", every=0.05)
    await wait_until(ticks_of(dsn, 3, 3), SLACK, what="ticks of term 3")
    assert ("resigned", 2, second.instance_id) in await events(dsn, GROUP)

    # Each term's ticks come from one replica, and the terms never go back.
    rows = await ticks(dsn)
    assert {term: {who for who, t in rows if t == term} for _, term in rows} == {
        1: {first.instance_id},
        2: {second.instance_id},
        3: {third.instance_id},
    }
    assert [term for _, term in rows] == sorted(term for _, term in rows)
