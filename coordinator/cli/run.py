"""``coordinator run``: take part in elections until SIGTERM or SIGINT, then resign.

With ``--http HOST:PORT`` it also serves the probe and metrics endpoints
(:mod:`coordinator.integrations.http`), which makes it a sidecar: the
application beside it asks ``/leader/{group}`` instead of electing itself.
The HTTP server starts first, so that a taken port fails before anything
connects, and stops last, so that probes answer while leadership is resigned.
With ``--exec -- CMD`` the command runs only while this instance leads
(:mod:`coordinator._exec`).

A database that cannot be used at start (down, restarting, read-only for a
while) is waited for: the start is retried with jittered back-off, each
failure logged, ``/livez`` live and ``/readyz`` saying why it is not ready, so
that an outage is not a crash loop. What waiting cannot fix (bad settings,
refused credentials, a missing schema, a standby or a pooler that cannot
hold session locks) fails at once; ``--start-timeout`` bounds the waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from coordinator._config import CoordinatorConfig, check_seconds
from coordinator._connect import TRANSIENT_ERRORS
from coordinator._coordinator import Coordinator
from coordinator._errors import ConfigurationError, CoordinatorError, LoginRefused
from coordinator._exec import add_exec_options, leader_command
from coordinator._logging import configure_logging, get_logger
from coordinator.cli._common import Subparsers, require_dsn
from coordinator.cli._settings import (
    SETTINGS,
    Address,
    add_settings,
    config_settings,
    read_groups_file,
)

if TYPE_CHECKING:
    from coordinator._health import Health
    from coordinator.integrations.http import HttpServer

__all__ = ["register"]

log = get_logger()

#: Failures at start that a wait may cure: the server is down, restarting, or read-only
#: for a while (default_transaction_read_only on).
_START_RETRIED: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    asyncpg.ReadOnlySQLTransactionError,
)


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
    groups = _group_names(args)
    config = CoordinatorConfig(**{**config_settings(vars(args)), "dsn": require_dsn(args)})
    if args.start_timeout is not None:
        check_seconds("start_timeout", args.start_timeout, 0.0, 3650 * 24 * 3600.0, "")
    coordinator = Coordinator(config=config)
    coordinator.add_groups(groups)
    leader_command(coordinator, args)
    server, health = (
        _http_server(coordinator, args.http, args.ready_when) if args.http else (None, None)
    )
    return asyncio.run(_serve(coordinator, server, health, args.start_timeout))


def _group_names(args: argparse.Namespace) -> list[str]:
    """The groups of ``--group`` (or its variable or key), then those of the groups file."""
    names = list(args.groups or ())
    if args.groups_file:
        names += read_groups_file(Path(args.groups_file))
    if not names:
        raise ConfigurationError(
            "no groups to take part in: pass --group NAME (repeat for several), "
            'set COORDINATOR_GROUPS=a,b, put groups = ["a"] in the config file '
            "or name a file of them, one per line, with --groups-file"
        )
    return names


def _http_server(
    coordinator: Coordinator, address: Address, ready_when: str
) -> tuple[HttpServer, Health]:
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
    app = http_app(coordinator, ready_when=ready_when)
    server = HttpServer(app, address.host, address.port)
    server.bind()
    return server, app.state.health


async def _serve(
    coordinator: Coordinator,
    server: HttpServer | None,
    health: Health | None,
    start_timeout: float | None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if server is not None:
        await server.start()
    try:
        if not await _start(coordinator, health, stop, start_timeout):
            log.info("shutdown_requested", instance_id=coordinator.instance_id)
            return 0
        try:
            await stop.wait()
            log.info("shutdown_requested", instance_id=coordinator.instance_id)
        finally:
            await coordinator.stop()
    finally:
        if server is not None:
            await server.stop()
    return 0


async def _start(
    coordinator: Coordinator,
    health: Health | None,
    stop: asyncio.Event,
    timeout: float | None,
) -> bool:
    """Start, retrying what a wait may cure; False when stopped before a start succeeded."""
    config = coordinator.config
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    failures = 0
    while True:
        try:
            await coordinator.start()
        except LoginRefused:
            raise  # a ConnectionFailed, but no wait brings the right password
        except _START_RETRIED as error:
            problem = _start_problem(error)
            failures += 1
            delay = config.reconnect_delay(failures)
            if deadline is not None and asyncio.get_running_loop().time() + delay > deadline:
                raise CoordinatorError(
                    f"cannot start after {failures} attempt{'s' if failures > 1 else ''}: {problem}"
                ) from None
            log.warning(
                "start_failed_retrying",
                problem=problem,
                attempt=failures,
                retry_in_s=round(delay, 3),
            )
            if health is not None:
                health.starting(problem)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                return False
        else:
            if health is not None:
                health.starting(None)
            if failures:
                log.info("started_after_retries", attempts=failures + 1)
            return True


def _start_problem(error: BaseException) -> str:
    """One line for the log and /readyz; ConnectionFailed's message already names the fix."""
    if isinstance(error, asyncpg.ReadOnlySQLTransactionError):
        return (
            "the database is read-only (a standby, or default_transaction_read_only is on): "
            "waiting for it to accept writes"
        )
    if isinstance(error, CoordinatorError):
        return str(error)
    return f"{type(error).__name__}: {error}"
