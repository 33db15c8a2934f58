"""``coordinator migrate``: apply pending migrations; safe from many replicas at once."""

from __future__ import annotations

import argparse
import asyncio

from coordinator._migrations import migrate
from coordinator.cli._common import Subparsers, add_database_options, require_dsn

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("migrate", help="apply pending migrations (idempotent)")
    add_database_options(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate(require_dsn(args), schema=args.schema))
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))} to schema {args.schema}")
    else:
        print(f"schema {args.schema} is up to date")
    return 0
