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
    """One heartbeat statement finished, covering exactly ``groups``.

    ``batch`` is true for one statement on behalf of several groups (the
    followers' member heartbeat; in poll mode also the leaders' heartbeat on
    the shared session), false for one leader's heartbeat on its own session.
    """

    groups: tuple[str, ...]
    duration_s: float
    ok: bool
    batch: bool = False

    @property
    def group(self) -> str | None:
        """The one group of a leader's own heartbeat; None for a batch."""
        return None if self.batch else self.groups[0]


Signal = Elected | Demoted | Fenced | HeartbeatDone
Listener = Callable[[Signal], None]
