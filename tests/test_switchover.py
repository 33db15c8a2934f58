"""Switchover: the leader hands over on request, to the member named or to any other."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from test_least_privilege import Role, make_role  # noqa: F401 - the fixture, for one test

from coordinator import (
    Coordinator,
    NotLeader,
    SwitchoverFailed,
    migrate,
    read_history,
    request_switchover,
)
from coordinator.testing import CoordinatorProcess, LocalPostgres, capture_logs
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


@pytest.fixture(scope="module")
def commit_times_server(pg_server: Any) -> Iterator[LocalPostgres]:
    """A server of its own with track_commit_timestamp on (only a restart can turn it on)."""
    if pg_server.local is None:
        pytest.skip("needs a server the suite runs itself")
    with LocalPostgres(
        pg_server.local.bin_dir, settings={"track_commit_timestamp": "on"}
    ) as server:
        yield server


@pytest.fixture
async def timed_dsn(commit_times_server: LocalPostgres) -> AsyncIterator[str]:
    """A fresh, migrated database whose commits carry their commit times."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    async with connected(commit_times_server.dsn) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = commit_times_server.dsn_for(name)
    await migrate(dsn)
    yield dsn
    async with connected(commit_times_server.dsn) as admin:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


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


async def write_while_leading(coord: Coordinator, dsn: str, stop: asyncio.Event) -> int:
    """Once elected, commit fenced writes back to back until refused (or ``stop``); the
    attempts go on through the hand-over. Returns how many were refused: 0 or 1."""
    group = coord.group(GROUP)
    term = await group.wait_elected(WAIT)
    async with connected(dsn) as conn:
        while not stop.is_set():
            try:
                async with group.fenced(conn, term=term) as tx:
                    await tx.conn.execute(
                        "INSERT INTO writes (instance_id, term) VALUES ($1, $2)",
                        coord.instance_id,
                        tx.term,
                    )
            except NotLeader:
                return 1
    return 0


async def test_the_old_term_commits_no_fenced_write_after_the_new_term(
    timed_dsn: str, wait: str
) -> None:
    """Both leaders write through fenced transactions as fast as they can, the old one
    on into its hand-over; ordered by commit time, every write of term 1 committed
    before the resignation and term 2, and the new leader never saw the old one
    believe it still led."""
    dsn = timed_dsn
    async with connected(dsn) as conn:
        await conn.execute("CREATE TABLE writes (instance_id text NOT NULL, term bigint NOT NULL)")
    a, b = coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait)
    beliefs: list[bool] = []
    b.group(GROUP).on_elected(lambda _term: beliefs.append(a.group(GROUP).is_leader))
    stop = asyncio.Event()
    async with a:
        assert await a.group(GROUP).wait_elected(WAIT) == 1
        old = asyncio.create_task(write_while_leading(a, dsn, stop))
        async with b:
            await wait_until(lambda: followers_ready(dsn, wait), WAIT, what="b following")
            new = asyncio.create_task(write_while_leading(b, dsn, stop))
            await wait_until(lambda: rows_of_term(dsn, 1), WAIT, what="a writing")
            done = await request_switchover(dsn, GROUP, to="b", timeout=WAIT)
            assert (done.leader, done.term) == ("b", 2)
            await wait_until(lambda: rows_of_term(dsn, 2), WAIT, what="b writing")
            stop.set()
            assert await old == 1  # a went on trying until its own term refused it
            assert await new == 0
    assert beliefs == [False]
    async with connected(dsn) as conn:
        order = await conn.fetchrow(
            """
            WITH committed AS (
                SELECT term, pg_xact_commit_timestamp(xmin) AS at FROM writes
            ), handover AS (
                SELECT max(pg_xact_commit_timestamp(xmin))
                           FILTER (WHERE kind = 'resigned' AND term = 1) AS resigned,
                       max(pg_xact_commit_timestamp(xmin))
                           FILTER (WHERE kind = 'elected' AND term = 2) AS elected
                  FROM coordinator.events
            )
            SELECT count(*) FILTER (WHERE term = 1) AS old_writes,
                   count(*) FILTER (WHERE term = 2) AS new_writes,
                   count(*) FILTER (WHERE term = 1 AND at >= resigned) AS old_after_resign,
                   count(*) FILTER (WHERE term = 1 AND at >= elected) AS old_after_new_term,
                   max(at) FILTER (WHERE term = 1) < min(at) FILTER (WHERE term = 2) AS ordered,
                   bool_and(resigned < elected) AS resigned_first
              FROM committed, handover
            """
        )
    assert order["old_writes"] > 0, dict(order)
    assert order["new_writes"] > 0, dict(order)
    assert (order["old_after_resign"], order["old_after_new_term"]) == (0, 0), dict(order)
    assert order["ordered"], dict(order)
    assert order["resigned_first"], dict(order)


async def rows_of_term(dsn: str, term: int) -> bool:
    async with connected(dsn) as conn:
        return bool(await conn.fetchval("SELECT count(*) FROM writes WHERE term = $1", term))


async def test_a_request_nobody_acts_on_lapses_and_reserves_nothing(
    dsn: str, wait: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader that never reads requests (as a release without switchover would): the
    command fails in one line after --timeout, the request lapses one ttl after it was
    made, and then it holds no one off, not even the leader it named."""
    a, b = coordinator(dsn, "a", wait=wait), coordinator(dsn, "b", wait=wait)

    async def deaf() -> None:
        """In place of reading the requests addressed to ``a``."""

    monkeypatch.setattr(a._handovers, "check", deaf)
    async with a:
        assert await a.group(GROUP).wait_elected(WAIT) == 1
        async with b:
            await wait_until(lambda: followers_ready(dsn, wait), WAIT, what="b following")
            code, out, err = await resign_cli("--dsn", dsn, "--group", GROUP, "--timeout", "300ms")
        lines = err.strip().splitlines()
        assert (code, out, len(lines)) == (1, "", 1), err
        assert "got no new leader within 0.3 s (a still leads in term 1" in lines[0], err
        async with connected(dsn) as conn:
            lives = await conn.fetchval(
                "SELECT extract(epoch FROM expires_at - requested_at)::float8"
                " FROM coordinator.switchovers"
            )
        assert lives == pytest.approx(FAST["ttl"])
        await wait_until(lambda: request_lapsed(dsn), WAIT, what="the request to lapse")
        assert a.group(GROUP).is_leader
        with capture_logs() as logs:
            await a.group(GROUP).resign()  # b is gone: a alone may, and does, lead again
            assert await a.group(GROUP).wait_elected(WAIT) == 2
    assert "switchover_standing_aside" not in [entry["event"] for entry in logs]


async def request_lapsed(dsn: str) -> bool:
    async with connected(dsn) as conn:
        return bool(
            await conn.fetchval("SELECT bool_and(expires_at <= now()) FROM coordinator.switchovers")
        )
