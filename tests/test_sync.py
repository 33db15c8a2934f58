"""coordinator.sync: blocking group API, callbacks in a pool, jobs of a BackgroundScheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

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


def test_leader_only_jobs_of_a_background_scheduler_run_only_while_leading(
    make: Callable[[str], sync.Coordinator],
) -> None:
    leader = make("a")
    scheduler = BackgroundScheduler()
    jobs = sync.LeaderOnlyJobs(scheduler, leader.group(GROUP))
    runs: list[tuple[int, str]] = []

    @jobs.scheduled_job("interval", seconds=0.05, id="tick")
    def tick(*, term: int) -> None:
        runs.append((term, threading.current_thread().name))

    assert jobs.job_ids == ["tick"]
    scheduler.start()
    try:
        assert scheduler.get_job("tick").next_run_time is None, "added paused: not leading yet"
        leader.start()
        eventually(lambda: len(runs) >= 2, SLACK, what="runs")
        assert {term for term, _ in runs} == {1}
        assert all(name.startswith("coordinator-callback") for _, name in runs)
        leader.stop()
        assert scheduler.get_job("tick").next_run_time is None, "paused again on resign"
    finally:
        scheduler.shutdown()


def test_a_leader_only_job_must_take_term(make: Callable[[str], sync.Coordinator]) -> None:
    jobs = sync.LeaderOnlyJobs(BackgroundScheduler(), make("a").group(GROUP))
    with pytest.raises(ConfigurationError, match="give it a keyword parameter `term`"):
        jobs.add_job(lambda: None, "interval", seconds=1)
