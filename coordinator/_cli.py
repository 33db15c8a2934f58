"""The ``coordinator`` command: migrate, run, status, demo.

Expected failures (bad input, unreachable database, missing migration) print
one line that names the cause and the fix, and exit with status 1; usage
errors exit with 2. Nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence

import structlog

from coordinator._config import CoordinatorConfig
from coordinator._coordinator import Coordinator
from coordinator._errors import CoordinatorError
from coordinator._logging import configure_logging
from coordinator._migrations import migrate
from coordinator._status import GroupStatus, read_status

__all__ = ["main"]

log = structlog.get_logger("coordinator")

_DSN_HELP = "PostgreSQL DSN (default: $COORDINATOR_DSN)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="Leader election for applications that already run on PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_dsn(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--dsn", default=os.environ.get("COORDINATOR_DSN"), help=_DSN_HELP)
        sub.add_argument(
            "--schema",
            default=os.environ.get("COORDINATOR_SCHEMA", "coordinator"),
            help="schema of the coordinator's tables (default: coordinator)",
        )
        return sub

    with_dsn(commands.add_parser("migrate", help="apply pending migrations (idempotent)"))

    run = with_dsn(
        commands.add_parser(
            "run", help="take part in elections until SIGTERM or SIGINT, then resign"
        )
    )
    run.add_argument(
        "--group",
        action="append",
        required=True,
        dest="groups",
        metavar="NAME",
        help="a group to take part in; repeat for several",
    )
    run.add_argument("--instance-id", help="this instance's name (default: host-pid-random)")
    run.add_argument(
        "--ttl",
        type=float,
        default=15.0,
        help="seconds without a heartbeat before a leader may be fenced (default 15)",
    )
    run.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        help="seconds between heartbeats (default 5)",
    )
    run.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=5.0,
        help="seconds one heartbeat may take (default 5)",
    )
    run.add_argument("--log-format", choices=("json", "console"), default="console")

    status = with_dsn(commands.add_parser("status", help="show every group's leader"))
    status.add_argument("--json", action="store_true", help="print a JSON array")

    demo = commands.add_parser(
        "demo", help="start an embedded PostgreSQL and show three instances failing over"
    )
    demo.add_argument("--instances", type=int, default=3, help="instances to start (default 3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from coordinator._demo import run_demo

            return run_demo(instances=args.instances)
        if not args.dsn:
            raise CoordinatorError(
                "no database given: pass --dsn or set COORDINATOR_DSN, "
                "e.g. postgresql://user:password@host:5432/dbname"
            )
        if args.command == "migrate":
            return asyncio.run(_migrate(args.dsn, args.schema))
        if args.command == "status":
            return asyncio.run(_status(args.dsn, args.schema, as_json=args.json))
        configure_logging(args.log_format)
        config = CoordinatorConfig(
            dsn=args.dsn,
            schema=args.schema,
            ttl=args.ttl,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            **({"instance_id": args.instance_id} if args.instance_id else {}),
        )
        return asyncio.run(_run(config, args.groups))
    except CoordinatorError as error:
        print(f"coordinator: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _migrate(dsn: str, schema: str) -> int:
    applied = await migrate(dsn, schema=schema)
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))} to schema {schema}")
    else:
        print(f"schema {schema} is up to date")
    return 0


async def _status(dsn: str, schema: str, *, as_json: bool) -> int:
    rows = await read_status(dsn, schema=schema)
    if as_json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        print(format_status(rows))
    return 0


def format_status(rows: Sequence[GroupStatus]) -> str:
    """A fixed-width table of ``leader_status`` rows, for people."""
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
    if len(lines) == 1:
        return "no groups yet"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


async def _run(config: CoordinatorConfig, groups: Sequence[str]) -> int:
    coordinator = Coordinator(config=config)
    for name in dict.fromkeys(groups):
        coordinator.group(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await coordinator.start()
    try:
        await stop.wait()
        log.info("shutdown_requested", instance_id=config.instance_id)
    finally:
        await coordinator.stop()
    return 0
