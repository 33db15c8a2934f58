"""The example app: every replica serves HTTP; only the leader runs the leader-only jobs.

Built the way such services usually are: a factory, ``coordinate(app, ...)``
for the coordinator, its scheduler and the leader-only jobs on ``app.state``,
and a task module whose ``register(app)`` adds the jobs (``tasks.py``).
``example_ticks`` is the proof: one row per tick of ``tick``, written with
its scheduled time and term; each term's rows come from one replica, and no
row of an old term commits after a row of a newer one.

Run one replica with uvicorn (``create_app`` is a factory)::

    COORDINATOR_DSN=postgresql://... INSTANCE_ID=replica-1 \\
        uvicorn --factory examples.fastapi_app.app:create_app --port 8001

Settings come from the environment: ``COORDINATOR_DSN`` (required),
``INSTANCE_ID`` (default host-pid-random), ``EXAMPLE_GROUP`` (``example``),
``TICK_INTERVAL`` (seconds, 2), ``REPORT_INTERVAL`` (the tick interval),
``TICK_WORK`` (how long each run takes, 0), ``TICK_GRACE`` (the jobs'
``misfire_grace_time``, 30), and optionally ``COORDINATOR_TTL``,
``COORDINATOR_HEARTBEAT_INTERVAL`` and ``COORDINATOR_HEARTBEAT_TIMEOUT``.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the
# Annotated dependency in `tick_now`, which refers to a local variable.

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, status

from coordinator import ConfigurationError, NotLeader, default_instance_id, read_status
from coordinator.integrations.fastapi import coordinate, require_leader

from . import tasks

__all__ = ["Settings", "create_app"]

CREATE_TICKS = """
    CREATE TABLE IF NOT EXISTS example_ticks (
        id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job          text        NOT NULL,
        scheduled_at timestamptz,
        term         bigint      NOT NULL,
        instance_id  text        NOT NULL,
        at           timestamptz NOT NULL DEFAULT clock_timestamp()
    )
"""
# Replicas start together; CREATE TABLE IF NOT EXISTS alone can still collide.
SERIALISE_SETUP = "SELECT pg_advisory_xact_lock(hashtext('example_ticks'))"
RECENT_TICKS = """
    SELECT id, job, scheduled_at, term, instance_id, at
      FROM example_ticks ORDER BY id DESC LIMIT $1
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
    report_interval: float = 2.0
    work: float = 0.0
    grace: float = 30.0
    timings: Mapping[str, Any] = field(default_factory=dict)  # CoordinatorConfig fields

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        dsn = environ.get("COORDINATOR_DSN")
        if not dsn:
            raise ConfigurationError(
                "COORDINATOR_DSN is not set: export COORDINATOR_DSN=postgresql://user:pw@host/db"
            )
        tick_interval = _seconds(environ, "TICK_INTERVAL") or 2.0
        return cls(
            dsn=dsn,
            instance_id=environ.get("INSTANCE_ID") or default_instance_id(),
            group=environ.get("EXAMPLE_GROUP") or "example",
            tick_interval=tick_interval,
            report_interval=_seconds(environ, "REPORT_INTERVAL") or tick_interval,
            work=_seconds(environ, "TICK_WORK", zero=True) or 0.0,
            grace=_seconds(environ, "TICK_GRACE") or 30.0,
            timings={
                setting: seconds
                for name, setting in _TIMINGS.items()
                if (seconds := _seconds(environ, name)) is not None
            },
        )


def _seconds(environ: Mapping[str, str], name: str, *, zero: bool = False) -> float | None:
    text = environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    # The library logs through stdlib logging and leaves the output to the app:
    # its events (and this app's) at INFO on stderr, APScheduler's chatter off.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    @contextlib.asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The app's own start-up: app.state.pool is open, the coordinator not started yet.
        async with app.state.pool.acquire() as conn, conn.transaction():
            await conn.execute(SERIALISE_SETUP)
            await conn.execute(CREATE_TICKS)
        yield

    app = FastAPI(title="pg-coordinator example", lifespan=own_lifespan)
    # The coordinator, its group, the scheduler and the leader-only jobs, on app.state;
    # migrations applied at start-up (safe from every replica at once).
    coordinate(
        app,
        settings.dsn,
        group=settings.group,
        instance_id=settings.instance_id,
        migrate=True,
        **settings.timings,
    )
    app.state.settings = settings
    app.state.ticks_written = 0
    app.state.seen_runs = 0
    tasks.register(app)
    state = app.state

    @app.get("/")
    async def this_replica() -> dict[str, Any]:
        """This replica: does it lead, in which term, and are the leader-only jobs running here."""
        jobs = [state.scheduler.get_job(job_id) for job_id in state.leader_jobs.job_ids]
        return {
            "instance_id": settings.instance_id,
            "group": state.group.name,
            "is_leader": state.group.is_leader,
            "term": state.group.term,
            "jobs": [
                {
                    "id": job.id,
                    "running_here": job.next_run_time is not None,
                    "next_run_time": job.next_run_time.isoformat() if job.next_run_time else None,
                }
                for job in jobs
                if job is not None
            ],
            "ticks_written": state.ticks_written,
            "seen_runs": state.seen_runs,
        }

    @app.get("/leader")
    async def leader() -> dict[str, Any]:
        """Who leads, as the database says: the same answer from every replica."""
        async with state.pool.acquire() as conn:
            rows = await read_status(conn)
        row = next((r for r in rows if r.group == state.group.name), None)
        return {"group": state.group.name, **(row.as_json() if row else {"leader": None})}

    @app.get("/ticks")
    async def recent_ticks(limit: int = 20) -> list[dict[str, Any]]:
        """The latest ticks, newest first: which job and replica wrote each, in which term."""
        async with state.pool.acquire() as conn:
            rows = await conn.fetch(RECENT_TICKS, limit)
        return [
            {
                **dict(row),
                "scheduled_at": row["scheduled_at"].isoformat() if row["scheduled_at"] else None,
                "at": row["at"].isoformat(),
            }
            for row in rows
        ]

    @app.post("/ticks")
    async def tick_now(
        term: Annotated[int, Depends(require_leader(state.group))],
    ) -> dict[str, Any]:
        """Write a tick now; only the leader may (503 elsewhere)."""
        try:
            async with state.group.fenced(state.pool, term=term) as tx:
                tick_id = await tx.conn.fetchval(
                    tasks.INSERT_TICK, "manual", datetime.now(UTC), term, settings.instance_id
                )
        except NotLeader as error:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(error)) from None
        return {"id": tick_id, "term": term, "instance_id": settings.instance_id}

    return app
