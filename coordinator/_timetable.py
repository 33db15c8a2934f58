"""The shared timetable of leader-only jobs: what a leader reads and writes.

The rows live in ``{schema}.jobs`` and ``{schema}.job_runs``
(``migrations/0003_jobs.sql``). Every write goes through a function that
checks the term first, the way ``assert_term`` does for an application's
fenced transaction: a claim of an old term never commits after a newer
term exists. This module only talks to the database; when to claim what is
decided by :mod:`coordinator.integrations.apscheduler`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from coordinator._drivers import fetch_value_sync
from coordinator._errors import StaleTerm
from coordinator._fencing import STALE_TERM_SQLSTATE
from coordinator._reading import fetch_rows
from coordinator._sql import Statements

__all__ = ["JobStatus", "Mode", "OpenTick", "Outcome", "Timetable", "TimetableRow", "read_jobs"]


class Mode(enum.StrEnum):
    """How a job's ticks are finished, and so what "once" means for it."""

    FENCED = "fenced"  # its run's fenced transaction marks the tick done: effects exactly once
    PLAIN = "plain"  # claimed before it runs: at most once


class Outcome(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STALE = "stale"  # the run met NotLeader or StaleTerm: its term was over
    INTERRUPTED = "interrupted"  # a fenced run ended without committing; may run again
    SKIPPED = "skipped"  # missed by more than the job's misfire_grace_time
    ABANDONED = "abandoned"  # its leader went away mid-run; closed by the next leader


@dataclass(frozen=True)
class TimetableRow:
    job_id: str
    trigger: str
    last_fire_at: datetime | None
    next_fire_at: datetime | None


@dataclass(frozen=True)
class OpenTick:
    """A run that an older term claimed and never finished."""

    job_id: str
    scheduled_at: datetime
    term: int
    mode: Mode


class Timetable:
    """One group's timetable, read and written on ``pool`` (the application's)."""

    def __init__(self, group: str, sql: Statements, pool: Any) -> None:
        self.group = group
        self._sql = sql
        self.pool = pool

    def on(self, conn: asyncpg.Connection) -> Timetable:
        """The same timetable on one connection of the pool, for several statements in a row."""
        return Timetable(self.group, self._sql, conn)

    async def rows(self) -> dict[str, TimetableRow]:
        records = await self.pool.fetch(self._sql.timetable, self.group)
        return {r["job_id"]: TimetableRow(**dict(r)) for r in records}

    async def sync(
        self, term: int, jobs: Sequence[tuple[str, str, datetime | None]]
    ) -> list[OpenTick]:
        """List exactly these ``(job id, trigger text, next fire time)``; return the open runs."""
        ids = [job_id for job_id, _, _ in jobs]
        triggers = [trigger for _, trigger, _ in jobs]
        nexts = [next_fire_at for _, _, next_fire_at in jobs]
        await self._fenced(self._sql.sync_jobs, term, ids, triggers, nexts)
        records = await self.pool.fetch(self._sql.open_ticks, self.group, term)
        return [
            OpenTick(r["job_id"], r["scheduled_at"], r["term"], Mode(r["mode"])) for r in records
        ]

    async def claim(
        self,
        term: int,
        job_id: str,
        scheduled_at: datetime,
        instance_id: str,
        mode: Mode,
        next_fire_at: datetime | None,
        *,
        skipped: bool = False,
    ) -> int | None:
        """Claim a tick: its attempt number, or None if it is taken. Raises StaleTerm."""
        outcome = Outcome.SKIPPED if skipped else Outcome.RUNNING
        attempt: int | None = await self._fenced(
            self._sql.claim_tick,
            term,
            job_id,
            scheduled_at,
            instance_id,
            mode.value,
            outcome.value,
            next_fire_at,
        )
        return attempt

    async def abandon_open(self, term: int, *, keep: Sequence[str]) -> int:
        """Close the runs older terms left open, but the fenced ones of the jobs in ``keep``."""
        count: int = await self._fenced(self._sql.abandon_ticks, term, list(keep))
        return count

    async def finish(
        self,
        term: int,
        job_id: str,
        scheduled_at: datetime,
        outcome: Outcome,
        duration_s: float,
        conn: Any = None,
    ) -> bool:
        """Record how a run ended, on ``conn`` (a fenced transaction) or the pool."""
        target = self.pool if conn is None else conn
        args = self._finish_args(term, job_id, scheduled_at, outcome, duration_s)
        done: bool = await target.fetchval(self._sql.finish_tick, *args)
        return done

    def finish_sync(
        self, conn: Any, term: int, job_id: str, scheduled_at: datetime, duration_s: float
    ) -> bool:
        """Mark a run done in a fenced transaction of a blocking driver (psycopg, SQLAlchemy)."""
        done: bool = fetch_value_sync(
            conn,
            self._sql.finish_tick,
            *self._finish_args(term, job_id, scheduled_at, Outcome.DONE, duration_s),
        )
        return done

    def _finish_args(
        self, term: int, job_id: str, scheduled_at: datetime, outcome: Outcome, duration_s: float
    ) -> tuple[Any, ...]:
        return (self.group, term, job_id, scheduled_at, outcome.value, duration_s)

    async def _fenced(self, statement: str, term: int, *args: Any) -> Any:
        try:
            return await self.pool.fetchval(statement, self.group, term, *args)
        except asyncpg.PostgresError as error:
            if error.sqlstate == STALE_TERM_SQLSTATE:
                raise StaleTerm(f"{error.message}: {error.hint}") from None
            raise


@dataclass(frozen=True)
class JobStatus:
    """One leader-only job as the shared timetable has it, with its latest claimed tick."""

    group: str
    job_id: str
    trigger: str
    last_fire_at: datetime | None
    next_fire_at: datetime | None
    #: The latest tick claimed: when it was due, by whom, in which term, how it ended.
    last_scheduled_at: datetime | None
    last_term: int | None
    last_instance_id: str | None
    last_outcome: str | None
    last_duration_s: float | None
    last_attempt: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in self.__dict__.items()
        }


async def read_jobs(
    dsn_or_conn: str | asyncpg.Connection, *, group: str | None = None, schema: str = "coordinator"
) -> list[JobStatus]:
    """Every leader-only job on the shared timetable (of ``group``), by group and id."""
    rows = await fetch_rows(dsn_or_conn, schema, lambda sql: sql.jobs, group)
    return [
        JobStatus(
            **{"group" if name == "group_name" else name: value for name, value in row.items()}
        )
        for row in rows
    ]
