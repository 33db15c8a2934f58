"""``coordinator status``: every group's leader, or every member, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from collections.abc import Sequence

from coordinator._status import GroupStatus, MemberStatus, read_members, read_status
from coordinator.cli._common import Columns, Subparsers, add_database_options, require_dsn

__all__ = ["format_leaderless", "format_members", "format_status", "register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("status", help="show every group's leader (or every member)")
    add_database_options(parser)
    parser.add_argument(
        "--members",
        action="store_true",
        help="list every member of every group: role, heartbeat age, term, host, pid, "
        "and whether it is a candidate (would take over)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    dsn = require_dsn(args)
    if args.members:
        members = asyncio.run(read_members(dsn, schema=args.schema))
        print(
            json.dumps([row.as_json() for row in members], indent=2)
            if args.json
            else format_members(members)
        )
        return 0
    rows = asyncio.run(read_status(dsn, schema=args.schema))
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
        return 0
    print(format_status(rows))
    spread = format_spread(rows)
    if spread:
        print(spread)
    if any(row.leader is None for row in rows):
        print(format_leaderless(rows, asyncio.run(read_members(dsn, schema=args.schema))))
    return 0


def format_leaderless(groups: Sequence[GroupStatus], members: Sequence[MemberStatus]) -> str:
    """Why each group without a leader has none: an election to come, or no one to win it.

    A candidate is a member whose heartbeat is live; an instance whose
    election loop keeps failing stops its member heartbeat for that group,
    so it is no candidate.
    """
    lines = []
    for row in groups:
        if row.leader is not None:
            continue
        candidates = sorted(m.instance_id for m in members if m.group == row.group and m.candidate)
        if row.squatter_pid is not None:
            why = f"backend {row.squatter_pid} holds its lock and is no coordinator's"
        elif candidates:
            why = f"nobody leads yet; live candidates: {', '.join(candidates)}"
        else:
            why = (
                "no candidate is healthy: no member heartbeats within the ttl "
                "(see the instances' /readyz and logs)"
            )
        lines.append(f"{row.group}: {why}")
    return "\n".join(lines)


def format_spread(rows: Sequence[GroupStatus]) -> str:
    """How many groups each leader holds, busiest first: how evenly the work is spread."""
    counts = Counter(row.leader for row in rows if row.leader is not None)
    if not counts:
        return ""
    spread = ", ".join(f"{leader} {count}" for leader, count in counts.most_common())
    vacant = sum(1 for row in rows if row.leader is None)
    return f"\nleaderships per instance: {spread}" + (
        f"; without a leader: {vacant}" if vacant else ""
    )


def format_status(rows: Sequence[GroupStatus]) -> str:
    """A fixed-width table of ``leader_status`` rows, for people."""
    if not rows:
        return "no groups yet"
    header = ["GROUP", "LEADER", "TERM", "ACQUIRED", "HEARTBEAT AGE", "STALE", "LOCK HELD"]
    return Columns().table(
        [
            header,
            *(
                [
                    row.group,
                    row.leader or "-",
                    str(row.term),
                    row.acquired_at.isoformat(timespec="milliseconds") if row.acquired_at else "-",
                    _age(row.heartbeat_age_s),
                    _yes(row.stale),
                    _yes(row.lock_held),
                ]
                for row in rows
            ),
        ]
    )


def format_members(rows: Sequence[MemberStatus]) -> str:
    """A fixed-width table of every member, group by group, for people."""
    if not rows:
        return "no members yet"
    header = [
        "GROUP",
        "INSTANCE",
        "ROLE",
        "TERM",
        "HEARTBEAT AGE",
        "LIVE",
        "CANDIDATE",
        "HOST",
        "PID",
    ]
    return Columns().table(
        [
            header,
            *(
                [
                    row.group,
                    row.instance_id,
                    row.role,
                    str(row.term) if row.term is not None else "-",
                    _age(row.heartbeat_age_s),
                    _yes(row.live),
                    _yes(row.candidate),
                    row.host or "-",
                    str(row.pid) if row.pid is not None else "-",
                ]
                for row in rows
            ),
        ]
    )


def _age(seconds: float | None) -> str:
    return f"{seconds:.3f} s" if seconds is not None else "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
