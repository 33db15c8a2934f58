"""Switchover: an operator's hand-over, carried out by the leader itself.

Both sides meet in the database (migration 0006). The requester calls
``request_switchover``, which checks the group, its live leader and the
target, records one request and notifies ``<schema>_switchover``; then it
waits until the new leader has taken office. The leader's control
connection listens on that channel, and every heartbeat cycle re-reads the
pending requests too (a notification is only a hint): a request for its
current term ends the term gracefully, so ``on_demoted`` is drained and the
lock released after the resignation, like any resignation. While the request
is fresh, ``take_office`` refuses everyone but the target; the campaigns
stand aside and wait again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from coordinator._config import ConnectionOptions, CoordinatorConfig
from coordinator._connect import connect
from coordinator._control import ControlConnection
from coordinator._describe import describe_error
from coordinator._errors import SwitchoverFailed
from coordinator._logging import get_logger
from coordinator._migrations import check_schema
from coordinator._sql import Statements, notify_channel, switchover_channel
from coordinator._term import DemotionReason, Term

__all__ = ["HandOver", "HandOvers", "request_switchover"]

log = get_logger()

#: request_switchover refused: unknown group, nobody leads, target not a live member.
_REFUSED_SQLSTATE = "LT004"

#: How often the requester re-reads who leads when no notification came.
_REREAD_S = 1.0


@dataclass(frozen=True)
class HandOver:
    """A finished switchover: who led before, who leads now."""

    group: str
    previous_leader: str
    previous_term: int
    leader: str
    term: int


async def request_switchover(
    dsn: str,
    group: str,
    to: str | None = None,
    *,
    schema: str = "coordinator",
    timeout: float = 30.0,
) -> HandOver:
    """Ask ``group``'s leader to hand over (to ``to``, else to any other live
    member) and wait, at most ``timeout`` seconds, until the new leader took office.

    Raises :class:`SwitchoverFailed` with one line naming the cause: the group
    is unknown, nobody leads it, ``to`` is not a live member, or no expected
    new leader took office in time (nothing is written when refused).
    """
    sql = Statements.for_schema(schema)
    conn = await connect(ConnectionOptions(dsn=dsn, application_name="coordinator:switchover"))
    try:
        await check_schema(conn, schema, sql.schema_version)
        changed = asyncio.Event()
        await conn.add_listener(notify_channel(schema), lambda *_: changed.set())
        try:
            request = await conn.fetchrow(sql.request_switchover, group, to)
        except asyncpg.PostgresError as error:
            if error.sqlstate == _REFUSED_SQLSTATE:
                raise SwitchoverFailed(error.message) from None
            raise
        assert request is not None  # the function returns its request or raises
        log.info("switchover_requested", group=group, term=request["term"], target=to)
        return await _wait_for_new_leader(
            conn, sql, changed, group, to, request["holder"], request["term"], timeout
        )
    finally:
        await conn.close()


async def _wait_for_new_leader(
    conn: asyncpg.Connection,
    sql: Statements,
    changed: asyncio.Event,
    group: str,
    to: str | None,
    previous: str,
    previous_term: int,
    timeout: float,
) -> HandOver:
    deadline = time.monotonic() + timeout
    while True:
        changed.clear()
        row = await conn.fetchrow(sql.group_leader, group)
        leader, term = (row["leader"], row["term"]) if row is not None else (None, previous_term)
        if leader is not None and term > previous_term:
            if leader != previous and to in (None, leader):
                return HandOver(group, previous, previous_term, leader, term)
            raise SwitchoverFailed(
                f"{leader} took over group {group!r} in term {term}, not "
                f"{to or 'another member'}: the request expired before it could; try again"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            now = f"{leader} still leads in term {term}" if leader else "nobody leads it now"
            stands = row["request_stands_until"] if row is not None else None
            if stands is not None:  # the leader may still act on it: say until when
                now += f"; the request stands until {stands:%H:%M:%S} UTC"
            raise SwitchoverFailed(
                f"group {group!r} got no new leader within {timeout:g} s ({now}): check the "
                "leader's log for switchover_handing_over, and that it runs a release with "
                "switchover"
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, _REREAD_S)):
                await changed.wait()


class HandOvers:
    """The leader's side: a fresh request for one of its current terms ends that term."""

    def __init__(
        self,
        config: CoordinatorConfig,
        sql: Statements,
        control: ControlConnection,
        terms: Callable[[], dict[str, Term]],
    ) -> None:
        self._config = config
        self._sql = sql
        self._control = control
        self._terms = terms
        self._checks: set[asyncio.Task[None]] = set()
        self._log = log.bind(instance_id=config.instance_id)
        control.listen(switchover_channel(config.schema), self._notified)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(payload).get("instance_id") != self._config.instance_id:
                return
        self._start_check()

    def check_soon(self) -> None:
        """Read the requests in a task of their own, unless a read is running already.

        The heartbeat job asks every cycle (a notification is only a hint)
        and does not wait: the control connection can be slow under load
        (the monitor's scan, lost events), and a beat must never wait for it.
        """
        if not self._checks:
            self._start_check()

    def _start_check(self) -> None:
        task = asyncio.create_task(self.check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def stop(self) -> None:
        """End the reads still running (the coordinator is stopping)."""
        for task in self._checks:
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)

    async def check(self) -> None:
        """Read the requests addressed to this instance; end each term they name."""
        if not self._terms():
            return
        try:
            rows = await self._control.run(
                lambda conn: conn.fetch(self._sql.pending_switchovers, self._config.instance_id)
            )
        except Exception as error:  # noqa: BLE001 - the next heartbeat cycle reads again
            self._log.warning("switchover_check_failed", error=describe_error(error))
            return
        terms = self._terms()
        for row in rows:
            term = terms.get(row["group_name"])
            if term is None or term.number != row["term"] or term.ended is not None:
                continue
            self._log.info(
                "switchover_handing_over",
                group=row["group_name"],
                term=term.number,
                target=row["target"],
            )
            term.end(DemotionReason.SWITCHOVER)
