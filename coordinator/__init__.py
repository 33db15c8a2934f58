"""pg-coordinator: leader election for applications that already run on PostgreSQL.

Replicas elect one leader per named group through a session-level advisory
lock; a heartbeat table records liveness; every instance's monitor fences
stale leaders; anyone can ``SELECT`` who leads from ``coordinator.leader_status``.
"""

from coordinator._config import CoordinatorConfig, default_instance_id
from coordinator._coordinator import HEARTBEAT_JOB_ID, MONITOR_JOB_ID, Coordinator
from coordinator._dsn import redact_dsn
from coordinator._errors import (
    ConfigurationError,
    ConnectionFailed,
    CoordinatorError,
    KeyCollisionError,
    MigrationError,
    NotLeader,
    SchemaNotMigrated,
    StaleTerm,
    UnsupportedDatabase,
)
from coordinator._fencing import FencedTransaction
from coordinator._group import DemotionReason, Group, Role
from coordinator._health import Health, ReadyWhen, Verdict
from coordinator._keys import DEFAULT_LOCK_NAMESPACE, group_lock_key
from coordinator._migrations import migrate
from coordinator._observe import LeadershipEvent, observe, read_history
from coordinator._signals import Demoted, Elected, Fenced, HeartbeatDone, Listener, Signal
from coordinator._status import GroupStatus, read_status
from coordinator._timetable import JobStatus, read_jobs

__all__ = [
    "DEFAULT_LOCK_NAMESPACE",
    "HEARTBEAT_JOB_ID",
    "MONITOR_JOB_ID",
    "ConfigurationError",
    "ConnectionFailed",
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
    "Health",
    "HeartbeatDone",
    "JobStatus",
    "KeyCollisionError",
    "LeadershipEvent",
    "Listener",
    "MigrationError",
    "NotLeader",
    "ReadyWhen",
    "Role",
    "SchemaNotMigrated",
    "Signal",
    "StaleTerm",
    "UnsupportedDatabase",
    "Verdict",
    "default_instance_id",
    "group_lock_key",
    "migrate",
    "observe",
    "read_history",
    "read_jobs",
    "read_status",
    "redact_dsn",
]
