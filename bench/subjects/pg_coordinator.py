"""One pg-coordinator instance in one group, reporting each election and demotion.

``elected`` is reported from inside an ``on_elected`` callback, so a
failover is measured up to the moment the new leader's own code runs.
SIGTERM leaves the coordinator's context, which resigns: the graceful path.
Settings not given on the command line are the library's defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from bench.emit import emit
from coordinator import Coordinator
from coordinator._logging import configure_logging


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--instance-id", required=True)
    for option in ("--ttl", "--heartbeat-interval", "--heartbeat-timeout"):
        parser.add_argument(option, type=float)
    return parser.parse_args()


async def _serve(args: argparse.Namespace) -> None:
    settings: dict[str, Any] = {
        name: value
        for name in ("ttl", "heartbeat_interval", "heartbeat_timeout")
        if (value := getattr(args, name)) is not None
    }
    coordinator = Coordinator(args.dsn, instance_id=args.instance_id, **settings)
    group = coordinator.group(args.group)
    group.on_elected(lambda term: emit("elected", term=term))
    group.on_demoted(lambda reason: emit("demoted", reason=reason))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with coordinator:
        emit("started")
        await stop.wait()
    emit("stopped")


def main() -> None:
    # The library's log lines go to stderr (the driver's log file); stdout carries reports.
    configure_logging("console", stream=sys.stderr)
    asyncio.run(_serve(_parse()))


if __name__ == "__main__":
    main()
