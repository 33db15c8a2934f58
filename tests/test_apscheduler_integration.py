"""Leader-only jobs in the application's own APScheduler 3 scheduler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler

from coordinator import HEARTBEAT_JOB_ID, MONITOR_JOB_ID, ConfigurationError, Coordinator
from coordinator.integrations.apscheduler import LeaderOnlyJobs, RunContext
from coordinator.testing import capture_logs
from helpers import coordinator, wait_until

GROUP = "jobs"
SLACK = 10.0
EVERY = 0.05  # seconds between runs of the test job


class Replica:
    """One application instance: its scheduler, its coordinator, its leader-only jobs."""

    def __init__(self, dsn: str, instance_id: str, **jobs_options: Any) -> None:
        self.scheduler = AsyncIOScheduler()
        self.coordinator = coordinator(dsn, instance_id, GROUP, scheduler=self.scheduler)
        self.group = self.coordinator.group(GROUP)
        self.jobs = LeaderOnlyJobs(
            self.scheduler, self.group, instance_id=instance_id, **jobs_options
        )
        self.id = instance_id
        self.dsn = dsn

    def next_run_time(self, job_id: str) -> Any:
        job = self.scheduler.get_job(job_id)
        assert job is not None
        return job.next_run_time


@contextlib.asynccontextmanager
async def replicas(dsn: str, *names: str, **jobs_options: Any) -> AsyncIterator[list[Replica]]:
    started = [Replica(dsn, name, **jobs_options) for name in names]
    pools = []
    try:
        for replica in started:
            replica.jobs.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            pools.append(replica.jobs.pool)
            replica.scheduler.start()  # the application's scheduler, started by the application
            await replica.coordinator.start()
        yield started
    finally:
        for replica in started:
            await replica.coordinator.stop()
            replica.scheduler.shutdown(wait=False)
        for pool in pools:
            await pool.close()


async def leader_of(group_replicas: list[Replica]) -> Replica:
    async def find() -> Replica | None:
        return next((r for r in group_replicas if r.group.is_leader), None)

    leader: Replica = await wait_until(find, SLACK, what="a leader")
    return leader


async def test_jobs_run_only_on_the_leader_with_its_term_and_move_with_leadership(
    dsn: str,
) -> None:
    runs: list[tuple[str, int]] = []
    async with replicas(dsn, "a", "b") as both:
        for replica in both:

            async def record(*, term: int, name: str = replica.id) -> None:
                runs.append((name, term))

            replica.jobs.add_job(record, "interval", seconds=EVERY, id="record")
        # The coordinator's own jobs share the application's scheduler, on every replica.
        for replica in both:
            assert {HEARTBEAT_JOB_ID, MONITOR_JOB_ID} <= {
                job.id for job in replica.scheduler.get_jobs()
            }
        first = await leader_of(both)
        second = next(r for r in both if r is not first)
        await wait_until(at_least(runs, 3), SLACK, what="three runs")
        assert set(runs) == {(first.id, 1)}
        assert second.next_run_time("record") is None  # paused on the follower
        assert first.next_run_time("record") is not None

        await first.group.resign()
        handed_over = len(runs)
        assert await second.group.wait_elected(SLACK) == 2
        await wait_until(at_least(runs, handed_over + 3), SLACK, what="runs after handover")
        assert set(runs[handed_over:]) == {(second.id, 2)}
        assert first.next_run_time("record") is None
        assert first.jobs.job_ids == ["record"]


async def test_run_in_progress_is_cancelled_before_the_lock_is_handed_over(dsn: str) -> None:
    timeline: list[tuple[str, str, int]] = []
    async with replicas(dsn, "a", "b", drain_timeout=0) as both:
        for replica in both:

            async def long_run(*, term: int, name: str = replica.id) -> None:
                timeline.append(("started", name, term))
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    timeline.append(("cancelled", name, term))
                    raise

            replica.jobs.add_job(long_run, "interval", seconds=EVERY, id="long", max_instances=1)
        first = await leader_of(both)
        second = next(r for r in both if r is not first)
        await wait_until(at_least(timeline, 1), SLACK, what="the run to start")
        with capture_logs() as logs:
            await first.group.resign()
            await wait_until(at_least(timeline, 3), SLACK, what="the new leader's run")
        # The old run was cancelled before the new leader could start its own.
        assert timeline == [
            ("started", first.id, 1),
            ("cancelled", first.id, 1),
            ("started", second.id, 2),
        ]
        assert ("leader_job_cancelled", 1) in [(log["event"], log.get("term")) for log in logs]


async def test_guard_skips_a_run_when_this_instance_does_not_lead(dsn: str) -> None:
    calls: list[int] = []

    async def work(*, term: int) -> None:
        calls.append(term)

    async with replicas(dsn, "a", "b") as both:
        for replica in both:
            replica.jobs.add_job(work, "interval", hours=1, id="work")
        first = await leader_of(both)
        second = next(r for r in both if r is not first)
        # What the scheduler's executor runs when the job fires, right before each run.
        tick = datetime.now(UTC)
        with capture_logs() as logs:
            await second.jobs.run_ticks(second.scheduler.get_job("work"), [tick])
        assert calls == []
        assert (logs[0]["event"], logs[0]["job"]) == ("leader_job_skipped", "work")
        await wait_until(lambda: _placed(first, "work"), SLACK, what="the job on the timetable")
        await first.jobs.run_ticks(first.scheduler.get_job("work"), [tick])
        # The same tick again: claimed once, so it does not run twice.
        await first.jobs.run_ticks(first.scheduler.get_job("work"), [tick])
        assert calls == [1]


async def _placed(replica: Replica, job_id: str) -> bool:
    return replica.next_run_time(job_id) is not None


def at_least(items: list[Any], count: int) -> Callable[[], Awaitable[bool]]:
    async def enough() -> bool:
        return len(items) >= count

    return enough


async def _valid_job(*, term: int) -> None:
    """A valid job, for the refusals below to differ from in one way each."""


def _blocking_job(*, term: int) -> None:
    """Not a coroutine function."""


async def _job_with_run(run: RunContext) -> None:
    """Asks for its run context."""


@pytest.mark.parametrize(
    ("func", "options", "fragment"),
    [
        (_blocking_job, {"id": "j"}, "define it with `async def`"),
        (_valid_job, {}, "give it a stable id"),
        (_valid_job, {"id": "j", "kwargs": {"term": 3}}, "remove it from kwargs"),
        (_job_with_run, {"id": "j", "kwargs": {"run": 3}}, "remove it from kwargs"),
        (_valid_job, {"id": "j", "args": (1,)}, "cannot be called with its args"),
        (_valid_job, {"id": "j", "executor": "default"}, "remove executor="),
    ],
)
def test_jobs_that_cannot_run_as_leader_only_are_refused_with_the_fix(
    func: Any, options: dict[str, Any], fragment: str
) -> None:
    group = Coordinator("postgresql://app@db.invalid/app").group(GROUP)
    jobs = LeaderOnlyJobs(AsyncIOScheduler(), group)
    with pytest.raises(ConfigurationError, match=f"leader-only job .*{fragment}"):
        jobs.add_job(func, "interval", seconds=1, **options)
    assert jobs.job_ids == []


def test_a_scheduler_without_an_asyncio_loop_is_refused_with_the_fix() -> None:
    scheduler = BackgroundScheduler()
    LeaderOnlyJobs(scheduler, Coordinator("postgresql://app@db.invalid/app").group(GROUP))
    with pytest.raises(ConfigurationError, match="need an asyncio loop: use an AsyncIOScheduler"):
        scheduler.start()
    assert not scheduler.running
