"""``coordinator watch``: print changes of leadership as they happen, until SIGINT or SIGTERM.

It listens on the coordinator's notification channel and reconnects when
the connection is lost; first, and after every reconnect, it prints who
leads each group (kind ``current``), so that a gap is never silent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from coordinator._logging import configure_logging
from coordinator._observe import observe
from coordinator.cli._common import Subparsers, add_database_options, require_dsn
from coordinator.cli.history import format_event

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("watch", help="print changes of leadership as they happen")
    add_database_options(parser)
    parser.add_argument(
        "--group",
        action="append",
        dest="groups",
        metavar="NAME",
        help="only this group; repeat for several (default: every group)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    dsn = require_dsn(args)
    # Standard output carries the changes only; notes about reconnecting go to stderr.
    configure_logging("console", stream=sys.stderr)
    return asyncio.run(_watch(dsn, args.groups or (), args.schema, as_json=args.json))


async def _watch(dsn: str, groups: Sequence[str], schema: str, *, as_json: bool) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    printing = asyncio.create_task(_print_changes(dsn, groups, schema, as_json=as_json))
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait({printing, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if printing.done():
        printing.result()  # the first connection failed: the CLI prints why
    printing.cancel()
    await asyncio.gather(printing, return_exceptions=True)
    return 0


async def _print_changes(dsn: str, groups: Sequence[str], schema: str, *, as_json: bool) -> None:
    async with contextlib.aclosing(observe(dsn, *groups, schema=schema)) as changes:
        async for event in changes:
            received_at = datetime.now(UTC)
            if as_json:
                line = json.dumps({**event.as_json(), "received_at": received_at.isoformat()})
            else:
                line = format_event(event, received_at=received_at)
            print(line, flush=True)
