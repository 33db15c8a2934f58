"""The Flask example (coordinator.sync, a BackgroundScheduler, psycopg 3) as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import FAST, eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SLACK = 20.0


class Replica:
    def __init__(self, dsn: str, instance_id: str) -> None:
        self.instance_id = instance_id
        command = [sys.executable, "-m", "examples.flask_app", "--port", "0"]
        command += ["--instance-id", instance_id, "--tick-interval", "0.1"]
        for name, value in FAST.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "COORDINATOR_DSN": dsn},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = json.loads(self.process.stdout.readline())["listening"]

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=SLACK) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def replica(dsn: str) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(instance_id: str) -> Replica:
        started.append(Replica(dsn, instance_id))
        return started[-1]

    yield start
    for one in started:
        one.close()


def rows(dsn: str) -> list[tuple[str, int, datetime]]:
    """The job's committed rows: (instance id, term, the tick's scheduled time), in order."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT instance_id, term, scheduled_at FROM flask_ticks ORDER BY id"
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in found]


def ticks(dsn: str) -> list[tuple[str, int]]:
    return [(who, term) for who, term, _ in rows(dsn)]


def assert_each_tick_committed_once_in_order(dsn: str) -> None:
    scheduled = [at for _, _, at in rows(dsn)]
    assert len(set(scheduled)) == len(scheduled), "no tick's row committed twice"
    terms = [term for _, term, _ in rows(dsn)]
    assert terms == sorted(terms), "no row of an older term after one of a newer term"
    assert scheduled == sorted(scheduled), "the new leader went on from the shared timetable"


def unfinished_runs(dsn: str, term: int) -> list[str]:
    """How the runs of ``term`` ended, where they were neither done nor skipped (late)."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT outcome FROM coordinator.job_runs WHERE term = %s"
            " AND outcome NOT IN ('done', 'skipped')",
            (term,),
        ).fetchall()
    return [row[0] for row in found]


def test_the_job_runs_on_one_replica_and_moves_on_when_it_is_killed(
    dsn: str, replica: Callable[[str], Replica]
) -> None:
    first, second = replica("a"), replica("b")
    both = {first.instance_id: first, second.instance_id: second}
    leader_id = eventually(
        lambda: next(
            (s["instance_id"] for s in (first.state(), second.state()) if s["is_leader"]), None
        ),
        SLACK,
        what="a leader",
    )
    leader = both[leader_id]
    other = second if leader is first else first
    eventually(lambda: len(ticks(dsn)) >= 3, SLACK, what="the leader's ticks")
    assert {who for who, _ in ticks(dsn)} == {leader_id}, "only the leader runs the job"
    assert other.state()["is_leader"] is False

    leader.process.kill()
    state = eventually(
        lambda: (s := other.state())["is_leader"] and s, SLACK, what="the other to lead"
    )
    assert state["term"] == 2
    eventually(lambda: (other.instance_id, 2) in ticks(dsn), SLACK, what="ticks of the new term")
    assert set(ticks(dsn)) == {(leader_id, 1), (other.instance_id, 2)}
    assert_each_tick_committed_once_in_order(dsn)


def test_sigterm_hands_over_after_the_running_tick(
    dsn: str, replica: Callable[[str], Replica]
) -> None:
    first = replica("a")
    eventually(lambda: first.state()["is_leader"], SLACK, what="the first to lead")
    second = replica("b")
    eventually(lambda: len(ticks(dsn)) >= 2, SLACK, what="ticks")
    first.process.terminate()
    assert first.process.wait(SLACK) == 0
    eventually(lambda: second.state()["term"] == 2, SLACK, what="the second to lead")
    eventually(lambda: ("b", 2) in ticks(dsn), SLACK, what="ticks of the new term")
    assert_each_tick_committed_once_in_order(dsn)
    assert unfinished_runs(dsn, 1) == [], "the run in progress finished before the hand-over"
