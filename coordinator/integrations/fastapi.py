"""FastAPI: run the coordinator for as long as the app runs, and endpoints only the leader serves.

::

    scheduler = AsyncIOScheduler()
    coordinator = Coordinator(dsn, scheduler=scheduler)
    group = coordinator.group("jobs")
    app = FastAPI(lifespan=lifespan(coordinator, scheduler=scheduler))

    @app.post("/reindex")
    async def reindex(term: Annotated[int, Depends(require_leader(group))]) -> dict[str, int]:
        ...

An application with a lifespan of its own enters this one inside it:
``async with lifespan(coordinator, scheduler=scheduler)(app): yield``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from fastapi import HTTPException, status

from coordinator._coordinator import Coordinator
from coordinator._group import Group

__all__ = ["lifespan", "require_leader"]


def lifespan(
    coordinator: Coordinator, *, scheduler: BaseScheduler | None = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan``: start ``scheduler`` and the coordinator; on shutdown, resign.

    The scheduler is started first, so that it stays the application's: the
    coordinator only adds its jobs to it. On shutdown the coordinator stops
    first (leader-only jobs are paused and drained, leadership is resigned
    and handed over at once), then the scheduler, if this lifespan started it.
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
