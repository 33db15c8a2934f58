"""The HTTP endpoints, asked over real HTTP, of real ``coordinator run --http`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from coordinator.integrations.http import HttpServer, http_app
from coordinator.testing import CoordinatorProcess
from endpoints import (
    HTTP_ANY_PORT,
    get,
    get_json,
    http_port,
    metrics,
    parse_metrics,
    sample,
    wait_status,
)
from helpers import FAST, coordinator

Spawn = Callable[..., CoordinatorProcess]
GROUP = "scheduler"
WAIT = 15.0


def probe(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "probe", "--http", f"0.0.0.0:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_leader_endpoint_flips_between_sidecars_when_the_leader_is_killed(
    dsn: str, spawn: Spawn, tmp_path: Path
) -> None:
    """Two sidecars: /leader/{group} is 200 only on the leader, and moves with leadership.

    The second sidecar reads ``--ready-when leader`` and its address from a
    config file, and the first its address from the environment: every source
    of settings reaches the real process.
    """
    first = spawn(dsn, [GROUP], instance_id="a", **FAST, env={"COORDINATOR_HTTP": "127.0.0.1:0"})
    first.wait_for("leadership_acquired", WAIT, term=1)
    config = tmp_path / "coordinator.toml"
    config.write_text('http = "127.0.0.1:0"\nready_when = "leader"\n')
    second = spawn(dsn, [GROUP], instance_id="b", **FAST, extra_args=["--config", str(config)])
    second.wait_for("coordinator_started", WAIT)
    a, b = http_port(first), http_port(second)

    status, leader = get_json(a, f"/leader/{GROUP}")
    assert status == 200
    assert leader | {"heartbeat_age_s": 0, "own_heartbeat_age_s": 0} == {
        "instance_id": "a",
        "group": GROUP,
        "leader": "a",
        "term": 1,
        "heartbeat_age_s": 0,
        "is_leader": True,
        "role": "leader",
        "own_heartbeat_age_s": 0,
        "database_error": None,
    }
    status, follower = get_json(b, f"/leader/{GROUP}")
    assert status == 503
    assert (follower["leader"], follower["is_leader"], follower["role"]) == ("a", False, "follower")
    status, everything = get_json(b, "/leader")
    assert status == 200
    assert [g["group"] for g in everything["groups"]] == [GROUP]

    assert get_json(a, "/livez")[0] == get_json(b, "/livez")[0] == 200
    assert get_json(a, "/readyz") == (
        200,
        {"ready": True, "policy": "member", "reason": "this instance takes part in every group"},
    )
    status, unready = get_json(b, "/readyz")
    assert (status, unready["policy"]) == (503, "leader")
    assert "does not lead 'scheduler'" in unready["reason"]

    on_a, on_b = metrics(a), metrics(b)
    assert sample(on_a, "leader_election_master_status", name=GROUP, group=GROUP) == 1
    assert sample(on_b, "leader_election_master_status", name=GROUP, group=GROUP) == 0
    assert sample(on_a, "coordinator_term", group=GROUP) == 1
    assert sample(on_a, "coordinator_elections_total", group=GROUP) == 1
    assert sample(on_b, "coordinator_elections_total", group=GROUP) == 0

    assert probe(a, "--leader", GROUP).returncode == 0
    refused = probe(b, "--leader", GROUP)
    assert refused.returncode == 1
    assert "does not lead 'scheduler'; the leader is a" in refused.stdout

    first.kill()
    taken = wait_status(b, f"/leader/{GROUP}", 200, WAIT)
    assert (taken["leader"], taken["term"], taken["is_leader"]) == ("b", 2, True)
    assert get_json(b, "/readyz")[0] == 200
    on_b = metrics(b)
    assert sample(on_b, "leader_election_master_status", name=GROUP, group=GROUP) == 1
    assert sample(on_b, "coordinator_term", group=GROUP) == 2
    assert probe(b).returncode == 0
    gone = probe(a, "--live")
    assert gone.returncode == 1
    assert "cannot reach" in gone.stdout


def test_frozen_leader_is_fenced_counted_and_demotes_itself(dsn: str, spawn: Spawn) -> None:
    """SIGSTOP the leader: the follower fences it; once thawed, it counts its own demotion."""
    first = spawn(dsn, [GROUP], instance_id="a", **FAST, extra_args=HTTP_ANY_PORT)
    first.wait_for("leadership_acquired", WAIT, term=1)
    second = spawn(dsn, [GROUP], instance_id="b", **FAST, extra_args=HTTP_ANY_PORT)
    second.wait_for("coordinator_started", WAIT)
    a, b = http_port(first), http_port(second)
    wait_status(b, "/readyz", 200, WAIT)

    first.freeze()
    frozen = probe(a, "--live", "--timeout", "0.5")
    assert frozen.returncode == 1, "a frozen process cannot answer its liveness probe"
    second.wait_for("leader_fenced", WAIT, term=1)
    wait_status(b, f"/leader/{GROUP}", 200, WAIT)
    on_b = metrics(b)
    assert sample(on_b, "coordinator_fences_total", group=GROUP, kind="fenced") == 1
    assert sample(on_b, "coordinator_elections_total", group=GROUP) == 1

    first.thaw()
    lost = first.wait_for("leadership_lost", WAIT)
    wait_status(a, "/livez", 200, WAIT)
    assert get_json(a, f"/leader/{GROUP}")[0] == 503
    on_a = metrics(a)
    demoted = sample(on_a, "coordinator_demotions_total", group=GROUP, reason=lost["reason"])
    assert demoted == 1
    assert sample(on_a, "leader_election_master_status", name=GROUP, group=GROUP) == 0
    assert sample(on_a, "coordinator_heartbeat_duration_seconds_count", kind="batch") > 0


def test_database_outage_makes_instances_unready_but_keeps_them_live(
    pg_server: Any, dsn: str, spawn: Spawn
) -> None:
    """Restarting a pod does not bring its database back: /livez stays 200, /readyz goes 503."""
    first = spawn(dsn, [GROUP], instance_id="a", **FAST, extra_args=HTTP_ANY_PORT)
    first.wait_for("leadership_acquired", WAIT, term=1)
    second = spawn(dsn, [GROUP], instance_id="b", **FAST, extra_args=HTTP_ANY_PORT)
    second.wait_for("coordinator_started", WAIT)
    ports = [http_port(first), http_port(second)]
    for port in ports:
        wait_status(port, "/readyz", 200, WAIT)

    pg_server.kill()
    for port in ports:
        unready = wait_status(port, "/readyz", 503, WAIT)
        assert "the database is unreachable" in unready["reason"]
        wait_status(port, "/livez", 200, WAIT)  # while unready: an outage is no reason to restart
        status, answer = get_json(port, "/leader")
        assert status == 503
        assert answer["database_error"]
        assert answer["groups"][0]["leader"] is None
    wait_status(ports[0], f"/leader/{GROUP}", 503, WAIT)  # the old leader demotes itself
    on_a = metrics(ports[0])
    assert sample(on_a, "coordinator_heartbeat_failures_total", kind="batch") > 0

    pg_server.start()
    for port in ports:
        wait_status(port, "/readyz", 200, WAIT)
    deadline = time.monotonic() + WAIT
    while not any(get(port, f"/leader/{GROUP}")[0] == 200 for port in ports):
        assert time.monotonic() < deadline, "nobody took office after the database came back"
        time.sleep(0.02)


def test_taken_http_port_is_one_clear_line_before_connecting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "coordinator", "run", "--group", GROUP),
                *("--http", f"127.0.0.1:{port}", "--dsn", "postgresql://nobody@127.0.0.1:1/none"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "--http" in line


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    server = HttpServer(app, "127.0.0.1", 0)
    port = server.bind()
    await server.start()
    try:
        yield port
    finally:
        await server.stop()


async def aget(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    return await asyncio.to_thread(get, port, path, method=method)


@pytest.mark.parametrize("wait", ["block", "poll"])
async def test_endpoints_mounted_in_a_fastapi_app(dsn: str, wait: str) -> None:
    """The same endpoints under a prefix of the application's own app, and nothing that writes.

    In both ways of waiting: a session per group, or one shared session.
    """
    coord = coordinator(dsn, "mounted", GROUP, "team/a", wait=wait)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with coord:
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/coordinator", http_app(coord))

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    async with served(app) as port:
        await coord.group(GROUP).wait_elected(WAIT)
        await coord.group("team/a").wait_elected(WAIT)
        assert await aget(port, "/hello") == (200, b'{"hello":"world"}')
        assert (await aget(port, "/coordinator/leader/team%2Fa"))[0] == 200
        for path in ("/livez", "/readyz", f"/leader/{GROUP}", "/leader", "/"):
            assert (await aget(port, "/coordinator" + path, "OPTIONS"))[0] == 200, path
        paths = ("/livez", "/readyz", f"/leader/{GROUP}", "/leader", "/members", "/cluster")
        for path in (*paths, "/metrics", "/", "/view.js", "/view.css"):
            status, _ = await aget(port, "/coordinator" + path)
            assert status == 200, path
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                status, _ = await aget(port, "/coordinator" + path, method)
                assert status == 405, (method, path)
        status, members = await aget(port, "/coordinator/members")
        assert {
            (m["group"], m["instance_id"], m["role"], m["live"])
            for m in json.loads(members)["members"]
        } == {(GROUP, "mounted", "leader", True), ("team/a", "mounted", "leader", True)}
        status, cluster = await aget(port, "/coordinator/cluster")
        view = json.loads(cluster)
        assert [g["group"] for g in view["groups"]] == sorted([GROUP, "team/a"])
        assert {(e["group"], e["kind"], e["term"]) for e in view["events"]} == {
            (GROUP, "elected", 1),
            ("team/a", "elected", 1),
        }
        later = view["events"][-1]["at"].replace("+", "%2B")
        _, since = await aget(port, f"/coordinator/cluster?since={later}")
        assert len(json.loads(since)["events"]) == 1
        assert (await aget(port, "/coordinator/cluster?since=yesterday"))[0] == 400
        page = (await aget(port, "/coordinator/"))[1]
        assert b'src="view.js"' in page  # relative: the page works under any prefix
        status, body = await aget(port, "/coordinator/metrics")
        assert sample(
            parse_metrics(body.decode()), "leader_election_master_status", name=GROUP, group=GROUP
        )
        assert (await aget(port, "/coordinator/leader/nope"))[0] == 404

        await coord.stop()
        for path in ("/livez", "/readyz", f"/leader/{GROUP}"):
            assert (await aget(port, "/coordinator" + path))[0] == 503, path
            # HAProxy's httpchk asks with OPTIONS: the same answer.
            assert (await aget(port, "/coordinator" + path, "OPTIONS"))[0] == 503, path


async def test_blocked_event_loop_fails_liveness_until_the_heartbeat_job_catches_up(
    dsn: str,
) -> None:
    """Block the loop past the limit: the next look at /livez says so, then it recovers."""
    coord = coordinator(dsn, "blocked")
    app = http_app(coord)
    health = app.state.health
    async with coord, served(app) as port:
        await coord.group(GROUP).wait_elected(WAIT)
        assert health.live().ok
        time.sleep(health.stale_after * 1.5)  # noqa: ASYNC251 - the fault: a blocked event loop
        verdict = health.live()
        assert not verdict.ok
        assert "stuck" in verdict.reason
        status, _ = await aget(port, "/livez")
        assert status in (200, 503)  # the late job may or may not have run by now
        deadline = asyncio.get_running_loop().time() + WAIT
        while not health.live().ok:
            assert asyncio.get_running_loop().time() < deadline, "liveness never recovered"
            await asyncio.sleep(0.02)
        assert (await aget(port, "/livez"))[0] == 200
