"""Reading who leads, from any process, leader or not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from coordinator._reading import fetch_rows

__all__ = ["GroupStatus", "read_status"]


@dataclass(frozen=True)
class GroupStatus:
    """One row of ``leader_status``: the truth for readers.

    ``leader`` is None when nobody leads, or when the recorded holder's lock
    is gone or its heartbeat is older than the ttl (``stale``).
    ``squatter_pid`` is the backend that holds the group's lock without
    being a coordinator session (nobody can be elected while it does).
    """

    group: str
    leader: str | None
    term: int
    acquired_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    stale: bool
    lock_held: bool
    squatter_pid: int | None = None

    def as_json(self) -> dict[str, Any]:
        """Exactly the keys of ``coordinator status --json``; times as ISO 8601."""
        row = asdict(self)
        for key in ("acquired_at", "heartbeat_at"):
            if row[key] is not None:
                row[key] = row[key].isoformat()
        if row["heartbeat_age_s"] is not None:
            row["heartbeat_age_s"] = round(row["heartbeat_age_s"], 3)
        return row


async def read_status(
    dsn_or_conn: str | asyncpg.Connection, *, schema: str = "coordinator"
) -> list[GroupStatus]:
    """Every group's leader, term and liveness, ordered by group name."""
    rows = await fetch_rows(dsn_or_conn, schema, lambda sql: sql.leader_status)
    return [
        GroupStatus(
            group=row["group_name"],
            leader=row["leader"],
            term=row["term"],
            acquired_at=row["acquired_at"],
            heartbeat_at=row["heartbeat_at"],
            heartbeat_age_s=row["heartbeat_age_s"],
            stale=bool(row["is_stale"]),
            lock_held=bool(row["lock_held"]),
            squatter_pid=row["squatter_pid"],
        )
        for row in rows
    ]
