"""The election protocol, in one process, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest

from coordinator import (
    Coordinator,
    DemotionReason,
    Health,
    HeartbeatDone,
    KeyCollisionError,
    Signal,
    read_status,
)
from coordinator._keys import DEFAULT_LOCK_NAMESPACE, group_lock_key
from coordinator._sql import Statements
from coordinator.integrations.http import CoordinatorMetrics
from coordinator.testing import TcpProxy
from helpers import (
    COLLIDING_NAMES,
    FAST,
    connected,
    coordinator,
    current_leader,
    events,
    followers_ready,
    lock_waiters,
    wait_until,
)

#: Every test here runs in both wait modes (the ``wait`` fixture).
pytestmark = pytest.mark.core


@contextlib.asynccontextmanager
async def running(*coords: Coordinator) -> AsyncIterator[tuple[Coordinator, ...]]:
    try:
        for coord in coords:
            await coord.start()
        yield coords
    finally:
        await asyncio.gather(*(coord.stop() for coord in coords))


async def first_elected(coords: tuple[Coordinator, ...], group: str = "scheduler") -> Coordinator:
    waits = {asyncio.create_task(c.group(group).wait_elected()): c for c in coords}
    done, pending = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "nobody was elected within 10 s"
    return waits[done.pop()]


async def test_exactly_one_of_several_instances_leads(dsn: str, wait: str) -> None:
    coords = tuple(coordinator(dsn, f"i{n}", wait=wait) for n in range(4))
    async with running(*coords):
        leader = await first_elected(coords)
        assert [c.instance_id for c in coords if c.group("scheduler").is_leader] == [
            leader.instance_id
        ]
        row = await wait_until(lambda: current_leader(dsn), 5, what="the view to show the leader")
        assert (row["leader"], row["term"], row["lock_held"], row["is_stale"]) == (
            leader.instance_id,
            1,
            True,
            False,
        )
        followers = [c for c in coords if c is not leader]
        assert all(c.group("scheduler").term is None for c in followers)


async def test_terms_count_up_across_successive_leaders(dsn: str, wait: str) -> None:
    coords = tuple(coordinator(dsn, f"i{n}", wait=wait) for n in range(3))
    seen_terms = []
    async with running(*coords):
        remaining = list(coords)
        for _ in range(3):
            if len(remaining) > 1:
                await wait_until(lambda: followers_ready(dsn, wait), 5, what="followers to wait")
            leader = await first_elected(tuple(remaining))
            seen_terms.append(leader.group("scheduler").term)
            await leader.stop()
            remaining.remove(leader)
    assert seen_terms == [1, 2, 3]
    kinds = [(kind, term) for kind, term, _ in await events(dsn)]
    assert kinds == [
        ("elected", 1),
        ("resigned", 1),
        ("elected", 2),
        ("resigned", 2),
        ("elected", 3),
        ("resigned", 3),
    ]


async def test_one_process_takes_part_in_several_groups(dsn: str, wait: str) -> None:
    names = ("scheduler", "billing-sweeper", "mailer")
    first = coordinator(dsn, "first", *names, wait=wait)
    second = coordinator(dsn, "second", *names, wait=wait)
    # The second joins once the first leads: in poll mode whoever polls first
    # wins, and starting first is no promise of polling first.
    async with running(first):
        for name in names:
            assert await first.group(name).wait_elected(10) == 1
        async with running(second):
            assert not any(second.group(name).is_leader for name in names)
            statuses = await read_status(dsn)
            assert {s.group: s.leader for s in statuses} == dict.fromkeys(names, "first")


async def test_resign_hands_over_at_once_and_follows_again(dsn: str, wait: str) -> None:
    coords = (coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait))
    demoted: list[str] = []
    async with running(*coords):
        leader = await first_elected(coords)
        other = coords[1] if leader is coords[0] else coords[0]
        leader.group("scheduler").on_demoted(demoted.append)
        await wait_until(lambda: followers_ready(dsn, wait), 5, what="the follower to wait")
        await leader.group("scheduler").resign()
        assert await other.group("scheduler").wait_elected(5) == 2
        assert not leader.group("scheduler").is_leader
        assert demoted == ["resigned"]
        # The one who resigned waits in line again and takes over when asked.
        await wait_until(lambda: followers_ready(dsn, wait), 5, what="the old leader to wait")
        await other.group("scheduler").resign()
        assert await leader.group("scheduler").wait_elected(5) == 3


async def test_a_hand_over_records_the_resignation_and_then_the_next_term_only(
    dsn: str, wait: str
) -> None:
    """A follower joining writes nothing (a blocking session rehearses a hand-over and
    rolls it back); resigning records and unlocks in one statement, and the next term is
    taken only after the resignation is in."""
    a, b = coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait)
    async with running(a):
        assert await a.group("scheduler").wait_elected(5) == 1
        async with running(b):
            await wait_until(lambda: followers_ready(dsn, wait), 5, what="b to wait")
            assert await events(dsn) == [("elected", 1, "a")]
            leader = await current_leader(dsn)
            assert leader is not None
            assert (leader["leader"], leader["term"]) == ("a", 1)
            await a.group("scheduler").resign()
            assert await b.group("scheduler").wait_elected(5) == 2
            assert await events(dsn) == [
                ("elected", 1, "a"),
                ("resigned", 1, "a"),
                ("elected", 2, "b"),
            ]


SQL = Statements.for_schema("coordinator")


async def database_state(conn: asyncpg.Connection) -> tuple[object, ...]:
    """Everything a rehearsal could leave behind: rows, events and advisory locks."""
    queries = (
        "SELECT * FROM coordinator.leaders ORDER BY group_name",
        "SELECT * FROM coordinator.heartbeats ORDER BY group_name, instance_id",
        "SELECT * FROM coordinator.events ORDER BY id",
        "SELECT classid, objid, pid, granted FROM pg_locks WHERE locktype = 'advisory' "
        "ORDER BY pid, classid, objid",
    )
    return tuple([[tuple(r) for r in await conn.fetch(query)] for query in queries])


async def test_the_hand_over_rehearsal_leaves_nothing_behind(dsn: str) -> None:
    """A new lock session takes office in a group of its backend's own, resigns and
    unlocks, and rolls it all back: no row, event, notification or lock stays."""
    heard: list[str] = []
    marker = asyncio.Event()

    def received(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        heard.append(payload)
        if payload == "marker":
            marker.set()

    async with connected(dsn) as watcher, connected(dsn) as session:
        await watcher.add_listener("coordinator_leadership", received)
        before = await database_state(watcher)
        assert await session.fetchval(SQL.rehearse_handover, "rehearser", "h", 1, 5.0) is True
        assert await database_state(watcher) == before
        # Notifications arrive in commit order: one the rehearsal sent would come first.
        await session.execute("SELECT pg_notify('coordinator_leadership', 'marker')")
        await asyncio.wait_for(marker.wait(), 5)
        assert heard == ["marker"]


async def test_the_hand_over_rehearsal_steps_aside_for_what_is_not_its_own(dsn: str) -> None:
    """A real group bearing the rehearsal's name, or another session holding its lock:
    the rehearsal is skipped, and the group and the lock stay as they were."""
    async with connected(dsn) as other, connected(dsn) as session:
        backend = session.get_server_pid()
        await other.execute("SELECT pg_advisory_lock(-1, $1)", backend)
        before = await database_state(other)
        assert await session.fetchval(SQL.rehearse_handover, "rehearser", "h", 1, 5.0) is False
        assert await database_state(other) == before
        await other.execute("SELECT pg_advisory_unlock(-1, $1)", backend)
        name = f"rehearsal of backend {backend}"
        await other.execute(
            SQL.register_groups, [name], [group_lock_key(name)], DEFAULT_LOCK_NAMESPACE, 5.0
        )
        before = await database_state(other)
        assert await session.fetchval(SQL.rehearse_handover, "rehearser", "h", 1, 5.0) is False
        assert await database_state(other) == before


async def test_callbacks_receive_term_and_reason(dsn: str, wait: str) -> None:
    coord = coordinator(dsn, "solo", wait=wait)
    calls: list[tuple[str, object]] = []
    group = coord.group("scheduler")

    @group.on_elected
    async def elected(term: int) -> None:
        calls.append(("elected", term))

    @group.on_demoted
    async def demoted(reason: str) -> None:
        calls.append(("demoted", reason))

    async with running(coord):
        await group.wait_elected(5)
    assert calls == [("elected", 1), ("demoted", "stopping")]


async def test_terminated_session_demotes_at_once_and_reelects(dsn: str, wait: str) -> None:
    coords = (coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait))
    reasons: list[str] = []
    async with running(*coords):
        leader = await first_elected(coords)
        leader.group("scheduler").on_demoted(reasons.append)
        await wait_until(lambda: followers_ready(dsn, wait), 5, what="the follower to wait")
        row = await current_leader(dsn)
        assert row is not None
        async with connected(dsn) as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", row["lock_pid"])
        await leader.group("scheduler").wait_demoted(5)
        assert reasons == [DemotionReason.CONNECTION_LOST]
        new = await wait_until(lambda: current_leader(dsn, after_term=1), 10, what="re-election")
        assert new["term"] == 2
    history = await events(dsn)
    assert ("lost", 1, leader.instance_id) in history


async def test_leader_demotes_itself_before_anyone_may_fence_it(
    dsn: str, wait: str, make_proxy: Callable[[], TcpProxy]
) -> None:
    """Heartbeats that hang make is_leader false before the monitor's ttl could pass."""
    proxy = make_proxy()
    # The default connect timeout: asyncpg's cancel request for a timed-out heartbeat
    # waits that long in the blackhole before it gives up on the connection.
    coord = coordinator(proxy.dsn(dsn), "stuck", wait=wait)
    group = coord.group("scheduler")
    observed: dict[str, object] = {}
    probe = await asyncpg.connect(dsn)

    async def demoted(reason: str) -> None:
        observed["reason"] = reason
        observed["is_leader"] = group.is_leader
        # On the database clock: the heartbeat is not yet older than the ttl,
        # so no monitor could have judged this leader stale yet.
        observed["fenceable"] = await probe.fetchval(
            "SELECT now() - heartbeat_at > ttl_s * interval '1 second' "
            "FROM coordinator.leader_status WHERE group_name = 'scheduler'"
        )

    group.on_demoted(demoted)
    try:
        async with running(coord):
            await group.wait_elected(5)
            # The fault: every statement from now on hangs, sockets stay open.
            proxy.blackhole()
            await group.wait_demoted(FAST["ttl"] * 4)
            assert not group.is_leader
            assert group.term is None
    finally:
        await probe.close()
    assert observed == {"reason": "trust_expired", "is_leader": False, "fenceable": False}
    assert ("fenced", 1, "stuck") not in await events(dsn)


async def test_slow_heartbeat_that_ends_after_the_deadline_does_not_revive_the_term(
    dsn: str, wait: str, make_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = make_proxy()
    coord = coordinator(proxy.dsn(dsn), "slow", connect_timeout=5.0, wait=wait)
    group = coord.group("scheduler")
    reasons: list[str] = []
    group.on_demoted(reasons.append)
    async with running(coord):
        assert await group.wait_elected(5) == 1
        # The fault: every answer arrives later than the heartbeat timeout allows.
        proxy.delay(FAST["ttl"] * 2)
        await group.wait_demoted(FAST["ttl"] * 4)
        assert reasons == [DemotionReason.TRUST_EXPIRED]
        assert not group.is_leader
        # Late answers arrive now; whatever they say, the ended term stays ended:
        # leadership comes back only as a new term.
        proxy.delay(0)
        assert await group.wait_elected(FAST["ttl"] * 8) == 2


async def test_colliding_group_names_across_processes_are_refused(dsn: str, wait: str) -> None:
    first, second = COLLIDING_NAMES
    async with running(coordinator(dsn, "a", first, wait=wait)):
        with pytest.raises(KeyCollisionError, match=f"{first!r} already uses"):
            await coordinator(dsn, "b", second, wait=wait).start()


async def test_stopping_follower_leaves_no_lock_behind(dsn: str, wait: str) -> None:
    """A follower stopped while it waits releases a lock granted at the last moment."""
    leader = coordinator(dsn, "leader", wait=wait)
    follower = coordinator(dsn, "follower", wait=wait)
    async with running(leader):
        await leader.group("scheduler").wait_elected(5)
        async with running(follower):
            await wait_until(lambda: followers_ready(dsn, wait), 5, what="the follower to wait")
        # The follower is gone; its wait did not linger as a queued lock request.
        assert not await lock_waiters(dsn)
        assert leader.group("scheduler").is_leader


async def test_partitioned_leader_demotes_itself_and_is_fenced(
    dsn: str, wait: str, make_proxy: Callable[[], TcpProxy]
) -> None:
    """A silent network (TCP open, nothing delivered) ends leadership on both sides."""
    proxy = make_proxy()
    cut_off = coordinator(proxy.dsn(dsn), "cut-off", connect_timeout=1.0, wait=wait)
    reasons: list[str] = []
    cut_off.group("scheduler").on_demoted(reasons.append)
    async with running(cut_off):
        await cut_off.group("scheduler").wait_elected(5)
        async with running(coordinator(dsn, "direct", wait=wait)) as (direct,):
            await wait_until(lambda: followers_ready(dsn, wait), 5, what="the follower to wait")
            proxy.blackhole()
            await cut_off.group("scheduler").wait_demoted(FAST["ttl"] * 4)
            assert reasons == [DemotionReason.TRUST_EXPIRED]
            # The server still sees the old session; the direct instance's monitor ends it.
            assert await direct.group("scheduler").wait_elected(FAST["ttl"] * 6) == 2
            proxy.heal()
    history = await events(dsn)
    assert ("fenced", 1, "cut-off") in history
    assert history.index(("fenced", 1, "cut-off")) < history.index(("elected", 2, "direct"))


async def test_server_wide_timeouts_do_not_cut_a_followers_wait(dsn: str, wait: str) -> None:
    """A database default statement_timeout or lock_timeout must not end the blocking wait."""
    admin = await asyncpg.connect(dsn)
    try:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f"ALTER DATABASE \"{database}\" SET statement_timeout = '150ms'; "
            f"ALTER DATABASE \"{database}\" SET lock_timeout = '150ms'"
        )
    finally:
        await admin.close()
    leader, follower = (
        coordinator(dsn, "leader", wait=wait),
        coordinator(dsn, "follower", wait=wait),
    )
    async with running(leader):
        await leader.group("scheduler").wait_elected(5)
        async with running(follower):
            await wait_until(lambda: followers_ready(dsn, wait), 5, what="the follower to wait")
            await _heartbeat_jobs(follower, 5)  # a second, several times the timeouts
            if wait == "block":
                assert await lock_waiters(dsn) == 1
            else:
                assert await followers_ready(dsn, wait)
            await leader.group("scheduler").resign()
            assert await follower.group("scheduler").wait_elected(5) == 2


async def _heartbeat_jobs(coord: Coordinator, count: int) -> None:
    """Wait for ``count`` of ``coord``'s heartbeat statements: a signal, not a sleep."""
    done = asyncio.Event()
    seen = 0

    def listen(signal: Signal) -> None:
        nonlocal seen
        if isinstance(signal, HeartbeatDone):
            seen += 1
            if seen >= count:
                done.set()

    coord.add_listener(listen)
    await asyncio.wait_for(done.wait(), count * 2)


async def test_a_read_only_database_keeps_the_loop_failing_visibly_until_it_recovers(
    dsn: str, wait: str
) -> None:
    """A loop never dies: a non-transient error is retried on fresh sessions, and shown."""
    coord = coordinator(dsn, "ro", wait=wait)
    health = Health(coord)
    metrics = CoordinatorMetrics(coord, health=health)
    group = coord.group("scheduler")
    async with running(coord), connected(dsn) as admin:
        assert await group.wait_elected(5) == 1
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        # The fault: every session reconnects, and finds the database read-only.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'coordinator:ro'"
        )
        await group.wait_demoted(5)
        failing = await wait_until(
            lambda: _failing(coord), FAST["ttl"] * 4, what="the loop to say it keeps failing"
        )
        assert "ReadOnlySQLTransactionError" in failing["scheduler"]
        verdict = health.ready()
        assert not verdict.ok
        assert "ReadOnlySQLTransactionError" in verdict.reason
        failing_gauge = 'coordinator_election_failing{group="scheduler"} 1.0'
        assert failing_gauge in generate_latest(metrics.registry).decode()
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        assert await group.wait_elected(FAST["ttl"] * 8) == 2
        await wait_until(lambda: _healthy(health), FAST["ttl"] * 4, what="ready again")
        assert coord.failing == {}


async def _failing(coord: Coordinator) -> dict[str, str]:
    return coord.failing


async def _healthy(health: Health) -> bool:
    return health.ready().ok


async def test_a_fenced_shared_session_is_terminated_once_with_an_event_per_group(
    dsn: str, pg_server: Any, make_proxy: Callable[[], TcpProxy]
) -> None:
    """One backend holds every lock of a polling process: one terminate, one event per group."""
    names = [f"tenant-{n}" for n in range(5)]
    proxy = make_proxy()
    cut_off = coordinator(proxy.dsn(dsn), "cut-off", *names, connect_timeout=1.0, wait="poll")
    log = pg_server.local.log_path if pg_server.local is not None else None
    warnings_before = _terminate_warnings(log)
    async with running(cut_off):
        for name in names:
            await cut_off.group(name).wait_elected(5)
        async with running(coordinator(dsn, "direct", *names, wait="poll")) as (direct,):
            proxy.blackhole()
            for name in names:
                assert await direct.group(name).wait_elected(FAST["ttl"] * 6) == 2
            proxy.heal()
    fenced = [
        (name, kind, term)
        for name in names
        for kind, term, instance_id in await events(dsn, name)
        if kind == "fenced" and instance_id == "cut-off"
    ]
    assert fenced == [(name, "fenced", 1) for name in names]
    assert _terminate_warnings(log) == warnings_before


def _terminate_warnings(log: Path | None) -> int:
    """The server's complaints about pg_terminate_backend on a pid that has already gone."""
    if log is None:
        return 0
    return log.read_text(errors="replace").count("is not a PostgreSQL backend process")
