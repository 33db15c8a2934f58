"""Prometheus metrics of one coordinator.

Counters and the heartbeat histogram are fed by the coordinator's signals;
the gauges (who leads, the term, heartbeat ages) are read from its state at
scrape time, so a scrape never reports a leadership whose trust deadline has
passed. Nothing here touches the database: a scrape answers during an outage.

``leader_election_master_status{name}`` carries the meaning of client-go's
gauge of that name (1 while this instance leads the election ``name``, else
0), so dashboards and alerts written for Kubernetes controllers work as they
are; it carries ``group`` too (the same value), the label of every other
metric, so that joins need no ``label_replace``. The other metrics are
prefixed ``coordinator_``. A registry of its own also gets the standard
``process_*`` and ``python_*`` collectors, and ``coordinator_build_info``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator._coordinator import Coordinator
from coordinator._health import Health
from coordinator._signals import Demoted, Elected, Fenced, HeartbeatDone, Signal
from coordinator._term import DemotionReason

__all__ = ["HEARTBEAT_BUCKETS", "CoordinatorMetrics"]

#: Heartbeats take milliseconds when all is well and up to the heartbeat timeout when not.
HEARTBEAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FENCE_KINDS = ("fenced", "expired")
_HEARTBEAT_KINDS = ("group", "batch")


class CoordinatorMetrics:
    """Registers a coordinator's metrics in ``registry`` (a new one unless given).

    Create it after adding the groups and before starting the coordinator.
    One coordinator per registry: the names carry no instance label, since
    Prometheus adds the target's own. A new registry gets the process,
    platform and garbage-collector metrics as well (the default registry of
    prometheus-client has them already).
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        registry: CollectorRegistry | None = None,
        health: Health | None = None,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        Info(
            "coordinator_build",
            "The version of pg-coordinator, and of Python, that this instance runs.",
            registry=self.registry,
        ).info({"version": _version(), "python_version": platform.python_version()})
        self._health = health if health is not None else Health(coordinator)
        self._elections = Counter(
            "coordinator_elections",
            "Times this instance took office in a group.",
            ["group"],
            registry=self.registry,
        )
        self._demotions = Counter(
            "coordinator_demotions",
            "Times a leadership of this instance ended, by reason.",
            ["group", "reason"],
            registry=self.registry,
        )
        self._fences = Counter(
            "coordinator_fences",
            "Stale leaders this instance's monitor dealt with: kind=fenced terminated the "
            "backend that still held the lock, kind=expired cleared a row whose lock was gone.",
            ["group", "kind"],
            registry=self.registry,
        )
        self._heartbeat_seconds = Histogram(
            "coordinator_heartbeat_duration_seconds",
            "Duration of heartbeats: kind=group for one group's leader on its lock session, "
            "kind=batch for one statement covering several groups (the followers; in poll mode "
            "also the leaders).",
            ["kind"],
            buckets=HEARTBEAT_BUCKETS,
            registry=self.registry,
        )
        self._heartbeat_failures = Counter(
            "coordinator_heartbeat_failures",
            "Heartbeats that failed or found the lock gone.",
            ["kind"],
            registry=self.registry,
        )
        # Every series exists from the first scrape, so rate() and increase() see the first event.
        for group in coordinator.groups:
            self._elections.labels(group)
            for reason in DemotionReason:
                self._demotions.labels(group, reason.value)
            for kind in _FENCE_KINDS:
                self._fences.labels(group, kind)
        for kind in _HEARTBEAT_KINDS:
            self._heartbeat_seconds.labels(kind)
            self._heartbeat_failures.labels(kind)
        self.registry.register(_StateCollector(coordinator, self._health))
        coordinator.add_listener(self._on_signal)

    def _on_signal(self, signal: Signal) -> None:
        if isinstance(signal, Elected):
            self._elections.labels(signal.group).inc()
        elif isinstance(signal, Demoted):
            self._demotions.labels(signal.group, signal.reason).inc()
        elif isinstance(signal, Fenced):
            self._fences.labels(signal.group, signal.kind).inc()
        elif isinstance(signal, HeartbeatDone):
            kind = "batch" if signal.group is None else "group"
            self._heartbeat_seconds.labels(kind).observe(signal.duration_s)
            if not signal.ok:
                self._heartbeat_failures.labels(kind).inc()


def _version() -> str:
    try:
        return metadata.version("pg-coordinator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _StateCollector(Collector):
    """The gauges, computed from the coordinator's state when Prometheus scrapes."""

    def __init__(self, coordinator: Coordinator, health: Health) -> None:
        self._coordinator = coordinator
        self._health = health

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        leads, term, heartbeat_age, job_age, squatted, failing = self._families()
        squatters = self._coordinator.squatters
        problems = self._coordinator.failing
        for name, group in self._coordinator.groups.items():
            leads.add_metric([name, name], 1.0 if group.is_leader else 0.0)
            term.add_metric([name], float(group.term or 0))
            squatted.add_metric([name], float(len(squatters.get(name, ()))))
            failing.add_metric([name], 1.0 if name in problems else 0.0)
            age = self._health.heartbeat_age(name)
            if age is not None:
                heartbeat_age.add_metric([name], age)
        age = self._health.heartbeat_job_age()
        if age is not None:
            job_age.add_metric([], age)
        return iter((leads, term, heartbeat_age, job_age, squatted, failing))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "leader_election_master_status",
                "1 while this instance leads the election (group) called name, else 0; "
                "the meaning of client-go's gauge. group is name again, as on every other metric.",
                labels=["name", "group"],
            ),
            GaugeMetricFamily(
                "coordinator_term",
                "The term this instance leads the group under; 0 while it does not lead. "
                "max by (group) over all instances is the group's current term.",
                labels=["group"],
            ),
            GaugeMetricFamily(
                "coordinator_heartbeat_age_seconds",
                "Seconds since this instance's last successful heartbeat in the group.",
                labels=["group"],
            ),
            GaugeMetricFamily(
                "coordinator_heartbeat_job_age_seconds",
                "Seconds since the heartbeat job last finished; /livez fails past its limit.",
            ),
            GaugeMetricFamily(
                "coordinator_lock_squatted",
                "Backends holding the group's advisory lock that are neither its leader's nor a "
                "coordinator session, as this instance's monitor last saw; nobody can be elected "
                "while it is above 0.",
                labels=["group"],
            ),
            GaugeMetricFamily(
                "coordinator_election_failing",
                "1 while the group's election loop keeps failing (/readyz says why), else 0.",
                labels=["group"],
            ),
        )
