"""A Flask app whose replicas all serve requests and exactly one runs the scheduled job.

Threads, not asyncio: the coordinator runs through ``coordinator.sync`` and the
job in an APScheduler 3 ``BackgroundScheduler``, on the shared timetable. The
job writes through a psycopg 3 connection in ``run.fenced(conn)``: a fenced
transaction that also marks its tick done, so each tick's row commits once,
and a write of an old term never commits after a newer leader took office.

    GET /      {"instance_id": ..., "is_leader": ..., "term": ..., "ticks": ...}
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from coordinator import default_instance_id
from coordinator.sync import Coordinator, LeaderOnlyJobs, RunContext

GROUP = "flask-example"
CREATE_TICKS = """
    CREATE TABLE IF NOT EXISTS flask_ticks (
        id           bigserial PRIMARY KEY,
        instance_id  text NOT NULL,
        term         bigint NOT NULL,
        scheduled_at timestamptz NOT NULL
    )
"""


def create_app(
    dsn: str | None = None,
    *,
    instance_id: str | None = None,
    tick_interval: float = 1.0,
    **settings: Any,
) -> Flask:
    """The app; ``settings`` are the coordinator's (``ttl=``, ``heartbeat_interval=`` ...)."""
    dsn = dsn or os.environ["COORDINATOR_DSN"]
    instance_id = instance_id or default_instance_id()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_TICKS)

    coordinator = Coordinator(dsn, instance_id=instance_id, **settings)
    group = coordinator.group(GROUP)
    scheduler = BackgroundScheduler()
    jobs = LeaderOnlyJobs(scheduler, group)

    @jobs.scheduled_job("interval", seconds=tick_interval, id="tick")
    def tick(run: RunContext) -> None:
        with psycopg.connect(dsn) as conn, run.fenced(conn) as tx:
            tx.conn.execute(
                "INSERT INTO flask_ticks (instance_id, term, scheduled_at) VALUES (%s, %s, %s)",
                (instance_id, tx.term, run.scheduled_at),
            )

    app = Flask(__name__)

    @app.get("/")
    def state() -> dict[str, Any]:
        with psycopg.connect(dsn) as conn:
            ticks = conn.execute("SELECT count(*) FROM flask_ticks").fetchone()
        return {
            "instance_id": instance_id,
            "is_leader": group.is_leader,
            "term": group.term,
            "ticks": ticks[0] if ticks else 0,
        }

    scheduler.start()
    coordinator.start()

    def shut_down() -> None:
        atexit.unregister(shut_down)
        coordinator.stop()  # the running tick finishes, then it resigns: the next replica leads
        scheduler.shutdown()

    atexit.register(shut_down)
    app.extensions["coordinator"] = coordinator
    app.extensions["shut_down"] = shut_down
    return app
