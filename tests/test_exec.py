"""``coordinator run --exec -- CMD``: the command runs only while its instance leads.

Every instance is a real process; its command is ``tests/exec_child.py``,
which appends its start and its SIGTERM to one file, stamped with the
machine's monotonic clock, so that the order of two instances' commands is
read off one clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.testing import CoordinatorProcess
from helpers import FAST, eventually, lock_waiters_now

GROUP = "scheduler"
SLACK = 15.0
CHILD = str(Path(__file__).with_name("exec_child.py"))

pytestmark = pytest.mark.slow

Spawn = Callable[..., CoordinatorProcess]


class Records:
    """The lines the commands of every instance appended to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def wait_for(self, event: str, timeout: float = SLACK, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.all():
                if line["event"] == event and all(line[k] == v for k, v in fields.items()):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} {fields} in {self.all()}")
            time.sleep(0.02)


@pytest.fixture
def records(tmp_path: Path) -> Records:
    return Records(tmp_path / "records.jsonl")


def leader(
    spawn: Spawn,
    dsn: str,
    records: Records,
    instance_id: str,
    *exec_args: str,
    env: dict[str, str] | None = None,
) -> CoordinatorProcess:
    return spawn(
        dsn,
        [GROUP],
        instance_id=instance_id,
        **FAST,
        extra_args=[*exec_args, "--exec", "--", sys.executable, CHILD],
        env={"EXEC_RECORDS": str(records.path), **(env or {})},
    )


def leader_and_follower(
    spawn: Spawn, dsn: str, records: Records, *leader_args: str
) -> tuple[CoordinatorProcess, CoordinatorProcess, dict[str, Any]]:
    """Instance a leads and its command has started (that record returned); b waits for the lock."""
    first = leader(spawn, dsn, records, "a", *leader_args)
    first.wait_for("leadership_acquired", SLACK, term=1)
    started = records.wait_for("started", instance_id="a")
    second = leader(spawn, dsn, records, "b")
    second.wait_for("coordinator_started", SLACK)
    eventually(lambda: lock_waiters_now(dsn), SLACK, what="b in the lock's queue")
    return first, second, started


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it is dead, only not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout: float = SLACK) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs after {timeout:g} s")
        time.sleep(0.02)


def test_the_command_runs_on_the_leader_only_and_stops_before_the_next_one_starts(
    dsn: str, spawn: Spawn, records: Records
) -> None:
    first, second, started = leader_and_follower(spawn, dsn, records, "--exec-grace", "2")
    assert (started["group"], started["term"], started["schema"]) == (GROUP, 1, "coordinator")
    assert [r["instance_id"] for r in records.all()] == ["a"], "the follower runs nothing"

    first.terminate()  # graceful: SIGTERM for the command, then the lock is released
    second.wait_for("leadership_acquired", SLACK, term=2)
    took_over = records.wait_for("started", instance_id="b")
    terminated = records.wait_for("terminated", instance_id="a")
    assert terminated["at"] < took_over["at"]
    assert took_over["term"] == 2
    assert first.wait_exit(SLACK) == 0
    stopped = first.wait_for("exec_child_stopped", 0)
    assert (stopped["exit_code"], stopped["reason"]) == (0, "stopping")


def test_sigkill_of_the_leader_kills_its_command_and_the_next_leader_starts_its_own(
    dsn: str, spawn: Spawn, records: Records
) -> None:
    first, second, started = leader_and_follower(spawn, dsn, records)
    orphan = started["pid"]

    first.kill()
    second.wait_for("leadership_acquired", SLACK, term=2)
    assert records.wait_for("started", instance_id="b")["term"] == 2
    wait_dead(orphan)
    killed = first.wait_for("exec_child_killed", SLACK)  # the leash, outliving the instance
    assert (killed["pid"], killed["reason"]) == (orphan, "instance_gone")


def test_a_frozen_leader_s_command_is_killed_before_the_next_leader_s_command_starts(
    dsn: str, spawn: Spawn, records: Records
) -> None:
    """SIGSTOP stops the instance, not its command: the leash kills the command at the
    instance's trust deadline, which comes before anyone may fence the instance."""
    first, second, started = leader_and_follower(spawn, dsn, records)
    frozen_child = started["pid"]

    first.freeze()
    try:
        second.wait_for("leadership_acquired", SLACK, term=2)
        took_over = records.wait_for("started", instance_id="b")
        killed = first.wait_for("exec_child_killed", SLACK)
        assert (killed["pid"], killed["reason"]) == (frozen_child, "trust_expired")
        assert killed["dead_at"] < took_over["at"]
        assert not alive(frozen_child)
        assert not any(r["event"] == "terminated" for r in records.all()), "killed, not stopped"
    finally:
        first.thaw()
    first.wait_for("leadership_lost", SLACK, term=1)


def test_a_command_that_exits_on_its_own_makes_its_instance_resign(
    dsn: str, spawn: Spawn, records: Records
) -> None:
    first, second, started = leader_and_follower(spawn, dsn, records)
    child = started["pid"]

    os.kill(child, signal.SIGUSR1)  # exits with status 3
    exited = first.wait_for("exec_child_exited", SLACK)
    assert (exited["exit_code"], exited["term"], exited["then"]) == (3, 1, "resign")
    first.wait_for("leadership_released", SLACK, term=1, reason="resigned")
    second.wait_for("leadership_acquired", SLACK, term=2)
    assert records.wait_for("started", instance_id="b")["term"] == 2


def test_with_exec_restart_a_command_that_exits_starts_again_in_the_same_term(
    dsn: str, spawn: Spawn, records: Records
) -> None:
    instance = leader(spawn, dsn, records, "a", "--exec-restart")
    instance.wait_for("leadership_acquired", SLACK, term=1)
    child = instance.wait_for("exec_child_started", SLACK)["pid"]
    records.wait_for("started", pid=child)

    os.kill(child, signal.SIGUSR1)
    exited = instance.wait_for("exec_child_exited", SLACK)
    assert (exited["exit_code"], exited["term"], exited["then"]) == (3, 1, "restart")
    again = instance.wait_for("exec_child_started", SLACK)
    assert again["pid"] != child
    assert [(r["event"], r["term"]) for r in records.all()][:1] == [("started", 1)]
    assert records.wait_for("started", pid=again["pid"])["term"] == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--group", "a", "--group", "b", "--exec", "--", "true"],
            "--exec runs one command for one group, and 2 groups are given: "
            "pass exactly one --group (run one instance per command)",
        ),
        (
            ["--group", "a", "--exec", "--", "no-such-command"],
            "--exec: command 'no-such-command' is not found or not executable: give its path, "
            "or install it on this host's PATH",
        ),
        (
            ["--group", "a", "--exec-grace", "15", "--exec", "--", "true"],
            "the exec grace period (15 s) must be at least 0 and shorter than callback_timeout "
            "(15 s), or the lock could be handed over while the command still runs: lower "
            "--exec-grace or raise --callback-timeout",
        ),
        (
            ["--group", "a", "true"],
            "unexpected argument 'true': to run a command while leading, put it after "
            "--exec --, as in: coordinator run --group NAME --exec -- CMD ARGS",
        ),
    ],
)
def test_bad_exec_input_is_one_line_before_anything_connects(args: list[str], error: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "run", "--dsn", "postgresql://nobody@/x", *args],
        capture_output=True,
        text=True,
        timeout=SLACK,
        check=False,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [f"coordinator: error: {error}"]
