"""``coordinator watch``: print changes of leadership as they happen, until SIGINT or SIGTERM.

It listens on the coordinator's notification channel and reconnects when
the connection is lost; first, and after every reconnect, it prints who
leads each group (kind ``current``), so that a gap is never silent. The
columns line up; ``resigned``, ``lost``, ``fenced`` and ``expired`` lines
end with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime

from coordinator._logging import configure_logging
from coordinator._observe import observe
from coordinator._status import read_status
from coordinator.cli._common import (
    Columns,
    Subparsers,
    add_database_options,
    event_cells,
    event_columns,
    require_dsn,
)

__all__ = ["print_changes", "register"]


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
    return print_changes(require_dsn(args), args.groups or (), args.schema, as_json=args.json)


def print_changes(
    dsn: str,
    groups: Sequence[str],
    schema: str,
    *,
    as_json: bool,
    columns: Columns | None = None,
) -> int:
    """Print each change of ``groups`` (all when empty) until SIGINT or SIGTERM; exit status 0."""
    # Standard output carries the changes only; notes about reconnecting go to stderr.
    configure_logging("console", stream=sys.stderr)
    printing = _print_changes(
        dsn, groups, schema, as_json=as_json, columns=columns or event_columns()
    )
    return asyncio.run(_until_stopped(printing))


async def _until_stopped(printing_changes: Coroutine[None, None, None]) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    printing = asyncio.create_task(printing_changes)
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait({printing, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if printing.done():
        printing.result()  # the first connection failed: the CLI prints why
    printing.cancel()
    await asyncio.gather(printing, return_exceptions=True)
    return 0


async def _print_changes(
    dsn: str, groups: Sequence[str], schema: str, *, as_json: bool, columns: Columns | None
) -> None:
    if columns is None:
        # The group column as wide as every group known now, so that the first lines line up.
        known = groups
        if not (groups or as_json):
            known = [row.group for row in await read_status(dsn, schema=schema)]
        columns = event_columns(known)
    async with contextlib.aclosing(observe(dsn, *groups, schema=schema)) as changes:
        async for event in changes:
            received_at = datetime.now(UTC)
            if as_json:
                line = json.dumps({**event.as_json(), "received_at": received_at.isoformat()})
            else:
                line = columns.line(event_cells(event, received_at=received_at))
            print(line, flush=True)
