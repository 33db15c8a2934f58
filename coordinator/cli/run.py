"""``coordinator run``: take part in elections until SIGTERM or SIGINT, then resign."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import structlog

from coordinator._config import CoordinatorConfig
from coordinator._coordinator import Coordinator
from coordinator._logging import configure_logging
from coordinator.cli._common import Subparsers, add_database_options, require_dsn

__all__ = ["register"]

log = structlog.get_logger("coordinator")


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="take part in elections until SIGTERM or SIGINT, then resign"
    )
    add_database_options(parser)
    parser.add_argument(
        "--group",
        action="append",
        required=True,
        dest="groups",
        metavar="NAME",
        help="a group to take part in; repeat for several",
    )
    parser.add_argument("--instance-id", help="this instance's name (default: host-pid-random)")
    parser.add_argument(
        "--ttl",
        type=float,
        default=15.0,
        help="seconds without a heartbeat before a leader may be fenced (15)",
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=5.0, help="seconds between heartbeats (5)"
    )
    parser.add_argument(
        "--heartbeat-timeout", type=float, default=5.0, help="seconds one heartbeat may take (5)"
    )
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    # Before any logger is bound: a bound logger keeps the configuration it was made with.
    configure_logging(args.log_format)
    config = CoordinatorConfig(
        dsn=require_dsn(args),
        schema=args.schema,
        ttl=args.ttl,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        **({"instance_id": args.instance_id} if args.instance_id else {}),
    )
    coordinator = Coordinator(config=config)
    for name in dict.fromkeys(args.groups):
        coordinator.group(name)
    return asyncio.run(_serve(coordinator, args.groups))


async def _serve(coordinator: Coordinator, groups: Sequence[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await coordinator.start()
    try:
        await stop.wait()
        log.info("shutdown_requested", instance_id=coordinator.instance_id)
    finally:
        await coordinator.stop()
    return 0
