"""Switchover: the leader hands over on request, to the member named or to any other."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from test_least_privilege import Role, make_role  # noqa: F401 - the fixture, for one test

from coordinator import SwitchoverFailed, read_history, request_switchover
from coordinator.testing import CoordinatorProcess
from helpers import (
    FAST,
    connected,
    coordinator,
    current_leader,
    followers_ready,
    leader_row,
    wait_args,
    wait_until,
)

pytestmark = pytest.mark.core

GROUP = "scheduler"
WAIT = 15.0


async def resign_cli(*args: str) -> tuple[int, str, str]:
    """``coordinator resign`` in a child process, without blocking the coordinators' loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coordinator",
        "resign",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def written(dsn: str) -> tuple[int, int]:
    """Rows in the request table and in the history: a refusal changes neither."""
    async with connected(dsn) as conn:
        requests = await conn.fetchval("SELECT count(*) FROM coordinator.switchovers")
        history = await conn.fetchval("SELECT count(*) FROM coordinator.events")
    return int(requests), int(history)


async def resignations(dsn: str) -> list[tuple[int, str, str]]:
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT term, instance_id, reason FROM coordinator.events "
            "WHERE kind = 'resigned' ORDER BY at"
        )
    return [(r["term"], r["instance_id"], r["reason"]) for r in rows]


async def test_without_a_target_the_leader_resigns_and_another_takes_over(
    dsn: str, wait: str
) -> None:
    """on_demoted is drained while the old term still holds the group; then the other leads."""
    a, b = coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait)
    drained: list[tuple[str, asyncpg.Record | None]] = []

    async def on_demoted(reason: str) -> None:
        drained.append((reason, await leader_row(dsn)))

    a.group(GROUP).on_demoted(on_demoted)
    async with a:
        assert await a.group(GROUP).wait_elected(WAIT) == 1
        async with b:
            await wait_until(lambda: followers_ready(dsn, wait), WAIT, what="b following")
            done = await request_switchover(dsn, GROUP, timeout=WAIT)
            assert (done.previous_leader, done.previous_term) == ("a", 1)
            assert (done.leader, done.term) == ("b", 2)
            assert await b.group(GROUP).wait_elected(WAIT) == 2
            assert not a.group(GROUP).is_leader
    reason, row = drained[0]  # (a leads again once b stops)
    assert reason == "switchover"
    assert row is not None
    assert (row["holder"], row["term"]) == ("a", 1)  # not handed over yet
    assert (await resignations(dsn))[0] == (1, "a", "switchover")


async def test_the_target_wins_every_time_among_three(dsn: str, wait: str) -> None:
    """Each hand-over goes to the member named, in the very next term, CLI and API alike."""
    coords = {name: coordinator(dsn, name, wait=wait) for name in "abc"}
    targets: list[str] = []
    async with coords["a"], coords["b"], coords["c"]:
        first = await wait_until(lambda: current_leader(dsn), WAIT, what="a first leader")
        await wait_until(lambda: followers_ready(dsn, wait, 2), WAIT, what="two followers")
        leader, term = first["leader"], first["term"]
        for round_ in range(4):
            # Now the one follower, now the other: also the one that queued last.
            target = sorted(set(coords) - {leader}, reverse=round_ % 2 == 0)[0]
            if round_ == 0:
                code, out, err = await resign_cli(
                    "--dsn", dsn, "--group", GROUP, "--to", target, "--timeout", str(WAIT)
                )
                assert code == 0, err
                assert out.startswith(f"group {GROUP}: {target} leads in term {term + 1} ")
            else:
                done = await request_switchover(dsn, GROUP, to=target, timeout=WAIT)
                assert (done.leader, done.term) == (target, term + 1)
            assert await coords[target].group(GROUP).wait_elected(WAIT) == term + 1
            targets.append(target)
            await wait_until(lambda: followers_ready(dsn, wait, 2), WAIT, what="two followers")
            leader, term = target, term + 1
    handed = [reason for _, _, reason in await resignations(dsn)][: len(targets)]
    assert handed == [f"switchover to {target}" for target in targets]


async def test_a_refused_request_is_one_line_and_writes_nothing(dsn: str, wait: str) -> None:
    """Unknown group, a leaderless group, a target that is no live member, the leader itself."""
    async with coordinator(dsn, "a", "idle", wait=wait) as a:
        await a.group("idle").wait_elected(WAIT)
    stale = coordinator(dsn, "gone", wait=wait)
    async with stale:
        await stale.group(GROUP).wait_elected(WAIT)
    async with connected(dsn) as conn:  # a member whose heartbeat is older than the ttl
        await conn.execute(
            "UPDATE coordinator.heartbeats SET heartbeat_at = now() - interval '1 hour' "
            "WHERE instance_id = 'gone'"
        )
    async with coordinator(dsn, "a", wait=wait) as a:
        await wait_until(lambda: current_leader(dsn, after_term=1), WAIT, what="a leading")
        before = await written(dsn)
        cases = {
            ("--group", "nope"): "group 'nope' is unknown",
            ("--group", "idle"): "nobody leads group 'idle'",
            ("--group", GROUP, "--to", "nobody"): "'nobody' is not a live member",
            ("--group", GROUP, "--to", "gone"): "'gone' is not a live member",
            ("--group", GROUP, "--to", "a"): "'a' already leads",
            ("--group", GROUP): "has no live member but its leader 'a'",
        }
        for args, fragment in cases.items():
            code, out, err = await resign_cli("--dsn", dsn, *args)
            lines = err.strip().splitlines()
            assert (code, out, len(lines)) == (1, "", 1), (args, err)
            assert "Traceback" not in err, (args, err)
            assert fragment in lines[0], (args, err)
        assert await written(dsn) == before
        assert a.group(GROUP).is_leader
        with pytest.raises(SwitchoverFailed, match="unknown"):
            await request_switchover(dsn, "nope")


async def test_a_dead_target_holds_the_group_back_for_one_ttl_at_most(
    dsn: str, wait: str, spawn: Callable[..., CoordinatorProcess]
) -> None:
    """The target dies while the leader drains on_demoted; after the reservation, a or b leads."""
    a, b = coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait)
    draining, go_on = asyncio.Event(), asyncio.Event()

    async def on_demoted(_reason: str) -> None:
        draining.set()
        await go_on.wait()

    a.group(GROUP).on_demoted(on_demoted)
    async with a:
        assert await a.group(GROUP).wait_elected(WAIT) == 1
        c = spawn(dsn, [GROUP], instance_id="c", extra_args=wait_args(wait), **FAST)
        await asyncio.to_thread(c.wait_for, "coordinator_started", WAIT)
        async with b:
            await wait_until(lambda: followers_ready(dsn, wait, 2), WAIT, what="b and c")
            request = asyncio.create_task(request_switchover(dsn, GROUP, to="c", timeout=WAIT))
            async with asyncio.timeout(WAIT):
                await draining.wait()
            c.kill()
            await asyncio.to_thread(c.wait_exit, WAIT)
            go_on.set()
            # Once the reservation ends, whoever of the live ones comes first leads.
            with pytest.raises(
                SwitchoverFailed, match=r"^[ab] took over group 'scheduler' in term 2, not c"
            ):
                await request
            row = await wait_until(lambda: current_leader(dsn, after_term=1), WAIT, what="a leader")
            assert row["leader"] in ("a", "b")
            assert row["term"] == 2
    assert (await resignations(dsn))[0] == (1, "a", "switchover to c")
    # The reservation held both off for its ttl, on the database clock.
    async with connected(dsn) as conn:
        held_off = await conn.fetchval(
            "SELECT extract(epoch FROM e.at - r.at) FROM coordinator.events AS e, "
            "coordinator.events AS r WHERE e.kind = 'elected' AND e.term = 2 "
            "AND r.kind = 'resigned' AND r.term = 1"
        )
    assert held_off >= FAST["ttl"] * 0.9


async def test_the_least_privileged_role_switches_over(
    dsn: str,
    wait: str,
    make_role: Callable[..., Awaitable[Role]],  # noqa: F811 - the fixture imported above
) -> None:
    role = await make_role()
    a, b = coordinator(role.dsn, "a", wait=wait), coordinator(role.dsn, "b", wait=wait)
    async with a:
        assert await a.group(GROUP).wait_elected(WAIT) == 1
        async with b:
            await wait_until(lambda: followers_ready(dsn, wait), WAIT, what="b following")
            code, out, err = await resign_cli(
                "--dsn", role.dsn, "--group", GROUP, "--to", "b", "--json"
            )
            assert code == 0, err
            assert json.loads(out) == {
                "group": GROUP,
                "previous_leader": "a",
                "previous_term": 1,
                "leader": "b",
                "term": 2,
            }
            assert await b.group(GROUP).wait_elected(WAIT) == 2
    # The history shows the hand-over, to whoever may read it.
    history = [
        (event.kind, event.term, event.instance_id, event.reason)
        for event in await read_history(role.dsn, group=GROUP)
    ]
    assert history[:3] == [
        ("elected", 1, "a", None),
        ("resigned", 1, "a", "switchover to b"),
        ("elected", 2, "b", None),
    ]
