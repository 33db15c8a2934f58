"""HTTP endpoints for probes, people and Prometheus: a Starlette (ASGI) app.

Mount it in an application's own FastAPI or Starlette app, beside the
coordinator that application runs::

    coordinator = Coordinator(dsn)
    coordinator.group("scheduler")
    app = FastAPI(lifespan=lifespan(coordinator))
    app.mount("/coordinator", http_app(coordinator))

or let ``coordinator run --http HOST:PORT`` serve it alone (a sidecar).

=========================  ==========================================================
``GET /livez``             200 while the coordinator runs and its heartbeat job is on
                           time; 503 otherwise. A database outage is not a reason to
                           restart, so it stays 200 through one.
``GET /readyz``            200 when ready by the policy (``member`` or ``leader``,
                           see :class:`~coordinator.ReadyWhen`); 503 otherwise.
``GET /leader``            JSON for every group this instance takes part in: the
                           database's view (leader, term, heartbeat age) and this
                           instance's (is_leader, role). 503 if the database cannot
                           be read; the local fields are still given.
``GET /leader/{group}``    The same for one group; 200 when this instance leads it,
                           503 when not, 404 for a group it does not take part in.
``GET /members``           JSON: every member of every group (the database's view:
                           role, heartbeat age, term, host, pid, live, candidate).
                           503 if the database cannot be read.
``GET /cluster``           JSON for the web view: every group, every member, and the
                           events since ``?since=`` (ISO 8601; default: all retained).
``GET /``                  The web view: groups, members and a timeline of
                           leaderships, updated live (a page, its script and style
                           shipped in the package; no build step, nothing fetched
                           from elsewhere).
``GET /metrics``           Prometheus text format (:class:`CoordinatorMetrics`).
=========================  ==========================================================

Every route answers GET and HEAD; the probe endpoints (``/livez``,
``/readyz``, ``/leader``, ``/leader/{group}``) and ``/`` also answer
OPTIONS, with the same status, since HAProxy's ``option httpchk`` sends
OPTIONS (to ``/`` unless given a path) by default.
Nothing here changes any state. The status codes of the probe endpoints come
from local state alone; the database is read only for the JSON bodies, on a
connection of their own (so that requests never queue behind the heartbeat)
and within a bound of one second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coordinator._config import CoordinatorConfig
from coordinator._connect import connect
from coordinator._coordinator import Coordinator
from coordinator._describe import describe_error
from coordinator._errors import ConfigurationError
from coordinator._health import Health, ReadyWhen, Verdict
from coordinator._logging import get_logger
from coordinator._metrics import CoordinatorMetrics
from coordinator._observe import LeadershipEvent, read_history
from coordinator._status import GroupStatus, MemberStatus, read_members, read_status

__all__ = ["WEB_ROOT", "CoordinatorMetrics", "HttpServer", "http_app"]

log = get_logger()

#: How long a request may wait for the database's view of who leads.
STATUS_READ_TIMEOUT = 1.0

#: The web view's files, shipped in the package.
WEB_ROOT = resources.files("coordinator.integrations") / "web"

#: The web view's files by route, with their media types.
_WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/view.css": ("view.css", "text/css; charset=utf-8"),
}

#: Methods of the probe endpoints: HAProxy's httpchk asks with OPTIONS.
_PROBE_METHODS = ["GET", "OPTIONS"]

T = TypeVar("T")


def http_app(
    coordinator: Coordinator,
    *,
    ready_when: ReadyWhen | str = ReadyWhen.MEMBER,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The endpoints of ``coordinator``, as an app to mount or serve; create it before starting.

    ``registry`` receives the metrics (a registry of their own unless given:
    pass ``prometheus_client.REGISTRY`` to expose them on an existing
    ``/metrics`` as well). ``app.state.health`` and ``app.state.metrics`` give
    the same answers to code.
    """
    health = Health(coordinator, ready_when=ready_when)
    metrics = CoordinatorMetrics(coordinator, registry=registry, health=health)
    reader = _DatabaseReader(coordinator.config)
    endpoints = _Endpoints(coordinator, health, metrics, reader)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await reader.close()

    app = Starlette(
        routes=[
            Route("/livez", endpoints.livez, methods=_PROBE_METHODS),
            Route("/readyz", endpoints.readyz, methods=_PROBE_METHODS),
            Route("/leader", endpoints.leaders, methods=_PROBE_METHODS),
            # Group names may contain slashes.
            Route("/leader/{group:path}", endpoints.leader, methods=_PROBE_METHODS),
            Route("/members", endpoints.members, methods=["GET"]),
            Route("/cluster", endpoints.cluster, methods=["GET"]),
            Route("/metrics", endpoints.metrics, methods=["GET"]),
            # OPTIONS / is what a bare `option httpchk` asks: the process answers at all.
            *(
                Route(
                    path,
                    _WebFile(*served).respond,
                    methods=_PROBE_METHODS if path == "/" else ["GET"],
                )
                for path, served in _WEB_FILES.items()
            ),
        ],
        lifespan=lifespan,
    )
    app.state.health = health
    app.state.metrics = metrics
    return app


class _Endpoints:
    """The handlers: status codes from local state; bodies may add the database's view."""

    def __init__(
        self,
        coordinator: Coordinator,
        health: Health,
        metrics: CoordinatorMetrics,
        reader: _DatabaseReader,
    ) -> None:
        self._coordinator = coordinator
        self._health = health
        self._metrics = metrics
        self._reader = reader

    async def livez(self, _request: Request) -> Response:
        return _verdict(self._health.live(), "live")

    async def readyz(self, _request: Request) -> Response:
        verdict = self._health.ready()
        return _verdict(verdict, "ready", policy=self._health.ready_when.value)

    async def leaders(self, _request: Request) -> Response:
        rows, error = await self._groups()
        body = {
            "instance_id": self._coordinator.instance_id,
            "groups": [self._group(name, rows) for name in self._coordinator.groups],
            "database_error": error,
        }
        return JSONResponse(body, status_code=503 if error else 200)

    async def leader(self, request: Request) -> Response:
        name = request.path_params["group"]
        group = self._coordinator.groups.get(name)
        if group is None:
            return JSONResponse(
                {"error": f"this instance does not take part in group {name!r}"}, status_code=404
            )
        rows, error = await self._groups()
        body = {
            "instance_id": self._coordinator.instance_id,
            **self._group(name, rows),
            "database_error": error,
        }
        return JSONResponse(body, status_code=200 if group.is_leader else 503)

    async def members(self, _request: Request) -> Response:
        members, error = await self._reader.read(read_members)
        body = {
            "instance_id": self._coordinator.instance_id,
            "members": [member.as_json() for member in members or ()],
            "database_error": error,
        }
        return JSONResponse(body, status_code=503 if error else 200)

    async def cluster(self, request: Request) -> Response:
        since_text = request.query_params.get("since")
        try:
            since = datetime.fromisoformat(since_text) if since_text else None
        except ValueError:
            return JSONResponse(
                {"error": f"since={since_text!r} is not an ISO 8601 time"}, status_code=400
            )
        view, error = await self._reader.read(functools.partial(_read_cluster, since=since))
        body = {
            "instance_id": self._coordinator.instance_id,
            "now": datetime.now(UTC).isoformat(),
            **(view.as_json() if view else {"groups": [], "members": [], "events": []}),
            "database_error": error,
        }
        return JSONResponse(body, status_code=503 if error else 200)

    async def _groups(self) -> tuple[dict[str, GroupStatus], str | None]:
        rows, error = await self._reader.read(read_status)
        return {row.group: row for row in rows or ()}, error

    async def metrics(self, _request: Request) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _group(self, name: str, rows: dict[str, GroupStatus]) -> dict[str, Any]:
        """One group: the database's view (None when unread), then this instance's."""
        group = self._coordinator.groups[name]
        row = rows.get(name)
        own_age = self._health.heartbeat_age(name)
        return {
            "group": name,
            "leader": row.leader if row else None,
            "term": row.term if row else None,
            "heartbeat_age_s": _rounded(row.heartbeat_age_s if row else None),
            "is_leader": group.is_leader,
            "role": group.role.value,
            "own_heartbeat_age_s": _rounded(own_age),
        }


def _verdict(verdict: Verdict, key: str, **extra: str) -> Response:
    body = {key: verdict.ok, **extra, "reason": verdict.reason}
    return JSONResponse(body, status_code=200 if verdict.ok else 503)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@dataclass(frozen=True)
class _ClusterView:
    """What the web view shows, read in one go."""

    groups: list[GroupStatus]
    members: list[MemberStatus]
    events: list[LeadershipEvent]

    def as_json(self) -> dict[str, Any]:
        return {
            "groups": [row.as_json() for row in self.groups],
            "members": [row.as_json() for row in self.members],
            "events": [event.as_json() for event in self.events],
        }


async def _read_cluster(
    conn: asyncpg.Connection, *, schema: str, since: datetime | None
) -> _ClusterView:
    return _ClusterView(
        groups=await read_status(conn, schema=schema),
        members=await read_members(conn, schema=schema),
        events=await read_history(conn, since=since, schema=schema),
    )


class _WebFile:
    """One file of the web view, read from the package once, on first request."""

    def __init__(self, name: str, media_type: str) -> None:
        self._name = name
        self._media_type = media_type
        self._body: bytes | None = None

    async def respond(self, _request: Request) -> Response:
        if self._body is None:
            self._body = WEB_ROOT.joinpath(self._name).read_bytes()
        return Response(self._body, media_type=self._media_type)


class _DatabaseReader:
    """Reads for the endpoints on one connection of their own, opened on first use.

    A failed or timed-out read drops the connection; the next one reconnects.
    """

    def __init__(self, config: CoordinatorConfig) -> None:
        self._config = config
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def read(self, reading: Callable[..., Awaitable[T]]) -> tuple[T | None, str | None]:
        """What ``reading(conn, schema=...)`` returns, or None and why it could not be read."""
        try:
            async with asyncio.timeout(STATUS_READ_TIMEOUT), self._lock:
                return await self._read(reading), None
        except TimeoutError:
            return None, f"no answer from the database within {STATUS_READ_TIMEOUT:g} s"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            return None, describe_error(error)

    async def _read(self, reading: Callable[..., Awaitable[T]]) -> T:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._config.connection)
        try:
            return await reading(self._conn, schema=self._config.schema)
        except BaseException:
            self._conn.terminate()
            self._conn = None
            raise

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None


class _Uvicorn(uvicorn.Server):
    """Leaves SIGTERM and SIGINT to ``coordinator run``, which must resign before it exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """Serves an ASGI app with uvicorn on the running event loop, at ``host:port``.

    :meth:`bind` listens at once, so that a taken port fails before anything
    else starts, and tells the port actually bound (``0`` picks a free one).
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        self._host = host
        self._port = port
        config = uvicorn.Config(
            app,
            log_config=None,  # the command configures logging; uvicorn's INFO lines stay quiet
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = _Uvicorn(config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> int:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            self._socket = socket.create_server((self._host, self._port), family=family)
        except OSError as error:
            raise ConfigurationError(
                f"cannot listen on {self._host}:{self._port} ({error.strerror or error}): "
                "choose a free local address with --http or COORDINATOR_HTTP"
            ) from None
        port: int = self._socket.getsockname()[1]
        return port

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        port = self._socket.getsockname()[1]
        log.info("http_listening", host=self._host, port=port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
