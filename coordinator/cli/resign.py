"""``coordinator resign``: switchover, a graceful hand-over by the group's leader."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json

from coordinator._config import check_seconds
from coordinator._switchover import request_switchover
from coordinator.cli._common import Subparsers, add_database_options, require_dsn
from coordinator.cli._settings import duration

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "resign",
        help="ask a group's leader to hand over (switchover), and wait for the new leader",
    )
    add_database_options(parser)
    parser.add_argument("--group", required=True, help="the group whose leader hands over")
    parser.add_argument(
        "--to",
        metavar="INSTANCE",
        help="the live member that takes over (default: any other live member)",
    )
    parser.add_argument(
        "--timeout",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="how long to wait for the new leader, e.g. 30s or 2m (default: 30s)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    check_seconds("resign --timeout", args.timeout, 0.001, 24 * 3600.0, "")
    done = asyncio.run(
        request_switchover(
            require_dsn(args), args.group, args.to, schema=args.schema, timeout=args.timeout
        )
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(done)))
    else:
        print(
            f"group {done.group}: {done.leader} leads in term {done.term} "
            f"(handed over by {done.previous_leader}, term {done.previous_term})"
        )
    return 0
