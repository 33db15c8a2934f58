"""Leader-only jobs across real faults: three uvicorn replicas of examples/fastapi_app.

Each replica runs two leader-only jobs (``tick`` every 1 s through its run's
fenced transaction, ``report`` every 2 s through ``group.fenced``) and one
job on every replica. After each fault, the same checks: no tick claimed
twice, no effect committed twice, no commit of an older term after a newer
one (by ``pg_xact_commit_timestamp``), no traceback in any replica's output.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pytest

from helpers import connected, current_leader, wait_until
from replicas import SLACK, Replica, replica_factory, wait_ready

pytestmark = pytest.mark.slow

GROUP = "example"
TICK = timedelta(seconds=1)
REPORT = timedelta(seconds=2)
WORK_S = 0.4  # each run holds its fenced transaction this long: room to hit it mid-run
ENV = {
    "TICK_INTERVAL": "1",
    "REPORT_INTERVAL": "2",
    "TICK_WORK": str(WORK_S),
    "TICK_GRACE": "30",
}


@dataclass
class Cluster:
    dsn: str
    replicas: list[Replica]
    leader: Replica
    term: int

    async def new_leader(self) -> tuple[Replica, int]:
        """Wait for a leader of a newer term that has committed a tick of its own."""
        row = await wait_until(
            lambda: current_leader(self.dsn, GROUP, after_term=self.term),
            SLACK,
            what="a new leader",
        )
        await wait_until(
            lambda: effects_of(self.dsn, row["term"], 2), SLACK, what="ticks of the new term"
        )
        replica = next(r for r in self.replicas if r.instance_id == row["leader"])
        return replica, int(row["term"])

    async def running_tick(self) -> datetime:
        """Wait until the leader is inside a run of ``tick``; its scheduled time."""
        query = """
            SELECT scheduled_at FROM coordinator.job_runs
             WHERE group_name = $1 AND job_id = 'tick' AND term = $2 AND outcome = 'running'
        """

        async def running() -> datetime | None:
            async with connected(self.dsn) as conn:
                value: datetime | None = await conn.fetchval(query, GROUP, self.term)
            return value

        at: datetime = await wait_until(running, SLACK, what="a run in progress", every=0.01)
        return at

    async def between_runs(self) -> None:
        """Wait until no leader-only run is in progress (the next one is due in ~0.5 s)."""

        async def idle() -> bool:
            async with connected(self.dsn) as conn:
                busy = await conn.fetchval(
                    "SELECT count(*) FROM coordinator.job_runs WHERE outcome = 'running'"
                )
            return busy == 0

        await wait_until(idle, SLACK, what="a moment between runs", every=0.01)


@pytest.fixture
async def cluster(dsn: str) -> AsyncIterator[Cluster]:
    async with connected(dsn) as conn:
        if await conn.fetchval("SHOW track_commit_timestamp") != "on":
            pytest.skip(
                "these tests order commits by time: the server needs track_commit_timestamp"
            )
    async with replica_factory(dsn) as start:
        replicas = [start(f"replica-{n}", **ENV) for n in (1, 2, 3)]
        await wait_ready(*replicas)
        row = await wait_until(lambda: current_leader(dsn, GROUP), SLACK, what="a leader")
        await wait_until(lambda: effects_of(dsn, row["term"], 3), SLACK, what="the first ticks")
        leader = next(r for r in replicas if r.instance_id == row["leader"])
        yield Cluster(dsn, replicas, leader, int(row["term"]))
        check_outputs(replicas)
        await check_database(dsn)


async def effects_of(dsn: str, term: int, at_least: int) -> bool:
    async with connected(dsn) as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM example_ticks WHERE job = 'tick' AND term = $1", term
        )
    return bool(count >= at_least)


async def runs(dsn: str, job: str) -> list[asyncpg.Record]:
    async with connected(dsn) as conn:
        return list(
            await conn.fetch(
                "SELECT * FROM coordinator.job_runs WHERE group_name = $1 AND job_id = $2 "
                "ORDER BY scheduled_at",
                GROUP,
                job,
            )
        )


async def tick_effects(dsn: str) -> dict[datetime, list[int]]:
    """The terms that committed an effect of each tick, by scheduled time."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT scheduled_at, term FROM example_ticks WHERE job = 'tick' ORDER BY id"
        )
    effects: dict[datetime, list[int]] = {}
    for row in rows:
        effects.setdefault(row["scheduled_at"], []).append(row["term"])
    return effects


def check_outputs(replicas: list[Replica]) -> None:
    for replica in replicas:
        output = replica.output()
        assert "Traceback" not in output, f"{replica.instance_id} printed a traceback:\n{output}"


async def check_database(dsn: str) -> None:
    async with connected(dsn) as conn:
        # No tick claimed twice: only a fenced tick whose run never committed is claimed again.
        reclaimed = await conn.fetch(
            "SELECT job_id, scheduled_at FROM coordinator.job_runs "
            "WHERE attempt > 1 AND (mode <> 'fenced' OR outcome NOT IN ('done', 'running', "
            "'interrupted', 'abandoned'))"
        )
        assert reclaimed == []
        # No effect committed twice, and each committed tick is marked done.
        twice = await conn.fetch(
            "SELECT scheduled_at, count(*) FROM example_ticks WHERE job = 'tick' "
            "GROUP BY scheduled_at HAVING count(*) > 1"
        )
        assert twice == []
        undone = await conn.fetch(
            "SELECT t.scheduled_at FROM example_ticks AS t LEFT JOIN coordinator.job_runs AS r "
            "ON r.job_id = 'tick' AND r.scheduled_at = t.scheduled_at AND r.term = t.term "
            "AND r.outcome = 'done' WHERE t.job = 'tick' AND r.id IS NULL"
        )
        assert undone == []
        # No commit of an older term after a newer one, in the order the server committed.
        terms = [
            row["term"]
            for row in await conn.fetch(
                "SELECT term FROM example_ticks ORDER BY pg_xact_commit_timestamp(xmin), id"
            )
        ]
    assert terms == sorted(terms)


def assert_contiguous(times: list[datetime], interval: timedelta) -> None:
    """Consecutive fire times one interval apart: no tick lost, none early."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(abs(gap - interval) < timedelta(milliseconds=1) for gap in gaps), gaps


async def test_kill_between_runs_continues_the_shared_timetable(cluster: Cluster) -> None:
    await cluster.between_runs()
    cluster.leader.signal(signal.SIGKILL)
    _, term = await cluster.new_leader()
    ticks = sorted(await tick_effects(cluster.dsn))
    assert_contiguous(ticks, TICK)
    # The 2 s job: its first run on the new leader is the shared next fire time.
    reports = await runs(cluster.dsn, "report")
    await wait_until(
        lambda: _has_term(cluster.dsn, "report", term), SLACK, what="a report of the new term"
    )
    reports = await runs(cluster.dsn, "report")
    old = [r["scheduled_at"] for r in reports if r["term"] == cluster.term]
    new = [r["scheduled_at"] for r in reports if r["term"] == term]
    assert abs(min(new) - (max(old) + REPORT)) < timedelta(milliseconds=1)
    assert_contiguous([r["scheduled_at"] for r in reports], REPORT)


async def test_kill_during_a_fenced_run_reruns_the_tick_once_on_the_next_leader(
    cluster: Cluster,
) -> None:
    in_flight = await cluster.running_tick()
    cluster.leader.signal(signal.SIGKILL)
    _, term = await cluster.new_leader()
    (run,) = [r for r in await runs(cluster.dsn, "tick") if r["scheduled_at"] == in_flight]
    assert (run["attempt"], run["term"], run["outcome"]) == (2, term, "done")
    assert (await tick_effects(cluster.dsn))[in_flight] == [term]
    assert_contiguous(sorted(await tick_effects(cluster.dsn)), TICK)


async def test_frozen_leader_is_refused_quietly_and_the_missed_tick_runs_once(
    cluster: Cluster,
) -> None:
    frozen = cluster.leader
    in_flight = await cluster.running_tick()
    frozen.signal(signal.SIGSTOP)
    new_leader, term = await cluster.new_leader()
    frozen.signal(signal.SIGCONT)
    await wait_until(
        lambda: _said(frozen, "leader_jobs_paused"), SLACK, what="the thawed leader to stop"
    )
    # Its run was refused (stale) or cancelled, in one line, not a traceback.
    assert _said_now(frozen, "leader_job_stale") or _said_now(frozen, "leader_job_cancelled")
    assert new_leader is not frozen
    # The run in flight never committed. The ticks due while nobody led (it
    # and those after it) were coalesced, as the job asks: one run, by the new term.
    effects = await tick_effects(cluster.dsn)
    assert in_flight not in effects
    new_runs = [r for r in await runs(cluster.dsn, "tick") if r["term"] == term]
    first_claim = min(r["claimed_at"] for r in new_runs)
    caught_up = [r["scheduled_at"] for r in new_runs if r["scheduled_at"] <= first_claim]
    assert len(caught_up) == 1
    assert effects[caught_up[0]] == [term]
    (abandoned,) = [r for r in await runs(cluster.dsn, "tick") if r["scheduled_at"] == in_flight]
    assert (abandoned["term"], abandoned["outcome"]) == (cluster.term, "abandoned")


async def test_sigterm_during_a_run_lets_it_finish_and_it_is_not_run_again(
    cluster: Cluster,
) -> None:
    leaving = cluster.leader
    in_flight = await cluster.running_tick()
    leaving.signal(signal.SIGTERM)
    assert await asyncio.to_thread(leaving.process.wait, SLACK) == -signal.SIGTERM
    _, term = await cluster.new_leader()
    (run,) = [r for r in await runs(cluster.dsn, "tick") if r["scheduled_at"] == in_flight]
    assert (run["attempt"], run["term"], run["outcome"]) == (1, cluster.term, "done")
    assert (await tick_effects(cluster.dsn))[in_flight] == [cluster.term]
    # It drained while it still led, then handed over with nothing left to cancel.
    assert "leader_jobs_drained" in leaving.output()
    assert "cancelled=0" in leaving.output()
    assert_contiguous(sorted(await tick_effects(cluster.dsn)), TICK)
    assert term == cluster.term + 1


async def _has_term(dsn: str, job: str, term: int) -> bool:
    return any(r["term"] == term for r in await runs(dsn, job))


async def _said(replica: Replica, event: str) -> bool:
    return _said_now(replica, event)


def _said_now(replica: Replica, event: str) -> bool:
    return event in replica.output()
