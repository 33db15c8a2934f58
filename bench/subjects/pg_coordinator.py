"""One pg-coordinator instance in one group, reporting each election and demotion.

``elected`` is reported from inside an ``on_elected`` callback, so a
failover is measured up to the moment the new leader's own code runs.
SIGTERM leaves the coordinator's context, which resigns: the graceful path.
Settings not given on the command line are the library's defaults.

``--trace`` adds what :mod:`bench.trace` needs to say where a hand-over's
time goes, without touching the library: a ``sigterm`` report from the
signal handler, and a ``query`` report for each lock wait, take-office,
resign (which unlocks too) and unlock statement as the client sees it
answered (with its ``elapsed``, so its start is known too): from asyncpg's
query logger, or, for the prepared statements that bypass it, from a
wrapper around ``PreparedStatement.fetchrow``. Query loggers run on the
event loop's next turn after the answer, so those reports are late by the
synchronous work that follows an answer: microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import asyncpg
from asyncpg.prepared_stmt import PreparedStatement

from bench.emit import emit, now
from coordinator import Coordinator
from coordinator._logging import configure_logging

#: The statements a hand-over trace reports, by a fragment of their text.
_TRACED = {
    "take_office": ".take_office(",
    "resign": ".resign(",
    "unlock": "pg_advisory_unlock(",
    "lock_wait": "pg_advisory_lock(",
}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--instance-id", required=True)
    for option in ("--ttl", "--heartbeat-interval", "--heartbeat-timeout"):
        parser.add_argument(option, type=float)
    parser.add_argument("--trace", action="store_true")
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

    def on_sigterm() -> None:
        if args.trace:
            emit("sigterm")
        stop.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    async with coordinator:
        emit("started")
        await stop.wait()
    emit("stopped")


def main() -> None:
    # The library's log lines go to stderr (the driver's log file); stdout carries reports.
    configure_logging("console", stream=sys.stderr)
    args = _parse()
    if args.trace:
        _trace_queries()
    asyncio.run(_serve(args))


def _trace_queries() -> None:
    """Give every connection the library opens a query logger that reports traced statements."""
    connect = asyncpg.connect

    async def connect_traced(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn = await connect(*args, **kwargs)
        conn.add_query_logger(_report_query)
        return conn

    asyncpg.connect = connect_traced
    # Prepared statements bypass the query loggers: report their answers here.
    fetchrow = PreparedStatement.fetchrow

    async def fetchrow_traced(self: PreparedStatement, *args: Any, **kwargs: Any) -> Any:
        sent = now()
        row = await fetchrow(self, *args, **kwargs)
        _report(self.get_query(), now() - sent)
        return row

    PreparedStatement.fetchrow = fetchrow_traced  # type: ignore[method-assign]


def _report_query(query: Any) -> None:
    if query.exception is None:
        _report(query.query, query.elapsed)


def _report(query: str, elapsed: float) -> None:
    for kind, fragment in _TRACED.items():
        if fragment in query:
            emit("query", kind=kind, elapsed=elapsed)
            return


if __name__ == "__main__":
    main()
