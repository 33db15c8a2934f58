"""Settings of the commands: a flag beats ``COORDINATOR_*``, which beats the file, then defaults.

Each setting has one name: ``heartbeat_interval`` is the flag
``--heartbeat-interval``, the variable ``COORDINATOR_HEARTBEAT_INTERVAL`` and
the key ``heartbeat_interval`` of the TOML file named by ``--config`` or
``COORDINATOR_CONFIG``. An empty variable counts as unset. One file serves
every command (``run``, ``migrate``, ``probe`` ...); each takes the keys it
needs. Every value is checked by :func:`resolve_settings` before the command
does anything; a bad one is one line naming the setting, where it came from
and what it takes. A DSN is never echoed: it may hold a password.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin, get_type_hints

from coordinator._config import CoordinatorConfig
from coordinator._errors import ConfigurationError
from coordinator._health import ReadyWhen
from coordinator._keys import first_invalid_group_name, validate_group_name

__all__ = [
    "CONFIG_ENV",
    "SETTINGS",
    "Address",
    "Setting",
    "add_settings",
    "config_settings",
    "duration",
    "read_groups_file",
    "resolve_settings",
]

CONFIG_ENV = "COORDINATOR_CONFIG"


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: A duration: a number and an optional unit; a plain number is seconds.
_DURATION = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(value: object) -> float:
    """A duration: ``5``, ``5s``, ``500ms``, ``2m``, ``1h``; a plain number is seconds.

    Only the form is checked here; whoever uses the value checks its bounds.
    """
    seconds = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 5, 5s, 500ms, 2m, 1h or 7d (a plain number is "
            f"seconds), got {value!r}"
        )
    return seconds


def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected an integer (decimal or 0x hex), got {value!r}")


#: What a TOML value that is not a string is, for messages that must not show it.
_TOML_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list"}


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    # The value itself is not shown: this is how a DSN is read too.
    kind = _TOML_KINDS.get(type(value), "a table" if isinstance(value, dict) else "a date")
    raise argparse.ArgumentTypeError(f"expected a string, not {kind}")


def _groups(value: object) -> list[str]:
    """A list of names; a variable gives them comma-separated."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return list(value)
    raise argparse.ArgumentTypeError('expected a list of group names, e.g. ["scheduler"]')


def _address(value: object) -> Address:
    """``HOST:PORT``; an IPv6 host in brackets, ``[::1]:8080``."""
    text = _text(value).strip()
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if host and port.isdigit() and int(port) <= 65535:
        return Address(host, int(port))
    raise argparse.ArgumentTypeError(
        f"expected HOST:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080, got {text!r}"
    )


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLEANS |= {"false": False, "no": False, "off": False, "0": False}


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value in options:
            return str(value)
        raise argparse.ArgumentTypeError(f"expected {' or '.join(options)}, got {value!r}")

    return parse


@dataclass(frozen=True)
class Setting:
    """One setting: ``parse`` takes a flag's or variable's text, or a value from the file.

    ``default`` is what the command gets when nothing gives the setting;
    ``shown_default`` is how ``--help`` describes it when that differs.
    """

    name: str
    parse: Callable[[Any], Any]
    help: str
    default: Any = None
    shown_default: str | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "COORDINATOR_" + self.name.upper()


#: What --help says of CoordinatorConfig's fields; docs/configuration.md says more.
_CONFIG_HELP = {
    "ttl": "how long a leader's heartbeat may be missing before others fence it",
    "heartbeat_interval": "time between heartbeats",
    "heartbeat_timeout": "how long one heartbeat may take",
    "safety_margin": "how long before its ttl a leader stops trusting its leadership",
    "monitor_interval": "time between checks for stale leaders",
    "lock_namespace": "first int4 of every advisory lock key",
    "connect_timeout": "how long one connection attempt may take",
    "reconnect_min": "shortest jittered wait before reconnecting",
    "reconnect_max": "longest jittered wait before reconnecting",
    "callback_timeout": "how long on_elected/on_demoted callbacks may run",
    "take_office_timeout": "how long taking office waits for fenced work of the old term",
    "events_retention": "how long leadership events are kept",
    "members_retention": "how long a member that stopped beating (and leads nothing) is kept",
    "wait": "how followers wait: block (a connection per group, failover in milliseconds), "
    "poll (one connection, failover within poll_interval), or auto",
    "poll_interval": "poll mode: time between attempts on free groups",
    "poll_threshold": "auto mode: poll above this many groups",
    "fair_spread": "poll mode: hand leaderships above the fair share over",
}
#: How --help describes the defaults that are computed from other settings.
_COMPUTED_DEFAULTS = {
    "safety_margin": "1s, less when the ttl leaves less room",
    "monitor_interval": "the heartbeat interval",
}
#: Fields with settings of their own above, or none (the DSN is read separately).
_OWN_SETTINGS = ("dsn", "schema", "instance_id")


def _config_settings() -> Iterator[Setting]:
    """One setting per CoordinatorConfig field, parsed by its type; given only when set.

    Derived rather than listed, so that a new field is a setting at once. The
    class's own default applies to whatever is not given.
    """
    hints = get_type_hints(CoordinatorConfig)
    for field in fields(CoordinatorConfig):
        if field.name in _OWN_SETTINGS:
            continue
        parse, metavar = _parser_for(hints[field.name])
        default = None if field.default is MISSING else field.default
        yield Setting(
            field.name,
            parse,
            _CONFIG_HELP.get(field.name, ""),
            shown_default=_COMPUTED_DEFAULTS.get(field.name) or _describe(default),
            metavar=metavar,
        )


def _parser_for(hint: Any) -> tuple[Callable[[Any], Any], str | None]:
    if get_origin(hint) is Literal:
        options = [str(option) for option in get_args(hint)]
        return _choice(*options), "{" + ",".join(options) + "}"
    kinds = set(get_args(hint)) - {type(None)} or {hint}
    if kinds == {bool}:
        return _boolean, "{true,false}"
    if kinds == {int}:
        return _integer, "N"
    if kinds <= {int, float}:
        return duration, "DURATION"
    return _text, None


def _describe(default: object) -> str:
    if default is None:
        return "computed"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, int):
        return f"{default:#x}" if default > 0xFFFF else str(default)
    if isinstance(default, float):  # every float field is a duration
        for unit in ("d", "h", "m"):
            if default >= _UNIT_SECONDS[unit] and default % _UNIT_SECONDS[unit] == 0:
                return f"{default / _UNIT_SECONDS[unit]:g}{unit}"
        return f"{default:g}s"
    return str(default)


#: Every setting any command takes, by name. CoordinatorConfig checks the values of its fields.
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "dsn",
            _text,
            "PostgreSQL DSN; keep the password out of it (PGPASSWORD) or at least off the "
            "command line, where ps shows it",
        ),
        Setting("schema", _text, "schema of the coordinator's tables", default="coordinator"),
        Setting(
            "groups",
            _groups,
            "groups to take part in (flag: repeat --group; variable: comma-separated)",
        ),
        Setting(
            "groups_file",
            _text,
            "a text file of more groups to take part in, one name per line (# starts a comment)",
            metavar="FILE",
        ),
        Setting("instance_id", _text, "this instance's name", shown_default="host-pid-random"),
        *_config_settings(),
        Setting(
            "http",
            _address,
            "serve /livez, /readyz, /leader and /metrics at HOST:PORT",
            shown_default="no HTTP",
            metavar="HOST:PORT",
        ),
        Setting(
            "start_timeout",
            duration,
            "run: how long to keep retrying a database that cannot be used at start "
            "(0: fail at the first failure)",
            shown_default="retry until stopped",
            metavar="DURATION",
        ),
        Setting(
            "ready_when",
            _choice(*ReadyWhen),
            "who /readyz calls ready: every connected member, or the leader only",
            default=ReadyWhen.MEMBER.value,
            metavar="{member,leader}",
        ),
        Setting(
            "log_format",
            _choice("json", "console"),
            "log output",
            default="console",
            metavar="{json,console}",
        ),
    )
}


def config_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The resolved values that are CoordinatorConfig fields and were given somewhere."""
    names = {f.name for f in fields(CoordinatorConfig)}
    return {name: value for name, value in values.items() if name in names and value is not None}


def add_settings(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the flags of ``names``; :func:`resolve_settings` fills in what no flag gave."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of settings, keys as the flags' names with underscores (${CONFIG_ENV})",
    )
    for name in names:
        setting = SETTINGS[name]
        shown = setting.shown_default or setting.default
        help_text = f"{setting.help} (${setting.env}" + (f"; default: {shown})" if shown else ")")
        if name == "groups":
            parser.add_argument(
                "--group", action="append", dest="groups", metavar="NAME", help=help_text
            )
        else:
            parser.add_argument(
                setting.flag,
                dest=name,
                type=setting.parse,
                metavar=setting.metavar,
                help=help_text,
            )
    parser.set_defaults(settings=names)


def resolve_settings(args: argparse.Namespace) -> None:
    """Fill every setting no flag gave from the environment, then the file, then the default."""
    names: tuple[str, ...] = getattr(args, "settings", ())
    if not names:
        return
    path = args.config or os.environ.get(CONFIG_ENV) or None
    from_file = _read_file(Path(path)) if path else {}
    for name in names:
        if getattr(args, name) is not None:
            continue
        setting = SETTINGS[name]
        if os.environ.get(setting.env):
            value = _parse(setting, os.environ[setting.env], f"${setting.env}")
        elif name in from_file:
            value = _parse(setting, from_file[name], f"{name} in {path}")
        else:
            value = setting.default
        setattr(args, name, value)


def _parse(setting: Setting, value: object, source: str) -> Any:
    try:
        return setting.parse(value)
    except argparse.ArgumentTypeError as error:
        raise ConfigurationError(f"{source}: {error}") from None


def _read_file(path: Path) -> dict[str, Any]:
    text = _read_text(path, "config file", f"--config or ${CONFIG_ENV}", ", as TOML requires")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"config file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ConfigurationError(
            f"config file {path}: unknown setting {unknown[0]!r}; "
            f"the settings are {', '.join(SETTINGS)}"
        )
    return values


def read_groups_file(path: Path) -> list[str]:
    """The group names of a ``groups_file``: one per line, blank lines and ``#`` lines skipped.

    For lists too long for a flag or a TOML array: reading 100,000 names
    from TOML takes a process 0.19 s of CPU, from lines 0.05 s, checks included.
    Each name is checked here, so that a bad one is refused with its line.
    """
    text = _read_text(path, "groups file", "--groups-file or $COORDINATOR_GROUPS_FILE")
    numbered = [
        (number, name)
        for number, line in enumerate(text.splitlines(), start=1)
        if (name := line.strip()) and not name.startswith("#")
    ]
    names = [name for _, name in numbered]
    bad = first_invalid_group_name(names)
    if bad is not None:
        number, name = numbered[bad]
        try:
            validate_group_name(name)
        except ConfigurationError as error:
            raise ConfigurationError(f"groups file {path}, line {number}: {error}") from None
    if not names:
        raise ConfigurationError(f"groups file {path} names no group: put one group name per line")
    return names


def _read_text(path: Path, what: str, fix: str, utf8_note: str = "") -> str:
    """The UTF-8 text of the ``what`` at ``path``; one line naming the fix if it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"{what} {path} does not exist: fix {fix}") from None
    except OSError as error:
        raise ConfigurationError(f"cannot read {what} {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"{what} {path} is not UTF-8 text (byte {error.start}): save it as UTF-8{utf8_note}"
        ) from None
