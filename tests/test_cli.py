"""The command line: one clear line and a non-zero exit for every expected failure."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import COLLIDING_NAMES, FAST, connected, coordinator, wait_until

PASSWORD_MARK = "pw"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_unreachable_dsn_is_one_line_with_the_fix() -> None:
    result = cli("status", "--dsn", "postgresql://app:hunter2@127.0.0.1:1/app")
    line = assert_one_line_error(result, "cannot connect", "check the DSN")
    assert "hunter2" not in line


def test_missing_dsn_names_the_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "migrate"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert_one_line_error(result, "COORDINATOR_DSN")


def test_wrong_password_is_refused_without_echoing_it(pg_server: Any) -> None:
    if not pg_server.dsn.count(":") >= 3 or "@" not in pg_server.dsn:
        pytest.skip("the server under test does not use password authentication")
    wrong = pg_server.dsn.replace(f":{pg_server.password}@", ":not-the-password@")
    line = assert_one_line_error(cli("migrate", "--dsn", wrong), "refused the password")
    assert "not-the-password" not in line


def test_unmigrated_schema_tells_to_migrate(bare_dsn: str) -> None:
    result = cli("run", "--dsn", bare_dsn, "--group", "scheduler")
    assert_one_line_error(result, "coordinator migrate")


def test_status_of_unmigrated_schema_tells_to_migrate(bare_dsn: str) -> None:
    assert_one_line_error(cli("status", "--dsn", bare_dsn), "coordinator migrate")


def test_standby_is_refused(pg_server: Any) -> None:
    standby = pg_server.create_standby()
    try:
        result = cli("run", "--dsn", standby.dsn, "--group", "scheduler")
        assert_one_line_error(result, "standby", "primary")
    finally:
        standby.close()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ttl", "10"], "must be greater than heartbeat interval plus heartbeat timeout"),
        (
            ["--ttl", "2", "--heartbeat-interval", "1", "--heartbeat-timeout", "1"],
            "must be greater",
        ),
        (["--group", ""], "is empty"),
        (["--group", "x" * 201], "at most 200 bytes"),
        (["--group", COLLIDING_NAMES[1]], "same lock key"),
    ],
)
def test_bad_run_settings_are_refused_before_connecting(args: list[str], fragment: str) -> None:
    base = ["run", "--dsn", "postgresql://nobody@127.0.0.1:1/none", "--group", COLLIDING_NAMES[0]]
    assert_one_line_error(cli(*base, *args), fragment)


async def test_run_takes_part_in_the_groups_of_its_groups_file_and_its_flags(
    dsn: str, tmp_path: Path
) -> None:
    listed = tmp_path / "partitions.txt"
    listed.write_text("# one line per partition\npart-0\n\npart-1\n")
    command = [
        *(sys.executable, "-m", "coordinator", "run", "--dsn", dsn, "--instance-id", "listed"),
        *("--groups-file", str(listed), "--group", "scheduler", "--group", "part-0"),
        *(f"--{name.replace('_', '-')}={value}" for name, value in FAST.items()),
    ]
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        async with connected(dsn) as conn:

            async def registered() -> list[str]:
                """Every group this database knows, once all of them are led by 'listed'."""
                rows = await conn.fetch(
                    "SELECT group_name, holder FROM coordinator.leaders ORDER BY group_name"
                )
                led = all(row["holder"] == "listed" for row in rows)
                return [row["group_name"] for row in rows] if rows and led else []

            groups = await wait_until(registered, 30, what="the listed groups led")
            assert groups == ["part-0", "part-1", "scheduler"]
    finally:
        process.terminate()
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0, log.read_text()


async def test_status_json_has_exactly_the_documented_keys(dsn: str) -> None:
    async with connected(dsn) as conn:
        await conn.execute(
            "INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key) "
            "VALUES ('scheduler', 1, 1)"
        )
    result = cli("status", "--dsn", dsn, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert list(row) == [
        "group",
        "leader",
        "term",
        "acquired_at",
        "heartbeat_at",
        "heartbeat_age_s",
        "stale",
        "lock_held",
        "squatter_pid",
    ]
    assert row["group"] == "scheduler"
    assert row["leader"] is None


def test_migrate_reports_what_it_did(bare_dsn: str) -> None:
    first = cli("migrate", "--dsn", bare_dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied migrations 1")
    again = cli("migrate", "--dsn", bare_dsn)
    assert again.stdout.strip() == "schema coordinator is up to date"


def test_unknown_command_and_help_still_list_every_command() -> None:
    """Only the chosen command's module is imported; the others are still named."""
    listing = cli("--help")
    assert listing.returncode == 0
    for command in ("migrate", "grant", "run", "probe", "status", "history", "watch", "demo"):
        assert command in listing.stdout
    assert "show every group's leader" in listing.stdout
    assert cli("nope").returncode == 2
    assert "--leader GROUP" in cli("probe", "--help").stdout


def test_probe_loads_neither_asyncpg_nor_apscheduler_nor_structlog() -> None:
    """An exec probe runs often: it imports only what asking an HTTP endpoint needs."""
    script = (
        "import sys\n"
        "from coordinator.cli import main\n"
        "main(['probe', '--http', '127.0.0.1:1', '--timeout', '0.1'])\n"
        "print(sorted(m for m in ('asyncpg', 'apscheduler', 'structlog') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.splitlines()[-1] == "[]", result


async def insert_groups(dsn: str, count: int) -> None:
    async with connected(dsn) as conn:
        await conn.execute(
            "INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key) "
            "SELECT 'group-' || i, 1, i FROM generate_series(1, $1) AS i",
            count,
        )


async def insert_events(dsn: str, rows: list[tuple[str, str, int, str, str | None]]) -> None:
    async with connected(dsn) as conn:
        await conn.executemany(
            "INSERT INTO coordinator.events (group_name, kind, term, instance_id, reason) "
            "VALUES ($1, $2, $3, $4, $5)",
            rows,
        )


@pytest.mark.parametrize("command", [["status"], ["history"], ["status", "--members"]])
async def test_a_reader_closing_the_pipe_early_is_no_error(dsn: str, command: list[str]) -> None:
    """``coordinator status | head -3``: more output than a pipe holds, reader gone after a line."""
    await insert_groups(dsn, 3000)
    await insert_events(dsn, [(f"group-{i}", "elected", 1, "a", None) for i in range(3000)])
    async with connected(dsn) as conn:
        await conn.execute(
            "INSERT INTO coordinator.heartbeats (group_name, instance_id, role) "
            "SELECT group_name, 'a', 'follower' FROM coordinator.leaders"
        )
    process = subprocess.Popen(  # noqa: ASYNC220 - read line by line, then closed early
        [sys.executable, "-m", "coordinator", *command, "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) in (0, 141)
    assert stderr == ""


async def test_history_lines_up_its_columns_and_limits_to_the_newest(dsn: str) -> None:
    await insert_events(
        dsn,
        [
            ("a", "elected", 1, "first-instance", None),
            ("a-much-longer-name", "elected", 1, "b", None),
            ("a", "lost", 1, "first-instance", "connection_lost"),
            ("a", "elected", 2, "c", None),
        ],
    )
    result = cli("history", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    for column in ("elected", "term", "-instance"):
        starts = {line.find(column) for line in lines if column in line}
        assert len(starts) == 1, (column, lines)
    assert lines[2].endswith("(connection_lost)")
    newest = cli("history", "--dsn", dsn, "--limit", "2", "--json")
    assert [(e["kind"], e["term"]) for e in json.loads(newest.stdout)] == [
        ("lost", 1),
        ("elected", 2),
    ]
    refused = cli("history", "--dsn", dsn, "--limit", "0")
    assert refused.returncode == 2
    assert "1 or more" in refused.stderr


async def test_status_members_lists_every_member_with_its_role(dsn: str) -> None:
    """Two live coordinators and a long-gone member: the leader, a candidate, and the gone one."""
    keep = {"members_retention": 7200.0}  # the leader's first prune must spare the gone one
    a, b = coordinator(dsn, "a", "scheduler", **keep), coordinator(dsn, "b", "scheduler", **keep)
    async with a:
        await a.group("scheduler").wait_elected(15)  # a leads before b even starts
        async with b:
            async with connected(dsn) as conn:
                await conn.execute(
                    "INSERT INTO coordinator.heartbeats (group_name, instance_id, role, host, pid, "
                    "heartbeat_at) VALUES ('scheduler', 'gone', 'follower', 'h', 7, "
                    "now() - interval '1 hour')"
                )
            await wait_until(lambda: _both_beat(dsn), 15, what="b's first member heartbeat")
            # In a thread: the coordinators beat on this event loop meanwhile.
            result = await asyncio.to_thread(cli, "status", "--dsn", dsn, "--members", "--json")
            assert result.returncode == 0, result.stderr
            members = {row["instance_id"]: row for row in json.loads(result.stdout)}
            table = (await asyncio.to_thread(cli, "status", "--dsn", dsn, "--members")).stdout
    assert list(members["a"]) == [
        "group",
        "instance_id",
        "role",
        "term",
        "host",
        "pid",
        "joined_at",
        "heartbeat_at",
        "heartbeat_age_s",
        "live",
        "candidate",
    ]
    assert {
        name: (m["role"], m["term"], m["live"], m["candidate"]) for name, m in members.items()
    } == {
        "a": ("leader", 1, True, False),
        "b": ("follower", None, True, True),
        "gone": ("follower", None, False, False),
    }
    assert members["a"]["pid"] == os.getpid()
    assert members["gone"]["heartbeat_age_s"] >= 3600
    header, *rows = table.splitlines()
    assert header.split() == [
        "GROUP",
        "INSTANCE",
        "ROLE",
        "TERM",
        "HEARTBEAT",
        "AGE",
        "LIVE",
        "CANDIDATE",
        "HOST",
        "PID",
    ]
    assert [row.split()[1:3] for row in rows] == [
        ["a", "leader"],
        ["b", "follower"],
        ["gone", "follower"],
    ]


async def _both_beat(dsn: str) -> bool:
    async with connected(dsn) as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM coordinator.heartbeats WHERE instance_id IN ('a', 'b')"
        )
    return bool(count == 2)


async def test_watch_lines_up_and_says_why_a_leadership_ended(dsn: str, tmp_path: Path) -> None:
    a = coordinator(dsn, "a", "scheduler", "a-longer-group")
    async with a:
        await a.group("scheduler").wait_elected(15)
        await a.group("a-longer-group").wait_elected(15)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "coordinator", "watch", "--dsn", dsn),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        try:
            lines = [await asyncio.wait_for(process.stdout.readline(), 15) for _ in range(2)]
            await a.group("scheduler").resign()
            lines.append(await asyncio.wait_for(process.stdout.readline(), 15))
        finally:
            process.terminate()
            await process.wait()
    current, resigned = lines[0].decode(), lines[2].decode()
    assert current.index("current") == lines[1].decode().index("current")
    assert "current" in current
    assert "resigned" in resigned
    assert current.index("current") == resigned.index("resigned")
    assert current.index("term") == resigned.index("term")
    assert resigned.rstrip().endswith(")"), resigned


async def test_history_follow_prints_the_record_then_each_change(dsn: str) -> None:
    await insert_events(dsn, [("scheduler", "elected", 1, "earlier", None)])
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "coordinator", "history", "--dsn", dsn, "--follow", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        recorded = json.loads(await asyncio.wait_for(process.stdout.readline(), 15))
        assert (recorded["kind"], recorded["instance_id"]) == ("elected", "earlier")
        a = coordinator(dsn, "a", "scheduler")
        async with a:
            await a.group("scheduler").wait_elected(15)
            live = json.loads(await asyncio.wait_for(process.stdout.readline(), 15))
    finally:
        process.terminate()
        status = await asyncio.wait_for(process.wait(), 15)
    # Elected, or (had it happened before the follow began listening) the current state.
    assert (live["kind"], live["term"], live["instance_id"]) in {
        ("elected", 1, "a"),
        ("current", 1, "a"),
    }
    assert status == 0
