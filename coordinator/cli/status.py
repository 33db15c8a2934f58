"""``coordinator status``: every group's leader, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from collections.abc import Sequence

from coordinator._status import GroupStatus, read_status
from coordinator.cli._common import Subparsers, add_database_options, require_dsn

__all__ = ["format_status", "register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("status", help="show every group's leader")
    add_database_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    rows = asyncio.run(read_status(require_dsn(args), schema=args.schema))
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        print(format_status(rows))
        spread = format_spread(rows)
        if spread:
            print(spread)
    return 0


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
    header = ("GROUP", "LEADER", "TERM", "ACQUIRED", "HEARTBEAT AGE", "STALE", "LOCK HELD")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.group,
                row.leader or "-",
                str(row.term),
                row.acquired_at.isoformat(timespec="milliseconds") if row.acquired_at else "-",
                f"{row.heartbeat_age_s:.3f} s" if row.heartbeat_age_s is not None else "-",
                "yes" if row.stale else "no",
                "yes" if row.lock_held else "no",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
