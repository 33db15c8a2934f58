"""The checker: the guarantees, judged from what the instances recorded.

Pure functions over plain records, so they are easy to test on hand-made
histories; the runner feeds them the instances' logs, the ledger and its own
fault log.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Fault",
    "Office",
    "Violation",
    "check_fencing",
    "check_offices",
    "check_recovery",
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


def check_offices(offices: Sequence[Office]) -> list[Violation]:
    """S1 and S2: per group, offices never overlap and their terms strictly grow."""
    violations = []
    by_group: dict[str, list[Office]] = defaultdict(list)
    for office in offices:
        by_group[office.group].append(office)
    for group, timeline in by_group.items():
        timeline.sort(key=lambda office: office.start)
        for before, after in itertools.pairwise(timeline):
            if after.start <= before.end:
                violations.append(
                    Violation(
                        "two leaders",
                        (
                            f"group {group}: {before.instance} (term {before.term}) acted "
                            f"until {before.end:.6f}, {after.instance} (term {after.term}) "
                            f"from {after.start:.6f}"
                        ),
                    )
                )
            if after.term <= before.term:
                violations.append(
                    Violation(
                        "terms",
                        (
                            f"group {group}: term {after.term} of {after.instance} began "
                            f"after term {before.term} of {before.instance}"
                        ),
                    )
                )
    return violations


def check_fencing(ledger: Sequence[tuple[str, int, int]]) -> list[Violation]:
    """No write of an old term was committed after a write of a newer term.

    ``ledger`` rows are (group, term, id) with ids in insertion order; a
    fenced old-term write that was still open when a newer term began would
    have blocked that term, so in each group ids must order terms.
    """
    violations = []
    newest: dict[str, tuple[int, int]] = {}
    for group, term, row_id in sorted(ledger, key=lambda row: row[2]):
        seen = newest.get(group)
        if seen is not None and term < seen[0]:
            violations.append(
                Violation(
                    "fencing",
                    (
                        f"group {group}: write {row_id} of term {term} "
                        f"after write {seen[1]} of term {seen[0]}"
                    ),
                )
            )
        if seen is None or term > seen[0]:
            newest[group] = (term, row_id)
    return violations


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
