"""Shared-session mode: one connection per process for any number of groups.

The blocking mode spends one connection per group, which is right for a
handful of groups and wrong for thousands: connections are PostgreSQL's
scarce resource. Here one session holds every lock this process leads.
Followers do not block; every ``poll_interval`` (sooner when a NOTIFY says a
leader resigned or was fenced) the poller tries all free groups it follows
in one statement, takes office for everything it won in one transaction,
and heartbeats everything it leads in one statement.

The price is crash failover: a dead leader cannot NOTIFY, so its groups wait
for the next poll. The trust deadline, fencing and terms work as in the
blocking mode, with one difference: the session is shared, so when its trust
expires or its state is in doubt, every leadership on it ends together and
the session is replaced. That also keeps the rule that a lock is never tried
again on a session that holds it (advisory locks stack).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import socket
import time
from collections.abc import Mapping
from typing import Protocol

import asyncpg

from coordinator._config import CoordinatorConfig
from coordinator._connect import TRANSIENT_ERRORS, connect
from coordinator._logging import get_logger
from coordinator._session import log_ended_transactions, resign_and_unlock
from coordinator._signals import HeartbeatDone, Signal
from coordinator._sql import Statements, notify_channel

__all__ = ["SharedSession"]

log = get_logger()

_HOST = socket.gethostname()
#: Fair spreading takes up to the fair share, but sheds leaderships only above
#: fair share + this, so that they do not flap.
HYSTERESIS = 1
#: Kinds of NOTIFY after which a group may be free: worth polling at once.
_VACATING = frozenset({"resigned", "fenced", "expired", "lost"})


class _Member(Protocol):
    """What the shared session needs from a group."""

    name: str
    lock_key: int

    def seat_lost(self, seat: object) -> None: ...

    def apply_heartbeat(self, term: int, started: float, still_ours: bool) -> None: ...

    def request_resign(self) -> None: ...


class _Runtime(Protocol):
    def emit(self, signal: Signal) -> None: ...


class SharedSeat:
    """One group's leadership on the shared session, as its elector sees it."""

    def __init__(self, shared: SharedSession, group: str) -> None:
        self._shared = shared
        self._group = group

    @property
    def backend_pid(self) -> int:
        return self._shared.backend_pid

    async def resign(self, instance_id: str, term: int, reason: str) -> None:
        await self._shared.resign(self._group, term, reason)

    def abort(self) -> None:
        """The term ended abnormally: the shared session's state is in doubt, replace it."""
        self._shared.abort()


class SharedSession:
    """The poller and the one connection that holds this process's locks."""

    def __init__(
        self,
        config: CoordinatorConfig,
        sql: Statements,
        groups: Mapping[str, _Member],
        runtime: _Runtime,
    ) -> None:
        self._config = config
        self._sql = sql
        self._groups = dict(groups)
        self._by_key = {group.lock_key: name for name, group in groups.items()}
        self._runtime = runtime
        self._conn: asyncpg.Connection | None = None
        self._busy = asyncio.Lock()
        self._wake = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[tuple[int, float]]] = {}
        self._held: dict[str, int] = {}  # group -> term, in the order taken
        self._seats: dict[str, SharedSeat] = {}
        self._cooldown: dict[str, float] = {}
        self._shedding: set[str] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._lock_timeout = f"{int(config.office_wait * 1000)}ms"
        self._log = log.bind(instance_id=config.instance_id)

    @property
    def backend_pid(self) -> int:
        return int(self._conn.get_server_pid()) if self._conn is not None else 0

    # -- driven by the groups -------------------------------------------------

    def wait_for_office(self, group: _Member) -> asyncio.Future[tuple[int, float]]:
        """A future resolved with (term, start of taking office) when ``group`` is won."""
        future: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._waiting[group.name] = future
        self._wake.set()
        return future

    def cancel_wait(self, group: _Member) -> None:
        future = self._waiting.pop(group.name, None)
        if future is not None and not future.done():
            future.cancel()

    def seat(self, group: str) -> SharedSeat:
        return self._seats[group]

    async def resign(self, group: str, term: int, reason: str) -> None:
        """Clear the holder, record why, notify, unlock; then stay away for a while."""
        conn = self._conn
        self._held.pop(group, None)
        self._seats.pop(group, None)
        self._shedding.discard(group)
        if reason == "resigned":
            # Handing over means letting someone else take it: skip it for two polls.
            self._cooldown[group] = time.monotonic() + 2 * self._config.poll_interval
        if conn is None or conn.is_closed():
            return
        key = self._groups[group].lock_key
        limit = self._config.heartbeat_timeout + self._config.office_wait
        try:
            async with asyncio.timeout(limit), self._busy:
                await resign_and_unlock(
                    conn,
                    self._sql,
                    group,
                    self._config.instance_id,
                    term,
                    reason,
                    (self._config.lock_namespace, key),
                )
        except TRANSIENT_ERRORS:
            # The lock may still be held on a session that no longer knows it: replace it.
            self.abort()
            raise

    def abort(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()

    async def heartbeat(self) -> None:
        """One statement for every group this process leads."""
        conn, held = self._conn, dict(self._held)
        if conn is None or not held:
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.heartbeat_timeout), self._busy:
                rows = await conn.fetch(
                    self._sql.leader_heartbeat,
                    self._config.instance_id,
                    self._config.lock_namespace,
                    list(held),
                    list(held.values()),
                )
        except TRANSIENT_ERRORS as error:
            self._runtime.emit(HeartbeatDone(None, time.monotonic() - started, ok=False))
            self._log.warning("heartbeat_failed", groups=len(held), error=repr(error))
            return
        self._runtime.emit(HeartbeatDone(None, time.monotonic() - started, ok=True))
        still_ours = {row["group_name"] for row in rows}
        for group, term in held.items():
            self._groups[group].apply_heartbeat(term, started, group in still_ours)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="coordinator-shared-session")

    async def stop(self) -> None:
        """Called after every group has stopped (and resigned)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            try:
                await self._conn.close(timeout=self._config.heartbeat_timeout)
            except Exception:  # noqa: BLE001 - closing still has to free the socket
                self._conn.terminate()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._connect()
                await self._poll()
                failures = 0
            except TRANSIENT_ERRORS as error:
                failures += 1
                event = (
                    "lock_table_full"
                    if isinstance(error, asyncpg.OutOfMemoryError)
                    else "poll_failed"
                )
                self._log.warning(event, error=repr(error), attempt=failures)
                # Locks a failed statement may have granted are not in office: start clean.
                self.abort()
            await self._sleep(self._pause(failures))

    def _pause(self, failures: int) -> float:
        if not failures:
            return self._config.poll_interval
        return self._config.reconnect_delay(failures)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    async def _connect(self) -> None:
        conn = await connect(self._config)
        try:
            await conn.execute(self._sql.set_session_lock_timeout, self._lock_timeout)
            await conn.add_listener(notify_channel(self._config.schema), self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._closed)
        self._conn = conn

    def _closed(self, conn: asyncpg.Connection) -> None:
        """Every leadership on this session ends with it."""
        if conn is not self._conn:
            return
        seats, self._seats = self._seats, {}
        self._held.clear()
        self._shedding.clear()
        for group, seat in seats.items():
            self._groups[group].seat_lost(seat)
        self._wake.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            return
        if change.get("kind") in _VACATING and change.get("group") in self._waiting:
            self._wake.set()

    # -- one poll ----------------------------------------------------------------

    async def _poll(self) -> None:
        conn = self._conn
        assert conn is not None
        now = time.monotonic()
        candidates = [
            name
            for name in self._waiting
            if name not in self._held and self._cooldown.get(name, 0.0) <= now
        ]
        # In random order, so that instances polling together do not all
        # contend for the same groups first.
        random.shuffle(candidates)
        budget = len(candidates)
        if self._config.fair_spread:
            share = await self._fair_share(conn)
            self._shed_surplus(share)
            budget = min(budget, share - len(self._held))
        if budget <= 0:
            return
        keys = [self._groups[name].lock_key for name in candidates]
        async with self._busy:
            rows = await conn.fetch(self._sql.try_locks, self._config.lock_namespace, keys, budget)
        won = [self._by_key[row["lock_key"]] for row in rows]
        if won:
            await self._take_office(conn, won)

    async def _take_office(self, conn: asyncpg.Connection, won: list[str]) -> None:
        """Start the next term of every group won, together; one by one if fencing holds some."""
        started = time.monotonic()
        try:
            offices = await self._office_transaction(conn, won)
        except asyncpg.LockNotAvailableError:
            offices = []
            for group in won:
                try:
                    offices += await self._office_transaction(conn, [group])
                except asyncpg.LockNotAvailableError:
                    self._log.warning(
                        "take_office_waiting",
                        group=group,
                        reason="fenced transactions of the previous term are still open",
                    )
        taken = dict(offices)
        for group in won:
            if group not in taken:
                async with self._busy:
                    await conn.execute(
                        self._sql.unlock, self._config.lock_namespace, self._groups[group].lock_key
                    )
        for group, term in offices:
            self._held[group] = term
            self._seats[group] = SharedSeat(self, group)
            future = self._waiting.pop(group, None)
            if future is None or future.done():
                # The group stopped while we won it: hand it straight back.
                await self.resign(group, term, "stopping")
            else:
                future.set_result((term, started))

    async def _office_transaction(
        self, conn: asyncpg.Connection, groups: list[str]
    ) -> list[tuple[str, int]]:
        async with self._busy:  # one statement, bounded by the session's lock_timeout
            rows = await conn.fetch(
                self._sql.take_office,
                groups,
                self._config.instance_id,
                _HOST,
                os.getpid(),
                self._config.ttl,
            )
        for row in rows:
            log_ended_transactions(row["group_name"], row)
        return [(row["group_name"], row["term"]) for row in rows]

    async def _fair_share(self, conn: asyncpg.Connection) -> int:
        async with self._busy:
            members = await conn.fetchval(
                self._sql.live_members, list(self._groups), self._config.ttl
            )
        return math.ceil(len(self._groups) / max(1, int(members)))

    def _shed_surplus(self, share: int) -> None:
        """Hand over what this process leads above its fair share, newest first."""
        leading = [group for group in self._held if group not in self._shedding]
        if len(leading) <= share + HYSTERESIS:
            return
        for group in reversed(leading[share:]):
            self._shedding.add(group)
            self._groups[group].request_resign()
        self._log.info("spreading_leaderships", share=share, handing_over=len(leading) - share)
