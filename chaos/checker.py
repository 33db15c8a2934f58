"""The checker: the guarantees, judged from what the instances recorded.

Pure functions over plain records, so they are easy to test on hand-made
histories; the runner feeds them the instances' logs and output, the ledger
and its own fault log.

Two kinds of overlap are told apart. A *belief overlap* is two instances
acting as leader of one group at overlapping moments of their own clocks:
``is_leader`` is a belief, bounded by the trust deadline and, when a session
is killed from outside, by how soon the old leader's event loop learns of
it; these are counted and reported, not failed. An *acting overlap* is a
fenced write of an old term committed after one of a newer term, judged by
the commit timestamps: that breaks fencing and fails the run.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "STARTED_MARK",
    "STOPPING_MARK",
    "Fault",
    "LedgerRow",
    "Office",
    "Overlap",
    "Violation",
    "belief_overlaps",
    "check_dead_loops",
    "check_fencing",
    "check_output",
    "check_recovery",
    "check_terms",
    "offices_from_records",
]


@dataclass(frozen=True)
class Office:
    """One instance acting as leader of one group in one term: first and last act."""

    group: str
    term: int
    instance: str
    start: float
    end: float


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    target: str
    groups: tuple[str, ...]  # the groups whose leader it hit
    bound: float  # seconds within which a leader must be back


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str


@dataclass(frozen=True)
class Overlap:
    """Two instances believed they led one group at once, for ``seconds``."""

    group: str
    before: Office
    after: Office

    @property
    def seconds(self) -> float:
        return min(self.before.end, self.after.end) - self.after.start


@dataclass(frozen=True)
class LedgerRow:
    """One fenced write: its group and term, and when its transaction committed."""

    group: str
    term: int
    committed: float  # pg_xact_commit_timestamp, as seconds since the epoch
    row_id: int


def offices_from_records(records: Iterable[dict[str, object]]) -> list[Office]:
    spans: dict[tuple[str, int, str], list[float]] = {}
    for record in records:
        if record.get("kind") != "acting":
            continue
        key = (str(record["group"]), int(str(record["term"])), str(record["instance"]))
        mono = float(str(record["mono"]))
        span = spans.setdefault(key, [mono, mono])
        span[0], span[1] = min(span[0], mono), max(span[1], mono)
    return sorted(
        (
            Office(group, term, instance, start, end)
            for (group, term, instance), (start, end) in spans.items()
        ),
        key=lambda office: (office.group, office.start),
    )


def _timelines(offices: Sequence[Office]) -> Iterable[tuple[str, list[Office]]]:
    by_group: dict[str, list[Office]] = defaultdict(list)
    for office in offices:
        by_group[office.group].append(office)
    for group, timeline in sorted(by_group.items()):
        yield group, sorted(timeline, key=lambda office: office.start)


def belief_overlaps(offices: Sequence[Office]) -> list[Overlap]:
    """Per group, offices of different instances whose acting moments overlap."""
    return [
        Overlap(group, before, after)
        for group, timeline in _timelines(offices)
        for before, after in itertools.pairwise(timeline)
        if after.start <= before.end and after.instance != before.instance
    ]


def check_terms(offices: Sequence[Office]) -> list[Violation]:
    """Per group, terms strictly grow from one office to the next: a term never repeats."""
    return [
        Violation(
            "terms",
            (
                f"group {group}: term {after.term} of {after.instance} began "
                f"after term {before.term} of {before.instance}"
            ),
        )
        for group, timeline in _timelines(offices)
        for before, after in itertools.pairwise(timeline)
        if after.term <= before.term
    ]


def check_fencing(ledger: Sequence[LedgerRow]) -> list[Violation]:
    """No write of an old term was committed after a write of a newer term (acting overlap).

    Rows are ordered by their commit timestamps (``track_commit_timestamp``),
    not by their ids: an id is drawn when a row is inserted, and a write that
    drew an early id may still commit late.
    """
    violations = []
    newest: dict[str, LedgerRow] = {}
    for row in sorted(ledger, key=lambda row: (row.committed, row.row_id)):
        seen = newest.get(row.group)
        if seen is not None and row.term < seen.term:
            violations.append(
                Violation(
                    "fencing",
                    (
                        f"group {row.group}: write {row.row_id} of term {row.term} committed "
                        f"{row.committed - seen.committed:.6f} s after write {seen.row_id} "
                        f"of term {seen.term}"
                    ),
                )
            )
        if seen is None or row.term > seen.term:
            newest[row.group] = row
    return violations


def check_dead_loops(records: Iterable[dict[str, object]]) -> list[Violation]:
    """An election loop that ended while its coordinator ran."""
    return [
        Violation(
            "dead loop", f"{record['instance']}: loop of {record['group']}: {record['error']}"
        )
        for record in records
        if record.get("kind") == "loop_died"
    ]


#: What a worker prints on stderr when it starts, and when SIGTERM asks it to stop.
STARTED_MARK = "chaos worker: started"
STOPPING_MARK = "chaos worker: stopping"


def check_output(outputs: Iterable[tuple[str, str]]) -> list[Violation]:
    """Tracebacks in the workers' output: one violation per output and exception.

    Each names the line of its first traceback, so that it reads the same
    however many more follow. One printed while its worker stopped (after
    its stopping mark, before the next start) is a ``traceback at shutdown``.
    """
    first: dict[tuple[str, str, str], int] = {}
    for source, text in outputs:
        lines = text.splitlines()
        rule = "traceback"
        for number, line in enumerate(lines, start=1):
            if line.startswith((STARTED_MARK, STOPPING_MARK)):
                rule = "traceback" if line.startswith(STARTED_MARK) else "traceback at shutdown"
            elif "Traceback (most recent call last)" in line:
                last = next((later for later in lines[number:] if later[:1] not in " \t"), "")
                first.setdefault((rule, source, last), number)
    return [
        Violation(rule, f"{source} line {number}: {last}")
        for (rule, source, last), number in sorted(first.items())
    ]


def check_recovery(
    faults: Sequence[Fault], offices: Sequence[Office]
) -> tuple[list[Violation], dict[str, list[float]], float]:
    """After every fault, each group whose leader it hit has a new leader within the bound.

    Returns violations, the recovery times by fault kind, and the total
    leaderless time summed over groups.
    """
    violations = []
    recoveries: dict[str, list[float]] = defaultdict(list)
    leaderless = 0.0
    for fault in faults:
        for group in fault.groups:
            later = [o.start for o in offices if o.group == group and o.start > fault.at]
            if not later:
                violations.append(
                    Violation(
                        "recovery",
                        (f"group {group}: no leader after {fault.kind} of {fault.target}"),
                    )
                )
                continue
            took = min(later) - fault.at
            recoveries[fault.kind].append(took)
            leaderless += took
            if took > fault.bound:
                violations.append(
                    Violation(
                        "recovery",
                        (
                            f"group {group}: {took:.3f} s without a leader after {fault.kind} of "
                            f"{fault.target} (bound {fault.bound:.1f} s)"
                        ),
                    )
                )
    return violations, dict(recoveries), leaderless
