"""pg-coordinator's failover after each fault of the leader process.

The members run ``bench.subjects.pg_coordinator``, whose ``elected`` report
is made inside the new leader's ``on_elected`` callback: a failover is
measured up to the moment the new leader's own code runs. For a blackhole,
each member connects through its own :class:`~coordinator.testing.TcpProxy`.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.children import Child
from bench.cluster import Cluster, Fault, Member, Trial
from bench.database import Database
from bench.stats import Distribution
from coordinator import migrate
from coordinator.testing import TcpProxy

__all__ = ["Failovers", "Settings", "instance", "measure_failover", "run_trials"]

GROUP = "bench"
_CRASH_BOUND_S = 10.0


@dataclass(frozen=True)
class Settings:
    """Coordinator settings passed to every instance; None keeps the library's default."""

    ttl: float | None = None
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None

    def args(self) -> list[str]:
        args = []
        for option, value in (
            ("--ttl", self.ttl),
            ("--heartbeat-interval", self.heartbeat_interval),
            ("--heartbeat-timeout", self.heartbeat_timeout),
        ):
            if value is not None:
                args += [option, repr(value)]
        return args

    def describe(self) -> str:
        if self.ttl is None:
            return "library defaults: ttl 15 s, heartbeat every 5 s, heartbeat timeout 5 s"
        return (
            f"ttl {self.ttl:g} s, heartbeat every {self.heartbeat_interval:g} s, "
            f"heartbeat timeout {self.heartbeat_timeout:g} s"
        )


@dataclass
class Failovers:
    """What the trials of one fault found."""

    fault: Fault
    settings: Settings
    instances: int
    failover: Distribution
    settled: Distribution
    #: Trials in which more than one new leader took office before the cluster settled.
    churned: int
    #: How long before the new leader took office the old one had demoted itself.
    demoted_ahead: Distribution | None = None
    demotion_reasons: dict[str, int] = field(default_factory=dict)


def instance(
    db: Database,
    name: str,
    settings: Settings,
    log_dir: Path,
    proxy: TcpProxy | None = None,
    *,
    trace: bool = False,
) -> Child:
    """One pg-coordinator instance in the benchmark's group, through ``proxy`` if given."""
    dsn = db.dsn if proxy is None else proxy.dsn(db.dsn)
    return Child(
        name,
        Path(sys.executable),
        "bench.subjects.pg_coordinator",
        [
            *("--dsn", dsn, "--group", GROUP, "--instance-id", name),
            *settings.args(),
            *(["--trace"] if trace else []),
        ],
        log_dir,
    )


async def measure_failover(
    db: Database,
    fault: Fault,
    settings: Settings,
    trials: int,
    log_dir: Path,
    *,
    instances: int = 3,
) -> Failovers:
    results = await run_trials(db, fault, settings, trials, log_dir, instances=instances)
    ahead = [r.failover - r.demoted_after for r in results if r.demoted_after is not None]
    return Failovers(
        fault,
        settings,
        instances,
        Distribution.of([r.failover for r in results]),
        Distribution.of([r.settled for r in results]),
        sum(r.elections > 1 for r in results),
        Distribution.of(ahead) if fault is Fault.BLACKHOLE else None,
        dict(Counter(r.reason for r in results if r.reason is not None)),
    )


async def run_trials(
    db: Database,
    fault: Fault,
    settings: Settings,
    trials: int,
    log_dir: Path,
    *,
    instances: int = 3,
    trace: bool = False,
) -> list[Trial]:
    """``trials`` faults of the leader of ``instances`` instances, each a separate process."""
    await migrate(db.dsn)

    async def spawn(name: str) -> Member:
        proxy = None
        if fault is Fault.BLACKHOLE:
            proxy = TcpProxy("127.0.0.1", db.server.port)
            proxy.start()
        child = instance(db, name, settings, log_dir, proxy, trace=trace)
        await child.start()
        return Member(child, proxy)

    bound = _CRASH_BOUND_S if settings.ttl is None else 3 * settings.ttl + _CRASH_BOUND_S
    # Long enough for a heartbeat and a monitor run after taking office: a leader that
    # loses office again at once is counted as churn, not faulted as if it still led.
    settle = 0.1 if settings.heartbeat_interval is None else 4 * settings.heartbeat_interval
    name = f"{'trace' if trace else 'ours'}-{fault.value}"
    cluster = Cluster(db, instances, name, spawn, settle)
    results: list[Trial] = []
    try:
        await cluster.start()
        for _ in range(trials):
            results.append(await cluster.trial(fault, bound))
    finally:
        await cluster.close()
    return results
