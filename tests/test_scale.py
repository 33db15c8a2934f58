"""Shared-session mode: thousands of groups on a couple of connections, and fair spreading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from coordinator import ConfigurationError, Coordinator, HeartbeatDone, KeyCollisionError, Signal
from coordinator.testing import CoordinatorProcess
from coordinator.testing import distinct_group_names as names
from helpers import COLLIDING_NAMES, FAST, connected, coordinator, wait_until

pytestmark = pytest.mark.slow

POLL = {"wait": "poll", "poll_interval": 0.2}
#: Thousands of groups on two shared cores: room for a busy event loop.
ROOMY = {"ttl": 10.0, "heartbeat_interval": 1.0, "heartbeat_timeout": 2.0}


async def led_by(dsn: str) -> dict[str, int]:
    """How many groups each live leader leads, from the readers' view."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT leader, count(*) AS n FROM coordinator.leader_status "
            "WHERE leader IS NOT NULL GROUP BY leader"
        )
    return {row["leader"]: row["n"] for row in rows}


async def connections_of(dsn: str, instance_id: str) -> int:
    async with connected(dsn) as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                f"coordinator:{instance_id}",
            )
        )


async def test_one_process_leads_thousands_of_groups_on_two_connections(dsn: str) -> None:
    groups = names(2000)
    coord = coordinator(dsn, "big", *groups, **POLL, **ROOMY)
    async with coord:
        await wait_until(lambda: _leads_all(dsn, "big", len(groups)), 60, what="all groups won")
        assert await connections_of(dsn, "big") == 2  # the shared lock session and control
        assert all(coord.group(name).term == 1 for name in groups[:: len(groups) // 20])


async def _leads_all(dsn: str, instance_id: str, count: int) -> bool:
    return (await led_by(dsn)).get(instance_id) == count


async def test_killed_process_hands_every_group_to_the_survivor(
    dsn: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    groups = names(1000)
    first = spawn(
        dsn,
        groups,
        instance_id="first",
        extra_args=["--wait", "poll", "--poll-interval", "0.2"],
        **ROOMY,
    )
    await wait_until(lambda: _leads_all(dsn, "first", len(groups)), 60, what="first wins all")
    async with coordinator(dsn, "survivor", *groups, **POLL, **ROOMY) as survivor:
        await wait_until(
            lambda: _session_beats(dsn, "survivor"), 30, what="the survivor's session to beat"
        )
        first.kill()
        await wait_until(
            lambda: _leads_all(dsn, "survivor", len(groups)),
            30,
            what="the survivor to take every group",
        )
        assert {survivor.group(name).term for name in groups} == {2}


async def _session_beats(dsn: str, instance_id: str) -> bool:
    """Whether ``instance_id``'s shared session is recorded: its one row beats for every group."""
    async with connected(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) = 1 FROM coordinator.sessions WHERE instance_id = $1", instance_id
            )
        )


async def test_fair_spreading_converges_and_does_not_flap(dsn: str) -> None:
    groups = names(30)
    settings = {**POLL, "poll_interval": 0.1, "fair_spread": True}
    first = coordinator(dsn, "a", *groups, **settings)
    async with first:
        await wait_until(lambda: _leads_all(dsn, "a", 30), 30, what="a to win all 30")
        others = [coordinator(dsn, instance, *groups, **settings) for instance in ("b", "c")]
        for other in others:
            await other.start()
        try:
            spread = await wait_until(
                lambda: _settled_spread(dsn, first),
                30,
                what="leaderships to spread over three instances and settle",
            )
            assert sorted(spread) == ["a", "b", "c"]
            elections = await _elections(dsn)
            # Stability: many more polls and heartbeats pass without a single hand-over.
            await _heartbeats(first, 15)
            assert await _elections(dsn) == elections
            assert await led_by(dsn) == spread
        finally:
            for other in others:
                await other.stop()


async def _spread_evenly(dsn: str, members: int) -> dict[str, int] | None:
    spread = await led_by(dsn)
    total = sum(spread.values())
    if len(spread) == members and total == 30 and max(spread.values()) <= 30 // members + 1:
        return spread
    return None


async def _settled_spread(dsn: str, coord: Coordinator) -> dict[str, int] | None:
    """An even spread that no election changed over a few heartbeats.

    A leadership being handed over still shows its old leader for a moment,
    so an even count alone may be a hand-over in flight.
    """
    elections = await _elections(dsn)
    spread = await _spread_evenly(dsn, 3)
    if spread is None:
        return None
    await _heartbeats(coord, 3)
    if await _elections(dsn) != elections or await led_by(dsn) != spread:
        return None
    return spread


async def _elections(dsn: str) -> int:
    async with connected(dsn) as conn:
        return int(
            await conn.fetchval("SELECT count(*) FROM coordinator.events WHERE kind = 'elected'")
        )


async def _heartbeats(coord: Coordinator, count: int) -> None:
    """Wait for ``count`` heartbeat statements of ``coord``: a signal, not a sleep."""
    seen = asyncio.Event()
    done = 0

    def listen(signal: Signal) -> None:
        nonlocal done
        if isinstance(signal, HeartbeatDone) and signal.group is None:
            done += 1
            if done >= count:
                seen.set()

    coord.add_listener(listen)
    await asyncio.wait_for(seen.wait(), count * 2)


async def test_more_groups_than_the_lock_table_holds_are_refused(dsn: str) -> None:
    async with connected(dsn) as conn:
        capacity = await conn.fetchval(
            "SELECT current_setting('max_locks_per_transaction')::int"
            " * (current_setting('max_connections')::int"
            " + current_setting('max_prepared_transactions')::int)"
        )
        coord = coordinator(dsn, "greedy", *names(capacity + 1), **POLL)
        with pytest.raises(ConfigurationError, match="raise max_locks_per_transaction"):
            await coord.start()
        # Refused before anything was written.
        assert await conn.fetchval("SELECT count(*) FROM coordinator.leaders") == 0


async def test_every_leadership_lost_in_a_restart_is_recorded(dsn: str, pg_server: Any) -> None:
    """A shared session takes hundreds of leaderships down at once; each gets its lost event."""
    groups = names(300)
    async with coordinator(dsn, "big", *groups, **POLL, **ROOMY):
        await wait_until(lambda: _leads_all(dsn, "big", len(groups)), 60, what="all groups won")
        await asyncio.to_thread(pg_server.restart)
        await wait_until(lambda: _lost(dsn, "big", len(groups)), 60, what="every lost event")
        await wait_until(lambda: _leads_all(dsn, "big", len(groups)), 60, what="all won again")


async def _lost(dsn: str, instance_id: str, count: int) -> bool:
    async with connected(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(DISTINCT group_name) = $2 FROM coordinator.events "
                "WHERE kind = 'lost' AND instance_id = $1",
                instance_id,
                count,
            )
        )


#: Short enough for a frozen process to be fenced soon, roomy enough for 2,000 groups.
BRISK = {"ttl": 5.0, "heartbeat_interval": 1.0, "heartbeat_timeout": 2.0}


async def test_frozen_process_is_fenced_once_and_its_groups_led_again(
    dsn: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    """SIGSTOP: its one session is terminated once, each group gets one fenced event."""
    groups = names(2000)
    poll = ["--wait", "poll", "--poll-interval", "0.2"]
    frozen = spawn(dsn, groups, instance_id="frozen", extra_args=poll, **BRISK)
    await wait_until(lambda: _leads_all(dsn, "frozen", len(groups)), 60, what="frozen wins all")
    async with coordinator(dsn, "survivor", *groups, **POLL, **BRISK):
        await wait_until(lambda: _session_beats(dsn, "survivor"), 30, what="the survivor's beat")
        backends = await _backends_of(dsn, "frozen")
        assert len(backends) == 1  # every seat on the one shared session
        frozen.freeze()
        try:
            await wait_until(
                lambda: _leads_all(dsn, "survivor", len(groups)), 60, what="the survivor to lead"
            )
        finally:
            frozen.thaw()
        async with connected(dsn) as conn:
            fenced = await conn.fetch(
                "SELECT group_name, term, reason FROM coordinator.events "
                "WHERE kind = 'fenced' AND instance_id = 'frozen'"
            )
            statuses = await conn.fetch("SELECT leader, is_stale FROM coordinator.leader_status")
    # One event per group, all naming the one backend: it was terminated once.
    assert sorted(row["group_name"] for row in fenced) == sorted(groups)
    assert {row["term"] for row in fenced} == {1}
    assert all(f"backend {backends[0]} terminated" in row["reason"] for row in fenced)
    assert {(row["leader"], row["is_stale"]) for row in statuses} == {("survivor", False)}


async def test_killed_process_groups_are_shared_out_again_with_fair_spreading(
    dsn: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    """SIGKILL of one of three: its groups go to the others, and the view names only the living."""
    groups = names(3000)
    async with _three_spread(dsn, spawn, groups) as (victim, spread):
        victim.kill()
        after = await wait_until(
            lambda: _spread_over(dsn, {"left", "right"}, len(groups)),
            30,
            what="the victim's groups to be led again",
        )
    assert spread["victim"] > 0
    assert max(after.values()) <= len(groups) // 2 + 1  # still fair between the two


async def test_a_dead_members_groups_are_led_before_the_shares_move(
    dsn: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    """Fair spreading after a SIGKILL: each survivor takes its orphans before it hands
    over what the new shares move (by commit time), so the hand-overs do not hold up
    the groups nobody leads."""
    groups = names(3000)  # of three, "right" then hands 20 groups to "left"
    async with _three_spread(dsn, spawn, groups) as (victim, _):
        async with connected(dsn) as conn:
            orphans = [
                row["group_name"]
                for row in await conn.fetch(
                    "SELECT group_name FROM coordinator.leaders WHERE holder = 'victim'"
                )
            ]
            killed_at = await conn.fetchval("SELECT clock_timestamp()")
        victim.kill()
        await wait_until(
            lambda: _spread_over(dsn, {"left", "right"}, len(groups)),
            30,
            what="the victim's groups to be led again and the shares to move",
        )
        async with connected(dsn) as conn:
            rows = await conn.fetch(
                "SELECT instance_id, kind, group_name = ANY($1) AS orphan, "
                "pg_xact_commit_timestamp(xmin) AS committed FROM coordinator.events "
                "WHERE at > $2 AND kind IN ('elected', 'resigned')",
                orphans,
                killed_at,
            )
    moved = [row for row in rows if row["kind"] == "resigned"]
    assert moved, "the new shares moved no group: the check below would be empty"
    for survivor in {row["instance_id"] for row in moved}:
        orphans_led = [
            row["committed"]
            for row in rows
            if row["instance_id"] == survivor and row["kind"] == "elected" and row["orphan"]
        ]
        handed_over = [row["committed"] for row in moved if row["instance_id"] == survivor]
        assert orphans_led, f"{survivor} took none of the victim's groups"
        assert max(orphans_led) < min(handed_over), survivor


@contextlib.asynccontextmanager
async def _three_spread(
    dsn: str, spawn: Callable[..., CoordinatorProcess], groups: list[str]
) -> AsyncIterator[tuple[CoordinatorProcess, dict[str, int]]]:
    """A ``victim`` process and two in-process members, fair spreading on, spread evenly."""
    fair = ["--wait", "poll", "--poll-interval", "0.2", "--fair-spread", "true"]
    victim = spawn(dsn, groups, instance_id="victim", extra_args=fair, **BRISK)
    settings = {**POLL, **BRISK, "fair_spread": True}
    async with (
        coordinator(dsn, "left", *groups, **settings),
        coordinator(dsn, "right", *groups, **settings),
    ):
        spread = await wait_until(
            lambda: _spread_over(dsn, {"victim", "left", "right"}, len(groups)),
            60,
            what="the groups to spread over three",
        )
        yield victim, spread


async def _backends_of(dsn: str, instance_id: str) -> list[int]:
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT backend_pid FROM coordinator.leaders WHERE holder = $1", instance_id
        )
    return [row["backend_pid"] for row in rows]


async def _spread_over(dsn: str, leaders: set[str], count: int) -> dict[str, int] | None:
    """Every group led, by exactly ``leaders``, each within its share plus one."""
    spread = await led_by(dsn)
    if set(spread) != leaders or sum(spread.values()) != count:
        return None
    return spread if max(spread.values()) <= -(-count // len(leaders)) + 1 else None


@pytest.mark.parametrize(
    ("change", "next_term"),
    [("holder = 'someone-else'", 2), ("term = term + 10", 12), ("backend_pid = 0", 2)],
    ids=["holder", "term", "backend"],
)
async def test_session_heartbeat_ends_a_seat_whose_leader_row_is_no_longer_ours(
    dsn: str, change: str, next_term: int
) -> None:
    """The one-row heartbeat still checks each seat: a row naming another holder, term
    or backend ends it."""
    groups = names(30)
    demoted: list[str] = []
    coord = coordinator(dsn, "beating", *groups, **POLL, heartbeat_interval=0.2)
    coord.group(groups[0]).on_demoted(demoted.append)
    async with coord:
        await wait_until(lambda: _leads_all(dsn, "beating", len(groups)), 30, what="all won")
        async with connected(dsn) as conn:  # the test's superuser, past the owner's functions
            await conn.execute(
                f"UPDATE coordinator.leaders SET {change} WHERE group_name = $1", groups[0]
            )

        async def seat_ended() -> bool:
            return demoted == ["lock_lost"]

        await wait_until(seat_ended, 10, what="the seat to end")
        # A seat in doubt replaces the shared session; every group is won again.
        await wait_until(lambda: _leads_all(dsn, "beating", len(groups)), 30, what="won again")
        assert coord.group(groups[0]).term == next_term


async def test_a_registered_list_of_groups_is_one_row(dsn: str) -> None:
    """Instances started together record their list once; a changed list is a new one."""
    groups = names(3000)
    fleet = [coordinator(dsn, f"member-{n}", *groups, **POLL, **ROOMY) for n in range(4)]
    try:
        await asyncio.gather(*(member.start() for member in fleet))
        async with connected(dsn) as conn:
            sets = await conn.fetch("SELECT group_count FROM coordinator.group_sets")
            assert await conn.fetchval("SELECT count(*) FROM coordinator.leaders") == len(groups)
        assert [row["group_count"] for row in sets] == [len(groups)]
        extra = coordinator(dsn, "member-extra", *groups, "one-more", **POLL, **ROOMY)
        async with extra:
            await extra.group("one-more").wait_elected(30)
        async with connected(dsn) as conn:
            counts = await conn.fetch("SELECT group_count FROM coordinator.group_sets")
        assert sorted(row["group_count"] for row in counts) == [len(groups), len(groups) + 1]
    finally:
        await asyncio.gather(*(member.stop() for member in fleet))


async def test_a_process_alone_takes_more_groups_than_a_batch_in_rounds(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Electors start a batch after each poll, and the rounds go on until every group is led."""
    monkeypatch.setattr("coordinator._coordinator.BATCH", 10)
    monkeypatch.setattr("coordinator._shared.BATCH", 10)
    groups = names(35)
    async with coordinator(dsn, "alone", *groups, **POLL) as coord:
        await wait_until(lambda: _leads_all(dsn, "alone", len(groups)), 30, what="all led")
        assert all(coord.group(name).is_leader for name in groups)
    async with connected(dsn) as conn:
        # Taken in rounds: no transaction gave out more than a batch of terms.
        rounds = await conn.fetch(
            "SELECT count(*) AS terms FROM coordinator.events WHERE kind = 'elected' "
            "GROUP BY xmin::text"
        )
    assert max(row["terms"] for row in rounds) <= 10
    assert sum(row["terms"] for row in rounds) == len(groups)


async def test_a_refused_term_names_ten_groups_and_counts_the_rest(dsn: str) -> None:
    """take_office from a backend without the locks: a short message, whatever the count."""
    groups = names(12)
    async with coordinator(dsn, "holder", *groups, **POLL), connected(dsn) as conn:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.fetch(
                "SELECT * FROM coordinator.take_office($1, 'forger', 'h', 1, 5)", groups
            )
    assert refused.value.sqlstate == "LT002"
    listed = ", ".join(sorted(groups)[:10])
    assert f"advisory lock of group(s) {listed} and 2 more" in str(refused.value)


async def test_taking_free_offices_holds_exactly_the_locks_of_its_terms(dsn: str) -> None:
    """take_free_offices tries the locks and takes office in one statement: a group whose
    term is refused comes back with the refusal and without its lock, the others take
    office; a group without a leader row comes back without a term, and nothing is
    locked for it; any other error releases every lock it was granted."""
    full, free, spare = names(3)
    async with coordinator(dsn, "registers", full, free, spare, **POLL):
        pass
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    take = (
        "SELECT group_name, term, refused_sqlstate, refusal "
        "FROM coordinator.take_free_offices($1, 'me', 'h', 1, 5)"
    )
    async with connected(dsn) as conn:
        await conn.execute(
            "UPDATE coordinator.leaders SET term = $1 WHERE group_name = $2", 2**63 - 1, full
        )
        rows = {row["group_name"]: row for row in await conn.fetch(take, [full, free])}
        assert tuple(rows[full]) == (full, None, "22003", "bigint out of range")
        leader = await conn.fetchrow(
            "SELECT holder, term FROM coordinator.leaders WHERE group_name = $1", free
        )
        assert tuple(leader) == ("me", rows[free]["term"])
        assert await conn.fetchval(held) == 1
        (unregistered,) = await conn.fetch(take, ["unregistered"])
        assert tuple(unregistered) == ("unregistered", None, None, None)
        assert await conn.fetchval(held) == 1
        await conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.fetch(take, [spare])
        assert await conn.fetchval(held) == 1


async def test_groups_joined_in_bulk_are_led_and_listed_in_the_order_joined(dsn: str) -> None:
    groups = names(300)
    coord = Coordinator(dsn, instance_id="bulk", **FAST, **POLL)
    coord.add_groups([*groups[:200], groups[0]])  # a repeated name joins once
    with pytest.raises(KeyCollisionError, match="hash to the same lock key"):
        coord.add_groups(["refused-with-its-list", *COLLIDING_NAMES])
    coord.add_groups(groups[200:])
    async with coord:
        await wait_until(lambda: _leads_all(dsn, "bulk", len(groups)), 60, what="all groups won")
        assert list(coord.groups) == groups
        assert all(group.is_leader for group in coord.groups.values())
        with pytest.raises(RuntimeError, match="before the coordinator starts"):
            coord.add_groups(["late"])
    async with connected(dsn) as conn:
        registered = await conn.fetchval("SELECT count(*) FROM coordinator.leaders")
    assert registered == len(groups)  # neither the refused list nor the late group
