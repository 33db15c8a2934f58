"""pals, the advisory-lock peer, as the overhead measurement starts it.

Its failovers are measured with the other peers (:mod:`bench.peers`); like
pg-coordinator's followers, pals' waiters block in ``pg_advisory_lock``.
"""

from __future__ import annotations

from pathlib import Path

from bench.children import Child
from bench.database import Database

__all__ = ["MODULE", "leader", "leader_args"]

MODULE = "bench.subjects.pals_leader"


def leader_args(db: Database, name: str) -> list[str]:
    """The subject's arguments: its URL names the member, which is how the driver finds the
    holder in ``pg_locks``."""
    return [f"{db.url('psycopg')}?application_name={name}"]


def leader(db: Database, python: Path, name: str, log_dir: Path) -> Child:
    """One pals leader loop, run by ``python`` (the pals environment's interpreter)."""
    return Child(name, python, MODULE, leader_args(db, name), log_dir)
