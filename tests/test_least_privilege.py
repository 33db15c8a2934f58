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
from coordinator.testing import CoordinatorProcess, capture_logs
from helpers import FAST, connected, coordinator, lock_waiters, wait_until

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


async def test_the_shared_session_runs_as_the_least_privileged_role(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    """Poll mode takes office for several groups in one call, heartbeats and resigns them."""
    role = await make_role()
    names = ("g1", "g2", "g3")
    first = coordinator(role.dsn, "a", *names, wait="poll", poll_interval=0.05)
    second = coordinator(role.dsn, "b", *names, wait="poll", poll_interval=0.05)
    async with first:
        for name in names:
            assert await first.group(name).wait_elected(WAIT) == 1
        async with second:
            await first.stop()  # resigns every group; the other takes them over
            for name in names:
                assert await second.group(name).wait_elected(WAIT) == 2
    async with connected(role.dsn) as conn:
        kinds = await conn.fetch(
            "SELECT kind, count(*) AS n FROM coordinator.events GROUP BY kind ORDER BY kind"
        )
    assert [(k["kind"], k["n"]) for k in kinds] == [("elected", 6), ("resigned", 6)]


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
            "INSERT INTO coordinator.schema_migrations (version, name, checksum) "
            "VALUES (99, 'x', 'x')",
            "DROP VIEW coordinator.leader_status",
            "CREATE ROLE accomplice",
            # The helpers of the owner's functions are not the role's to call.
            "SELECT coordinator.record_event('g', 'elected', 99, 'x', 'forged')",
            "SELECT coordinator.end_fenced_transactions('{scheduler}', 'x')",
            "SELECT * FROM coordinator.start_terms('{scheduler}', 'x', 'h', 1, 5)",
            "SELECT * FROM coordinator.record_resignation('scheduler', 'x', 1, 'forged')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)


async def test_a_role_granted_before_an_upgrade_is_told_to_run_grant(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    """A role without what a newer migration added (here SELECT on group_sets, from 0009):
    ``coordinator run`` refuses in one line that names the fix, and registers nothing."""
    role = await make_role()
    async with connected(dsn) as conn:
        await conn.execute(f'REVOKE SELECT ON coordinator.group_sets FROM "{role.name}"')
    result = cli("run", "--dsn", role.dsn, "--group", "scheduler", "--start-timeout", "5")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "permission denied for table group_sets" in lines[0]
    assert "run `coordinator grant --role <role>`" in lines[0]
    async with connected(dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM coordinator.leaders") == 0


@pytest.mark.parametrize(
    ("function", "event"),
    [
        ("rehearse_handover(text, text, integer, float8)", "handover_rehearsal_refused"),
        ("draw_term(text)", "term_draw_refused"),
    ],
)
async def test_a_role_without_a_hand_over_shortcut_still_hands_over(
    dsn: str, make_role: Callable[..., Awaitable[Role]], function: str, event: str
) -> None:
    """A role granted before schema version 13 may not rehearse a hand-over, one
    granted before 15 may not draw terms ahead: each lock session says so, naming
    the fix, and elects and hands over all the same (terms 1, then 2)."""
    role = await make_role()
    async with connected(dsn) as conn:
        await conn.execute(f'REVOKE EXECUTE ON FUNCTION coordinator.{function} FROM "{role.name}"')
    first = coordinator(role.dsn, "a", GROUP, wait="block")
    second = coordinator(role.dsn, "b", GROUP, wait="block")
    with capture_logs() as logs:
        async with first:
            assert await first.group(GROUP).wait_elected(WAIT) == 1
            async with second:
                await wait_until(lambda: lock_waiters(dsn), WAIT, what="the follower to wait")
                await first.group(GROUP).resign()
                assert await second.group(GROUP).wait_elected(WAIT) == 2
    refused = [r for r in logs if r["event"] == event]
    assert refused, f"no lock session said it may not call {function}"
    assert all("coordinator grant" in r["fix"] for r in refused)


async def test_no_table_can_be_written_directly(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    """INSERT, UPDATE, DELETE and TRUNCATE are refused on every table of the schema."""
    role = await make_role()
    async with connected(dsn) as owner:
        await owner.execute(
            "INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key) "
            "VALUES ('scheduler', 1, 1)"
        )
        tables = await owner.fetch(
            "SELECT c.relname, (SELECT a.attname FROM pg_attribute AS a WHERE a.attrelid = c.oid "
            "AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = '' "
            "ORDER BY a.attnum LIMIT 1) AS first_column "
            "FROM pg_class AS c WHERE c.relnamespace = 'coordinator'::regnamespace "
            "AND c.relkind IN ('r', 'p')"
        )
    assert {"leaders", "heartbeats", "events", "settings", "schema_migrations"} <= {
        t["relname"] for t in tables
    }
    async with connected(role.dsn) as conn:
        for table in tables:
            name, column = f'coordinator."{table["relname"]}"', f'"{table["first_column"]}"'
            for statement in (
                f"INSERT INTO {name} DEFAULT VALUES",
                f"UPDATE {name} SET {column} = {column}",
                f"DELETE FROM {name}",
                f"TRUNCATE {name}",
                f"SELECT * FROM {name} FOR UPDATE",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)


async def test_a_forged_term_is_refused_by_every_function(
    dsn: str, make_role: Callable[..., Awaitable[Role]], spawn: Spawn
) -> None:
    """From a session that does not hold the lock, no function issues, renews, ends or
    demotes the live leader's term."""
    role = await make_role()
    leader = spawn(role.dsn, [GROUP], instance_id="a", **FAST)
    leader.wait_for("leadership_acquired", WAIT, term=1)
    async with connected(role.dsn) as conn:
        before = await conn.fetchrow(
            "SELECT l.term, l.holder, h.role, h.term AS beat_term FROM coordinator.leaders AS l "
            "JOIN coordinator.heartbeats AS h ON h.group_name = l.group_name "
            "AND h.instance_id = l.holder WHERE l.group_name = $1",
            GROUP,
        )
        assert tuple(before) == (1, "a", "leader", 1)
        namespace, key = await conn.fetchrow(
            "SELECT lock_namespace, lock_key FROM coordinator.leaders WHERE group_name = $1", GROUP
        )
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.fetch(
                "SELECT * FROM coordinator.take_office($1, 'forger', 'h', 1, 5)", [GROUP]
            )
        assert refused.value.sqlstate == "LT002"
        assert "does not hold the advisory lock of group(s) scheduler" in str(refused.value)
        # A lock of the same key in another namespace is not the group's lock.
        await conn.execute("SELECT pg_advisory_lock($1, $2)", namespace + 1, key)
        with pytest.raises(asyncpg.PostgresError, match="does not hold the advisory lock"):
            await conn.fetch(
                "SELECT * FROM coordinator.take_office($1, 'forger', 'h', 1, 5)", [GROUP]
            )
        renewed = await conn.fetch(
            "SELECT * FROM coordinator.leader_heartbeat('a', $1, $2, '{1}')",
            namespace + 1,
            [GROUP],
        )
        assert renewed == []
        renewed = await conn.fetch(
            "SELECT * FROM coordinator.leader_heartbeat('a', $1, $2, '{1}')", namespace, [GROUP]
        )
        assert renewed == []
        resigned = await conn.fetch("SELECT * FROM coordinator.resign($1, 'a', 1, 'forged')", GROUP)
        assert resigned == []
        resigned = await conn.fetchrow(
            "SELECT * FROM coordinator.resign_and_unlock($1, 'a', 1, 'forged', $2, $3)",
            GROUP,
            namespace,
            key,
        )
        assert resigned["resigned_term"] is None
        # The lock is the leader's: a wait runs out, and takes nothing.
        waited = await conn.fetch(
            "SELECT * FROM coordinator.campaign($1, 'forger', 'h', 1, 5, 50)", GROUP
        )
        assert waited == []
        tried = await conn.fetch(
            "SELECT * FROM coordinator.take_free_offices($1, 'forger', 'h', 1, 5)", [GROUP]
        )
        assert tried == []
        lost = await conn.fetch(
            "SELECT * FROM coordinator.record_lost($1, 'a', 1, 'forged')", GROUP
        )
        assert lost == []
        lost = await conn.fetch(
            "SELECT * FROM coordinator.record_lost_all(ARRAY[$1], 'a', '{1}', '{forged}')", GROUP
        )
        assert lost == []
        await conn.execute("SELECT coordinator.member_heartbeat($1, 'a', 'h', 1)", [GROUP])
        assert await conn.fetch("SELECT * FROM coordinator.fence_stale_leaders('forger')") == []
        with pytest.raises(asyncpg.PostgresError) as stale:
            async with conn.transaction():
                await conn.execute("SELECT coordinator.assert_term($1, 2)", GROUP)
        assert stale.value.sqlstate == "LT001"
        after = await conn.fetchrow(
            "SELECT l.term, l.holder, h.role, h.term AS beat_term FROM coordinator.leaders AS l "
            "JOIN coordinator.heartbeats AS h ON h.group_name = l.group_name "
            "AND h.instance_id = l.holder WHERE l.group_name = $1",
            GROUP,
        )
        assert tuple(after) == tuple(before)
        kinds = await conn.fetch("SELECT kind FROM coordinator.events WHERE group_name = $1", GROUP)
        assert [r["kind"] for r in kinds] == ["elected"]
        status = await conn.fetchrow(
            "SELECT leader, is_stale FROM coordinator.leader_status WHERE group_name = $1", GROUP
        )
        assert tuple(status) == ("a", False)
    assert not [r for r in leader.records() if r.get("event") == "leadership_lost"]


async def test_pruning_keeps_the_retention_the_owner_configured(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    """The role may ask to keep history longer, never shorter than coordinator.settings says."""
    role = await make_role()
    async with connected(dsn) as owner:
        await owner.execute(
            "INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key, ttl) "
            "VALUES ('scheduler', 1, 1, '1 second');"
            "INSERT INTO coordinator.events (at, group_name, kind, term) VALUES "
            "(now() - interval '8 days', 'scheduler', 'elected', 1), "
            "(now() - interval '2 days', 'scheduler', 'elected', 2), "
            "(now(), 'scheduler', 'elected', 3);"
            "INSERT INTO coordinator.heartbeats (group_name, instance_id, role, heartbeat_at) "
            "VALUES ('scheduler', 'gone', 'follower', now() - interval '2 hours'), "
            "('scheduler', 'alive', 'follower', now())"
        )
    async with connected(role.dsn) as conn:
        assert await conn.fetchval("SELECT coordinator.prune_events(0)") == 1
        assert await conn.fetchval("SELECT coordinator.prune_members(3600)") == 1
        members = await conn.fetch("SELECT instance_id FROM coordinator.heartbeats")
        assert [m["instance_id"] for m in members] == ["alive"]
    async with connected(dsn) as owner:
        await owner.execute("UPDATE coordinator.settings SET events_retention = '1 day'")
    async with connected(role.dsn) as conn:
        assert await conn.fetchval("SELECT coordinator.prune_events(30 * 86400)") == 0
        assert await conn.fetchval("SELECT coordinator.prune_events(0)") == 1
        terms = await conn.fetch("SELECT term FROM coordinator.events")
        assert [t["term"] for t in terms] == [3]


async def test_fencing_across_roles_runs_with_the_owners_rights(
    bare_dsn: str, spawn: Spawn
) -> None:
    """Instances of two plain roles cannot terminate each other's backends; the owner's
    function can, once the owner (no superuser here) has pg_signal_backend."""
    owner = f"owner_{secrets.token_hex(4)}"
    async with connected(bare_dsn) as conn:
        await conn.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD 'pw'")
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {owner}')
    owner_dsn = role_dsn(bare_dsn, owner, "pw")
    made: list[str] = []
    try:
        assert cli("migrate", "--dsn", owner_dsn).returncode == 0
        roles = []
        for _ in range(2):
            name, password = f"coord_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
            made.append(name)
            result = cli(
                "grant",
                "--dsn",
                owner_dsn,
                "--role",
                name,
                "--password-env",
                "PW",
                env={"PW": password},
            )
            assert result.returncode == 0, result.stderr
            roles.append(role_dsn(bare_dsn, name, password))
        leader = spawn(roles[0], [GROUP], instance_id="one", **FAST)
        leader.wait_for("leadership_acquired", WAIT, term=1)
        follower = spawn(roles[1], [GROUP], instance_id="two", **FAST)
        follower.wait_for("coordinator_started", WAIT)
        async with connected(roles[1]) as conn:
            leader_pid = await conn.fetchval(
                "SELECT lock_pid FROM coordinator.leader_status WHERE group_name = $1", GROUP
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT pg_terminate_backend($1)", leader_pid)

        leader.freeze()
        follower.wait_for("fence_permission_denied", WAIT)
        granted = cli("grant", "--dsn", bare_dsn, "--role", made[1], "--fence-any-role")
        assert granted.returncode == 0, granted.stderr
        follower.wait_for("leader_fenced", WAIT, term=1)
        follower.wait_for("leadership_acquired", WAIT, term=2)
    finally:
        async with connected(bare_dsn) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = ANY($1::text[])",
                [owner, *made],
            )
            for name in [*made, owner]:
                await conn.execute(f"DROP OWNED BY {name} CASCADE; DROP ROLE {name}")


def test_grant_prints_the_documented_script_with_the_names_given() -> None:
    printed = cli("grant", "--role", "jobs_app", "--schema", "jobs", "--print")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == grant_sql("jobs_app", "jobs").strip()
    assert "coordinator_app" not in printed.stdout
    assert 'GRANT USAGE ON SCHEMA "jobs" TO "jobs_app";' in printed.stdout
    assert 'REVOKE ALL ON ALL TABLES IN SCHEMA "jobs" FROM "jobs_app";' in printed.stdout
    assert "rolname = 'jobs_app'" in printed.stdout
    assert '"jobs".take_office(' in printed.stdout
    assert "GRANT pg_signal_backend" not in printed.stdout.replace("-- GRANT pg_signal", "")
    assert "FROM PUBLIC" not in printed.stdout
    extra = cli(
        "grant", "--role", "jobs_app", "--print", "--fence-any-role", "--revoke-public-connect"
    )
    assert "'GRANT pg_signal_backend TO %s'" in extra.stdout
    assert extra.stdout.rstrip().endswith(
        "EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());\nEND\n$$;"
    )


async def test_revoking_public_connect_keeps_other_roles_out(
    dsn: str, make_role: Callable[..., Awaitable[Role]]
) -> None:
    """With --revoke-public-connect only roles granted CONNECT reach the locks at all."""
    outsider = f"outsider_{secrets.token_hex(4)}"
    async with connected(dsn) as owner:
        await owner.execute(f"CREATE ROLE {outsider} LOGIN PASSWORD 'pw'")
    try:
        async with connected(role_dsn(dsn, outsider, "pw")) as conn:
            assert await conn.fetchval("SELECT 1") == 1
        role = await make_role("--revoke-public-connect")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="CONNECT"):
            await asyncpg.connect(role_dsn(dsn, outsider, "pw"))
        async with connected(role.dsn) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        async with connected(dsn) as owner:
            await owner.execute(f"DROP OWNED BY {outsider}; DROP ROLE {outsider}")


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
