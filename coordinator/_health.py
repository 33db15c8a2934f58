"""Health as probes see it: is this instance live, is it ready, when did each group last beat.

Liveness asks whether restarting the process could help: the coordinator
runs and its heartbeat job finished recently. A database outage does not
make an instance unlive (a restart would not bring the database back); it
makes it unready. A blocked event loop cannot answer at all, which a probe's
timeout counts as a failure; once the loop moves again, the heartbeat job
that ran late shows it until it has caught up.

Readiness follows a policy (:class:`ReadyWhen`): ``member`` is ready while
live, the latest heartbeat of every group succeeded and no group's election
loop keeps failing (``Coordinator.failing``: a standby behind a multi-host
DSN, a read-only database...); ``leader`` also needs this instance to lead
every group it takes part in.

Everything here is computed when asked, from the coordinator's properties
(``is_leader`` checks the trust deadline on each read) and from its signals.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator._errors import ConfigurationError
from coordinator._signals import Elected, HeartbeatDone, Signal

if TYPE_CHECKING:
    # Not at run time: the commands read ReadyWhen from here without loading the elector.
    from coordinator._coordinator import Coordinator

__all__ = ["Health", "ReadyWhen", "Verdict"]


class ReadyWhen(enum.StrEnum):
    """Which instances a readiness probe calls ready."""

    MEMBER = "member"  # connected and taking part; leader or follower
    LEADER = "leader"  # leads every group it takes part in


@dataclass(frozen=True)
class Verdict:
    """A probe's answer and, for people, why."""

    ok: bool
    reason: str


class Health:
    """Liveness and readiness of one coordinator; attach before it starts.

    ``stale_after`` is how long the heartbeat job may go without finishing
    before the instance counts as wedged; by default two heartbeat intervals
    plus one timeout, so one late run is forgiven.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        ready_when: ReadyWhen | str = ReadyWhen.MEMBER,
        stale_after: float | None = None,
    ) -> None:
        try:
            self.ready_when = ReadyWhen(ready_when)
        except ValueError:
            raise ConfigurationError(
                f"ready_when {ready_when!r} is not a policy: use "
                + " or ".join(repr(p.value) for p in ReadyWhen)
            ) from None
        config = coordinator.config
        self.stale_after = (
            stale_after
            if stale_after is not None
            else 2 * config.heartbeat_interval + config.heartbeat_timeout
        )
        if self.stale_after <= 0:
            raise ConfigurationError("stale_after must be a positive number of seconds")
        self._coordinator = coordinator
        self._last_success: dict[str, float] = {}
        self._failing: set[str] = set()
        # Until the heartbeat job first runs, its age counts from when a probe
        # first saw the coordinator running: start() has just beaten then.
        self._first_seen_running: float | None = None
        self._start_problem: str | None = None
        coordinator.add_listener(self._on_signal)

    def starting(self, problem: str | None) -> None:
        """Why the coordinator's start is being retried, or None once it is not.

        While a start is retried the process is live (a restart would not
        help) but not ready, and /readyz says why.
        """
        self._start_problem = problem

    def heartbeat_age(self, group: str) -> float | None:
        """Seconds since this instance's last successful heartbeat in ``group``; None before one."""
        last = self._last_success.get(group)
        return None if last is None else time.monotonic() - last

    def heartbeat_job_age(self) -> float | None:
        """Seconds since the heartbeat job last finished; None unless the coordinator runs."""
        if not self._coordinator.running:
            return None
        age = self._coordinator.seconds_since_heartbeat_job
        if age is not None:
            return age
        if self._first_seen_running is None:
            self._first_seen_running = time.monotonic()
        return time.monotonic() - self._first_seen_running

    def live(self) -> Verdict:
        age = self.heartbeat_job_age()
        if age is None and self._start_problem is not None:
            return Verdict(True, f"the start is being retried: {self._start_problem}")
        if age is None:
            return Verdict(False, "the coordinator is not running")
        if age > self.stale_after:
            return Verdict(
                False,
                f"the heartbeat job last finished {age:.1f} s ago, limit {self.stale_after:g} s: "
                "the event loop or the scheduler is stuck",
            )
        return Verdict(True, "the coordinator runs and its heartbeat job is on time")

    def ready(self) -> Verdict:
        live = self.live()
        if not live.ok:
            return live
        if not self._coordinator.running:
            return Verdict(False, f"not started yet: {self._start_problem}")
        failing = self._coordinator.failing
        if failing:
            name, problem = min(failing.items())
            return Verdict(
                False,
                f"the election loop of {_names(failing)} keeps failing: the database is "
                f"unreachable or refuses it ({name!r}: {problem})",
            )
        if self._failing:
            return Verdict(
                False,
                f"the latest heartbeat of {_names(self._failing)} failed: "
                "the database is unreachable or too slow",
            )
        if self.ready_when is ReadyWhen.LEADER:
            followed = [n for n, g in self._coordinator.groups.items() if not g.is_leader]
            if followed:
                return Verdict(False, f"this instance does not lead {_names(followed)}")
            return Verdict(True, "this instance leads every group it takes part in")
        return Verdict(True, "this instance takes part in every group")

    def _on_signal(self, signal: Signal) -> None:
        if isinstance(signal, Elected):
            self._record(signal.group, ok=True)  # taking office writes the first heartbeat
        elif isinstance(signal, HeartbeatDone):
            for group in signal.groups:
                self._record(group, ok=signal.ok)

    def _record(self, group: str, *, ok: bool) -> None:
        if ok:
            self._last_success[group] = time.monotonic()
            self._failing.discard(group)
        else:
            self._failing.add(group)


def _names(groups: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in sorted(groups))
