"""Candidates per group, fair shares by bounded loads, NOTIFY per shard, watched membership."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Callable

import pytest

from coordinator import Coordinator, group_lock_key
from coordinator._candidates import (
    CANDIDATES,
    HANDOVER_CHANNELS,
    Candidates,
    handover_channel,
)
from coordinator.testing import CoordinatorProcess, distinct_group_names
from helpers import connected, coordinator, wait_until

POLL = {"wait": "poll", "poll_interval": 0.2}
ROOMY = {"ttl": 10.0, "heartbeat_interval": 1.0, "heartbeat_timeout": 2.0}
MEMBERS = [f"member-{n}" for n in range(7)]


def keys(count: int) -> dict[str, int]:
    """``count`` group names and their lock keys, all different."""
    return {name: group_lock_key(name) for name in distinct_group_names(count)}


def plans(groups: dict[str, int], members: list[str], *, fair: bool) -> dict[str, frozenset[str]]:
    """What each member campaigns for, each computing on its own, as processes do."""
    return {m: Candidates(m, groups, fair=fair).plan(members).wanted for m in members}


def test_each_shard_has_the_same_candidates_in_every_members_view() -> None:
    groups = keys(3000)
    wanted = plans(groups, MEMBERS, fair=False)
    campaigners = Counter(group for mine in wanted.values() for group in mine)
    assert set(campaigners) == set(groups)
    assert set(campaigners.values()) == {CANDIDATES}
    # Each campaigns for about CANDIDATES / members of the groups, not for all of them.
    for mine in wanted.values():
        assert len(mine) < len(groups) * CANDIDATES / len(MEMBERS) * 1.5


def test_a_member_leaving_changes_only_the_candidacies_it_held() -> None:
    groups = keys(3000)
    before = plans(groups, MEMBERS, fair=False)
    gone = MEMBERS[3]
    after = plans(groups, [m for m in MEMBERS if m != gone], fair=False)
    for member, mine in after.items():
        # A survivor keeps every candidacy and gains only groups the gone one campaigned for.
        assert before[member] <= mine
        assert mine - before[member] <= before[gone]
    assert set().union(*after.values()) == set(groups)  # nothing left without a candidate


@pytest.mark.parametrize("count", [30, 3000, 20000])
def test_fair_shares_give_every_group_one_leader_within_its_share(count: int) -> None:
    groups = keys(count)
    for members in (MEMBERS, MEMBERS[:3], MEMBERS[:1]):
        assigned = {m: Candidates(m, groups, fair=True).plan(members).assigned for m in members}
        leaders = Counter(group for mine in assigned.values() for group in mine)
        assert set(leaders) == set(groups)
        assert set(leaders.values()) == {1}
        share = math.ceil(count / len(members))
        assert max(len(mine) for mine in assigned.values()) <= share


@pytest.mark.slow
async def test_each_process_runs_electors_only_for_its_candidacies(
    dsn: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    """Three followers of a process that leads 400 groups each campaign for about half of
    them, not all; when it is SIGKILLed they lead every group."""
    groups = list(keys(400))
    poll = ["--wait", "poll", "--poll-interval", "0.2"]
    victim = spawn(dsn, groups, instance_id="victim", extra_args=poll, **ROOMY)
    await wait_until(lambda: _led_by(dsn, "victim", len(groups)), 60, what="the victim to lead")
    coords = [coordinator(dsn, f"c{n}", *groups, **POLL, **ROOMY) for n in range(3)]
    for coord in coords:
        await coord.start()
    try:
        await wait_until(lambda: _counted(coords, 4), 30, what="four live members counted")
        await wait_until(
            lambda: _campaigning_for_candidacies(coords, len(groups)),
            10,
            what="each follower's electors to be its candidacies only",
        )
        victim.kill()
        await wait_until(
            lambda: _led_without(dsn, "victim", len(groups)),
            30,
            what="the victim's groups to be led by the others",
        )
    finally:
        for coord in coords:
            await coord.stop()


def _running(coord: Coordinator) -> set[str]:
    return {name for name, elector in coord._electors.items() if elector.started}


async def _campaigning_for_candidacies(coords: list[Coordinator], count: int) -> bool:
    for coord in coords:
        running = _running(coord)
        assert coord._shared is not None
        if not (0 < len(running) < count and running <= coord._shared.wanted):
            return False
    return True


async def _counted(coords: list[Coordinator], members: int) -> bool:
    return all([await _plan_counts(coord, members) for coord in coords])


async def _led_by(dsn: str, leader: str, count: int) -> bool:
    async with connected(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) = $1 FROM coordinator.leader_status WHERE leader = $2",
                count,
                leader,
            )
        )


async def _led_without(dsn: str, gone: str, count: int) -> bool:
    async with connected(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) = $1 FROM coordinator.leader_status "
                "WHERE leader IS NOT NULL AND leader <> $2",
                count,
                gone,
            )
        )


@pytest.mark.slow
async def test_a_hand_over_is_announced_on_its_channel_only(dsn: str) -> None:
    """Pollers listen to the hand-over channels of their groups: a resign reaches its own."""
    groups = keys(30)
    name = next(iter(groups))
    mine = handover_channel("coordinator", groups[name])
    other_key = groups[name] + 1
    heard: dict[str, list[dict[str, object]]] = {"mine": [], "other": [], "all": []}
    async with connected(dsn) as listener:
        await listener.add_listener(
            "coordinator_leadership", lambda *args: heard["all"].append(json.loads(args[3]))
        )
        await listener.add_listener(mine, lambda *args: heard["mine"].append(json.loads(args[3])))
        await listener.add_listener(
            handover_channel("coordinator", other_key),
            lambda *args: heard["other"].append(json.loads(args[3])),
        )
        async with coordinator(dsn, "leader", *groups, **POLL, **ROOMY) as coord:
            await coord.group(name).wait_elected(30)
            await coord.group(name).resign()

            async def announced() -> bool:
                return any(n["group"] == name and n["kind"] == "resigned" for n in heard["mine"])

            await wait_until(announced, 10, what="the resignation on its hand-over channel")
    assert all(n["kind"] != "elected" for n in heard["mine"])  # only what may free a group
    assert {"elected", "resigned"} <= {n["kind"] for n in heard["all"] if n["group"] == name}
    other = other_key % HANDOVER_CHANNELS
    assert all(groups[str(n["group"])] % HANDOVER_CHANNELS == other for n in heard["other"])


@pytest.mark.slow
async def test_a_watcher_announces_that_a_member_died(
    dsn: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    """The oldest members look every poll and NOTIFY the others when a member is gone."""
    groups = list(keys(30))
    poll = ["--wait", "poll", "--poll-interval", "0.2"]
    changes = asyncio.Event()
    async with coordinator(dsn, "watcher", *groups, **POLL, **ROOMY) as watcher:
        victim = spawn(dsn, groups, instance_id="victim", extra_args=poll, **ROOMY)
        await wait_until(lambda: _plan_counts(watcher, 2), 30, what="the victim to be counted")
        async with connected(dsn) as listener:
            await listener.add_listener("coordinator_members", lambda *_args: changes.set())
            victim.kill()
            await asyncio.wait_for(changes.wait(), 10)
        await wait_until(lambda: _plan_counts(watcher, 1), 10, what="the victim to be gone")


async def _plan_counts(coord: Coordinator, members: int) -> bool:
    plan = coord._shared._plan if coord._shared is not None else None
    return plan is not None and len(plan.members) == members
