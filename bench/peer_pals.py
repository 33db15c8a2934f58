"""pals, the measured advisory-lock peer: a leader loop with pals' default settings.

Like pg-coordinator's followers, pals' waiters block in ``pg_advisory_lock``,
so a crash hands over at the floor's pace. Unlike it, nothing watches a
leader that hangs with its session open: the hang check freezes the holder
and watches for a new leader for a bounded window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.children import Child
from bench.cluster import Cluster, Fault, Member
from bench.database import Database
from bench.stats import Distribution

__all__ = ["PalsResults", "leader", "measure_pals"]

_CRASH_BOUND_S = 10.0
_SETTLE_S = 0.1


@dataclass(frozen=True)
class PalsResults:
    kill: Distribution
    #: How long the hang check watched; ``hang_takeover`` is None if nobody took office in it.
    hang_window: float
    hang_takeover: float | None


def leader(db: Database, python: Path, name: str, log_dir: Path) -> Child:
    """One pals leader loop, run by ``python`` (the pals environment's interpreter)."""
    url = f"{db.url('psycopg')}?application_name={name}"  # how the driver finds the holder
    return Child(name, python, "bench.subjects.pals_leader", [url], log_dir)


async def measure_pals(
    db: Database,
    python: Path,
    trials: int,
    hang_window: float,
    log_dir: Path,
    *,
    instances: int = 3,
) -> PalsResults:
    async def spawn(name: str) -> Member:
        child = leader(db, python, name, log_dir)
        await child.start()
        return Member(child)

    cluster = Cluster(db, instances, "pals-kill", spawn, _SETTLE_S)
    try:
        await cluster.start()
        kills = [(await cluster.trial(Fault.KILL, _CRASH_BOUND_S)).failover for _ in range(trials)]
    finally:
        await cluster.close()

    cluster = Cluster(db, instances, "pals-stop", spawn, _SETTLE_S)
    try:
        await cluster.start()
        try:
            takeover: float | None = (await cluster.trial(Fault.STOP, hang_window)).failover
        except TimeoutError:
            takeover = None
    finally:
        await cluster.close()
    return PalsResults(Distribution.of(kills), hang_window, takeover)
