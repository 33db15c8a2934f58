"""Leadership changes as OpenTelemetry metrics, through the API (any SDK, any exporter).

    from coordinator.integrations.otel import record_leadership

    record_leadership(coordinator)   # coordinator.Coordinator or coordinator.sync.Coordinator

Two instruments, attributed by ``group``:

* ``coordinator.leadership.changes`` (counter): one per election
  (``change="elected"``) and per demotion (``change="demoted"``, with ``reason``);
* ``coordinator.leader`` (up-down counter): 1 while this instance leads.

The coordinator's own database traffic makes no spans either way
(:mod:`coordinator._otel`). Needs the ``otel`` extra (``opentelemetry-api``).
"""

from __future__ import annotations

from typing import Protocol

from opentelemetry import metrics

from coordinator._signals import Demoted, Elected, Listener, Signal

__all__ = ["record_leadership"]


class _Emitting(Protocol):
    def add_listener(self, listener: Listener) -> None: ...


def record_leadership(
    coordinator: _Emitting, meter_provider: metrics.MeterProvider | None = None
) -> None:
    """Count this instance's elections and demotions, and whether it leads, per group."""
    meter = metrics.get_meter("coordinator", meter_provider=meter_provider)
    changes = meter.create_counter(
        "coordinator.leadership.changes",
        unit="{change}",
        description="elections and demotions of this instance",
    )
    leading = meter.create_up_down_counter(
        "coordinator.leader", unit="{leader}", description="1 while this instance leads the group"
    )

    def record(signal: Signal) -> None:
        if isinstance(signal, Elected):
            changes.add(1, {"group": signal.group, "change": "elected"})
            leading.add(1, {"group": signal.group})
        elif isinstance(signal, Demoted):
            changes.add(1, {"group": signal.group, "change": "demoted", "reason": signal.reason})
            leading.add(-1, {"group": signal.group})

    coordinator.add_listener(record)
