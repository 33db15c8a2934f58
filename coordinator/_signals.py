"""Signals: what happened inside a coordinator, as small immutable records.

Listeners (metrics, tests, an application's own bookkeeping) subscribe with
:meth:`Coordinator.add_listener`. They run synchronously in the event loop,
so they must be quick; one that raises is logged and otherwise ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Demoted", "Elected", "Fenced", "HeartbeatDone", "Listener", "Signal"]


@dataclass(frozen=True)
class Elected:
    """This instance took office (before ``on_elected`` callbacks run)."""

    group: str
    term: int


@dataclass(frozen=True)
class Demoted:
    """A leadership of this instance ended (before ``on_demoted`` callbacks run)."""

    group: str
    term: int
    reason: str


@dataclass(frozen=True)
class Fenced:
    """This instance's monitor terminated a stale leader, or marked its row vacant."""

    group: str
    term: int
    holder: str | None
    kind: str  # "fenced" or "expired"


@dataclass(frozen=True)
class HeartbeatDone:
    """One heartbeat finished; ``group`` is None for a statement that covers several groups."""

    group: str | None
    duration_s: float
    ok: bool


Signal = Elected | Demoted | Fenced | HeartbeatDone
Listener = Callable[[Signal], None]
