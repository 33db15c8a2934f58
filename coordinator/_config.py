"""Settings: a coordinator's, and a connection's; frozen, keyword-only, checked early.

Bad configuration fails here, with a message that names the fix, instead of
as a flapping leader an hour later.
"""

from __future__ import annotations

import math
import os
import random
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Literal

from coordinator._dsn import dsn_problem, redact_dsn
from coordinator._errors import ConfigurationError
from coordinator._keys import DEFAULT_LOCK_NAMESPACE

__all__ = ["HOST", "ConnectionOptions", "CoordinatorConfig", "backoff_delay", "default_instance_id"]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: This machine's name, recorded with every leadership and membership.
HOST = socket.gethostname()

_DAY = 24 * 3600.0
_MAX_GROUPS = 1_000_000
_INTERVAL = (0.01, _DAY, "")
#: Every duration field: least and most seconds (both allowed), and what the bounds protect.
_SECONDS_BOUNDS: dict[str, tuple[float, float, str]] = {
    "ttl": (0.1, _DAY, "it also becomes the sockets' tcp_user_timeout"),
    "heartbeat_interval": _INTERVAL,
    "heartbeat_timeout": _INTERVAL,
    "connect_timeout": (0.01, 3600.0, ""),
    "reconnect_min": (0.001, 3600.0, ""),
    "reconnect_max": (0.001, 3600.0, ""),
    "callback_timeout": _INTERVAL,
    "take_office_timeout": (0.01, 3600.0, "it becomes a lock_timeout, where 0 ms means no limit"),
    "events_retention": (1.0, 3650 * _DAY, ""),
    "members_retention": (1.0, 3650 * _DAY, ""),
    "poll_interval": _INTERVAL,
}


def default_instance_id() -> str:
    """``host-pid-random``: unique per run, readable in ``pg_stat_activity``."""
    return f"{HOST}-{os.getpid()}-{secrets.token_hex(3)}"


def backoff_delay(failures: int, low: float, high: float) -> float:
    """Full jitter, growing with consecutive failures, between ``low`` and ``high`` seconds."""
    ceiling = min(high, low * 2 ** min(failures, 16))
    return random.uniform(low, ceiling)


@dataclass(frozen=True, kw_only=True)
class ConnectionOptions:
    """How to open one connection: all a reader, a migration or a coordinator needs."""

    dsn: str = field(repr=False)
    connect_timeout: float = 5.0
    #: Shown in ``pg_stat_activity``; at most 63 bytes are kept by the server.
    application_name: str = "coordinator"
    #: Unacknowledged data is given up after this long (``tcp_user_timeout``).
    user_timeout: float = 15.0

    def __post_init__(self) -> None:
        if not self.dsn or not isinstance(self.dsn, str):
            raise ConfigurationError(
                "no database given: pass a DSN, e.g. postgresql://user:password@host:5432/dbname"
            )
        problem = dsn_problem(self.dsn)
        if problem is not None:
            raise ConfigurationError(problem)
        low, high, why = _SECONDS_BOUNDS["connect_timeout"]
        check_seconds("connect_timeout", self.connect_timeout, low, high, why)

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    def keepalive_settings(self) -> tuple[str, str, str, str]:
        """Idle, interval and count of keepalives, and tcp_user_timeout in ms.

        A dead peer is noticed after idle + interval * count seconds without an
        answer, and unacknowledged data is given up after tcp_user_timeout.
        """
        return ("5", "2", "3", str(int(max(self.user_timeout, 5.0) * 1000)))


@dataclass(frozen=True, kw_only=True)
class CoordinatorConfig:
    """Everything a coordinator needs to know, checked once.

    Times are in seconds. A leader trusts itself until
    ``last successful heartbeat start + ttl - safety_margin``; other
    instances may fence it once its heartbeat is older than ``ttl`` on the
    database clock. ``ttl`` must therefore exceed one heartbeat interval plus
    its timeout plus the margin, or a healthy leader would demote itself.
    """

    dsn: str = field(repr=False)
    instance_id: str = field(default_factory=default_instance_id)
    ttl: float = 15.0
    heartbeat_interval: float = 5.0
    #: 0 (the default): the heartbeat interval, at most 5 s.
    heartbeat_timeout: float = 0.0
    #: Defaults to 1 s, or less when the ttl leaves less room (short test ttls).
    safety_margin: float | None = None
    #: How often this instance looks for stale leaders; defaults to the heartbeat interval.
    monitor_interval: float | None = None
    schema: str = "coordinator"
    lock_namespace: int = DEFAULT_LOCK_NAMESPACE
    connect_timeout: float = 5.0
    #: Bounds on the jittered wait between reconnection attempts.
    reconnect_min: float = 0.05
    reconnect_max: float = 5.0
    #: How long ``on_demoted`` callbacks may run when leadership ends: room
    #: for leader-only jobs to drain (10 s by default) and then be cancelled.
    callback_timeout: float = 15.0
    #: How long taking office may wait for fenced transactions of the old term, per attempt.
    take_office_timeout: float = 5.0
    #: Events older than this are pruned (never below the database's own retention floor).
    events_retention: float = 7 * 24 * 3600.0
    #: Members whose heartbeat is older than this (and who lead nothing) are pruned.
    members_retention: float = 3600.0
    #: How followers wait. "block": each group on its own connection, blocked
    #: in pg_advisory_lock, woken the moment a leader's session ends (crash
    #: failover in milliseconds, one connection per group). "poll": one
    #: connection per process holds every lock it leads; followers try the
    #: free groups in one statement every poll_interval, sooner on NOTIFY
    #: (crash failover bounded by poll_interval). "auto": poll above
    #: poll_threshold groups.
    wait: Literal["auto", "block", "poll"] = "auto"
    poll_interval: float = 1.0
    poll_threshold: int = 20
    #: Poll mode: hand leaderships above the fair share (groups / live members) over.
    fair_spread: bool = False

    def __post_init__(self) -> None:
        if not self.dsn or not isinstance(self.dsn, str):
            raise ConfigurationError(
                "no database given: pass a DSN (--dsn or COORDINATOR_DSN), "
                "e.g. postgresql://user:password@host:5432/dbname"
            )
        if (
            not self.instance_id
            or len(self.instance_id) > 200
            or not self.instance_id.isprintable()
        ):
            raise ConfigurationError(
                f"instance id {self.instance_id!r} is empty, too long or not printable: "
                "use up to 200 printable characters, or leave it unset for host-pid-random"
            )
        problem = dsn_problem(self.dsn)
        if problem is not None:
            raise ConfigurationError(problem)
        if self.heartbeat_timeout == 0 and isinstance(self.heartbeat_interval, int | float):
            object.__setattr__(self, "heartbeat_timeout", min(self.heartbeat_interval, 5.0))
        for name, (low, high, why) in _SECONDS_BOUNDS.items():
            check_seconds(name, getattr(self, name), low, high, why)
        if self.wait not in ("auto", "block", "poll"):
            raise ConfigurationError(f"wait must be 'auto', 'block' or 'poll', got {self.wait!r}")
        if (
            isinstance(self.poll_threshold, bool)
            or not isinstance(self.poll_threshold, int)
            or not 1 <= self.poll_threshold <= _MAX_GROUPS
        ):
            raise ConfigurationError(
                f"poll_threshold must be a whole number of groups from 1 to {_MAX_GROUPS}, "
                f"got {self.poll_threshold!r}"
            )
        if self.reconnect_min > self.reconnect_max:
            raise ConfigurationError("reconnect_min must not exceed reconnect_max")
        cycle = self.heartbeat_interval + self.heartbeat_timeout
        if self.ttl <= cycle:
            raise ConfigurationError(
                f"ttl ({self.ttl:g} s) must be greater than heartbeat interval plus heartbeat "
                f"timeout ({self.heartbeat_interval:g} + {self.heartbeat_timeout:g} s): raise the "
                "ttl or shorten the heartbeat, or a healthy leader would be fenced"
            )
        if self.safety_margin is None:
            object.__setattr__(self, "safety_margin", min(1.0, (self.ttl - cycle) / 2))
        elif (
            not isinstance(self.safety_margin, int | float)
            or not 0 <= self.safety_margin < self.ttl - cycle
        ):
            raise ConfigurationError(
                f"safety_margin ({self.safety_margin:g} s) must be at least 0 and less than "
                f"ttl - heartbeat interval - heartbeat timeout ({self.ttl - cycle:g} s)"
            )
        if self.monitor_interval is None:
            object.__setattr__(self, "monitor_interval", self.heartbeat_interval)
        else:
            check_seconds("monitor_interval", self.monitor_interval, *_INTERVAL)
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(
                f"schema {self.schema!r} is not a plain lower-case SQL identifier: "
                "use letters, digits and underscores, e.g. 'coordinator'"
            )
        if (
            isinstance(self.lock_namespace, bool)
            or not isinstance(self.lock_namespace, int)
            or not 0 <= self.lock_namespace <= 0x7FFF_FFFF
        ):
            raise ConfigurationError(
                f"lock_namespace {self.lock_namespace} must be a non-negative 32-bit integer"
            )

    @property
    def trust_window(self) -> float:
        """How long a successful heartbeat keeps this instance trusting its leadership."""
        assert self.safety_margin is not None  # set in __post_init__
        return self.ttl - self.safety_margin

    def polls(self, groups: int) -> bool:
        """Whether ``groups`` groups share one session (poll mode) under this configuration."""
        return self.wait == "poll" or (self.wait == "auto" and groups > self.poll_threshold)

    def reconnect_delay(self, failures: int) -> float:
        """Full jitter, growing with consecutive failures, between the reconnect bounds."""
        return backoff_delay(failures, self.reconnect_min, self.reconnect_max)

    @property
    def office_wait(self) -> float:
        """How long one attempt to take office may wait for fenced transactions.

        At most half the trust window, so that a leader never starts a term
        whose first heartbeat is already close to expiry.
        """
        return min(self.take_office_timeout, self.trust_window / 2)

    @property
    def resign_timeout(self) -> float:
        """How long a resignation may take: one statement, plus its wait for fenced transactions."""
        return self.heartbeat_timeout + self.office_wait

    @property
    def connection(self) -> ConnectionOptions:
        """How this coordinator opens its connections."""
        return ConnectionOptions(
            dsn=self.dsn,
            connect_timeout=self.connect_timeout,
            application_name=self.application_name,
            user_timeout=self.ttl,
        )

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    @property
    def application_name(self) -> str:
        return f"coordinator:{self.instance_id}"[:63]


def check_seconds(name: str, value: object, low: float, high: float, why: str) -> None:
    """One line naming the setting, its bounds and the value given."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ConfigurationError(
            f"{name} must be from {_duration(low)} to {_duration(high)}"
            + (f" ({why})" if why else "")
            + f", got {value!r}"
        )


def _duration(seconds: float) -> str:
    if seconds >= _DAY and seconds % _DAY == 0:
        days = seconds / _DAY
        return f"{days:g} day" + ("s" if days != 1 else "")
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"
