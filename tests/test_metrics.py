"""The Prometheus metrics: names and types as documented, values that follow the signals."""

from __future__ import annotations

from importlib import metadata

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator import Health
from coordinator.integrations.http import CoordinatorMetrics
from endpoints import parse_metrics, sample
from helpers import coordinator, wait_until

GROUP = "scheduler"
WAIT = 15.0

#: The families /metrics exposes, with their types: the table in docs/operations.md.
DOCUMENTED = {
    "leader_election_master_status": "gauge",
    "coordinator_term": "gauge",
    "coordinator_elections": "counter",
    "coordinator_demotions": "counter",
    "coordinator_fences": "counter",
    "coordinator_lock_squatted": "gauge",
    "coordinator_heartbeat_duration_seconds": "histogram",
    "coordinator_heartbeat_failures": "counter",
    "coordinator_heartbeat_age_seconds": "gauge",
    "coordinator_heartbeat_job_age_seconds": "gauge",
    "coordinator_election_failing": "gauge",
    "coordinator_build_info": "gauge",
}

#: The standard collectors' families that a registry of its own gets too (a few of them).
STANDARD = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
    "python_gc_collections": "counter",
}


def families(registry: CollectorRegistry) -> dict[str, str]:
    """Name and type of each family, less prometheus-client's own ``*_created`` series."""
    text = generate_latest(registry).decode()
    return {
        family.name: family.type
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_metrics(generate_latest(registry).decode())


def test_every_documented_family_is_exposed_with_zeroes_before_anything_happens() -> None:
    coord = coordinator("postgresql://nobody@127.0.0.1:1/none", "idle")
    registry = CoordinatorMetrics(coord).registry
    exposed = families(registry)
    assert {
        k: v for k, v in exposed.items() if k.startswith("coordinator_") or k.startswith("leader_")
    } == DOCUMENTED
    assert {k: exposed.get(k) for k in STANDARD} == STANDARD
    samples = scrape(registry)
    (build,) = [labels for (name, labels) in samples if name == "coordinator_build_info"]
    assert dict(build)["version"] == metadata.version("pg-coordinator")
    assert sample(samples, "leader_election_master_status", name=GROUP, group=GROUP) == 0
    assert sample(samples, "coordinator_term", group=GROUP) == 0
    for reason in ("resigned", "stopping", "trust_expired", "lock_lost", "connection_lost"):
        assert sample(samples, "coordinator_demotions_total", group=GROUP, reason=reason) == 0
    for kind in ("fenced", "expired"):
        assert sample(samples, "coordinator_fences_total", group=GROUP, kind=kind) == 0
    for kind in ("group", "batch"):
        assert sample(samples, "coordinator_heartbeat_failures_total", kind=kind) == 0
    # No heartbeat yet, so no age: an absent series, not a made-up number.
    assert sample(samples, "coordinator_heartbeat_age_seconds", group=GROUP) is None
    assert sample(samples, "coordinator_heartbeat_job_age_seconds") is None


async def test_election_heartbeats_and_resignation_move_the_metrics(dsn: str) -> None:
    coord = coordinator(dsn, "m1")
    registry = CoordinatorMetrics(coord).registry
    async with coord:
        term = await coord.group(GROUP).wait_elected(WAIT)
        samples = scrape(registry)
        assert sample(samples, "leader_election_master_status", name=GROUP, group=GROUP) == 1
        assert sample(samples, "coordinator_term", group=GROUP) == term
        assert sample(samples, "coordinator_elections_total", group=GROUP) == 1
        assert sample(samples, "coordinator_heartbeat_age_seconds", group=GROUP) is not None

        async def leader_beats() -> bool:
            count = sample(
                scrape(registry), "coordinator_heartbeat_duration_seconds_count", kind="group"
            )
            return bool(count and count >= 2)

        await wait_until(leader_beats, WAIT, what="two leader heartbeats")
        samples = scrape(registry)
        assert sample(samples, "coordinator_heartbeat_failures_total", kind="group") == 0
        assert sample(samples, "coordinator_heartbeat_job_age_seconds") is not None

        await coord.group(GROUP).resign()
        samples = scrape(registry)
        assert sample(samples, "leader_election_master_status", name=GROUP, group=GROUP) == 0
        assert sample(samples, "coordinator_term", group=GROUP) == 0
        assert sample(samples, "coordinator_demotions_total", group=GROUP, reason="resigned") == 1


async def test_two_coordinators_in_one_process_keep_separate_registries(dsn: str) -> None:
    """Each registry answers for its own coordinator; a shared Health feeds metrics and probes."""
    first, second = coordinator(dsn, "r1"), coordinator(dsn, "r2")
    health = Health(first)
    one = CoordinatorMetrics(first, health=health).registry
    two = CoordinatorMetrics(second).registry
    async with first:
        await first.group(GROUP).wait_elected(WAIT)
        async with second:
            assert (
                sample(scrape(one), "leader_election_master_status", name=GROUP, group=GROUP) == 1
            )
            assert (
                sample(scrape(two), "leader_election_master_status", name=GROUP, group=GROUP) == 0
            )
            assert health.ready().ok


def test_a_given_registry_keeps_its_own_process_collector() -> None:
    """Like prometheus_client.REGISTRY, a given registry has the process metrics: none added."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    coord = coordinator("postgresql://nobody@127.0.0.1:1/none", "given")
    CoordinatorMetrics(coord, registry=registry)  # a second process collector would raise
    exposed = families(registry)
    assert exposed["leader_election_master_status"] == "gauge"
    assert exposed["process_cpu_seconds"] == "counter"
    assert "python_info" not in exposed
