"""PostgreSQL high availability: terms never repeat and never go backwards
across crash restarts without durable commits and promotion of a standby
that missed the last terms; multi-host DSNs never land on a standby.

These run on a server of their own (same binaries as the suite's), since
they crash, stop and promote it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from coordinator import migrate
from coordinator.testing import CoordinatorProcess, LocalPostgres
from helpers import FAST, connected, wait_until

pytestmark = pytest.mark.slow

GROUP = "scheduler"
WAIT = 30.0
TIMELINE_BITS = 32


@pytest.fixture
def own_server(pg_server: Any) -> Iterator[LocalPostgres]:
    """A fresh server with the suite's throwaway settings: fsync and synchronous_commit off."""
    if pg_server.local is None:
        pytest.skip("needs a server the suite runs itself")
    settings = {"track_commit_timestamp": "on"}
    with LocalPostgres(pg_server.local.bin_dir, settings=settings) as server:
        yield server


def acquired_terms(processes: Sequence[CoordinatorProcess]) -> list[int]:
    return [
        record["term"]
        for process in processes
        for record in process.records()
        if record.get("event") == "leadership_acquired"
    ]


def next_election(
    processes: Sequence[CoordinatorProcess], after_term: int, timeout: float = WAIT
) -> dict[str, Any]:
    """The first ``leadership_acquired`` above ``after_term``, from whichever process logs it."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            for record in process.records():
                if record.get("event") == "leadership_acquired" and record["term"] > after_term:
                    return record
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no election above term {after_term} within {timeout:g} s; "
                f"terms so far {acquired_terms(processes)}"
            )
        time.sleep(0.005)


async def terminate_leader_backend(dsn: str) -> None:
    async with connected(dsn) as conn:
        pid = await conn.fetchval(
            "SELECT lock_pid FROM coordinator.leader_status WHERE group_name = $1", GROUP
        )
        assert pid is not None
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)


async def test_take_office_commits_synchronously_whatever_the_session_says(dsn: str) -> None:
    async with connected(dsn) as conn:
        await conn.execute("SELECT coordinator.register_groups($1, '{7}', 1, 5)", [GROUP])
        await conn.execute("SELECT pg_advisory_lock(1, 7)")
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            office = await conn.fetchrow(
                "SELECT * FROM coordinator.take_office($1, 'a', 'h', 1, 5)", [GROUP]
            )
            assert office["term"] == 1
            assert await conn.fetchval("SHOW synchronous_commit") == "on"


async def test_a_term_drawn_ahead_is_shared_by_the_followers_and_issued_without_a_flush(
    dsn: str,
) -> None:
    """The group's next term is drawn durably once, for every follower; taking
    office with it commits asynchronously. Once used it is spent: the next term
    is issued durably, or drawn again, and terms count on without gaps."""
    counter = "SELECT last_drawn FROM coordinator.term_counters WHERE group_name = $1"
    draw = "SELECT coordinator.draw_term($1)"
    take = "SELECT term FROM coordinator.take_office($1, 'a', 'h', 1, 5)"
    async with connected(dsn) as first, connected(dsn) as second:
        await first.execute("SELECT coordinator.register_groups($1, '{7}', 1, 5)", [GROUP])
        drawn = await first.fetchval(draw, GROUP)
        assert await second.fetchval(draw, GROUP) == drawn
        assert await first.fetchval(counter, GROUP) == drawn
        await first.execute("SELECT pg_advisory_lock(1, 7)")
        async with first.transaction():
            assert await first.fetchval(take, [GROUP]) == drawn
            assert await first.fetchval("SHOW synchronous_commit") == "off"
        async with first.transaction():  # spent: the next term is issued durably
            assert await first.fetchval(take, [GROUP]) == drawn + 1
            assert await first.fetchval("SHOW synchronous_commit") == "on"
        assert await second.fetchval(draw, GROUP) == drawn + 2
        assert await first.fetchval(draw, GROUP) == drawn + 2
        await first.execute("SELECT pg_advisory_unlock(1, 7)")
        await second.execute("SELECT pg_advisory_lock(1, 7)")
        async with second.transaction():
            assert await second.fetchval(take, [GROUP]) == drawn + 2
            assert await second.fetchval("SHOW synchronous_commit") == "off"


async def test_a_number_drawn_while_taking_office_is_issued_not_skipped(dsn: str) -> None:
    """A follower draws just as another backend takes office with no number
    drawn (the follower that lost a switchover's race does that at once): the
    draw can land after taking office looked for one and before it chose the
    term. Hundreds of times, at staggered offsets, terms count on by one."""
    take = "SELECT term FROM coordinator.take_office($1, 'a', 'h', 1, 5)"
    draw = "SELECT coordinator.draw_term($1)"
    async with connected(dsn) as taker, connected(dsn) as drawer:
        await taker.execute("SELECT coordinator.register_groups($1, '{7}', 1, 5)", [GROUP])
        await taker.execute("SELECT pg_advisory_lock(1, 7)")
        terms = [await taker.fetchval(take, [GROUP])]
        for attempt in range(300):
            taking = asyncio.ensure_future(taker.fetchval(take, [GROUP]))
            await asyncio.sleep(0)  # the statement is sent
            stagger_until = time.perf_counter() + (attempt % 40) * 10e-6
            while time.perf_counter() < stagger_until:
                pass
            drawing = asyncio.ensure_future(drawer.fetchval(draw, GROUP))
            terms.append(await taking)
            await drawing
            terms.append(await taker.fetchval(take, [GROUP]))  # spends what was drawn
    skipped = [(a, b) for a, b in itertools.pairwise(terms) if b != a + 1]
    assert not skipped, f"{len(skipped)} terms skipped, the first {skipped[:5]}"


async def test_a_term_lost_in_a_crash_is_never_issued_again(pg_server: Any) -> None:
    """A term drawn ahead and taken is lost in a crash (its commit was never
    written: the WAL writer waits 10 s); what was drawn is forgotten with it, and
    the next term, drawn or not, is above the lost one."""
    if pg_server.local is None:
        pytest.skip("needs a server the suite runs itself")
    term_now = "SELECT term FROM coordinator.leaders WHERE group_name = $1"
    take = "SELECT term FROM coordinator.take_office($1, 'a', 'h', 1, 5)"
    with LocalPostgres(pg_server.local.bin_dir, settings={"wal_writer_delay": "10s"}) as server:
        await migrate(server.dsn)
        async with connected(server.dsn) as conn:
            await conn.execute("SELECT coordinator.register_groups($1, '{7}', 1, 5)", [GROUP])
            drawn = await conn.fetchval("SELECT coordinator.draw_term($1)", GROUP)
            await conn.execute("SELECT pg_advisory_lock(1, 7)")
            assert await conn.fetchval(take, [GROUP]) == drawn
            server.kill()
        server.start()
        async with connected(server.dsn) as conn, connected(server.dsn) as other:
            assert await conn.fetchval(term_now, GROUP) < drawn, "the crash lost the term"
            assert not await conn.fetchval("SELECT count(*) FROM coordinator.drawn_terms")
            await conn.execute("SELECT pg_advisory_lock(1, 7)")
            assert await conn.fetchval(take, [GROUP]) == drawn + 1
            redrawn = await other.fetchval("SELECT coordinator.draw_term($1)", GROUP)
            assert redrawn == drawn + 2


async def test_terms_survive_crash_restarts_without_durable_commits(
    own_server: LocalPostgres, spawn: Any
) -> None:
    """Five times: end the leader's backend, and crash the server just after the next term.

    The server runs synchronous_commit = off (and fsync = off). The follower's
    term was drawn ahead, so it commits without a flush and the crash may lose
    it: its number must never be issued again.
    """
    async with connected(own_server.dsn) as conn:
        await conn.execute("CREATE DATABASE terms")
        assert await conn.fetchval("SHOW synchronous_commit") == "off"
    dsn = own_server.dsn_for("terms")
    await migrate(dsn)
    processes = [spawn(dsn, [GROUP], instance_id=name, **FAST) for name in ("a", "b")]
    term = next_election(processes, 0)["term"]
    for _ in range(5):
        await terminate_leader_backend(dsn)
        term = next_election(processes, term)["term"]
        own_server.kill()  # within moments of that term being issued
        own_server.start()
        term = next_election(processes, term)["term"]
    terms = acquired_terms(processes)
    assert len(terms) >= 11
    assert len(terms) == len(set(terms)), f"a term was issued twice: {sorted(terms)}"
    async with connected(dsn) as conn:
        elected = await conn.fetch(
            "SELECT term FROM coordinator.events WHERE kind = 'elected' "
            "ORDER BY pg_xact_commit_timestamp(xmin), id"
        )
    recorded = [row["term"] for row in elected]
    assert recorded == sorted(set(recorded)), f"terms went backwards: {recorded}"


async def test_promoting_a_lagging_standby_never_reissues_a_term(
    own_server: LocalPostgres, spawn: Any
) -> None:
    """A standby stops receiving WAL at term 2; the primary goes on to term 4 and stops;
    the promoted standby's first term is above every term the primary issued.

    The instances use a multi-host DSN with target_session_attrs=read-write,
    so they follow the promotion without being told.
    """
    async with connected(own_server.dsn) as conn:
        await conn.execute("CREATE DATABASE terms")
    await migrate(own_server.dsn_for("terms"))
    standby = own_server.create_standby()
    primary_dsn = own_server.dsn_for("terms")
    standby_dsn = standby.dsn_for("terms")
    both = (
        f"postgresql://postgres:{own_server.password}@127.0.0.1:{own_server.port},"
        f"127.0.0.1:{standby.port}/terms?target_session_attrs=read-write"
    )
    processes = [spawn(both, [GROUP], instance_id=name, **FAST) for name in ("a", "b")]
    term = next_election(processes, 0)["term"]
    await terminate_leader_backend(primary_dsn)
    term = next_election(processes, term)["term"]

    async def replayed() -> bool:
        async with connected(standby_dsn) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT term FROM coordinator.leaders WHERE group_name = $1", GROUP
                )
                == term
            )

    await wait_until(replayed, WAIT, what=f"the standby to replay term {term}")
    async with connected(standby_dsn) as conn:
        await conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        await conn.execute("SELECT pg_reload_conf()")
    await wait_until(
        lambda: _no_wal_receiver(standby_dsn), WAIT, what="the standby to stop receiving"
    )
    seen_by_standby = term
    for _ in range(2):
        await terminate_leader_backend(primary_dsn)
        term = next_election(processes, term)["term"]
    assert term > seen_by_standby
    last_on_primary = term

    own_server.stop()
    async with connected(standby_dsn) as conn:
        lagging = await conn.fetchval(
            "SELECT term FROM coordinator.leaders WHERE group_name = $1", GROUP
        )
        assert lagging == seen_by_standby < last_on_primary
        assert await conn.fetchval("SELECT pg_promote()")
    # Had the standby counted on from what it saw, it would issue terms the
    # primary already did, and no term above the primary's would come.
    first_after = next_election(processes, last_on_primary)["term"]
    assert first_after >> TIMELINE_BITS == 1  # timeline 2: (2 - 1) << 32, plus the count
    terms = acquired_terms(processes)
    assert len(terms) == len(set(terms)), f"a term was issued twice: {sorted(terms)}"


async def _no_wal_receiver(dsn: str) -> bool:
    async with connected(dsn) as conn:
        return not await conn.fetchval("SELECT count(*) FROM pg_stat_wal_receiver")


async def test_a_multi_host_dsn_with_read_write_never_lands_on_the_standby(
    own_server: LocalPostgres, spawn: Any
) -> None:
    """The standby comes first in the DSN and takes advisory locks as readily as a
    primary; target_session_attrs=read-write keeps every session off it across a
    restart of the primary."""
    async with connected(own_server.dsn) as conn:
        await conn.execute("CREATE DATABASE terms")
    await migrate(own_server.dsn_for("terms"))
    standby = own_server.create_standby()
    both = (
        f"postgresql://postgres:{own_server.password}@127.0.0.1:{standby.port},"
        f"127.0.0.1:{own_server.port}/terms?target_session_attrs=read-write"
    )
    processes = [spawn(both, [GROUP], instance_id=name, **FAST) for name in ("a", "b")]
    term = next_election(processes, 0)["term"]
    own_server.restart()
    term = next_election(processes, term)["term"]
    async with connected(standby.dsn_for("terms")) as conn:
        assert await conn.fetchval("SELECT pg_is_in_recovery()")
        assert not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")

        async def no_session_on_standby() -> bool:
            # asyncpg's read-write probe of the standby carries the application
            # name for a moment before it moves on; a session that stayed would
            # keep this above zero until the timeout.
            return not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'coordinator:%'"
            )

        await wait_until(no_session_on_standby, WAIT, what="no coordinator session on the standby")
    for process in processes:
        assert not [r for r in process.records() if r.get("level") == "error"]
