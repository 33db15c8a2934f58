"""No password in any log line, error message, status output, metric or HTTP body.

One test drives every kind of output through its scenarios (an election and
a failover over HTTP, lost connections, refused logins, bad settings, the
commands that print) with passwords in the DSNs, captures all of it, and
searches it for the passwords in every spelling a DSN can carry them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from coordinator import Coordinator, CoordinatorConfig, CoordinatorError
from coordinator.integrations.http import HttpServer, http_app
from coordinator.testing import CoordinatorProcess, capture_logs
from endpoints import HTTP_ANY_PORT, get, http_port, wait_status
from helpers import FAST, connected, coordinator_cli

Spawn = Callable[..., CoordinatorProcess]
GROUP = "scheduler"
WAIT = 15.0
PATHS = ("/livez", "/readyz", "/leader", f"/leader/{GROUP}", "/metrics")


class Transcript:
    """Everything the scenarios showed anyone, with where it came from."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def add(self, source: str, text: str) -> None:
        self.entries.append((source, text))

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = coordinator_cli(*args, env=env)
        self.add(f"coordinator {args[0]} (stdout)", result.stdout)
        self.add(f"coordinator {args[0]} (stderr)", result.stderr)
        return result

    def http(self, port: int, source: str) -> None:
        for path in PATHS:
            status, body = get(port, path)
            self.add(f"{source} GET {path} -> {status}", body.decode())

    def process(self, process: CoordinatorProcess) -> None:
        for record in process.records():
            self.add(f"log of {process.instance_id}", json.dumps(record))

    def leaks(self, *passwords: str) -> Iterator[str]:
        spellings = {form for p in passwords for form in (p, quote(p, safe=""), quote(p))}
        for source, text in self.entries:
            for spelling in spellings:
                if spelling in text:
                    yield f"{source}: {text[:300]!r}"


def with_password(dsn: str, user: str, password: str, *, database: str | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


@pytest.fixture
async def role(dsn: str) -> Any:
    """A role whose password has the characters a DSN must escape."""
    name = f"secret_{secrets.token_hex(4)}"
    password = f"Pw{secrets.token_hex(6)}@:/?#%&="
    yield name, password
    async with connected(dsn) as conn:
        await conn.execute(f'DROP OWNED BY "{name}"; DROP ROLE IF EXISTS "{name}"')


async def test_no_password_appears_in_any_output(
    pg_server: Any, dsn: str, role: tuple[str, str], spawn: Spawn, tmp_path: Path
) -> None:
    name, password = role
    wrong = f"Wrong{secrets.token_hex(6)}:@/"
    seen = Transcript()

    granted = seen.cli(
        "grant", "--dsn", dsn, "--role", name, "--password-env", "PW", env={"PW": password}
    )
    assert granted.returncode == 0, granted.stderr
    role_dsn = with_password(dsn, name, password)

    # An election, a failover and lost connections, as seen in logs and over HTTP.
    first = spawn(role_dsn, [GROUP], instance_id="a", **FAST, extra_args=HTTP_ANY_PORT)
    first.wait_for("leadership_acquired", WAIT, term=1)
    second = spawn(role_dsn, [GROUP], instance_id="b", **FAST, extra_args=HTTP_ANY_PORT)
    second.wait_for("coordinator_started", WAIT)
    a, b = http_port(first), http_port(second)
    seen.http(a, "leader")
    seen.http(b, "follower")
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
        )
    finally:
        await admin.close()
    first.wait_for("leadership_lost", WAIT)
    seen.http(a, "after the connections were cut")  # /leader reports its lost connection
    first.terminate()
    first.wait_exit(WAIT)
    wait_status(b, f"/leader/{GROUP}", 200, WAIT)
    seen.http(b, "new leader")
    seen.process(first)

    # Commands that print, and commands that fail, with passwords in their DSNs.
    seen.cli("status", "--dsn", role_dsn)
    seen.cli("status", "--dsn", role_dsn, "--json")
    seen.cli("probe", "--http", f"127.0.0.1:{b}", "--leader", GROUP)
    refused = with_password(dsn, name, wrong)
    for command in ("status", "migrate", "grant --role other_app", "run --group x"):
        result = seen.cli(*command.split(), "--dsn", refused)
        assert result.returncode == 1
    assert "refused the password" in seen.entries[-1][1]
    seen.cli("status", "--dsn", with_password("postgresql://h:1/d", name, password))
    seen.cli("status", "--dsn", with_password(dsn, name, password, database="no_such_db"))
    seen.cli("status", "--dsn", role_dsn.replace(str(urlsplit(dsn).port), "notaport"))
    seen.cli("run", "--group", GROUP, "--ttl", "nan-seconds", env={"COORDINATOR_DSN": role_dsn})
    config = tmp_path / "coordinator.toml"
    config.write_text(f'dsn = "{role_dsn}"\nttl = 1\ngroups = ["{GROUP}"]\n')
    seen.cli("run", "--config", str(config))
    config.write_text(f'dsn = ["{role_dsn}"]\n')
    seen.cli("run", "--config", str(config), "--group", GROUP)
    config.write_text(f'dsn = "{role_dsn}\n')
    seen.cli("run", "--config", str(config), "--group", GROUP)

    # The library: its log events, its exceptions, its configuration, its endpoints.
    with capture_logs() as logs:
        failing = Coordinator(refused, instance_id="lib", **FAST)
        failing.group(GROUP)
        with pytest.raises(CoordinatorError) as raised:
            await failing.start()
        seen.add("exception", f"{raised.value!s} {raised.value!r}")
        seen.add("config repr", repr(CoordinatorConfig(dsn=role_dsn)))
        server = HttpServer(http_app(failing), "127.0.0.1", 0)
        port = server.bind()
        await server.start()
        try:
            seen.add("endpoints", repr([await asyncio.to_thread(get, port, p) for p in PATHS]))
        finally:
            await server.stop()
    seen.add("library log", repr(logs))

    seen.process(second)
    leaks = list(seen.leaks(password, wrong, pg_server.password or "coordinator-test-pw"))
    assert not leaks, "\n".join(leaks)
    everything = "\n".join(text for _, text in seen.entries)
    assert everything.count(":***@") >= 10, "the DSNs are shown, redacted"
    assert '"database_error":"' in everything, "a failed read of the database is reported"
    if os.environ.get("SHOW_TRANSCRIPT"):
        print(everything)


SECRET = "SECRETpw42"


def dsn_forms(dsn: str, tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(what, DSN, environment): every way a password reaches the driver, all of them wrong."""
    parts = urlsplit(dsn)
    where = f"{parts.hostname}:{parts.port}{parts.path}"
    for character in "/?#@:":
        yield f"unescaped {character!r}", f"postgresql://postgres:pa{character}{SECRET}@{where}", {}
    yield "percent-encoded", f"postgresql://postgres:{quote(SECRET + '/?#@', safe='')}@{where}", {}
    yield (
        "key=value",
        f"host={parts.hostname} port={parts.port} user=postgres password='{SECRET} x'",
        {},
    )
    closed = f"{parts.hostname}:1{parts.path}"
    yield "sslpassword", f"postgresql://postgres@{closed}?sslpassword={SECRET}&sslmode=disable", {}
    yield "password parameter", f"postgresql://postgres@{where}?password={SECRET}", {}
    yield "PGPASSWORD", f"postgresql://postgres@{where}", {"PGPASSWORD": SECRET}
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:*:{SECRET}\n")
    passfile.chmod(0o600)
    yield "passfile", f"postgresql://postgres@{where}", {"PGPASSFILE": str(passfile)}


def try_every_command(forms: list[tuple[str, str, dict[str, str]]]) -> Transcript:
    seen = Transcript()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "COORDINATOR_"))}
    for what, form, env in forms:
        for command in ("status", "migrate", "run --group g --start-timeout 0"):
            result = coordinator_cli(
                *command.split(), "--dsn", form, env={**clean, **env}, inherit=False
            )
            seen.add(f"{what}: coordinator {command} (stdout)", result.stdout)
            seen.add(f"{what}: coordinator {command} (stderr)", result.stderr)
            assert result.returncode == 1, (what, command, result)
            assert "Traceback" not in result.stderr, (what, command, result.stderr)
    return seen


async def test_no_form_of_dsn_or_password_is_printed(dsn: str, tmp_path: Path) -> None:
    """Each form fails (a wrong password, a closed port, a refused form) in one line without it."""
    seen = try_every_command(list(dsn_forms(dsn, tmp_path)))
    leaks = list(seen.leaks(SECRET))
    assert not leaks, "\n".join(leaks)
    everything = "\n".join(text for _, text in seen.entries)
    assert "refused the password" in everything, "the wrong passwords reached the server"
    assert "sslpassword=***" in everything
