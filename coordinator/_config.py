"""Coordinator settings: frozen, keyword-only, validated at construction.

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

from coordinator._dsn import redact_dsn
from coordinator._errors import ConfigurationError
from coordinator._keys import DEFAULT_LOCK_NAMESPACE

__all__ = ["CoordinatorConfig", "default_instance_id"]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_instance_id() -> str:
    """``host-pid-random``: unique per run, readable in ``pg_stat_activity``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


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
    #: Events older than this are pruned.
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
        if self.heartbeat_timeout == 0 and isinstance(self.heartbeat_interval, int | float):
            object.__setattr__(self, "heartbeat_timeout", min(self.heartbeat_interval, 5.0))
        for name in (
            "ttl",
            "heartbeat_interval",
            "heartbeat_timeout",
            "connect_timeout",
            "reconnect_min",
            "reconnect_max",
            "callback_timeout",
            "take_office_timeout",
            "events_retention",
            "members_retention",
            "poll_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        if self.wait not in ("auto", "block", "poll"):
            raise ConfigurationError(f"wait must be 'auto', 'block' or 'poll', got {self.wait!r}")
        if self.poll_threshold < 1:
            raise ConfigurationError("poll_threshold must be at least 1 group")
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
        elif not 0 <= self.safety_margin < self.ttl - cycle:
            raise ConfigurationError(
                f"safety_margin ({self.safety_margin:g} s) must be at least 0 and less than "
                f"ttl - heartbeat interval - heartbeat timeout ({self.ttl - cycle:g} s)"
            )
        if self.monitor_interval is None:
            object.__setattr__(self, "monitor_interval", self.heartbeat_interval)
        elif self.monitor_interval <= 0:
            raise ConfigurationError("monitor_interval must be a positive number of seconds")
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(
                f"schema {self.schema!r} is not a plain lower-case SQL identifier: "
                "use letters, digits and underscores, e.g. 'coordinator'"
            )
        if not 0 <= self.lock_namespace <= 0x7FFF_FFFF:
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
        ceiling = min(self.reconnect_max, self.reconnect_min * 2 ** min(failures, 16))
        return random.uniform(self.reconnect_min, ceiling)

    @property
    def office_wait(self) -> float:
        """How long one attempt to take office may wait for fenced transactions.

        At most half the trust window, so that a leader never starts a term
        whose first heartbeat is already close to expiry.
        """
        return min(self.take_office_timeout, self.trust_window / 2)

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    @property
    def application_name(self) -> str:
        return f"coordinator:{self.instance_id}"[:63]
