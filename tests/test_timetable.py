"""The shared timetable of leader-only jobs, in process: continuity, changes, drain, stale runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from apscheduler.job import Job
from prometheus_client import CollectorRegistry, generate_latest
from test_apscheduler_integration import GROUP, SLACK, Replica, leader_of, replicas
from test_least_privilege import Role, cli, make_role  # noqa: F401 - the fixture

from coordinator import StaleTerm, request_switchover
from coordinator.integrations.apscheduler import RunContext
from coordinator.integrations.job_metrics import LeaderJobMetrics
from coordinator.testing import capture_logs
from helpers import connected, wait_until


async def timetable(dsn: str) -> dict[str, Any]:
    async with connected(dsn) as conn:
        rows = await conn.fetch("SELECT job_id, trigger, next_fire_at FROM coordinator.jobs")
    return {row["job_id"]: row for row in rows}


async def placed(replica: Replica, *job_ids: str) -> bool:
    return all(replica.next_run_time(job_id) is not None for job_id in job_ids)


def _draining(replica: Replica) -> Any:
    async def draining() -> bool:
        return replica.jobs.draining is not None

    return draining


async def placed_job(replica: Replica, job_id: str) -> Job:
    """Once ``replica`` leads and has placed the job on the timetable: the job."""
    await replica.group.wait_elected(SLACK)
    await wait_until(lambda: placed(replica, job_id), SLACK, what="the job placed")
    return replica.scheduler.get_job(job_id)


def soon(job: Job, interval: timedelta) -> datetime:
    """A fire time half a second from now, on the grid of a job first due in one interval."""
    fire_time: datetime = job.next_run_time - interval + timedelta(seconds=0.5)
    return fire_time


async def nothing(*, term: int) -> None:
    """A leader-only job that does nothing."""


async def test_a_new_leader_continues_the_shared_timetable_not_its_own(dsn: str) -> None:
    async with replicas(dsn, "a") as (first,):
        first.jobs.add_job(nothing, "interval", hours=1, id="hourly", misfire_grace_time=None)
        job = await placed_job(first, "hourly")
        fired_at = job.next_run_time - timedelta(minutes=20)  # "the last tick ran at 10:00"
        await first.jobs.run_ticks(job, [fired_at])
    async with replicas(dsn, "b") as (second,):
        second.jobs.add_job(nothing, "interval", hours=1, id="hourly", misfire_grace_time=None)
        await placed_job(second, "hourly")
        # "... next runs at 11:00 on whoever leads then", not an hour after b started.
        assert second.next_run_time("hourly") == fired_at + timedelta(hours=1)
        assert (await timetable(dsn))["hourly"]["next_fire_at"] == fired_at + timedelta(hours=1)


async def test_the_next_leader_picks_up_a_changed_trigger_and_drops_removed_jobs(
    dsn: str,
) -> None:
    async with replicas(dsn, "a") as (first,):
        first.jobs.add_job(nothing, "interval", hours=1, id="kept")
        first.jobs.add_job(nothing, "interval", hours=1, id="dropped")
        await first.group.wait_elected(SLACK)
        await wait_until(lambda: placed(first, "kept", "dropped"), SLACK, what="both placed")
        assert set(await timetable(dsn)) == {"kept", "dropped"}
    async with replicas(dsn, "b") as (second,):  # the next release: one job changed, one gone
        second.jobs.add_job(nothing, "cron", minute="*/5", id="kept")
        await placed_job(second, "kept")
        rows = await timetable(dsn)
        assert set(rows) == {"kept"}
        assert rows["kept"]["trigger"] == str(second.scheduler.get_job("kept").trigger)
        assert rows["kept"]["next_fire_at"] == second.next_run_time("kept")
        assert second.next_run_time("kept").minute % 5 == 0


@pytest.mark.parametrize("hand_over", ["resign", "switchover"])
async def test_a_graceful_hand_over_drains_a_run_in_progress_which_commits_in_its_term(
    dsn: str, hand_over: str
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    async with replicas(dsn, "a", "b") as both:
        for replica in both:

            async def slow(run: RunContext) -> None:
                async with run.fenced() as tx:
                    started.set()
                    await release.wait()
                    await tx.conn.execute("SELECT 1")

            replica.jobs.add_job(slow, "interval", seconds=0.2, id="slow", max_instances=1)
        first = await leader_of(both)
        await asyncio.wait_for(started.wait(), SLACK)
        with capture_logs() as logs:
            resigning = asyncio.create_task(
                first.group.resign()
                if hand_over == "resign"
                else request_switchover(dsn, GROUP, timeout=SLACK)
            )
            await wait_until(_draining(first), SLACK, what="the hand-over to drain")
            release.set()
            await asyncio.wait_for(resigning, SLACK)
        async with connected(dsn) as conn:
            run = await conn.fetchrow(
                "SELECT term, outcome FROM coordinator.job_runs WHERE job_id = 'slow' "
                "ORDER BY scheduled_at LIMIT 1"
            )
        assert (run["term"], run["outcome"]) == (1, "done")
        paused = next(log for log in logs if log["event"] == "leader_jobs_paused")
        assert (paused["drained"], paused["cancelled"]) == (1, 0)


async def test_a_stale_run_ends_with_one_line_and_no_traceback(dsn: str) -> None:
    async with replicas(dsn, "a") as (only,):

        async def refused(ctx: RunContext) -> None:  # asks for the run context by annotation
            raise StaleTerm(f"term {ctx.term} is over")

        only.jobs.add_job(refused, "interval", hours=1, id="refused")
        job = await placed_job(only, "refused")
        with capture_logs() as logs:
            await only.jobs.run_ticks(job, [soon(job, timedelta(hours=1))])
        stale = [log for log in logs if log["event"] == "leader_job_stale"]
        assert [(log["job"], log["term"]) for log in stale] == [("refused", 1)]
        assert not [log for log in logs if log.get("exc_info") or log["log_level"] == "error"]
        assert only.jobs.stale_runs["refused"] == 1
        # A fenced job's run that never committed stays open for the next leader.
        async with connected(dsn) as conn:
            outcome = await conn.fetchval(
                "SELECT outcome FROM coordinator.job_runs WHERE job_id = 'refused'"
            )
        assert outcome == "interrupted"


@pytest.mark.parametrize("passes", ["run", "term", "nothing"])
async def test_each_kind_of_job_gets_what_it_asks_for(dsn: str, passes: str) -> None:
    got: list[Any] = []

    async def wants_run(run: RunContext) -> None:
        got.append(run)

    async def wants_term(*, term: int) -> None:
        got.append(term)

    async def wants_nothing() -> None:
        got.append(None)

    func = {"run": wants_run, "term": wants_term, "nothing": wants_nothing}[passes]
    async with replicas(dsn, "a") as (only,):
        only.jobs.add_job(func, "interval", hours=1, id="job")
        job = await placed_job(only, "job")
        tick = soon(job, timedelta(hours=1))
        await only.jobs.run_ticks(job, [tick])
    (value,) = got
    if passes == "run":
        assert (value.term, value.scheduled_at, value.attempt) == (1, tick, 1)
    else:
        assert value == (1 if passes == "term" else None)


async def test_leader_only_jobs_run_as_the_least_privileged_role(
    dsn: str,
    make_role: Callable[..., Awaitable[Role]],  # noqa: F811 - the fixture imported above
) -> None:
    role = await make_role()
    done: list[int] = []

    async def fenced(run: RunContext) -> None:
        async with run.fenced() as tx:
            done.append(await tx.conn.fetchval("SELECT $1::bigint", run.term))

    async with replicas(role.dsn, "a") as (only,):
        only.jobs.add_job(fenced, "interval", hours=1, id="fenced")
        job = await placed_job(only, "fenced")
        await only.jobs.run_ticks(job, [soon(job, timedelta(hours=1))])
        async with connected(role.dsn) as conn:
            for statement in (
                "UPDATE coordinator.jobs SET next_fire_at = now()",
                "UPDATE coordinator.job_runs SET outcome = 'done'",
                "DELETE FROM coordinator.job_runs",
                "INSERT INTO coordinator.job_runs (group_name, job_id, scheduled_at, term, "
                "instance_id, mode, outcome) VALUES ('g', 'j', now(), 1, 'i', 'plain', 'done')",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            # Pruning goes through its function too.
            assert await conn.fetchval("SELECT coordinator.prune_job_runs(86400)") == 0
    assert done == [1]


async def test_jobs_command_lists_last_and_next_fire_and_who_ran_the_last_tick(dsn: str) -> None:
    async with replicas(dsn, "a") as (only,):
        only.jobs.add_job(nothing, "interval", hours=1, id="hourly")
        job = await placed_job(only, "hourly")
        tick = soon(job, timedelta(hours=1))
        await only.jobs.run_ticks(job, [tick])
    listed = cli("jobs", "--dsn", dsn, "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert {k: row[k] for k in ("group", "job_id", "last_term", "last_instance_id")} == {
        "group": "jobs",
        "job_id": "hourly",
        "last_term": 1,
        "last_instance_id": "a",
    }
    assert (row["last_outcome"], row["last_attempt"]) == ("done", 1)
    assert row["last_scheduled_at"] == tick.isoformat()
    assert row["next_fire_at"] == (tick + timedelta(hours=1)).isoformat()
    table = cli("jobs", "--dsn", dsn, "--group", "jobs")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["GROUP", "JOB", "TRIGGER"]
    assert "hourly" in table.stdout
    assert "done in" in table.stdout
    other = cli("jobs", "--dsn", dsn, "--group", "elsewhere")
    assert other.stdout.strip() == "no leader-only jobs on the timetable of group elsewhere"


async def test_runs_are_counted_by_job_id_and_outcome_in_metrics(dsn: str) -> None:
    registry = CollectorRegistry()
    async with replicas(dsn, "a") as (only,):
        LeaderJobMetrics(only.jobs, registry=registry)

        async def refused(*, term: int) -> None:
            raise StaleTerm(f"term {term} is over")

        only.jobs.add_job(nothing, "interval", hours=1, id="fine")
        only.jobs.add_job(refused, "interval", hours=1, id="refused")
        for job_id in ("fine", "refused"):
            job = await placed_job(only, job_id)
            await only.jobs.run_ticks(job, [soon(job, timedelta(hours=1))])
    text = generate_latest(registry).decode()
    assert 'coordinator_leader_job_runs_total{group="jobs",job="fine",outcome="done"} 1.0' in text
    assert (
        'coordinator_leader_job_runs_total{group="jobs",job="refused",outcome="stale"} 1.0' in text
    )
    assert 'coordinator_leader_job_stale_total{group="jobs",job="refused"} 1.0' in text


async def test_drain_before_a_planned_stop_lets_group_fenced_writes_commit(dsn: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    async with replicas(dsn, "a") as (only,):

        async def writes(*, term: int) -> None:
            async with only.group.fenced(only.jobs.pool, term=term) as tx:
                started.set()
                await release.wait()
                await tx.conn.execute("SELECT 1")

        only.jobs.add_job(writes, "interval", seconds=0.2, id="writes", max_instances=1)
        await asyncio.wait_for(started.wait(), SLACK)
        draining = asyncio.create_task(only.jobs.drain())
        await wait_until(lambda: _paused(only, "writes"), SLACK, what="the jobs paused")
        assert only.group.is_leader  # still leading while it drains
        release.set()
        await asyncio.wait_for(draining, SLACK)
        async with connected(dsn) as conn:
            outcomes = await conn.fetch("SELECT outcome FROM coordinator.job_runs")
        assert [row["outcome"] for row in outcomes] == ["done"]


async def _paused(replica: Replica, job_id: str) -> bool:
    return replica.next_run_time(job_id) is None


async def test_a_date_job_runs_once_whoever_leads_afterwards(dsn: str) -> None:
    ran: list[str] = []
    run_date = datetime.now(UTC) + timedelta(seconds=0.5)
    for name in ("a", "b"):
        async with replicas(dsn, name) as (replica,):

            async def once(*, term: int, by: str = name) -> None:
                ran.append(by)

            replica.jobs.add_job(once, "date", run_date=run_date, id="once")
            with capture_logs() as logs:
                await replica.group.wait_elected(SLACK)
                await wait_until(_said(logs, "leader_jobs_resumed"), SLACK, what="jobs placed")
            await wait_until(lambda: _finished(dsn, "once"), SLACK, what="the tick done")
            rows = await timetable(dsn)
            assert rows["once"]["next_fire_at"] is None  # nothing more to run
    assert ran == ["a"]


def _said(logs: list[dict[str, Any]], event: str) -> Callable[[], Awaitable[bool]]:
    async def said() -> bool:
        return any(log["event"] == event for log in logs)

    return said


async def _finished(dsn: str, job_id: str) -> bool:
    async with connected(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM coordinator.job_runs WHERE job_id = $1 AND outcome = 'done'",
                job_id,
            )
        )
