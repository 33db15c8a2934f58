"""The monitor: fences stale leaders of every group in the schema, not only ours.

One statement finds every group whose leader's heartbeat is older than its
ttl on the database clock. A holder whose backend still holds the lock is
terminated (once per backend: a shared session holds many groups) and each
of its groups gets a ``fenced`` event; a row whose lock nobody holds is
marked vacant (``expired``). A lock held by a backend that is no
coordinator's (a squatter: nobody can be elected while it holds it) is
logged once and counted. Pruning old events and members is a leader's
chore, done every few minutes by instances that lead something.

In poll mode (thousands of groups) that scan runs on one instance only, the
elected monitor (the one whose shared session is the oldest live one in the
``sessions`` table), once a ttl. Every other instance runs a cheap statement over that
table (one row per process) that terminates any session whose row is older
than its ttl, so a frozen process is fenced whoever it is, the monitor
included; then the next oldest session is the monitor. Two monitors at once
(while the table changes) are harmless: fencing is guarded by the term.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import asyncpg

from coordinator._config import CoordinatorConfig
from coordinator._control import ControlConnection
from coordinator._describe import describe_error
from coordinator._logging import get_logger
from coordinator._signals import Fenced
from coordinator._sql import Statements

__all__ = ["Monitor"]

log = get_logger()

_PRUNE_EVERY_S = 300.0


class Monitor:
    """One monitor run per call of :meth:`run`, on the control connection."""

    def __init__(
        self,
        config: CoordinatorConfig,
        sql: Statements,
        control: ControlConnection,
        leading: Callable[[], bool],
        polls: Callable[[], bool],
    ) -> None:
        self._config = config
        self._sql = sql
        self._control = control
        self._leading = leading
        self._polls = polls
        self._last_prune = 0.0
        self._last_complete = -math.inf
        self._warned_privilege = False
        #: Backends holding a group's lock that are no coordinator's, as last seen.
        self.squatters: dict[str, frozenset[int]] = {}
        self._log = log.bind(instance_id=config.instance_id)

    async def run(self) -> list[Fenced]:
        """Fence and vacate what is stale; prune when due. Returns what was dealt with.

        In poll mode every instance fences stale sessions (one row per
        process) every run, and only the elected monitor (see
        :attr:`Statements.is_monitor`) runs the per-group scan and the chores,
        once a ttl: they read every group (and the squatter check the lock
        table), and what they find beyond stale sessions (blocking-mode
        leaders, vacant rows) can wait that long. In blocking mode, with few
        groups, every instance runs them every time.
        """
        polls = self._polls()
        try:
            rows = await self._fetch(self._sql.fence_stale_sessions) if polls else []
            # A run that fenced sessions leaves the per-group scan to the next
            # run: their backends are still ending, and would be hit twice.
            complete = not rows and (not polls or await self._complete_scan_due())
            if complete:
                rows = await self._fetch(self._sql.fence_stale_leaders)
        except asyncpg.InsufficientPrivilegeError as error:
            self._warn_privilege(error)
            return []
        fenced = [
            Fenced(row["group_name"], row["term"], row["instance_id"], row["kind"]) for row in rows
        ]
        for one in fenced:
            event = "leader_fenced" if one.kind == "fenced" else "leader_expired"
            self._log.warning(event, group=one.group, term=one.term, holder=one.holder)
        if complete:
            self._last_complete = time.monotonic()
            await self._chores(prune=polls or self._leading())
        return fenced

    async def _complete_scan_due(self) -> bool:
        """Poll mode: a ttl since the last per-group scan, and this instance is the monitor.

        Asked once a ttl, monitor or not: the others need not ask every run.
        """
        if time.monotonic() - self._last_complete < self._config.ttl:
            return False
        self._last_complete = time.monotonic()
        return bool(
            await self._control.run(
                lambda conn: conn.fetchval(self._sql.is_monitor, self._config.instance_id)
            )
        )

    async def _fetch(self, statement: str) -> list[asyncpg.Record]:
        return list(
            await self._control.run(lambda conn: conn.fetch(statement, self._config.instance_id))
        )

    async def _chores(self, *, prune: bool) -> None:
        """Report squatters; prune the history and gone members every few minutes."""
        try:
            self._report_squatters(
                await self._control.run(lambda conn: conn.fetch(self._sql.squatted_locks))
            )
        except Exception as error:  # noqa: BLE001 - the next run looks again
            self._log.warning("squatter_check_failed", error=describe_error(error))
        if prune and time.monotonic() - self._last_prune > _PRUNE_EVERY_S:
            try:
                await self._control.run(self._prune)
                self._last_prune = time.monotonic()
            except Exception as error:  # noqa: BLE001 - the next run prunes
                self._log.warning("prune_failed", error=describe_error(error))

    def _report_squatters(self, rows: list[asyncpg.Record]) -> None:
        """Log each backend that holds a group's lock without being a coordinator, once."""
        seen: dict[str, set[int]] = {}
        for row in rows:
            group, pid = row["group_name"], row["squatter_pid"]
            seen.setdefault(group, set()).add(pid)
            if pid in self.squatters.get(group, ()):
                continue
            self._log.error(
                "lock_squatted",
                group=group,
                pid=pid,
                user=row["squatter_user"],
                application_name=row["squatter_application"],
                fix="nobody can lead this group while that backend holds its advisory lock: "
                "end it (pg_terminate_backend), and keep other roles from connecting",
            )
        self.squatters = {group: frozenset(pids) for group, pids in seen.items()}

    async def _prune(self, conn: asyncpg.Connection) -> None:
        await conn.execute(self._sql.prune_events, self._config.events_retention)
        await conn.execute(self._sql.prune_job_runs, self._config.events_retention)
        await conn.execute(self._sql.prune_members, self._config.members_retention)

    def _warn_privilege(self, error: asyncpg.InsufficientPrivilegeError) -> None:
        if self._warned_privilege:
            return
        self._warned_privilege = True
        self._log.error(
            "fence_permission_denied",
            error=str(error),
            fix="grant the coordinator's role pg_signal_backend, or run every instance "
            "as the same role; until then stale leaders are fenced only by their "
            "own trust deadline and TCP keepalives",
        )
