"""An election loop never dies: each database fault that used to end one, on a real server.

A loop that dies leaves its group without this instance for good while the
process looks healthy; so each test here ends with the group led again by
the same coordinator (only a living loop can win), and checks that the
trouble showed meanwhile where an operator looks: ``Coordinator.failing``,
``/readyz`` (``Health``) and ``coordinator status``.

The server-wide faults (``ALTER SYSTEM``, crashes) run on a server of the
test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from coordinator import (
    ConnectionFailed,
    Coordinator,
    Group,
    GroupStatus,
    Health,
    MemberStatus,
    migrate,
    read_members,
    read_status,
)
from coordinator.cli.status import format_leaderless
from coordinator.testing import LocalPostgres, capture_logs
from helpers import FAST, connected, coordinator, lock_waiters, wait_until

#: The largest term a bigint column holds.
BIGINT_MAX = 2**63 - 1
#: Long enough for a re-election on a loaded 2-core machine, short of a hang.
WAIT = FAST["ttl"] * 10


@pytest.fixture
def own_server(pg_server: Any) -> Iterator[LocalPostgres]:
    """A server of this test's own, with the suite's throwaway settings (fsync off)."""
    if pg_server.local is None:
        pytest.skip("needs a server the suite runs itself")
    with LocalPostgres(pg_server.local.bin_dir, settings={"wal_writer_delay": "10s"}) as server:
        yield server


@contextlib.asynccontextmanager
async def running(*coords: Coordinator) -> AsyncIterator[None]:
    try:
        for coord in coords:
            await coord.start()
        yield
    finally:
        await asyncio.gather(*(coord.stop() for coord in coords))


def loops_alive(coord: Coordinator) -> bool:
    """Whether every loop of ``coord`` still runs (no public API shows the tasks).

    In blocking mode each group's elector runs from start to stop. In poll mode
    the shared campaign and the loop that starts candidacies run throughout,
    and an elector rests (no task) while its process is not a candidate, for
    instance while the other members' rows are missing after a crash; a task
    that has finished is a loop that died."""
    tasks = [elector._task for elector in coord._electors.values()]
    if coord._shared is None:
        return all(task is not None and not task.done() for task in tasks)
    loops = [coord._shared._task, coord._enlisting]
    return all(task is not None and not task.done() for task in loops) and all(
        task is None or not task.done() for task in tasks
    )


async def _failing(coord: Coordinator) -> dict[str, str]:
    return coord.failing


async def _ready(health: Health) -> bool:
    return health.ready().ok


async def test_a_read_only_window_shows_and_ends_with_the_group_led_again(
    own_server: LocalPostgres, wait: str
) -> None:
    """ALTER SYSTEM SET default_transaction_read_only = on and a reload, then reset:
    the leader's heartbeats fail, it demotes, its attempts to take office again fail
    and say why (/readyz 503 with the cause, status: no candidate is healthy); once
    the database is writable the same coordinator leads again."""
    dsn = own_server.dsn
    await migrate(dsn)
    coord = coordinator(dsn, "ro", wait=wait)
    health = Health(coord)
    group = coord.group("scheduler")
    async with running(coord), connected(dsn) as admin:
        first = await group.wait_elected(WAIT)
        await admin.execute("SET default_transaction_read_only = off")  # the admin writes
        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")
        try:
            await group.wait_demoted(WAIT)
            failing = await wait_until(
                lambda: _failing(coord), WAIT, what="the loop to say it keeps failing"
            )
            assert "ReadOnlySQLTransactionError" in failing["scheduler"]
            verdict = health.ready()
            assert not verdict.ok
            assert "keeps failing" in verdict.reason
            assert "read-only transaction" in verdict.reason

            async def no_candidate() -> str:
                notes = format_leaderless(await read_status(admin), await read_members(admin))
                return notes if "no candidate is healthy" in notes else ""

            await wait_until(no_candidate, WAIT, what="status to say no candidate is healthy")
            assert loops_alive(coord)
        finally:
            await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
            await admin.execute("SELECT pg_reload_conf()")
        assert await group.wait_elected(WAIT) > first
        await wait_until(lambda: _ready(health), WAIT, what="/readyz to be ready again")
        assert coord.failing == {}


async def test_a_follower_waits_quietly_through_a_read_only_window(
    own_server: LocalPostgres,
) -> None:
    """The database turns read-only while the leader holds the lock (its ttl outlasts
    the window): the blocking follower cannot draw the next term, and waits on in the
    lock queue, wait after wait, with no failed attempt. Writable again, it takes the
    next term when the leader hands over."""
    dsn = own_server.dsn
    await migrate(dsn)
    lasting = {"ttl": 30.0, "heartbeat_interval": 5.0, "heartbeat_timeout": 5.0}
    leader = coordinator(dsn, "a", **lasting)
    follower = coordinator(dsn, "b", **lasting)
    async with running(leader, follower), connected(dsn) as admin:
        term = await leader.group("scheduler").wait_elected(WAIT)
        await wait_until(lambda: lock_waiters(dsn), WAIT, what="the follower to wait")
        await admin.execute("SET default_transaction_read_only = off")  # the admin writes
        # Nothing drawn above the term, as right after a hand-over until the
        # followers' next waits: the follower's next wait must draw, and cannot.
        await admin.execute(
            "UPDATE coordinator.term_counters AS c SET last_drawn = l.term "
            "FROM coordinator.leaders AS l WHERE l.group_name = c.group_name"
        )
        await admin.execute(
            "UPDATE coordinator.drawn_terms AS d SET term = l.term "
            "FROM coordinator.leaders AS l WHERE l.group_name = d.group_name"
        )
        with capture_logs() as logs:
            await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await admin.execute("SELECT pg_reload_conf()")
            since = await admin.fetchval("SELECT clock_timestamp()")
            try:
                waits: set[datetime] = set()

                async def two_waits_since() -> bool:
                    # Each wait is sent after the draw before it: the second is
                    # surely after a draw that the read-only database refused.
                    started = await _wait_started(admin)
                    if started is not None and started > since:
                        waits.add(started)
                    return len(waits) >= 2

                await wait_until(two_waits_since, WAIT * 2, what="two waits in read-only time")
                drawn = "SELECT coordinator.term_drawn_ahead('scheduler')"
                assert await admin.fetchval(drawn) is None, "a draw was made in read-only time"
                assert follower.failing == {}
                failed = [r for r in logs if r["event"] == "election_attempt_failed"]
                assert not failed, failed
            finally:
                await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
                await admin.execute("SELECT pg_reload_conf()")
        # The wait under way began read-only, and could not take office: the next one can.
        writable = await admin.fetchval("SELECT clock_timestamp()")

        async def waiting_since_writable() -> bool:
            started = await _wait_started(admin)
            return started is not None and started > writable

        await wait_until(waiting_since_writable, WAIT, what="a wait in writable time")
        await leader.group("scheduler").resign()
        assert await follower.group("scheduler").wait_elected(WAIT) == term + 1


async def _wait_started(admin: asyncpg.Connection) -> datetime | None:
    """When the waiting follower's current wait for the lock was sent."""
    started = await admin.fetchval(
        "SELECT query_start FROM pg_stat_activity WHERE query LIKE '%.campaign(%' AND pid IN "
        "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)"
    )
    return started if isinstance(started, datetime) else None


async def test_a_serializable_default_and_terminated_backends_end_no_loop(
    dsn: str, wait: str
) -> None:
    """default_transaction_isolation = 'serializable' on the database, and every
    coordinator backend terminated again and again: the coordinator's sessions run
    read committed (its statements wait for row locks where serializable would
    fail them, at start-up too), and both instances keep taking part in every group."""
    names = ("alpha", "beta", "gamma")
    coords = [coordinator(dsn, instance_id, *names, wait=wait) for instance_id in ("a", "b")]
    async with connected(dsn) as admin:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f"ALTER DATABASE \"{database}\" SET default_transaction_isolation = 'serializable'"
        )
        with capture_logs() as logs:
            await _terminate_all_again_and_again(admin, coords, names)
    assert not [entry for entry in logs if "SerializationError" in str(entry)]


async def _terminate_all_again_and_again(
    admin: asyncpg.Connection, coords: list[Coordinator], names: tuple[str, ...]
) -> None:
    async with running(*coords):
        terms = await _all_led(admin, names, {})
        for _ in range(6):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'coordinator:%'"
            )
            terms = await _all_led(admin, names, terms)
        assert all(loops_alive(coord) for coord in coords)
        # Both still campaign: the second takes every group once the first leaves.
        await coords[0].stop()
        for name in names:
            assert await coords[1].group(name).wait_elected(WAIT)
        assert loops_alive(coords[1])


async def _all_led(
    admin: asyncpg.Connection, names: tuple[str, ...], after: dict[str, int]
) -> dict[str, int]:
    """Wait until every group has a live leader with a term above ``after``'s."""

    async def led() -> dict[str, int]:
        rows = {row.group: row for row in await read_status(admin)}
        terms = {
            name: rows[name].term
            for name in names
            if name in rows and rows[name].leader is not None and rows[name].lock_held
        }
        if len(terms) == len(names) and all(terms[n] > after.get(n, 0) for n in names):
            return terms
        return {}

    result: dict[str, int] = await wait_until(led, WAIT, what="every group to be led again")
    return result


async def test_a_registration_lost_in_a_crash_is_made_again(
    own_server: LocalPostgres, wait: str
) -> None:
    """A server without durable commits (synchronous_commit and fsync off) crashes
    right after the instances registered: the rows are gone. Member heartbeats fail
    on the foreign key once, register the groups again, and the group is led.

    A backend of the test's own holds the group's lock, so that nobody takes office
    (taking office commits synchronously, which would make the registration
    durable); the WAL writer writes only every 10 s, so the crash loses it."""
    async with connected(own_server.dsn) as conn:
        await conn.execute("CREATE DATABASE lost")
    dsn = own_server.dsn_for("lost")
    await migrate(dsn)
    async with connected(dsn) as squatter:
        await squatter.execute("CHECKPOINT")  # the schema is durable; what follows is not
        coords = [coordinator(dsn, name, wait=wait) for name in ("a", "b")]
        key = coords[0].group("scheduler").lock_key
        await squatter.execute(
            "SELECT pg_advisory_lock($1, $2)", coords[0].config.lock_namespace, key
        )
        with capture_logs() as logs:
            async with running(*coords):
                own_server.kill()  # the registration was committed asynchronously, not written
                own_server.start()
                async with connected(dsn) as admin:
                    winner = await _first_elected(coords)
                    await wait_until(
                        lambda: _live_members(admin, wait, {"a", "b"}),
                        WAIT,
                        what="both members to beat again",
                    )
                assert all(loops_alive(coord) for coord in coords)
                assert winner.group("scheduler").is_leader
    again = [
        entry
        for entry in logs
        if entry["event"] in {"groups_registered_again", "group_registered_again"}
    ]
    assert again, "the lost registration was made again"
    failed = [entry for entry in logs if entry["event"] == "member_heartbeat_failed"]
    assert all("heartbeats_group_name_fkey" not in entry["error"] for entry in failed)


async def _first_elected(coords: list[Coordinator]) -> Coordinator:
    waits = {asyncio.create_task(c.group("scheduler").wait_elected()): c for c in coords}
    done, pending = await asyncio.wait(waits, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, f"nobody was elected within {WAIT:g} s"
    return waits[done.pop()]


async def _live_members(admin: asyncpg.Connection, wait: str, expected: set[str]) -> set[str]:
    """The live members once ``expected`` are among them (empty until then).

    Blocking mode: live member rows. Polling: fresh session rows (a poll-mode
    follower has no row per group)."""
    if wait == "block":
        live = {row.instance_id for row in await read_members(admin) if row.live}
    else:
        rows = await admin.fetch(
            "SELECT instance_id FROM coordinator.sessions WHERE heartbeat_at > now() - ttl"
        )
        live = {row["instance_id"] for row in rows}
    return live if expected <= live else set()


async def test_a_term_at_the_bigint_maximum_refuses_office_clearly_and_keeps_the_loop(
    dsn: str, wait: str
) -> None:
    """The next term would not fit: taking office fails with TermExhausted, which
    names the group and the fix, every attempt; the loop goes on (it never overflows
    into a dead loop), /readyz says why, and stopping is clean."""
    async with running(coordinator(dsn, "first", wait=wait)):
        pass  # registers the group
    async with connected(dsn) as admin:
        await admin.execute(
            "UPDATE coordinator.leaders SET term = $1 WHERE group_name = 'scheduler'", BIGINT_MAX
        )
        coord = coordinator(dsn, "full", wait=wait)
        health = Health(coord)
        with capture_logs() as logs:
            async with running(coord):
                failing = await wait_until(
                    lambda: _failing(coord), WAIT, what="the loop to say it keeps failing"
                )
                assert "TermExhausted" in failing["scheduler"]
                assert str(BIGINT_MAX) in failing["scheduler"]
                assert "new group name" in failing["scheduler"]
                assert "TermExhausted" in health.ready().reason
                assert loops_alive(coord)
                assert not coord.group("scheduler").is_leader
        (row,) = await read_status(admin)
        assert row.term == BIGINT_MAX
    assert not [e for e in logs if e.get("log_level") == "error"]


async def test_fenced_on_a_pool_names_the_session_the_server_ended(dsn: str) -> None:
    """The server ends the pool connection of an open fenced transaction (here
    idle_in_transaction_session_timeout): the error says the session was ended and
    nothing was committed, not that a pool connection was released."""
    async with connected(dsn) as admin:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f"ALTER DATABASE \"{database}\" SET idle_in_transaction_session_timeout = '100ms'"
        )
        await admin.execute("CREATE TABLE writes (term bigint)")
    coord = coordinator(dsn, "writer")
    group = coord.group("scheduler")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with running(coord):
            term = await group.wait_elected(WAIT)
            with pytest.raises(ConnectionFailed) as caught:
                await _write_after_the_server_ended_it(group, pool, dsn)
            message = str(caught.value)
            assert "the server ended the session" in message
            assert f"term {term}" in message
            assert "nothing was committed" in message
            # The pool lends a working connection again.
            async with group.fenced(pool) as tx:
                await tx.conn.execute("INSERT INTO writes VALUES ($1)", tx.term)
    finally:
        await pool.close()
    async with connected(dsn) as admin:
        assert await admin.fetchval("SELECT count(*) FROM writes") == 1


async def _write_after_the_server_ended_it(group: Group, pool: asyncpg.Pool, dsn: str) -> None:
    async with group.fenced(pool) as tx:
        backend = await tx.conn.fetchval("SELECT pg_backend_pid()")
        await wait_until(lambda: _backend_gone(dsn, backend), WAIT, what="the server to end it")
        await tx.conn.execute("INSERT INTO writes VALUES ($1)", tx.term)


async def _backend_gone(dsn: str, pid: int) -> bool:
    async with connected(dsn) as conn:
        return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


def test_status_tells_an_election_to_come_from_no_healthy_candidate() -> None:
    now = datetime.now(UTC)

    def group(name: str, leader: str | None) -> GroupStatus:
        return GroupStatus(name, leader, 3, None, None, None, False, leader is not None)

    def member(name: str, instance_id: str, live: bool) -> MemberStatus:
        return MemberStatus(
            name, instance_id, "follower", None, "h", 1, now, now, 0.1, live, candidate=live
        )

    notes = format_leaderless(
        [group("led", "a"), group("waiting", None), group("stuck", None)],
        [member("waiting", "b", live=True), member("stuck", "c", live=False)],
    )
    assert notes.splitlines() == [
        "waiting: nobody leads yet; live candidates: b",
        "stuck: no candidate is healthy: no member heartbeats within the ttl "
        "(see the instances' /readyz and logs)",
    ]
