"""Settings from flags, COORDINATOR_* variables and a TOML file, checked before anything runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from coordinator import ConfigurationError, CoordinatorConfig
from coordinator.cli import build_parser
from coordinator.cli._settings import (
    SETTINGS,
    Address,
    config_settings,
    duration,
    read_groups_file,
    resolve_settings,
)
from coordinator.cli.history import parse_since
from helpers import connected, coordinator_cli

SECRET_DSN = "postgresql://app:Hunter2-secret@db.example:5432/app"


def settings(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    resolve_settings(args)
    return args


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own COORDINATOR_* variables must not leak into these tests."""
    for setting in (*SETTINGS.values(),):
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.delenv("COORDINATOR_CONFIG", raising=False)


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'dsn = "postgresql://file@db/app"\n'
        'groups = ["from-file"]\n'
        "ttl = 30\n"
        "heartbeat_interval = 10\n"
        'http = "0.0.0.0:8081"\n'
        "lock_namespace = 0x1234\n"
    )
    monkeypatch.setenv("COORDINATOR_CONFIG", str(config))
    monkeypatch.setenv("COORDINATOR_TTL", "40")
    monkeypatch.setenv("COORDINATOR_HEARTBEAT_INTERVAL", "")  # empty counts as unset
    monkeypatch.setenv("COORDINATOR_GROUPS", "env-a, env-b")
    args = settings("run", "--ttl", "50", "--ready-when", "leader")
    assert args.ttl == 50.0
    assert args.heartbeat_interval == 10.0
    assert args.groups == ["env-a", "env-b"]
    assert args.dsn == "postgresql://file@db/app"
    assert args.http == Address("0.0.0.0", 8081)
    assert args.ready_when == "leader"
    assert args.schema == "coordinator"
    assert args.log_format == "console"
    given = config_settings(vars(args))
    assert given == {
        "dsn": "postgresql://file@db/app",
        "schema": "coordinator",
        "ttl": 50.0,
        "heartbeat_interval": 10.0,
        "lock_namespace": 0x1234,
    }
    assert CoordinatorConfig(**given).heartbeat_timeout == 5.0  # the class's default applies


def test_every_config_field_can_be_given_in_the_file(tmp_path: Path) -> None:
    """Each CoordinatorConfig field, written with its default value, reads back as that value."""
    defaults = CoordinatorConfig(dsn="postgresql://db/app", instance_id="i")
    lines = ['dsn = "postgresql://db/app"', 'instance_id = "i"', 'groups = ["g"]']
    for field in dataclasses.fields(CoordinatorConfig):
        value = getattr(defaults, field.name)
        if field.name not in ("dsn", "instance_id"):
            lines.append(f"{field.name} = {json.dumps(value)}")
    config = tmp_path / "coordinator.toml"
    config.write_text("\n".join(lines) + "\n")
    args = settings("run", "--config", str(config))
    assert CoordinatorConfig(**config_settings(vars(args))) == defaults


def test_database_commands_read_the_same_file(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('dsn = "postgresql://file@db/app"\nschema = "jobs"\nhttp = "[::]:9000"\n')
    for command in ("migrate", "status", "grant --role app"):
        args = settings(*command.split(), "--config", str(config))
        assert (args.dsn, args.schema) == ("postgresql://file@db/app", "jobs")
    assert settings("probe", "--config", str(config)).http == Address("::", 9000)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ttl = 'soon'", "ttl in "),
        ("ttl = true", "expected a duration"),
        ("tll = 3", "unknown setting 'tll'"),
        ("[coordinator]\nttl = 3", "unknown setting 'coordinator'"),
        ("groups = 'a'\ngroups = 'b'", "is not valid TOML"),
        ("http = '8080'", "expected HOST:PORT"),
        ("ready_when = 'always'", "expected member or leader"),
        ("dsn = 5", "expected a string, not a number"),
        ("dsn = [1]", "expected a string, not a list"),
    ],
)
def test_a_bad_file_is_refused_naming_the_setting(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigurationError) as raised:
        settings("run", "--config", str(config))
    assert fragment in str(raised.value)


def test_a_bad_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATOR_HEARTBEAT_TIMEOUT", "5 parsecs")
    with pytest.raises(ConfigurationError, match=r"\$COORDINATOR_HEARTBEAT_TIMEOUT: expected"):
        settings("run")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist: fix --config"):
        settings("status", "--config", str(tmp_path / "nowhere.toml"))


def test_settings_errors_of_run_are_one_line_without_the_dsn(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(f'dsn = "{SECRET_DSN}"\n')
    for env, fragment in (
        ({}, "no groups to take part in"),
        ({"COORDINATOR_GROUPS": "a", "COORDINATOR_TTL": "x"}, "$COORDINATOR_TTL"),
        ({"COORDINATOR_GROUPS": "a", "COORDINATOR_HTTP": "nowhere"}, "expected HOST:PORT"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "coordinator", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", **env},
        )
        assert result.returncode == 1, result
        (line,) = result.stderr.strip().splitlines()
        assert fragment in line
        assert "Hunter2" not in line


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 5.0),
        ("1.5", 1.5),
        ("5s", 5.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        (" 250 ms ", 0.25),
        ("1e3ms", 1.0),
    ],
)
def test_durations_take_units_in_flags_variables_and_the_file(
    text: str, seconds: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings("run", "--events-retention", text).events_retention == seconds
    monkeypatch.setenv("COORDINATOR_MEMBERS_RETENTION", text)
    config = tmp_path / "coordinator.toml"
    config.write_text(f"poll_interval = {json.dumps(text)}\n")
    args = settings("run", "--config", str(config))
    assert (args.members_retention, args.poll_interval) == (seconds, seconds)
    assert settings("probe", "--timeout", text).timeout == seconds


@pytest.mark.parametrize("text", ["5 parsecs", "ms", "5sec", "1e400", "nan", "5 s s", ""])
def test_a_duration_without_a_number_or_with_an_unknown_unit_is_refused(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COORDINATOR_TTL", text or " ")
    with pytest.raises(ConfigurationError, match=r"\$COORDINATOR_TTL: expected a duration"):
        settings("run")


def test_a_config_file_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_bytes(b'instance_id = "caf\xe9"\n')
    with pytest.raises(ConfigurationError, match="is not UTF-8 text") as raised:
        settings("run", "--config", str(config))
    assert len(str(raised.value).splitlines()) == 1


def _actions() -> Iterator[tuple[str, argparse.Action]]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        for action in command._actions:
            yield name, action


def test_every_flag_says_what_it_does() -> None:
    vague = []
    for command, action in _actions():
        text = action.help or ""
        words = text.split("(")[0].strip()
        if len(words) < 10 or "see docs" in text:
            vague.append(f"coordinator {command} {'/'.join(action.option_strings)}: {text!r}")
    assert not vague, "\n".join(vague)


def test_every_duration_flag_says_it_takes_units() -> None:
    for command, action in _actions():
        if action.type is duration:
            assert action.metavar == "DURATION", (command, action.option_strings)


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line


async def rows_written(dsn: str) -> int:
    async with connected(dsn) as conn:
        return int(
            await conn.fetchval(
                "SELECT (SELECT count(*) FROM coordinator.leaders)"
                " + (SELECT count(*) FROM coordinator.heartbeats)"
                " + (SELECT count(*) FROM coordinator.events)"
            )
        )


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--monitor-interval", "1e300"], "monitor_interval must be from 10 ms to 1 day"),
        (["--ttl", "3e6"], "tcp_user_timeout"),
        (["--events-retention", "1e300"], "events_retention must be from"),
        (["--members-retention", "0s"], "members_retention must be from"),
        (["--take-office-timeout", "1e-5"], "0 ms means no limit"),
        (["--start-timeout", "-1"], "start_timeout must be from"),
    ],
)
async def test_a_setting_out_of_bounds_stops_run_before_it_writes_anything(
    dsn: str, flags: list[str], fragment: str
) -> None:
    result = coordinator_cli("run", "--dsn", dsn, "--group", "g", *flags)
    assert_one_line_refusal(result, fragment)
    assert await rows_written(dsn) == 0


def test_probe_refuses_a_negative_timeout_in_one_line() -> None:
    result = coordinator_cli("probe", "--http", "127.0.0.1:9", "--timeout", "-1")
    assert_one_line_refusal(result, "probe --timeout must be from 1 ms to 3600 s")


def test_a_non_utf8_config_file_is_one_line_for_every_command(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_bytes(b'dsn = "postgresql://db/app"\ninstance_id = "caf\xe9"\n')
    for command in ("run", "status", "probe"):
        assert_one_line_refusal(coordinator_cli(command, "--config", str(config)), "not UTF-8")


async def test_a_target_session_attrs_no_host_matches_is_one_line(dsn: str) -> None:
    """The test server is a primary: no host matches read-only."""
    result = coordinator_cli("status", "--dsn", dsn + "?target_session_attrs=read-only")
    assert_one_line_refusal(result, "matches its target_session_attrs")


@pytest.fixture
async def read_only_dsn(dsn: str) -> str:
    """A migrated database whose new sessions are read-only, as in a read-only window."""
    name = dsn.rsplit("/", 1)[1].split("?")[0]
    async with connected(dsn) as conn:
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    return dsn


async def test_grant_on_a_read_only_database_is_one_line(read_only_dsn: str) -> None:
    result = coordinator_cli("grant", "--dsn", read_only_dsn, "--role", "reader_app")
    assert_one_line_refusal(result, "is read-only")


async def test_run_on_a_read_only_database_is_one_line_when_it_may_not_wait(
    read_only_dsn: str,
) -> None:
    result = coordinator_cli("run", "--dsn", read_only_dsn, "--group", "g", "--start-timeout", "0")
    assert_one_line_refusal(result, "the database is read-only")
    assert await rows_written(read_only_dsn) == 0


async def test_migrate_into_a_schema_with_a_conflicting_table_leaves_nothing(
    bare_dsn: str,
) -> None:
    async with connected(bare_dsn) as conn:
        await conn.execute("CREATE SCHEMA jobs; CREATE TABLE jobs.leaders (id int)")
    result = coordinator_cli("migrate", "--dsn", bare_dsn, "--schema", "jobs")
    assert_one_line_refusal(result, "migration failed in schema 'jobs'")
    async with connected(bare_dsn) as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'jobs'"
        )
    assert [row["table_name"] for row in tables] == ["leaders"]


def test_history_since_takes_the_same_durations() -> None:
    assert parse_since("500ms") == timedelta(seconds=0.5)
    assert parse_since("90") == timedelta(seconds=90)
    assert parse_since("2m") == timedelta(minutes=2)
    with pytest.raises(argparse.ArgumentTypeError, match="from 0 to 36500 days"):
        parse_since("1e300")


def test_status_with_an_unescaped_slash_in_the_password_shows_no_secret() -> None:
    result = coordinator_cli("status", "--dsn", "postgresql://u:pa/ssSECRET@host/db")
    assert_one_line_refusal(result, "Percent-encode them")
    assert "SECRET" not in result.stdout + result.stderr


def test_a_groups_file_is_read_line_by_line_skipping_blanks_and_comments(tmp_path: Path) -> None:
    listed = tmp_path / "groups.txt"
    listed.write_text("# partitions of the orders topic\n\npart-0\n  part-1  \n# part-2\n")
    assert read_groups_file(listed) == ["part-0", "part-1"]
    config = tmp_path / "coordinator.toml"
    config.write_text(f'groups_file = "{listed}"\n')
    assert settings("run", "--config", str(config)).groups_file == str(listed)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"a\nb\x01c\n", "line 2: group name 'b\\x01c' has surrounding whitespace or control"),
        (b"ok\n" + b"x" * 201 + b"\n", "line 2: group name"),
        (b"# nothing yet\n\n", "names no group: put one group name per line"),
        (b"caf\xe9\n", "is not UTF-8 text (byte 3)"),
    ],
)
def test_a_bad_groups_file_is_refused_naming_the_line(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    listed = tmp_path / "groups.txt"
    listed.write_bytes(content)
    with pytest.raises(ConfigurationError) as raised:
        read_groups_file(listed)
    assert fragment in str(raised.value)
    assert len(str(raised.value).splitlines()) == 1


def test_a_missing_groups_file_stops_run_in_one_line(tmp_path: Path) -> None:
    result = coordinator_cli(
        "run", "--dsn", "postgresql://nobody@127.0.0.1:1/none",
        "--groups-file", str(tmp_path / "nowhere.txt"),
    )  # fmt: skip
    assert result.returncode == 1, result
    (line,) = result.stderr.strip().splitlines()
    assert "does not exist: fix --groups-file or $COORDINATOR_GROUPS_FILE" in line
