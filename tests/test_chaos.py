"""The chaos checker catches what it must, and a short chaos run finds no violation."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.checker import (
    STARTED_MARK,
    STOPPING_MARK,
    Fault,
    LedgerRow,
    Office,
    belief_overlaps,
    check_dead_loops,
    check_fencing,
    check_output,
    check_recovery,
    check_terms,
)
from chaos.run import DEFAULT_FAULTS
from chaos.worker import Worker
from helpers import FAST

ROOT = Path(__file__).resolve().parent.parent


def test_overlapping_offices_of_two_instances_are_a_belief_overlap_not_a_violation() -> None:
    offices = [Office("g", 1, "a", 0.0, 5.0), Office("g", 2, "b", 4.9, 9.0)]
    (overlap,) = belief_overlaps(offices)
    assert (overlap.before.instance, overlap.after.instance) == ("a", "b")
    assert overlap.seconds == pytest.approx(0.1)
    assert check_terms(offices) == []


def test_successive_offices_with_growing_terms_pass() -> None:
    offices = [
        Office("g", 1, "a", 0.0, 5.0),
        Office("g", 2, "b", 5.1, 9.0),
        Office("h", 1, "b", 0.0, 9.0),
    ]
    assert check_terms(offices) == []
    assert belief_overlaps(offices) == []


def test_a_term_that_does_not_grow_is_reported() -> None:
    offices = [Office("g", 2, "a", 0.0, 5.0), Office("g", 2, "b", 6.0, 9.0)]
    assert [v.rule for v in check_terms(offices)] == ["terms"]


def test_an_old_term_committed_after_a_newer_one_breaks_fencing() -> None:
    ledger = [
        LedgerRow("g", 1, 10.0, 1),
        LedgerRow("g", 2, 11.0, 2),
        LedgerRow("g", 1, 12.0, 3),
        LedgerRow("h", 1, 13.0, 4),
    ]
    (violation,) = check_fencing(ledger)
    assert violation.rule == "fencing"
    assert "write 3 of term 1 committed 1.000000 s after write 2 of term 2" in violation.detail


def test_fencing_orders_writes_by_commit_time_not_by_id() -> None:
    """An old term's row that drew an early id but committed late is caught; ids alone pass it."""
    late_commit = [LedgerRow("g", 1, 12.0, 1), LedgerRow("g", 2, 11.0, 2)]
    (violation,) = check_fencing(late_commit)
    assert "write 1 of term 1" in violation.detail
    early_commit = [LedgerRow("g", 2, 11.0, 1), LedgerRow("g", 1, 10.0, 2)]
    assert check_fencing(early_commit) == []


def test_a_dead_loop_and_a_traceback_fail_the_run() -> None:
    records = [{"kind": "loop_died", "instance": "a", "group": "g", "error": "OSError()"}]
    assert [v.rule for v in check_dead_loops(records)] == ["dead loop"]
    output = "Traceback (most recent call last):\n  File 'x'\nValueError: boom\n" * 2
    (violation,) = check_output([("a.stderr", output), ("b.stderr", "a warning\n")])
    assert violation.detail == "a.stderr line 1: ValueError: boom"


def test_a_traceback_while_a_worker_stops_is_told_apart() -> None:
    traceback = "Traceback (most recent call last):\n  File 'x'\nCancelledError\n"
    output = f"{STARTED_MARK}\n{STOPPING_MARK}\n{traceback}{STARTED_MARK}\n{traceback}"
    rules = sorted(v.rule for v in check_output([("a.stderr", output)]))
    assert rules == ["traceback", "traceback at shutdown"]


def test_recovery_beyond_the_bound_is_reported() -> None:
    offices = [Office("g", 1, "a", 0.0, 5.0), Office("g", 2, "b", 7.0, 9.0)]
    quick = Fault("kill", 5.0, "a", ("g",), bound=1.0)
    violations, recoveries, leaderless = check_recovery([quick], offices)
    assert [v.rule for v in violations] == ["recovery"]
    assert recoveries == {"kill": [2.0]}
    assert leaderless == 2.0


def test_a_fault_after_which_nobody_leads_is_reported() -> None:
    offices = [Office("g", 1, "a", 0.0, 5.0)]
    violations, _, _ = check_recovery([Fault("stop", 5.0, "a", ("g",), 3.0)], offices)
    assert "no leader after stop" in violations[0].detail


#: The faults the smoke run injects: the run's default, every kind that passes today.
SMOKE_FAULTS = ",".join(DEFAULT_FAULTS)


@pytest.mark.slow
@pytest.mark.parametrize("wait", ["block", "poll"])
def test_short_chaos_run_has_no_violations(wait: str) -> None:
    """The CI smoke variant of `make chaos` on a durable server, in each way of waiting."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "chaos", "--duration", "30", "--seed", "20261129"),
            *("--wait", wait, "--faults", SMOKE_FAULTS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "violations: 0" in result.stdout
    assert "fenced ledger writes: 0" not in result.stdout
    assert "] faults 1: " in result.stdout, "progress is shown while it runs"
    workdir = Path(result.stdout.rsplit("instance logs and output in ", 1)[1].split(")")[0])
    assert sorted(p.name for p in workdir.glob("chaos-1.*")) == [
        "chaos-1.jsonl",
        "chaos-1.stderr",
        "chaos-1.stdout",
    ], "each worker's output is kept beside its log"


async def test_the_worker_watches_every_election_loop(dsn: str, tmp_path: Path) -> None:
    """The watcher finds each group's loop task: a loop it cannot see could die unseen."""
    args = argparse.Namespace(
        dsn=dsn,
        instance_id="watched",
        groups="alpha,beta",
        ttl=FAST["ttl"],
        heartbeat_interval=FAST["heartbeat_interval"],
        heartbeat_timeout=FAST["heartbeat_timeout"],
        log=str(tmp_path / "watched.jsonl"),
        wait="block",
        poll_interval=1.0,
    )
    worker = Worker(args)
    async with worker.coordinator:
        tasks = dict(worker.loop_tasks())
        assert sorted(tasks) == ["alpha", "beta"]
        assert all(task is not None and not task.done() for task in tasks.values())
    worker.log.close()
