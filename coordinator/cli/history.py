"""``coordinator history``: who led which group when, from the events table."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta

from coordinator._observe import read_history
from coordinator.cli._common import (
    Subparsers,
    add_database_options,
    event_cells,
    event_columns,
    require_dsn,
)
from coordinator.cli._settings import duration
from coordinator.cli.watch import print_changes

__all__ = ["parse_since", "register"]

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
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="only the N most recent events"
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="then keep printing changes as they happen, as `coordinator watch` does",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (with --follow: one object per line)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    dsn = require_dsn(args)
    events = asyncio.run(read_history(dsn, group=args.group, since=args.since, schema=args.schema))
    if args.limit is not None:
        events = events[-args.limit :]
    columns = event_columns()
    if args.json and not args.follow:
        print(json.dumps([event.as_json() for event in events], indent=2))
    elif args.json:
        for event in events:
            print(json.dumps(event.as_json()))
    elif events:
        print(columns.table([event_cells(event) for event in events]))
    elif not args.follow:
        print("no events recorded" + (f" for group {args.group}" if args.group else ""))
    if args.follow:
        groups = [args.group] if args.group else []
        return print_changes(dsn, groups, args.schema, as_json=args.json, columns=columns)
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


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of events, 1 or more, got {text!r}"
        )
    return number
