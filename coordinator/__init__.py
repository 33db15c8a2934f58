"""pg-coordinator: leader election for applications that already run on PostgreSQL.

Replicas elect one leader per named group through a session-level advisory
lock; a heartbeat table records liveness; every instance's monitor fences
stale leaders; anyone can ``SELECT`` who leads from ``coordinator.leader_status``.

Every public name is imported from its module on first use, so that a
command such as ``coordinator probe`` loads neither asyncpg nor APScheduler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator._config import ConnectionOptions, CoordinatorConfig, default_instance_id
    from coordinator._coordinator import Coordinator
    from coordinator._dsn import redact_dsn
    from coordinator._elector import Role
    from coordinator._errors import (
        ConfigurationError,
        ConnectionFailed,
        CoordinatorError,
        KeyCollisionError,
        LoginRefused,
        MigrationError,
        NotLeader,
        SchemaNotMigrated,
        StaleTerm,
        SwitchoverFailed,
        TermExhausted,
        UnsupportedDatabase,
    )
    from coordinator._fencing import FencedTransaction
    from coordinator._group import Group, Leadership
    from coordinator._health import Health, ReadyWhen, Verdict
    from coordinator._jobs import HEARTBEAT_JOB_ID, MONITOR_JOB_ID
    from coordinator._keys import DEFAULT_LOCK_NAMESPACE, group_lock_key
    from coordinator._migrations import migrate
    from coordinator._observe import LeadershipEvent, observe, read_history
    from coordinator._signals import Demoted, Elected, Fenced, HeartbeatDone, Listener, Signal
    from coordinator._status import GroupStatus, MemberStatus, read_members, read_status
    from coordinator._switchover import HandOver, request_switchover
    from coordinator._term import DemotionReason
    from coordinator._timetable import JobStatus, read_jobs

__all__ = [
    "DEFAULT_LOCK_NAMESPACE",
    "HEARTBEAT_JOB_ID",
    "MONITOR_JOB_ID",
    "ConfigurationError",
    "ConnectionFailed",
    "ConnectionOptions",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorError",
    "Demoted",
    "DemotionReason",
    "Elected",
    "Fenced",
    "FencedTransaction",
    "Group",
    "GroupStatus",
    "HandOver",
    "Health",
    "HeartbeatDone",
    "JobStatus",
    "KeyCollisionError",
    "Leadership",
    "LeadershipEvent",
    "Listener",
    "LoginRefused",
    "MemberStatus",
    "MigrationError",
    "NotLeader",
    "ReadyWhen",
    "Role",
    "SchemaNotMigrated",
    "Signal",
    "StaleTerm",
    "SwitchoverFailed",
    "TermExhausted",
    "UnsupportedDatabase",
    "Verdict",
    "default_instance_id",
    "group_lock_key",
    "migrate",
    "observe",
    "read_history",
    "read_jobs",
    "read_members",
    "read_status",
    "redact_dsn",
    "request_switchover",
]

#: The private module each public name lives in.
_HOMES = {
    "CoordinatorConfig": "_config",
    "default_instance_id": "_config",
    "ConnectionOptions": "_config",
    "HEARTBEAT_JOB_ID": "_jobs",
    "MONITOR_JOB_ID": "_jobs",
    "Coordinator": "_coordinator",
    "redact_dsn": "_dsn",
    "ConfigurationError": "_errors",
    "ConnectionFailed": "_errors",
    "CoordinatorError": "_errors",
    "KeyCollisionError": "_errors",
    "LoginRefused": "_errors",
    "MigrationError": "_errors",
    "NotLeader": "_errors",
    "SchemaNotMigrated": "_errors",
    "StaleTerm": "_errors",
    "SwitchoverFailed": "_errors",
    "HandOver": "_switchover",
    "request_switchover": "_switchover",
    "TermExhausted": "_errors",
    "UnsupportedDatabase": "_errors",
    "FencedTransaction": "_fencing",
    "DemotionReason": "_term",
    "Group": "_group",
    "Leadership": "_group",
    "Role": "_elector",
    "Health": "_health",
    "ReadyWhen": "_health",
    "Verdict": "_health",
    "DEFAULT_LOCK_NAMESPACE": "_keys",
    "group_lock_key": "_keys",
    "migrate": "_migrations",
    "LeadershipEvent": "_observe",
    "observe": "_observe",
    "read_history": "_observe",
    "Demoted": "_signals",
    "Elected": "_signals",
    "Fenced": "_signals",
    "HeartbeatDone": "_signals",
    "Listener": "_signals",
    "Signal": "_signals",
    "GroupStatus": "_status",
    "MemberStatus": "_status",
    "read_members": "_status",
    "read_status": "_status",
    "JobStatus": "_timetable",
    "read_jobs": "_timetable",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"coordinator.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
