"""The election protocol, in one process, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from coordinator import (
    Coordinator,
    DemotionReason,
    HeartbeatDone,
    KeyCollisionError,
    Signal,
    read_status,
)
from coordinator.testing import TcpProxy
from helpers import (
    COLLIDING_NAMES,
    FAST,
    connected,
    coordinator,
    current_leader,
    events,
    lock_waiters,
    wait_until,
)

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


async def test_exactly_one_of_several_instances_leads(dsn: str) -> None:
    coords = tuple(coordinator(dsn, f"i{n}") for n in range(4))
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


async def test_terms_count_up_across_successive_leaders(dsn: str) -> None:
    coords = tuple(coordinator(dsn, f"i{n}") for n in range(3))
    seen_terms = []
    async with running(*coords):
        remaining = list(coords)
        for _ in range(3):
            if len(remaining) > 1:
                await wait_until(lambda: lock_waiters(dsn), 5, what="followers to wait")
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


async def test_one_process_takes_part_in_several_groups(dsn: str) -> None:
    names = ("scheduler", "billing-sweeper", "mailer")
    first = coordinator(dsn, "first", *names)
    second = coordinator(dsn, "second", *names)
    async with running(first, second):
        for name in names:
            assert await first.group(name).wait_elected(10) == 1
            assert not second.group(name).is_leader
        statuses = await read_status(dsn)
        assert {s.group: s.leader for s in statuses} == dict.fromkeys(names, "first")


async def test_resign_hands_over_at_once_and_follows_again(dsn: str) -> None:
    coords = (coordinator(dsn, "a"), coordinator(dsn, "b"))
    demoted: list[str] = []
    async with running(*coords):
        leader = await first_elected(coords)
        other = coords[1] if leader is coords[0] else coords[0]
        leader.group("scheduler").on_demoted(demoted.append)
        await wait_until(lambda: lock_waiters(dsn), 5, what="the follower to wait")
        await leader.group("scheduler").resign()
        assert await other.group("scheduler").wait_elected(5) == 2
        assert not leader.group("scheduler").is_leader
        assert demoted == ["resigned"]
        # The one who resigned waits in line again and takes over when asked.
        await wait_until(lambda: lock_waiters(dsn), 5, what="the old leader to wait")
        await other.group("scheduler").resign()
        assert await leader.group("scheduler").wait_elected(5) == 3


async def test_callbacks_receive_term_and_reason(dsn: str) -> None:
    coord = coordinator(dsn, "solo")
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


async def test_terminated_session_demotes_at_once_and_reelects(dsn: str) -> None:
    coords = (coordinator(dsn, "a"), coordinator(dsn, "b"))
    reasons: list[str] = []
    async with running(*coords):
        leader = await first_elected(coords)
        leader.group("scheduler").on_demoted(reasons.append)
        await wait_until(lambda: lock_waiters(dsn), 5, what="the follower to wait")
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


async def test_leader_demotes_itself_before_anyone_may_fence_it(dsn: str) -> None:
    """Heartbeats that hang make is_leader false before the monitor's ttl could pass."""
    coord = coordinator(dsn, "stuck")
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
            session = group._session
            assert session is not None
            hung = asyncio.Event()

            async def hanging_heartbeat(instance_id: str, term: int) -> bool:
                hung.set()
                await asyncio.Event().wait()  # never answers; the job's timeout cancels it
                return True

            session.heartbeat = hanging_heartbeat  # type: ignore[method-assign]
            await asyncio.wait_for(hung.wait(), 5)
            await group.wait_demoted(FAST["ttl"] * 4)
            assert not group.is_leader
            assert group.term is None
    finally:
        await probe.close()
    assert observed == {"reason": "trust_expired", "is_leader": False, "fenceable": False}
    assert ("fenced", 1, "stuck") not in await events(dsn)


async def test_slow_heartbeat_that_ends_after_the_deadline_does_not_revive_the_term(
    dsn: str,
) -> None:
    coord = coordinator(dsn, "slow")
    group = coord.group("scheduler")
    async with running(coord):
        await group.wait_elected(5)
        session = group._session
        assert session is not None
        real = session.heartbeat
        release = asyncio.Event()

        async def slow_heartbeat(instance_id: str, term: int) -> bool:
            await release.wait()
            return await real(instance_id, term)

        session.heartbeat = slow_heartbeat  # type: ignore[method-assign]
        term = group._term
        assert term is not None
        await group.wait_demoted(FAST["ttl"] * 4)
        release.set()
        # Whatever the late heartbeat answered, the ended term stays ended.
        assert term.ended == DemotionReason.TRUST_EXPIRED
        assert not group.is_leader


async def test_colliding_group_names_across_processes_are_refused(dsn: str) -> None:
    first, second = COLLIDING_NAMES
    async with running(coordinator(dsn, "a", first)):
        with pytest.raises(KeyCollisionError, match=f"{first!r} already uses"):
            await coordinator(dsn, "b", second).start()


async def test_stopping_follower_leaves_no_lock_behind(dsn: str) -> None:
    """A follower stopped while it waits releases a lock granted at the last moment."""
    leader = coordinator(dsn, "leader")
    follower = coordinator(dsn, "follower")
    async with running(leader):
        await leader.group("scheduler").wait_elected(5)
        async with running(follower):
            await wait_until(lambda: lock_waiters(dsn), 5, what="the follower to wait")
        # The follower is gone; its wait did not linger as a queued lock request.
        assert not await lock_waiters(dsn)
        assert leader.group("scheduler").is_leader


async def test_partitioned_leader_demotes_itself_and_is_fenced(
    dsn: str, make_proxy: Callable[[], TcpProxy]
) -> None:
    """A silent network (TCP open, nothing delivered) ends leadership on both sides."""
    proxy = make_proxy()
    cut_off = coordinator(proxy.dsn(dsn), "cut-off", connect_timeout=1.0)
    reasons: list[str] = []
    cut_off.group("scheduler").on_demoted(reasons.append)
    async with running(cut_off):
        await cut_off.group("scheduler").wait_elected(5)
        async with running(coordinator(dsn, "direct")) as (direct,):
            await wait_until(lambda: lock_waiters(dsn), 5, what="the follower to wait")
            proxy.blackhole()
            await cut_off.group("scheduler").wait_demoted(FAST["ttl"] * 4)
            assert reasons == [DemotionReason.TRUST_EXPIRED]
            # The server still sees the old session; the direct instance's monitor ends it.
            assert await direct.group("scheduler").wait_elected(FAST["ttl"] * 6) == 2
            proxy.heal()
    history = await events(dsn)
    assert ("fenced", 1, "cut-off") in history
    assert history.index(("fenced", 1, "cut-off")) < history.index(("elected", 2, "direct"))


async def test_server_wide_timeouts_do_not_cut_a_followers_wait(dsn: str) -> None:
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
    leader, follower = coordinator(dsn, "leader"), coordinator(dsn, "follower")
    async with running(leader):
        await leader.group("scheduler").wait_elected(5)
        async with running(follower):
            await wait_until(lambda: lock_waiters(dsn), 5, what="the follower to wait")
            await _heartbeat_jobs(follower, 5)  # a second, several times the timeouts
            assert await lock_waiters(dsn) == 1
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
