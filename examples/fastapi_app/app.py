"""The example app: every replica serves HTTP; only the leader runs the scheduled job.

The job, ``tick``, writes one row into ``example_ticks`` every few seconds
through a fenced transaction, with the term it runs under. The rows are the
proof: each term's ticks come from one replica, and no tick of an old term
follows a tick of a newer one.

Run one replica with uvicorn (``create_app`` is a factory)::

    COORDINATOR_DSN=postgresql://... INSTANCE_ID=replica-1 \\
        uvicorn --factory examples.fastapi_app.app:create_app --port 8001

Settings come from the environment: ``COORDINATOR_DSN`` (required),
``INSTANCE_ID`` (default host-pid-random), ``EXAMPLE_GROUP`` (``example``),
``TICK_INTERVAL`` (seconds, 2), and optionally ``COORDINATOR_TTL``,
``COORDINATOR_HEARTBEAT_INTERVAL`` and ``COORDINATOR_HEARTBEAT_TIMEOUT``.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the
# Annotated dependency in `tick_now`, which refers to a local variable.

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import Depends, FastAPI, HTTPException, status

from coordinator import (
    ConfigurationError,
    Coordinator,
    Group,
    NotLeader,
    default_instance_id,
    migrate,
    read_status,
)
from coordinator.integrations.apscheduler import LeaderOnlyJobs
from coordinator.integrations.fastapi import lifespan, require_leader

__all__ = ["Settings", "create_app"]

log = structlog.get_logger("example")

CREATE_TICKS = """
    CREATE TABLE IF NOT EXISTS example_ticks (
        id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        instance_id text        NOT NULL,
        term        bigint      NOT NULL,
        at          timestamptz NOT NULL DEFAULT clock_timestamp()
    )
"""
# Replicas start together; CREATE TABLE IF NOT EXISTS alone can still collide.
SERIALISE_SETUP = "SELECT pg_advisory_xact_lock(hashtext('example_ticks'))"
INSERT_TICK = "INSERT INTO example_ticks (instance_id, term) VALUES ($1, $2) RETURNING id"
RECENT_TICKS = """
    SELECT id, instance_id, term, at FROM example_ticks ORDER BY id DESC LIMIT $1
"""

_TIMINGS = {
    "COORDINATOR_TTL": "ttl",
    "COORDINATOR_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "COORDINATOR_HEARTBEAT_TIMEOUT": "heartbeat_timeout",
}


@dataclass(frozen=True)
class Settings:
    dsn: str
    instance_id: str
    group: str = "example"
    tick_interval: float = 2.0
    timings: Mapping[str, Any] = field(default_factory=dict)  # CoordinatorConfig fields

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        dsn = environ.get("COORDINATOR_DSN")
        if not dsn:
            raise ConfigurationError(
                "COORDINATOR_DSN is not set: export COORDINATOR_DSN=postgresql://user:pw@host/db"
            )
        return cls(
            dsn=dsn,
            instance_id=environ.get("INSTANCE_ID") or default_instance_id(),
            group=environ.get("EXAMPLE_GROUP") or "example",
            tick_interval=_seconds(environ, "TICK_INTERVAL") or 2.0,
            timings={
                setting: seconds
                for name, setting in _TIMINGS.items()
                if (seconds := _seconds(environ, name)) is not None
            },
        )


def _seconds(environ: Mapping[str, str], name: str) -> float | None:
    text = environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


@dataclass
class _Replica:
    """What this process knows about itself, for the endpoints."""

    settings: Settings
    group: Group
    scheduler: AsyncIOScheduler
    leader_jobs: LeaderOnlyJobs
    pool: Any = None  # asyncpg.Pool, once the app has started
    ticks_written: int = 0

    async def write_tick(self, term: int) -> int:
        """One tick row, committed only if ``term`` is still the group's current term."""
        async with self.group.fenced(self.pool, term=term) as tx:
            tick_id: int = await tx.conn.fetchval(INSERT_TICK, self.settings.instance_id, tx.term)
        self.ticks_written += 1
        log.info("tick_written", id=tick_id, term=term, instance_id=self.settings.instance_id)
        return tick_id


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    scheduler = AsyncIOScheduler()
    # The coordinator's heartbeat and monitor run in this same scheduler, on every replica.
    coordinator = Coordinator(
        settings.dsn, instance_id=settings.instance_id, scheduler=scheduler, **settings.timings
    )
    group = coordinator.group(settings.group)
    replica = _Replica(settings, group, scheduler, LeaderOnlyJobs(scheduler, group))

    @replica.leader_jobs.scheduled_job(
        "interval", seconds=settings.tick_interval, id="tick", coalesce=True, max_instances=1
    )
    async def tick(*, term: int) -> None:
        try:
            await replica.write_tick(term)
        except NotLeader as error:  # StaleTerm too: this term is over, and so is its work
            log.warning("tick_refused", term=term, error=str(error))

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        await migrate(settings.dsn)  # safe from every replica at once
        replica.pool = await asyncpg.create_pool(settings.dsn, min_size=1, max_size=4)
        try:
            async with replica.pool.acquire() as conn, conn.transaction():
                await conn.execute(SERIALISE_SETUP)
                await conn.execute(CREATE_TICKS)
            async with lifespan(coordinator, scheduler=scheduler)(app):
                yield
        finally:
            await replica.pool.close()

    app = FastAPI(title="pg-coordinator example", lifespan=run)

    @app.get("/")
    async def this_replica() -> dict[str, Any]:
        """This replica: does it lead, in which term, and are the leader-only jobs running here."""
        jobs = [scheduler.get_job(job_id) for job_id in replica.leader_jobs.job_ids]
        return {
            "instance_id": settings.instance_id,
            "group": group.name,
            "is_leader": group.is_leader,
            "term": group.term,
            "jobs": [
                {
                    "id": job.id,
                    "running_here": job.next_run_time is not None,
                    "next_run_time": job.next_run_time.isoformat() if job.next_run_time else None,
                }
                for job in jobs
                if job is not None
            ],
            "ticks_written": replica.ticks_written,
        }

    @app.get("/leader")
    async def leader() -> dict[str, Any]:
        """Who leads, as the database says: the same answer from every replica."""
        async with replica.pool.acquire() as conn:
            rows = await read_status(conn)
        row = next((r for r in rows if r.group == group.name), None)
        return {"group": group.name, **(row.as_json() if row else {"leader": None})}

    @app.get("/ticks")
    async def recent_ticks(limit: int = 20) -> list[dict[str, Any]]:
        """The latest ticks, newest first: which replica wrote each, in which term."""
        async with replica.pool.acquire() as conn:
            rows = await conn.fetch(RECENT_TICKS, limit)
        return [{**dict(row), "at": row["at"].isoformat()} for row in rows]

    @app.post("/ticks")
    async def tick_now(term: Annotated[int, Depends(require_leader(group))]) -> dict[str, Any]:
        """Write a tick now; only the leader may (503 elsewhere)."""
        try:
            tick_id = await replica.write_tick(term)
        except NotLeader as error:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(error)) from None
        return {"id": tick_id, "term": term, "instance_id": settings.instance_id}

    return app
