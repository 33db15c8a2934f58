"""The control connection, and the history written on it after a loss.

Each coordinator keeps one connection beside its lock sessions, for
everything that is not a lock: member heartbeats, the monitor, pruning, the
``lost`` events of leaderships whose session is gone, and listening for
switchover requests. It is opened
again on demand, through the same checks as every connection (a reconnect
that lands on a standby is refused, not used).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from coordinator._config import CoordinatorConfig
from coordinator._connect import connect
from coordinator._describe import describe_error
from coordinator._logging import get_logger
from coordinator._sql import Statements

__all__ = ["ControlConnection", "LostEvents"]

log = get_logger()

T = TypeVar("T")

#: Errors that refuse one statement and say nothing about the session it ran on.
_STATEMENT_REFUSED = (
    asyncpg.InsufficientPrivilegeError,
    asyncpg.IntegrityConstraintViolationError,
)


class ControlConnection:
    """One connection, shared by turns, reconnected when it was lost."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self._config = config
        self._conn: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()
        self._listeners: dict[str, Callable[..., None]] = {}
        self._listening: asyncpg.Connection | None = None  # the connection they are added to

    def listen(self, channel: str, callback: Callable[..., None]) -> None:
        """LISTEN on ``channel`` from the next operation on, on every connection after."""
        self._listeners[channel] = callback

    def adopt(self, conn: asyncpg.Connection) -> None:
        """Use ``conn``, already open and checked (start-up's connection)."""
        self._conn = conn

    async def run(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``operation`` on the connection, reconnecting first if it was lost.

        Bounded by the heartbeat timeout, connecting included. A connection
        whose operation failed is dropped, unless the statement itself was
        refused (a missing privilege, a constraint): timed out, cancelled or
        lost, on a silent network even the cancel request would never finish,
        and the next caller would wait on it; refused for its session (read
        only, say), a fresh session may see the database as it is now.
        """
        async with asyncio.timeout(self._config.heartbeat_timeout), self._turn:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = self._conn = await connect(self._config.connection)
            try:
                if self._listening is not conn:
                    for channel, callback in self._listeners.items():
                        await conn.add_listener(channel, callback)
                    self._listening = conn
                return await operation(conn)
            except BaseException as error:
                if not isinstance(error, _STATEMENT_REFUSED):
                    conn.terminate()
                raise

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close(timeout=self._config.heartbeat_timeout)
            except Exception:  # noqa: BLE001 - closing still has to free the socket
                self._conn.terminate()


class LostEvents:
    """``lost`` events, written in the background, many in one statement.

    When a shared session dies it takes thousands of leaderships with it;
    one statement per group would queue for the control connection and time
    out. Here every loss reported meanwhile waits for the next write, which
    retries with back-off until the database answers or the coordinator
    stops (then one last try). Best effort: a coordinator that stops during
    an outage leaves them unwritten, and says so.
    """

    def __init__(self, config: CoordinatorConfig, sql: Statements, control: ControlConnection):
        self._config = config
        self._sql = sql
        self._control = control
        self._pending: list[tuple[str, int, str]] = []
        self._writer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def record(self, group: str, term: int, reason: str) -> None:
        self._pending.append((group, term, reason))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="coordinator-lost-events")

    async def stop(self) -> None:
        """Write what is pending once more (within a timeout), then give up the rest."""
        self._stopping.set()
        if self._writer is not None:
            await self._writer

    async def _write_all(self) -> None:
        failures = 0
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._control.run(functools.partial(self._write, batch=batch))
                failures = 0
                continue
            except Exception as error:  # noqa: BLE001 - retried below, or reported
                self._pending = batch + self._pending
                failures += 1
                if self._stopping.is_set():
                    log.info(
                        "lost_events_not_recorded",
                        instance_id=self._config.instance_id,
                        count=len(self._pending),
                        error=describe_error(error),
                    )
                    self._pending = []
                    return
                if failures == 1:
                    log.info(
                        "lost_events_waiting",
                        instance_id=self._config.instance_id,
                        count=len(self._pending),
                        error=describe_error(error),
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.reconnect_delay(failures)):
                    await self._stopping.wait()

    async def _write(self, conn: asyncpg.Connection, *, batch: list[tuple[str, int, str]]) -> None:
        groups, terms, reasons = (list(column) for column in zip(*batch, strict=True))
        await conn.execute(self._sql.record_lost, groups, terms, reasons, self._config.instance_id)
