"""The example app, served by uvicorn as separate processes: its job runs on exactly one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from helpers import FAST, events, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
APP = "examples.fastapi_app.app:create_app"
GROUP = "example"
SLACK = 15.0  # uvicorn and FastAPI take a while to import on a busy machine


class Replica:
    """One uvicorn process serving the example app on a unix socket."""

    def __init__(self, dsn: str, instance_id: str, where: Path) -> None:
        self.instance_id = instance_id
        self.log = where / f"{instance_id}.log"
        socket = where / f"{instance_id}.sock"
        env = {
            **os.environ,
            "COORDINATOR_DSN": dsn,
            "INSTANCE_ID": instance_id,
            "TICK_INTERVAL": "0.1",
            "COORDINATOR_TTL": str(FAST["ttl"]),
            "COORDINATOR_HEARTBEAT_INTERVAL": str(FAST["heartbeat_interval"]),
            "COORDINATOR_HEARTBEAT_TIMEOUT": str(FAST["heartbeat_timeout"]),
        }
        command = [sys.executable, "-m", "uvicorn", "--factory", APP, "--uds", str(socket)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket)), base_url="http://replica"
        )

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def state(self) -> dict[str, Any] | None:
        """``GET /``, or None while the replica is not serving yet."""
        if self.process.poll() is not None:
            raise AssertionError(f"{self.instance_id} exited; its log:\n{self.log.read_text()}")
        try:
            state: dict[str, Any] = await self.get("/")
        except httpx.TransportError:
            return None
        return state

    async def runs_the_job(self) -> bool:
        state = await self.state()
        return state is not None and state["is_leader"] and state["jobs"][0]["running_here"]

    async def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        await asyncio.to_thread(self.process.wait)
        await self.http.aclose()


@pytest.fixture
async def start_replica(dsn: str) -> AsyncIterator[Callable[[str], Replica]]:
    started: list[Replica] = []
    # A short directory: a unix socket's path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="example-") as where:

        def start(instance_id: str) -> Replica:
            replica = Replica(dsn, instance_id, Path(where))
            started.append(replica)
            return replica

        yield start
        for replica in started:
            await replica.close()


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


async def wait_ready(*replicas: Replica) -> None:
    for replica in replicas:
        await wait_until(replica.state, SLACK, what=f"{replica.instance_id} to serve", every=0.1)


async def test_job_runs_on_one_replica_and_moves_on_kill_and_on_sigterm(
    dsn: str, start_replica: Callable[[str], Replica]
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
