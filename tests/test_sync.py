"""coordinator.sync: blocking group API, callbacks in a pool, jobs of a BackgroundScheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import psycopg
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from test_drivers import sync_target

from coordinator import ConfigurationError, HeartbeatDone, sync
from helpers import FAST, eventually, lock_waiters_now

GROUP = "scheduler"
SLACK = 10.0


@pytest.fixture
def make(dsn: str) -> Iterator[Callable[[str], sync.Coordinator]]:
    made: list[sync.Coordinator] = []

    def build(instance_id: str) -> sync.Coordinator:
        made.append(sync.Coordinator(dsn, instance_id=instance_id, **FAST))
        made[-1].group(GROUP)
        return made[-1]

    yield build
    for one in made:
        one.stop()


def test_one_of_two_leads_and_callbacks_run_in_the_pool_not_on_the_loop(
    dsn: str, make: Callable[[str], sync.Coordinator]
) -> None:
    first, second = make("a"), make("b")
    seen: list[tuple[str, str, object]] = []
    for coordinator in (first, second):
        group = coordinator.group(GROUP)
        group.on_elected(
            lambda term, who=coordinator.instance_id: seen.append(
                (who, threading.current_thread().name, term)
            )
        )
        group.on_demoted(
            lambda reason, who=coordinator.instance_id: seen.append(
                (who, threading.current_thread().name, reason)
            )
        )
    first.start()
    assert first.group(GROUP).wait_elected(SLACK) == 1
    second.start()
    eventually(lambda: lock_waiters_now(dsn), SLACK, what="the second in the lock's queue")
    assert first.group(GROUP).is_leader
    assert first.group(GROUP).term == 1
    assert not second.group(GROUP).is_leader
    assert second.group(GROUP).term is None
    with pytest.raises(TimeoutError):
        second.group(GROUP).wait_elected(0.1)

    first.group(GROUP).resign()
    assert second.group(GROUP).wait_elected(SLACK) == 2
    assert not first.group(GROUP).is_leader
    assert [(who, what) for who, _, what in seen] == [("a", 1), ("a", "resigned"), ("b", 2)]
    assert all(name.startswith("coordinator-callback") for _, name, _ in seen)


def test_a_blocking_callback_does_not_stop_the_heartbeat(
    make: Callable[[str], sync.Coordinator],
) -> None:
    leader = make("a")
    release = threading.Event()
    beats: list[HeartbeatDone] = []
    leader.add_listener(
        lambda signal: (
            beats.append(signal)
            if isinstance(signal, HeartbeatDone) and signal.group == GROUP and signal.ok
            else None
        )
    )
    leader.group(GROUP).on_elected(lambda term: release.wait(SLACK))
    leader.start()
    term = leader.group(GROUP).wait_elected(SLACK)
    # Enough heartbeats to outlast two ttls, while the callback still blocks its thread.
    eventually(
        lambda: len(beats) > 2 * FAST["ttl"] / FAST["heartbeat_interval"], SLACK, what="heartbeats"
    )
    assert not release.is_set()
    assert leader.group(GROUP).term == term
    release.set()


def ticks_done(dsn: str) -> list[tuple[str, int, datetime]]:
    """Every tick recorded done on the shared timetable: (job id, term, scheduled time)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT job_id, term, scheduled_at FROM coordinator.job_runs"
            " WHERE outcome = 'done' ORDER BY scheduled_at"
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def test_leader_only_jobs_of_a_background_scheduler_run_on_the_shared_timetable(
    dsn: str, make: Callable[[str], sync.Coordinator]
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (scheduled_at timestamptz NOT NULL, term bigint)")
    leader = make("a")
    group = leader.group(GROUP)
    scheduler = BackgroundScheduler()
    jobs = sync.LeaderOnlyJobs(scheduler, group)
    threads: list[str] = []
    terms: list[int] = []

    @jobs.scheduled_job("interval", seconds=0.05, id="fenced")
    def fenced(run: sync.RunContext) -> None:
        threads.append(threading.current_thread().name)
        with psycopg.connect(dsn) as conn, run.fenced(conn) as tx:
            tx.conn.execute("INSERT INTO effects VALUES (%s, %s)", (run.scheduled_at, tx.term))

    @jobs.scheduled_job("interval", seconds=0.05, id="plain")
    def plain(*, term: int) -> None:  # the former shape keeps working: at most once per tick
        terms.append(term)

    assert jobs.job_ids == ["fenced", "plain"]
    scheduler.start()
    try:
        assert scheduler.get_job("fenced").next_run_time is None, "added paused: not leading yet"
        leader.start()
        eventually(lambda: len(ticks_done(dsn)) >= 4 and terms, SLACK, what="runs of both")
        late: list[int] = []
        jobs.add_job(lambda *, term: late.append(term), "interval", seconds=0.05, id="late")
        eventually(lambda: late, SLACK, what="a job added while leading to be placed and run")
        leader.stop()  # drains the runs in progress, then resigns
        assert scheduler.get_job("fenced").next_run_time is None, "paused again on resign"
    finally:
        scheduler.shutdown()
    assert all(name.startswith("coordinator-callback") for name in threads)
    assert set(terms) == {1}
    with psycopg.connect(dsn) as conn:
        effects = conn.execute("SELECT scheduled_at, term FROM effects").fetchall()
    done = [(at, term) for job_id, term, at in ticks_done(dsn) if job_id == "fenced"]
    assert sorted(effects) == sorted(done), "each effect committed with its tick marked done"
    assert len({at for at, _ in effects}) == len(effects), "no tick's effect committed twice"


def test_a_fenced_tick_cut_off_by_a_lost_session_runs_again_in_the_next_term(
    dsn: str, make: Callable[[str], sync.Coordinator]
) -> None:
    leader = make("a")
    group = leader.group(GROUP)
    scheduler = BackgroundScheduler()
    jobs = sync.LeaderOnlyJobs(scheduler, group)
    attempts: list[tuple[int, datetime, int]] = []

    @jobs.scheduled_job("interval", hours=1, id="hourly", misfire_grace_time=None)
    def hourly(run: sync.RunContext) -> None:
        attempts.append((run.term, run.scheduled_at, run.attempt))
        with psycopg.connect(dsn, autocommit=True) as conn:
            if run.attempt == 1:  # the leader's session dies in the middle of the run
                conn.execute(
                    "SELECT pg_terminate_backend(lock_pid) FROM coordinator.leader_status"
                    " WHERE group_name = %s",
                    (GROUP,),
                )
                eventually(lambda: not group.is_leader, SLACK, what="the leadership lost")
            with run.fenced(conn):
                pass

    scheduler.start()
    leader.start()
    try:
        group.wait_elected(SLACK)
        job = eventually(
            lambda: (job := scheduler.get_job("hourly")).next_run_time and job,
            SLACK,
            what="the job placed",
        )
        due = job.next_run_time - timedelta(hours=1) + timedelta(seconds=0.5)
        scheduler.modify_job("hourly", next_run_time=due)
        eventually(lambda: ticks_done(dsn), SLACK, what="the tick done in the next term")
    finally:
        leader.stop()
        scheduler.shutdown()
    assert attempts == [(1, due, 1), (2, due, 2)]
    assert ticks_done(dsn) == [("hourly", 2, due)]


@pytest.mark.parametrize("kind", ["psycopg", "sqlalchemy-connection", "sqlalchemy-session"])
def test_run_fenced_marks_the_tick_done_through_each_blocking_driver(
    dsn: str, make: Callable[[str], sync.Coordinator], kind: str
) -> None:
    leader = make("a")
    scheduler = BackgroundScheduler()
    jobs = sync.LeaderOnlyJobs(scheduler, leader.group(GROUP))

    @jobs.scheduled_job("interval", seconds=0.05, id="tick")
    def tick(run: sync.RunContext) -> None:
        with sync_target(kind, dsn) as target, run.fenced(target) as tx:
            assert tx.term == run.term

    scheduler.start()
    leader.start()
    try:
        eventually(lambda: ticks_done(dsn), SLACK, what="a tick done in the job's transaction")
    finally:
        leader.stop()
        scheduler.shutdown()
    assert {(job_id, term) for job_id, term, _ in ticks_done(dsn)} == {("tick", 1)}


def test_a_leader_only_job_needs_an_id(make: Callable[[str], sync.Coordinator]) -> None:
    jobs = sync.LeaderOnlyJobs(BackgroundScheduler(), make("a").group(GROUP))
    with pytest.raises(ConfigurationError, match="has no id: give it a stable id="):
        jobs.add_job(lambda run: None, "interval", seconds=1)
