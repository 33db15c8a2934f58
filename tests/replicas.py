"""Replicas of examples/fastapi_app under uvicorn, as separate processes, for the tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from helpers import FAST, wait_until

ROOT = Path(__file__).resolve().parent.parent
APP = "examples.fastapi_app.app:create_app"
SLACK = 15.0  # uvicorn and FastAPI take a while to import on a busy machine

StartReplica = Callable[..., "Replica"]


class Replica:
    """One uvicorn process serving the example app on a unix socket; its output in a file."""

    def __init__(self, dsn: str, instance_id: str, where: Path, env: dict[str, str]) -> None:
        self.instance_id = instance_id
        self.log = where / f"{instance_id}.log"
        socket = where / f"{instance_id}.sock"
        environment = {
            **os.environ,
            "COORDINATOR_DSN": dsn,
            "INSTANCE_ID": instance_id,
            "TICK_INTERVAL": "0.1",
            "COORDINATOR_TTL": str(FAST["ttl"]),
            "COORDINATOR_HEARTBEAT_INTERVAL": str(FAST["heartbeat_interval"]),
            "COORDINATOR_HEARTBEAT_TIMEOUT": str(FAST["heartbeat_timeout"]),
            **env,
        }
        command = [sys.executable, "-m", "uvicorn", "--factory", APP, "--uds", str(socket)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket)), base_url="http://replica"
        )

    def __repr__(self) -> str:
        return f"<Replica {self.instance_id} pid={self.process.pid}>"

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def state(self) -> dict[str, Any] | None:
        """``GET /``, or None while the replica is not serving yet."""
        if self.process.poll() is not None:
            raise AssertionError(f"{self.instance_id} exited; its log:\n{self.output()}")
        try:
            state: dict[str, Any] = await self.get("/")
        except httpx.TransportError:
            return None
        return state

    async def runs_the_job(self) -> bool:
        state = await self.state()
        return state is not None and state["is_leader"] and state["jobs"][0]["running_here"]

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL late
            self.process.kill()
        await asyncio.to_thread(self.process.wait)
        await self.http.aclose()


@asynccontextmanager
async def replica_factory(dsn: str) -> AsyncIterator[StartReplica]:
    """``start(instance_id, **env)``: a running replica, killed on the way out."""
    started: list[Replica] = []
    # A short directory: a unix socket's path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="example-") as where:

        def start(instance_id: str, **env: str) -> Replica:
            replica = Replica(dsn, instance_id, Path(where), env)
            started.append(replica)
            return replica

        try:
            yield start
        finally:
            for replica in started:
                await replica.close()


async def wait_ready(*replicas: Replica) -> None:
    for replica in replicas:
        await wait_until(replica.state, SLACK, what=f"{replica.instance_id} to serve", every=0.1)
