"""The chaos checker catches what it must, and a short chaos run finds no violation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chaos.checker import Fault, Office, check_fencing, check_offices, check_recovery

ROOT = Path(__file__).resolve().parent.parent


def test_overlapping_offices_are_two_leaders() -> None:
    offices = [Office("g", 1, "a", 0.0, 5.0), Office("g", 2, "b", 4.9, 9.0)]
    (violation,) = check_offices(offices)
    assert violation.rule == "two leaders"


def test_successive_offices_with_growing_terms_pass() -> None:
    offices = [
        Office("g", 1, "a", 0.0, 5.0),
        Office("g", 2, "b", 5.1, 9.0),
        Office("h", 1, "b", 0.0, 9.0),
    ]
    assert check_offices(offices) == []


def test_a_term_that_does_not_grow_is_reported() -> None:
    offices = [Office("g", 2, "a", 0.0, 5.0), Office("g", 2, "b", 6.0, 9.0)]
    assert [v.rule for v in check_offices(offices)] == ["terms"]


def test_an_old_term_written_after_a_newer_one_breaks_fencing() -> None:
    ledger = [("g", 1, 1), ("g", 2, 2), ("g", 1, 3), ("h", 1, 4)]
    (violation,) = check_fencing(ledger)
    assert violation.rule == "fencing"
    assert "write 3 of term 1 after write 2 of term 2" in violation.detail


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


@pytest.mark.slow
def test_short_chaos_run_has_no_violations() -> None:
    """The CI smoke variant of `make chaos`: every kind of fault, a few of each."""
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--duration", "45", "--seed", "20261129"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "violations: 0" in result.stdout
    assert "fenced ledger writes: 0" not in result.stdout
