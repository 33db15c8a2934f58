"""Where a pg-coordinator hand-over's milliseconds go, phase by phase.

The same cluster as :mod:`bench.ours` (library defaults, three instances),
run with ``--trace``: besides ``elected`` and ``demoted`` the instances
report the SIGTERM handler, and each resign, unlock and lock-wait
statement as asyncpg saw it answered (see ``bench.subjects.pg_coordinator``).
The server adds when each transaction committed: with
``track_commit_timestamp`` on, ``pg_xact_commit_timestamp`` of the
``resigned`` and ``elected`` rows in the events table, converted from the
wall clock to the monotonic clock the reports use (one offset, read by the
driver; the two clocks are the same machine's).

Each point is a time after the signal; the trace reports, for every point,
its median over the trials and the median of its step from the previous
point. Nothing here changes what the elector does: the trace is a separate
series, so that the headline figures are measured without the query
loggers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.children import Child, Record
from bench.cluster import Fault, Trial
from bench.database import Database
from bench.ours import GROUP, Settings, run_trials
from bench.stats import Distribution, format_seconds

__all__ = ["Phase", "Trace", "measure_trace", "print_trace"]


@dataclass(frozen=True)
class Phase:
    """One point of the hand-over: when it happened after the signal, and since the last one."""

    point: str
    at: Distribution
    step: Distribution


@dataclass(frozen=True)
class Trace:
    fault: Fault
    trials: int
    phases: tuple[Phase, ...]


#: (event kind, term) -> when it committed, as monotonic time.
Commits = dict[tuple[str, int], float]
#: One point of one trial, in seconds after the signal; None if it was not seen.
Point = Callable[[Trial, Commits], float | None]


async def measure_trace(db: Database, fault: Fault, trials: int, log_dir: Path) -> Trace:
    """``trials`` hand-overs after ``fault`` (KILL or TERM) of a traced leader."""
    results = await run_trials(db, fault, Settings(), trials, log_dir, trace=True)
    commits = await _commits(db)
    points = _POINTS[fault]
    per_trial = [[point(trial, commits) for _, point in points] for trial in results]
    phases = []
    for i, (name, _) in enumerate(points):
        at = [value for row in per_trial if (value := row[i]) is not None]
        steps = [step for row in per_trial if (step := _step(row, i)) is not None]
        if at:
            phases.append(Phase(name, Distribution.of(at), Distribution.of(steps)))
    return Trace(fault, len(results), tuple(phases))


def print_trace(trace: Trace) -> None:
    """Each point's median time after the signal, and its median step, one line each."""
    print(f"hand-over trace, {trace.fault.value} ({trace.trials} trials):")
    for phase in trace.phases:
        print(
            f"  {phase.point:<55} at {format_seconds(phase.at.median):>9}  "
            f"step {format_seconds(phase.step.median):>9}",
            flush=True,
        )


def _step(row: list[float | None], i: int) -> float | None:
    """Point ``i`` of one trial minus the latest point before it that was seen (or the signal)."""
    value = row[i]
    if value is None:
        return None
    previous = next((p for p in reversed(row[:i]) if p is not None), 0.0)
    return value - previous


async def _commits(db: Database) -> Commits:
    """(kind, term) of each event in the benchmark's group, and its commit as monotonic time."""
    conn = await asyncpg.connect(db.dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT kind, term, pg_xact_commit_timestamp(xmin) AS committed
              FROM coordinator.events WHERE group_name = $1 AND term IS NOT NULL
            """,
            GROUP,
        )
    finally:
        await conn.close()
    offset = time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
    return {
        (row["kind"], row["term"]): row["committed"].timestamp() - offset
        for row in rows
        if row["committed"] is not None
    }


def _first(child: Child, after: float, event: str, kind: str | None = None) -> Record | None:
    return next(
        (
            r
            for r in child.records
            if r["event"] == event
            and float(r["t"]) > after
            and (kind is None or r.get("kind") == kind)
        ),
        None,
    )


def _report(who: str, event: str, kind: str | None = None, *, sent: bool = False) -> Point:
    """A report of the old leader (``who="old"``) or the new one, as time after the signal."""

    def point(trial: Trial, _: Commits) -> float | None:
        child = trial.leader if who == "old" else trial.successor
        record = _first(child, trial.injected, event, kind)
        if record is None:
            return None
        t = float(record["t"]) - (float(record["elapsed"]) if sent else 0.0)
        return t - trial.injected

    return point


def _committed(kind: str, term_of: Callable[[Trial], int | None]) -> Point:
    def point(trial: Trial, commits: Commits) -> float | None:
        term = term_of(trial)
        committed = None if term is None else commits.get((kind, term))
        return None if committed is None else committed - trial.injected

    return point


def _old_term(trial: Trial) -> int | None:
    terms = [
        int(r["term"])
        for r in trial.leader.records
        if r["event"] == "elected" and float(r["t"]) < trial.injected
    ]
    return terms[-1] if terms else None


def _new_term(trial: Trial) -> int | None:
    record = _first(trial.successor, trial.injected, "elected")
    return None if record is None else int(record["term"])


_HANDED_OVER: list[tuple[str, Point]] = [
    ("take office commit recorded", _committed("elected", _new_term)),
    ("the next leader's lock wait and take office answered", _report("new", "query", "campaign")),
    ("the next leader's on_elected runs", _report("new", "elected")),
]
_POINTS: dict[Fault, list[tuple[str, Point]]] = {
    Fault.KILL: _HANDED_OVER,
    Fault.TERM: [
        ("SIGTERM handler runs", _report("old", "sigterm")),
        ("on_demoted runs", _report("old", "demoted")),
        ("resign and unlock sent", _report("old", "query", "resign", sent=True)),
        ("resign commit recorded", _committed("resigned", _old_term)),
        *_HANDED_OVER,
    ],
}
