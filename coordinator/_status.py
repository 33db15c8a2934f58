"""Reading who leads, and who takes part, from any process, leader or not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from coordinator._reading import fetch_rows

__all__ = ["GroupStatus", "MemberStatus", "read_members", "read_status"]


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
        return _json(self)


@dataclass(frozen=True)
class MemberStatus:
    """One instance taking part in one group, from its heartbeat row.

    ``live`` while its heartbeat is younger than the group's ttl; ``role`` is
    ``leader`` only for the group's live leader by ``leader_status`` (a
    leader whose lock or heartbeat is gone shows as ``follower``, not live
    or without the lock). A ``candidate`` is a live member that does not
    lead: one of those takes over when the leader goes. ``term`` is the
    term it leads under, else None.
    """

    group: str
    instance_id: str
    role: str
    term: int | None
    host: str | None
    pid: int | None
    joined_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    live: bool
    candidate: bool

    def as_json(self) -> dict[str, Any]:
        """Exactly the keys of ``coordinator status --members --json`` and ``/members``."""
        return _json(self)


def _json(row: GroupStatus | MemberStatus) -> dict[str, Any]:
    """The fields as JSON values: times as ISO 8601, ages to the millisecond."""
    answer = asdict(row)
    for key, value in answer.items():
        if isinstance(value, datetime):
            answer[key] = value.isoformat()
    if answer["heartbeat_age_s"] is not None:
        answer["heartbeat_age_s"] = round(answer["heartbeat_age_s"], 3)
    return answer


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


async def read_members(
    dsn_or_conn: str | asyncpg.Connection, *, schema: str = "coordinator"
) -> list[MemberStatus]:
    """Every member of every group, ordered by group and instance id."""
    rows = await fetch_rows(dsn_or_conn, schema, lambda sql: sql.members)
    return [
        MemberStatus(
            group=row["group_name"],
            instance_id=row["instance_id"],
            role="leader" if row["is_leader"] else "follower",
            term=row["term"] if row["is_leader"] else None,
            host=row["host"],
            pid=row["pid"],
            joined_at=row["joined_at"],
            heartbeat_at=row["heartbeat_at"],
            heartbeat_age_s=row["heartbeat_age_s"],
            live=bool(row["is_live"]),
            candidate=bool(row["is_live"]) and not row["is_leader"],
        )
        for row in rows
    ]
