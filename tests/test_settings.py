"""Settings from flags, COORDINATOR_* variables and a TOML file, checked before anything runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import ConfigurationError, CoordinatorConfig
from coordinator.cli import build_parser
from coordinator.cli._settings import SETTINGS, Address, config_settings, resolve_settings

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
