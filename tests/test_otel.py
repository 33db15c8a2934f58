"""With OpenTelemetry: no spans from the coordinator's own connections, leadership as metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator import HeartbeatDone, Signal
from coordinator.integrations.otel import record_leadership
from helpers import coordinator

GROUPS = ("scheduler", "billing")
SLACK = 10.0


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """asyncpg instrumented, as ``opentelemetry-instrument`` would do it; undone afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = AsyncPGInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()


async def test_an_idle_coordinator_makes_no_spans_while_the_app_s_own_queries_are_traced(
    dsn: str, spans: InMemorySpanExporter
) -> None:
    beats = 0
    enough = asyncio.Event()

    def count(signal: Signal) -> None:
        nonlocal beats
        if isinstance(signal, HeartbeatDone) and signal.group is not None:
            beats += 1
            if beats >= 10:  # leader heartbeats of both groups, and the monitor beside them
                enough.set()

    async def app_query(term: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.fetchval("SELECT $1::int", term)
        finally:
            await conn.close()

    coord = coordinator(dsn, "a", *GROUPS)
    coord.add_listener(count)
    coord.group(GROUPS[0]).on_elected(app_query)
    async with coord:
        for name in GROUPS:
            await coord.group(name).wait_elected(SLACK)
        await asyncio.wait_for(enough.wait(), SLACK)
        await coord.group(GROUPS[0]).resign()
        await coord.group(GROUPS[0]).wait_elected(SLACK)
    traced = [span.attributes.get("db.statement") for span in spans.get_finished_spans()]
    # Two elections of the first group, each with the app's one query: that is every span.
    assert traced == ["SELECT $1::int", "SELECT $1::int"]


async def test_leadership_changes_are_counted_through_the_metrics_api(dsn: str) -> None:
    reader = InMemoryMetricReader()
    coord = coordinator(dsn, "a", GROUPS[0])
    record_leadership(coord, MeterProvider(metric_readers=[reader]))
    async with coord:
        await coord.group(GROUPS[0]).wait_elected(SLACK)
        await coord.group(GROUPS[0]).resign()
        await coord.group(GROUPS[0]).wait_elected(SLACK)
        data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: sorted(
            (tuple(sorted(point.attributes.items())), point.value)
            for point in metric.data.data_points
        )
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    group = ("group", GROUPS[0])
    assert points == {
        "coordinator.leadership.changes": [
            ((("change", "demoted"), group, ("reason", "resigned")), 1),
            ((("change", "elected"), group), 2),
        ],
        "coordinator.leader": [((group,), 1)],
    }
