"""The command line: one clear line and a non-zero exit for every expected failure."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from helpers import COLLIDING_NAMES, connected

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
