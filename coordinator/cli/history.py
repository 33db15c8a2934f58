"""``coordinator history``: who led which group when, from the events table."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta

from coordinator._observe import LeadershipEvent, read_history
from coordinator.cli._common import Subparsers, add_database_options, require_dsn
from coordinator.cli._settings import duration

__all__ = ["format_event", "parse_since", "register"]

_LONGEST_AGO = timedelta(days=36500)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("history", help="show recorded changes of leadership")
    add_database_options(parser)
    parser.add_argument("--group", help="only this group (default: every group)")
    parser.add_argument(
        "--since",
        type=parse_since,
        help="only events since a time (2024-05-01T12:00:00Z) or this long ago (90s, 30m, 2h, 7d)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    events = asyncio.run(
        read_history(require_dsn(args), group=args.group, since=args.since, schema=args.schema)
    )
    if args.json:
        print(json.dumps([event.as_json() for event in events], indent=2))
    elif not events:
        print("no events recorded" + (f" for group {args.group}" if args.group else ""))
    else:
        for event in events:
            print(format_event(event))
    return 0


def parse_since(text: str) -> datetime | timedelta:
    """A duration back from now (``30m``, or seconds), or a time; a time without a zone is UTC."""
    try:
        ago = duration(text)
    except argparse.ArgumentTypeError:
        pass
    else:
        if 0 <= ago <= _LONGEST_AGO.total_seconds():
            return timedelta(seconds=ago)
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration from 0 to 36500 days")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration nor a time: use e.g. 90s, 30m, 2h, 7d "
            "or 2024-05-01T12:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def format_event(event: LeadershipEvent, *, received_at: datetime | None = None) -> str:
    """One line for people: time, group, kind, term, instance, and the reason if any."""
    at = event.at or received_at
    who = event.instance_id or "-"
    if event.kind == "current":
        who = f"leader {event.instance_id}" if event.instance_id else "no leader"
    line = (
        f"{at.isoformat(timespec='milliseconds') if at else '-'}  {event.group}  "
        f"{event.kind:<9} term {event.term}  {who}"
    )
    return f"{line}  ({event.reason})" if event.reason else line
