"""``coordinator run``: take part in elections until SIGTERM or SIGINT, then resign.

With ``--http HOST:PORT`` it also serves the probe and metrics endpoints
(:mod:`coordinator.integrations.http`), which makes it a sidecar: the
application beside it asks ``/leader/{group}`` instead of electing itself.
The HTTP server starts first, so that a taken port fails before anything
connects, and stops last, so that probes answer while leadership is resigned.
With ``--exec -- CMD`` the command runs only while this instance leads
(:mod:`coordinator._exec`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING

from coordinator._config import CoordinatorConfig
from coordinator._coordinator import Coordinator
from coordinator._errors import ConfigurationError
from coordinator._exec import add_exec_options, leader_command
from coordinator._logging import configure_logging, get_logger
from coordinator.cli._common import Subparsers, require_dsn
from coordinator.cli._settings import SETTINGS, Address, add_settings, config_settings

if TYPE_CHECKING:
    from coordinator.integrations.http import HttpServer

__all__ = ["register"]

log = get_logger()


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="take part in elections until SIGTERM or SIGINT, then resign"
    )
    add_settings(parser, *SETTINGS)
    add_exec_options(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    # First, so that every event of the command, even a refusal, has its format.
    configure_logging(args.log_format)
    if not args.groups:
        raise ConfigurationError(
            "no groups to take part in: pass --group NAME (repeat for several), "
            'set COORDINATOR_GROUPS=a,b or put groups = ["a"] in the config file'
        )
    config = CoordinatorConfig(**{**config_settings(vars(args)), "dsn": require_dsn(args)})
    coordinator = Coordinator(config=config)
    for name in dict.fromkeys(args.groups):
        coordinator.group(name)
    leader_command(coordinator, args)
    server = _http_server(coordinator, args.http, args.ready_when) if args.http else None
    return asyncio.run(_serve(coordinator, server))


def _http_server(coordinator: Coordinator, address: Address, ready_when: str) -> HttpServer:
    try:
        import prometheus_client

        from coordinator.integrations.http import HttpServer, http_app
    except ImportError as error:
        raise ConfigurationError(
            f"--http needs the http extra ({error.name} is missing): "
            "pip install 'pg-coordinator[http]'"
        ) from None
    # This process is ours: its counters need no *_created series beside them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated
    server = HttpServer(http_app(coordinator, ready_when=ready_when), address.host, address.port)
    server.bind()
    return server


async def _serve(coordinator: Coordinator, server: HttpServer | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if server is not None:
        await server.start()
    try:
        await coordinator.start()
        try:
            await stop.wait()
            log.info("shutdown_requested", instance_id=coordinator.instance_id)
        finally:
            await coordinator.stop()
    finally:
        if server is not None:
            await server.stop()
    return 0
