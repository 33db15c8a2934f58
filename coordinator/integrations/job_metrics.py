"""Prometheus metrics of leader-only jobs, by job id (needs ``prometheus-client``).

::

    LeaderJobMetrics(leader_jobs, registry=metrics.registry)   # beside CoordinatorMetrics

The counts are read from the :class:`LeaderOnlyJobs` at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.integrations.apscheduler import LeaderOnlyJobs

__all__ = ["LeaderJobMetrics"]


class LeaderJobMetrics(Collector):
    """``coordinator_leader_job_runs_total`` and ``coordinator_leader_job_stale_total``."""

    def __init__(self, leader_jobs: LeaderOnlyJobs, *, registry: CollectorRegistry) -> None:
        self._jobs = leader_jobs
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        runs, stale = self._families()
        group = self._jobs.group.name
        for (job_id, outcome), count in sorted(self._jobs.outcomes.items()):
            runs.add_metric([group, job_id, outcome], float(count))
        for job_id, count in sorted(self._jobs.stale_runs.items()):
            stale.add_metric([group, job_id], float(count))
        return iter((runs, stale))

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "coordinator_leader_job_runs",
                "Ticks of leader-only jobs this instance claimed, by how they ended: done, "
                "failed, cancelled, stale, interrupted (a fenced run that did not commit), "
                "skipped (missed beyond misfire_grace_time).",
                labels=["group", "job", "outcome"],
            ),
            CounterMetricFamily(
                "coordinator_leader_job_stale",
                "Runs of leader-only jobs that met NotLeader or StaleTerm: their term was over.",
                labels=["group", "job"],
            ),
        )
