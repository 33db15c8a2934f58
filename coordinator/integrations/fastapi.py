"""FastAPI: the coordinator, its scheduler and leader-only jobs for as long as the app runs.

The shape this is for: a factory builds the app, each task module has a
``register(app)`` that adds its jobs, and several replicas run against one
PostgreSQL::

    def create_app() -> FastAPI:
        app = FastAPI(lifespan=own_lifespan)          # a lifespan of its own is optional
        coordinate(app, dsn, group="jobs", migrate=True)
        for register in (billing.register, reports.register):
            register(app)                             # uses app.state.leader_jobs / .scheduler
        return app

:func:`coordinate` puts ``scheduler``, ``coordinator``, ``group``,
``leader_jobs`` and (once the app starts) ``pool`` on ``app.state``, and wraps
the app's lifespan: it starts the scheduler and the coordinator after the
app's own start-up code ran (so that every job is registered before the
first election), and stops them, draining leader-only runs, before the app's
own shutdown code runs.

:func:`coordinator_lifespan` is the smaller piece for apps that keep their
objects themselves; :func:`require_leader` guards leader-only endpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import BaseScheduler
from fastapi import FastAPI, HTTPException, status

from coordinator._coordinator import Coordinator
from coordinator._group import Group
from coordinator._migrations import migrate as apply_migrations
from coordinator.integrations.apscheduler import LeaderOnlyJobs

__all__ = ["coordinate", "coordinator_lifespan", "lifespan", "require_leader"]

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


def coordinator_lifespan(
    coordinator: Coordinator, *, scheduler: BaseScheduler | None = None
) -> Lifespan:
    """A FastAPI ``lifespan``: start ``scheduler`` and the coordinator; on shutdown, resign.

    The scheduler is started first unless it already runs (then it stays
    the application's to stop): the coordinator only adds its jobs to it. On
    shutdown the coordinator stops first (leader-only runs drain, leadership
    is resigned and handed over at once), then the scheduler, if this
    lifespan started it.
    """

    @contextlib.asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        started_scheduler = scheduler is not None and not scheduler.running
        if scheduler is not None and started_scheduler:
            scheduler.start()
        try:
            await coordinator.start()
            try:
                yield
            finally:
                await coordinator.stop()
        finally:
            if scheduler is not None and started_scheduler:
                scheduler.shutdown(wait=False)

    return run


#: The former name of :func:`coordinator_lifespan`, which read like the app's own ``lifespan``.
lifespan = coordinator_lifespan


def coordinate(
    app: FastAPI,
    dsn: str | None = None,
    *,
    group: str,
    scheduler: AsyncIOScheduler | None = None,
    pool: asyncpg.Pool | None = None,
    migrate: bool = False,
    drain_timeout: float = 10.0,
    pool_max_size: int = 10,
    **settings: Any,
) -> LeaderOnlyJobs:
    """Give ``app`` a coordinator in ``group``, a scheduler and leader-only jobs, on ``app.state``.

    ``dsn`` and ``settings`` are the :class:`Coordinator`'s. ``pool`` is the
    application's asyncpg pool; without one, a pool is opened on ``dsn`` when
    the app starts (``app.state.pool``) and closed when it stops. With
    ``migrate=True`` the coordinator's migrations are applied first (safe
    from every replica at once). Returns the leader-only jobs.
    """
    scheduler = scheduler if scheduler is not None else AsyncIOScheduler()
    coordinator = Coordinator(dsn, scheduler=scheduler, **settings)
    leader_jobs = LeaderOnlyJobs(
        scheduler,
        coordinator.group(group),
        pool=pool,
        instance_id=coordinator.instance_id,
        schema=coordinator.config.schema,
        drain_timeout=drain_timeout,
    )
    state = app.state
    state.scheduler, state.coordinator = scheduler, coordinator
    state.group, state.leader_jobs, state.pool = leader_jobs.group, leader_jobs, pool
    own_lifespan = app.router.lifespan_context
    run_coordinator = coordinator_lifespan(coordinator, scheduler=scheduler)
    config = coordinator.config

    @contextlib.asynccontextmanager
    async def coordinated(app: Any) -> AsyncIterator[Any]:
        if migrate:
            await apply_migrations(
                config.dsn, schema=config.schema, connect_timeout=config.connect_timeout
            )
        opened = None
        if state.pool is None:
            opened = state.pool = await asyncpg.create_pool(
                config.dsn, min_size=1, max_size=pool_max_size
            )
        leader_jobs.pool = state.pool
        try:
            async with own_lifespan(app) as own_state, run_coordinator(app):
                try:
                    yield own_state
                finally:
                    await leader_jobs.drain()  # while still leading: every run may commit
        finally:
            if opened is not None:
                await opened.close()
                state.pool = None

    app.router.lifespan_context = coordinated
    return leader_jobs


def require_leader(
    group: Group, *, status_code: int = status.HTTP_503_SERVICE_UNAVAILABLE
) -> Callable[[], int]:
    """A dependency that gives the current term, or answers ``status_code`` on a follower.

    503 by default, so that a load balancer or client retries elsewhere.
    """

    def leader_term() -> int:
        term = group.term
        if term is None:
            raise HTTPException(
                status_code,
                detail=f"this replica does not lead group {group.name!r}; ask the leader",
            )
        return term

    return leader_term
