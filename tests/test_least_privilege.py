"""The least-privilege role: enough for a full election and fencing, nothing more."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from coordinator.cli.grant import grant_sql
from coordinator.testing import CoordinatorProcess
from helpers import FAST, connected

Spawn = Callable[..., CoordinatorProcess]
GROUP = "scheduler"
WAIT = 15.0


@dataclass(frozen=True)
class Role:
    name: str
    password: str
    dsn: str  # with the password in it

    @property
    def dsn_without_password(self) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(netloc=f"{self.name}@{parts.hostname}:{parts.port}"))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def role_dsn(dsn: str, name: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{name}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def make_role(dsn: str) -> AsyncIterator[Callable[..., Awaitable[Role]]]:
    """``await make_role(*grant_args)``: a role made by ``coordinator grant``, dropped after."""
    made: list[str] = []

    async def make(*grant_args: str) -> Role:
        name = f"coord_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(12)
        made.append(name)
        result = cli(
            "grant",
            "--dsn",
            dsn,
            "--role",
            name,
            "--password-env",
            "ROLE_PASSWORD",
            *grant_args,
            env={"ROLE_PASSWORD": password},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"role {name} may now run the coordinator")
        return Role(name, password, role_dsn(dsn, name, password))

    yield make
    async with connected(dsn) as conn:
        for name in made:
            await conn.execute(f'DROP OWNED BY "{name}"; DROP ROLE "{name}"')


async def test_election_and_fencing_run_as_the_least_privileged_role(
    dsn: str, make_role: Callable[..., Awaitable[Role]], spawn: Spawn
) -> None:
    """Two instances as one plain role: elect, fence a frozen leader, take over, report status.

    One takes its password from PGPASSWORD, as the Kubernetes manifests do.
    """
    role = await make_role()
    first = spawn(role.dsn, [GROUP], instance_id="a", **FAST)
    first.wait_for("leadership_acquired", WAIT, term=1)
    second = spawn(
        role.dsn_without_password,
        [GROUP],
        instance_id="b",
        **FAST,
        env={"PGPASSWORD": role.password},
    )
    second.wait_for("coordinator_started", WAIT)

    first.freeze()
    second.wait_for("leader_fenced", WAIT, term=1)
    second.wait_for("leadership_acquired", WAIT, term=2)
    first.thaw()
    first.wait_for("leadership_lost", WAIT)
    for process in (first, second):
        assert not [r for r in process.records() if r.get("level") == "error"]

    status = cli("status", "--dsn", role.dsn, "--json")
    assert status.returncode == 0, status.stderr
    assert '"leader": "b"' in status.stdout
    first.terminate()
    assert first.wait_exit(WAIT) == 0  # resigning as the role works too


async def test_the_role_can_do_nothing_beyond_its_work(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    role = await make_role()
    async with connected(role.dsn) as conn:
        flags = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        )
        assert not any(flags.values())
        for statement in (
            "CREATE TABLE coordinator.intruder (x int)",
            "DELETE FROM coordinator.leaders",
            "UPDATE coordinator.events SET reason = 'rewritten'",
            "TRUNCATE coordinator.events",
            "INSERT INTO coordinator.schema_migrations (version, name, checksum) "
            "VALUES (99, 'x', 'x')",
            "DROP VIEW coordinator.leader_status",
            "CREATE ROLE accomplice",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)


async def test_fencing_across_roles_needs_pg_signal_backend(
    dsn: str, make_role: Callable[..., Awaitable[Role]], spawn: Spawn
) -> None:
    """A plain role cannot terminate another role's backend; one granted --fence-any-role can."""
    plain = await make_role()
    fencer = await make_role("--fence-any-role")
    leader = spawn(plain.dsn, [GROUP], instance_id="plain", **FAST)
    leader.wait_for("leadership_acquired", WAIT, term=1)
    follower = spawn(fencer.dsn, [GROUP], instance_id="fencer", **FAST)
    follower.wait_for("coordinator_started", WAIT)

    async with connected(plain.dsn) as conn:
        fencer_pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 LIMIT 1", fencer.name
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT pg_terminate_backend($1)", fencer_pid)

    leader.freeze()
    follower.wait_for("leader_fenced", WAIT, term=1)
    follower.wait_for("leadership_acquired", WAIT, term=2)


def test_grant_prints_the_documented_script_with_the_names_given() -> None:
    printed = cli("grant", "--role", "jobs_app", "--schema", "jobs", "--print")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == grant_sql("jobs_app", "jobs").strip()
    assert "coordinator_app" not in printed.stdout
    assert 'GRANT USAGE ON SCHEMA "jobs" TO "jobs_app";' in printed.stdout
    assert "rolname = 'jobs_app'" in printed.stdout
    assert '"jobs".leaders' in printed.stdout
    assert "GRANT pg_signal_backend" not in printed.stdout.replace("-- GRANT pg_signal", "")
    fence = cli("grant", "--role", "jobs_app", "--print", "--fence-any-role")
    assert fence.stdout.rstrip().endswith('GRANT pg_signal_backend TO "jobs_app";')


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--role", "Robert'); DROP"], {}, "not a plain lower-case SQL identifier"),
        (["--role", "pg_monitor"], {}, "not starting with pg_"),
        (["--role", "app", "--password-env", "NO_SUCH_VARIABLE"], {}, "unset or empty"),
        (["--role", "app", "--password-env", "PW"], {"PW": "pässword"}, "printable ASCII"),
    ],
)
def test_bad_grant_input_is_one_clear_line(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    result = cli("grant", "--dsn", "postgresql://nobody@127.0.0.1:1/none", *args, env=env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line


async def test_grant_is_idempotent_and_refuses_an_unmigrated_schema(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    role = await make_role()
    again = cli("grant", "--dsn", dsn, "--role", role.name)
    assert again.returncode == 0, again.stderr
    conn = await asyncpg.connect(role.dsn)  # the password survived: grant never resets it
    await conn.close()
    unmigrated = cli("grant", "--dsn", dsn, "--schema", "elsewhere", "--role", role.name)
    assert unmigrated.returncode == 1
    assert "coordinator migrate" in unmigrated.stderr
