"""Watching leadership from any process, leader or not: the history and the live changes.

The history is the ``events`` table (pruned by age by every instance's
monitor). Live changes are the notifications that every change of leadership
sends on the channel ``<schema>_leadership`` with a JSON payload
``{group, kind, term, instance_id, reason}``. A notification sent while nobody
listens is gone, so :func:`observe` starts, and starts again after every
reconnect, with the state read from ``leader_status`` after ``LISTEN``:
between the two nothing can be missed, only seen twice, and what was seen
twice is dropped.

A notification is a hint, not a fact: any role that can connect may send
one on any channel. Each is believed only once the event it announces is
found in the ``events`` table (which only the schema owner's functions
write); what cannot be confirmed is logged and dropped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from coordinator._config import ConnectionOptions, backoff_delay
from coordinator._connect import connect
from coordinator._describe import describe_error
from coordinator._logging import get_logger
from coordinator._migrations import check_schema
from coordinator._reading import fetch_rows
from coordinator._sql import Statements, notify_channel
from coordinator._status import read_status

__all__ = ["LeadershipEvent", "observe", "read_history"]

log = get_logger(__name__)

#: Bounds of an observer's jittered wait between reconnection attempts (seconds).
_RECONNECT_MIN, _RECONNECT_MAX = 0.05, 5.0

#: The kind of the event that reports the state when observation (re)starts.
CURRENT = "current"


@dataclass(frozen=True)
class LeadershipEvent:
    """One change of leadership of one group.

    ``kind`` is one of ``elected``, ``resigned``, ``lost``, ``fenced`` and
    ``expired`` (as in the ``events`` table), or ``current``: the state when
    :func:`observe` connected or reconnected, whose ``instance_id`` is the
    live leader or None. ``at`` and ``reason`` come from the history, in
    which every live change is confirmed before it is yielded; a ``current``
    event has neither.
    """

    group: str
    kind: str
    term: int
    instance_id: str | None
    at: datetime | None = None
    reason: str | None = None

    @property
    def leader(self) -> str | None:
        """Who leads the group right after this event (None: nobody)."""
        return self.instance_id if self.kind in ("elected", CURRENT) else None

    def as_json(self) -> dict[str, Any]:
        """The keys of ``coordinator history --json`` and ``watch --json``; times as ISO 8601."""
        return {
            "group": self.group,
            "kind": self.kind,
            "term": self.term,
            "instance_id": self.instance_id,
            "at": self.at.isoformat() if self.at is not None else None,
            "reason": self.reason,
        }


async def read_history(
    dsn_or_conn: str | asyncpg.Connection,
    *,
    group: str | None = None,
    since: datetime | timedelta | None = None,
    schema: str = "coordinator",
) -> list[LeadershipEvent]:
    """The recorded events, oldest first; ``since`` is a time, or an age on the database clock."""
    since_at = since if isinstance(since, datetime) else None
    since_s = since.total_seconds() if isinstance(since, timedelta) else None
    rows = await fetch_rows(dsn_or_conn, schema, lambda sql: sql.history, group, since_at, since_s)
    return [
        LeadershipEvent(
            group=row["group_name"],
            kind=row["kind"],
            term=row["term"],
            instance_id=row["instance_id"],
            at=row["at"],
            reason=row["reason"],
        )
        for row in rows
    ]


async def observe(
    dsn: str,
    *groups: str,
    schema: str = "coordinator",
    ping_interval: float = 5.0,
    connect_timeout: float = 5.0,
) -> AsyncGenerator[LeadershipEvent, None]:
    """Yield the leadership changes of ``groups`` (default: all) as they happen, for ever.

    First, and again after every reconnect, one ``current`` event per group
    says who leads; then each change follows in commit order. A failure of
    the first connection raises (a wrong DSN should not be retried for ever);
    later losses reconnect with jittered back-off. Close the iterator when
    done (``contextlib.aclosing``) to release its connection at once.
    """
    options = ConnectionOptions(
        dsn=dsn, connect_timeout=connect_timeout, application_name="coordinator:observe"
    )
    sql = Statements.for_schema(schema)
    wanted = frozenset(groups)
    state: dict[str, tuple[str | None, int]] = {}
    failures = 0
    connected_once = False
    while True:
        inbox: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            conn = await _listen(options, schema, sql, inbox)
            connected_once = True
        except Exception as error:
            if not connected_once:
                raise  # report a wrong DSN or schema at once, rather than retry for ever
            failures += 1
            log.warning("observe_reconnect_failed", error=describe_error(error), attempt=failures)
            await asyncio.sleep(backoff_delay(failures, _RECONNECT_MIN, _RECONNECT_MAX))
            continue
        try:
            snapshot = await read_status(conn, schema=schema)
            # Payloads received by now may be in the snapshot already; later ones are news.
            maybe_seen = inbox.qsize()
            if failures:
                log.info("observe_reconnected", attempt=failures)
            failures = 0
            for status in snapshot:
                if _wanted(wanted, status.group):
                    current = LeadershipEvent(status.group, CURRENT, status.term, status.leader)
                    state[current.group] = (current.leader, current.term)
                    yield current
            while True:
                change = _parse(await _next(conn, sql, inbox, ping_interval))
                maybe_seen -= 1
                if change is None or not _wanted(wanted, change.group):
                    continue
                change = await _confirm(conn, sql, change)
                if change is None:
                    continue
                if maybe_seen < 0 or _is_news(state, change):
                    state[change.group] = (change.leader, change.term)
                    yield change
        except Exception as error:  # noqa: BLE001 - an observer never dies; it reconnects
            failures += 1
            log.warning("observe_connection_lost", error=describe_error(error), attempt=failures)
        finally:
            await _close(conn)
        await asyncio.sleep(backoff_delay(failures, _RECONNECT_MIN, _RECONNECT_MAX))


async def _listen(
    options: ConnectionOptions, schema: str, sql: Statements, inbox: asyncio.Queue[str | None]
) -> asyncpg.Connection:
    """A dedicated connection that puts every payload, then None when it closes, in ``inbox``.

    ``connect`` refuses a transaction pooler and a standby, through which
    LISTEN would never hear anything.
    """
    conn = await connect(options)
    try:
        await check_schema(conn, schema, sql.schema_version)

        def received(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            inbox.put_nowait(payload)

        await conn.add_listener(notify_channel(schema), received)
        conn.add_termination_listener(lambda _conn: inbox.put_nowait(None))
    except BaseException:
        conn.terminate()
        raise
    return conn


async def _next(
    conn: asyncpg.Connection,
    sql: Statements,
    inbox: asyncio.Queue[str | None],
    ping_interval: float,
) -> str:
    """The next payload; a quiet connection is pinged so that a dead one is noticed."""
    while True:
        try:
            async with asyncio.timeout(ping_interval):
                payload = await inbox.get()
        except TimeoutError:
            async with asyncio.timeout(ping_interval):
                await conn.fetchval(sql.ping)
            continue
        if payload is None:
            raise ConnectionResetError("the LISTEN connection closed")
        return payload


def _parse(payload: str) -> LeadershipEvent | None:
    try:
        data = json.loads(payload)
        event = LeadershipEvent(
            group=str(data["group"]),
            kind=str(data["kind"]),
            term=int(data["term"]),
            instance_id=data["instance_id"],
            reason=data.get("reason"),
        )
        if not (isinstance(event.instance_id, str | None) and 0 <= event.term < 2**63):
            raise ValueError("not a payload the coordinator sends")
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("observe_payload_ignored", payload=payload[:200])
        return None
    return event


async def _confirm(
    conn: asyncpg.Connection, sql: Statements, change: LeadershipEvent
) -> LeadershipEvent | None:
    """The announced event as recorded in the history, or None if the history has no such event.

    A notification is delivered only after its transaction commits, so a
    real one is always found.
    """
    row = await conn.fetchrow(
        sql.confirm_event, change.group, change.kind, change.term, change.instance_id
    )
    if row is None:
        log.warning("observe_notification_unconfirmed", **change.as_json())
        return None
    return replace(change, at=row["at"], reason=row["reason"])


def _wanted(wanted: frozenset[str], group: str) -> bool:
    return not wanted or group in wanted


def _is_news(state: dict[str, tuple[str | None, int]], event: LeadershipEvent) -> bool:
    """Whether an event that may predate the snapshot shows something the snapshot did not."""
    before = state.get(event.group)
    if before is None:
        return True
    return event.term > before[1] or (event.term == before[1] and event.leader != before[0])


async def _close(conn: asyncpg.Connection) -> None:
    try:
        async with asyncio.timeout(1.0):
            await conn.close()
    except Exception:  # noqa: BLE001 - a connection that cannot close politely is dropped
        conn.terminate()
