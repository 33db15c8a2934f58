"""What each elector costs at rest: connections, statements per second, CPU.

Three instances of each system idle side by side, each system in its own
database, for one window:

* **connections**: ``pg_stat_activity`` rows whose client port is one of
  the process's TCP connections to the server (from psutil), so no system
  needs to name its connections.
* **statements per second**: each database has ``log_statement = 'all'``;
  the server log lines (``[backend pid] LOG:  statement:`` or ``execute``)
  written during the window are counted per backend. Every statement a
  client sends is counted once, whether or not it is in a transaction.
* **CPU**: user plus system time of the client process and of its backends
  over the window (psutil), as a percentage of one core.

APScheduler 4's schedule is due once an hour, so its schedulers only keep
their store and broker alive during the window.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]  # ships no type information

from bench import peer_apscheduler, peer_pals
from bench.children import Child
from bench.cluster import Cluster, Member
from bench.database import Database
from bench.ours import Settings, instance
from coordinator import migrate

__all__ = ["Footprint", "measure_overhead"]

_AT_REST_INTERVAL_S = 3600.0
_SETTLE_S = 5.0
_STATEMENT = re.compile(rb"\[(\d+)\] LOG:  (?:statement|execute [^:]*):")


@dataclass(frozen=True)
class Footprint:
    """The mean cost of one process in one role, over the window."""

    system: str
    role: str
    processes: int
    connections: float
    statements_per_s: float
    client_cpu_percent: float
    server_cpu_percent: float


@dataclass
class _Subject:
    system: str
    role: str
    child: Child
    backends: list[int]
    cpu: float = 0.0
    server_cpu: float = 0.0


async def measure_overhead(
    server_db: Database,
    databases: dict[str, Database],
    pals_python: Path,
    apscheduler_python: Path,
    window: float,
    log_dir: Path,
    *,
    instances: int = 3,
) -> list[Footprint]:
    """Idle ``instances`` of each system for ``window`` seconds and read what they used.

    ``databases`` maps "ours", "pals" and "apscheduler" to fresh databases;
    ``server_db`` is any other database, for the observer's own connection.
    """
    for db in databases.values():
        await db.execute(f"ALTER DATABASE \"{db.name}\" SET log_statement = 'all'")
    await migrate(databases["ours"].dsn)

    async def ours(name: str) -> Member:
        child = instance(databases["ours"], name, Settings(), log_dir)
        await child.start()
        return Member(child)

    async def pals(name: str) -> Member:
        child = peer_pals.leader(databases["pals"], pals_python, name, log_dir)
        await child.start()
        return Member(child)

    clusters = {
        "pg-coordinator": Cluster(databases["ours"], instances, "idle-ours", ours, 0.0),
        "pals": Cluster(databases["pals"], instances, "idle-pals", pals, 0.0),
    }
    schedulers: list[Child] = []
    try:
        for cluster in clusters.values():
            await cluster.start()
        for n in range(instances):
            child = peer_apscheduler.scheduler(
                databases["apscheduler"],
                apscheduler_python,
                f"idle-apscheduler-{n + 1}",
                _AT_REST_INTERVAL_S,
                log_dir,
            )
            schedulers.append(child)
            await child.start()
            await child.wait_for("started", peer_apscheduler.START_S)
        await asyncio.sleep(_SETTLE_S)

        subjects = [
            _Subject(system, "leader" if m is cluster.leader else "follower", m.child, [])
            for system, cluster in clusters.items()
            for m in cluster.members
        ]
        subjects += [_Subject("APScheduler 4", "scheduler", c, []) for c in schedulers]
        await _find_backends(server_db, subjects)
        return await _observe(server_db.server.log_path, subjects, window)
    finally:
        for cluster in clusters.values():
            await cluster.close()
        for child in schedulers:
            await child.close()


async def _find_backends(db: Database, subjects: list[_Subject]) -> None:
    """Match each process's TCP connections to the server with ``pg_stat_activity``."""
    conn = await asyncpg.connect(db.dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL"
        )
    finally:
        await conn.close()
    backend_of_port = {row["client_port"]: row["pid"] for row in rows}
    for subject in subjects:
        ports = {
            c.laddr.port
            for c in psutil.Process(subject.child.pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == db.server.port
        }
        subject.backends = [backend_of_port[p] for p in sorted(ports) if p in backend_of_port]


async def _observe(log_path: Path, subjects: list[_Subject], window: float) -> list[Footprint]:
    processes = {s.child.pid: psutil.Process(s.child.pid) for s in subjects}
    processes |= {pid: psutil.Process(pid) for s in subjects for pid in s.backends}
    before = {pid: _cpu(p) for pid, p in processes.items()}
    log_start = await asyncio.to_thread(_size, log_path)
    await asyncio.sleep(window)
    log_end = await asyncio.to_thread(_size, log_path)
    used = {pid: _cpu(p) - before[pid] for pid, p in processes.items()}
    statements = await asyncio.to_thread(_count_statements, log_path, log_start, log_end)

    footprints = []
    roles = dict.fromkeys((s.system, s.role) for s in subjects)
    for system, role in roles:
        group = [s for s in subjects if (s.system, s.role) == (system, role)]
        count = len(group)
        footprints.append(
            Footprint(
                system,
                role,
                count,
                connections=sum(len(s.backends) for s in group) / count,
                statements_per_s=sum(statements[b] for s in group for b in s.backends)
                / count
                / window,
                client_cpu_percent=100 * sum(used[s.child.pid] for s in group) / count / window,
                server_cpu_percent=100
                * sum(used[b] for s in group for b in s.backends)
                / count
                / window,
            )
        )
    return footprints


def _size(path: Path) -> int:
    return path.stat().st_size


def _count_statements(log_path: Path, start: int, end: int) -> Counter[int]:
    """Statements logged between two offsets of the server log, per backend pid."""
    with open(log_path, "rb") as log:
        log.seek(start)
        lines = log.read(end - start).splitlines()
    return Counter(int(match.group(1)) for line in lines if (match := _STATEMENT.search(line)))


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)
