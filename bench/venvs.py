"""The peers' own virtual environments, created by the benchmark from the package index.

A peer whose dependencies would clash with ours runs in a venv of its own
under ``bench/`` (APScheduler 4 alpha and SQLAlchemy; pals and psycopg;
python-etcd3, which needs protobuf<4 and tenacity<7). The others (kazoo,
tooz, python-redis-lock) are in the ``bench`` dependency group. A venv is (re)built
only when its requirements change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["APSCHEDULER4", "ETCD3", "PALS", "PeerEnv"]

_BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PeerEnv:
    name: str
    requirements: tuple[str, ...]
    #: Distributions whose installed versions the results quote.
    reported: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return _BENCH / f".venv-{self.name}"

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    def ensure(self) -> None:
        stamp = self.directory / ".requirements"
        wanted = "\n".join(self.requirements)
        if stamp.exists() and stamp.read_text() == wanted and self.python.exists():
            return
        print(f"creating {self.directory.name}: {' '.join(self.requirements)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(self.directory)], check=True)
        pip = [str(self.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *self.requirements], check=True)
        stamp.write_text(wanted)

    def versions(self) -> dict[str, str]:
        script = (
            "import json, sys, importlib.metadata as m; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
        )
        output = subprocess.run(
            [str(self.python), "-c", script, *self.reported],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        versions: dict[str, str] = json.loads(output)
        return versions


APSCHEDULER4 = PeerEnv(
    "apscheduler4",
    # Its asyncpg event broker fails with anyio 4.6 and later (NoEventLoopError).
    ("apscheduler==4.0.0a6", "anyio<4.6", "sqlalchemy[asyncio]>=2.0,<2.1", "asyncpg>=0.29"),
    ("apscheduler", "anyio", "sqlalchemy", "asyncpg"),
)
PALS = PeerEnv(
    "pals",
    ("pals==0.4.0", "psycopg[binary]>=3.1", "sqlalchemy>=2.0,<2.1"),
    ("pals", "psycopg", "sqlalchemy"),
)
ETCD3 = PeerEnv(
    "etcd3",
    # python-etcd3 0.12 (the last release) breaks with protobuf 4 and tenacity 7.
    ("etcd3==0.12.0", "protobuf<4", "tenacity<7"),
    ("etcd3", "grpcio", "protobuf", "tenacity"),
)
