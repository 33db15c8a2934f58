"""The peers' servers: ZooKeeper, etcd and Redis, each on loopback in a temporary directory.

``bench/setup.sh`` installs them from Debian; here each is started as a
child of the benchmark with its own data directory and a port the kernel
picked, waited for until it answers, and stopped (and its directory
removed) when the ``with`` block ends. The distribution's services and
configuration files are never used.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Servers", "peer_servers"]

_ZOOKEEPER_CLASSPATH = "/usr/share/java/zookeeper.jar:/etc/zookeeper/conf"
_JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
_START_S = 60.0
_POLL_S = 0.1


@dataclass(frozen=True)
class Servers:
    """Where each server listens, and what it is."""

    zookeeper: str  # host:port
    etcd: str  # host:port of the client URL (gRPC and its JSON gateway on one port)
    redis: str  # host:port
    #: By server name (ZooKeeper, etcd, Redis, Java): the Debian package's version.
    versions: dict[str, str]


@contextlib.contextmanager
def peer_servers() -> Iterator[Servers]:
    """Start all three; stop them afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pg-coordinator-bench-servers-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        zookeeper = _zookeeper(root / "zookeeper", processes)
        etcd = _etcd(root / "etcd", processes)
        redis = _redis(root / "redis", processes)
        yield Servers(zookeeper, etcd, redis, _versions())
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _zookeeper(directory: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    """A standalone ZooKeeper with the default tickTime (2000 ms: sessions of 4-40 s)."""
    (directory / "data").mkdir(parents=True)
    port = _free_port()
    config = directory / "zoo.cfg"
    config.write_text(
        "tickTime=2000\n"
        f"dataDir={directory / 'data'}\n"
        f"clientPort={port}\n"
        "clientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\n"
        "4lw.commands.whitelist=ruok\n"
    )
    _start(
        [
            _JAVA,
            "-Xmx256m",
            f"-Dzookeeper.log.dir={directory}",
            "-cp",
            _ZOOKEEPER_CLASSPATH,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(config),
        ],
        directory,
        processes,
    )
    _wait("ZooKeeper", directory, lambda: _ask(port, b"ruok") == b"imok")
    return f"127.0.0.1:{port}"


def _etcd(directory: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    directory.mkdir(parents=True)
    client, peer = _free_port(), _free_port()
    _start(
        [
            "etcd",
            "--name",
            "bench",
            "--data-dir",
            str(directory / "data"),
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"bench=http://127.0.0.1:{peer}",
        ],
        directory,
        processes,
    )
    _wait("etcd", directory, lambda: b'"true"' in _get(f"http://127.0.0.1:{client}/health"))
    return f"127.0.0.1:{client}"


def _redis(directory: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    directory.mkdir(parents=True)
    port = _free_port()
    _start(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        directory,
        processes,
    )
    _wait("Redis", directory, lambda: _ask(port, b"PING\r\n").startswith(b"+PONG"))
    return f"127.0.0.1:{port}"


def _start(argv: Sequence[str], directory: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    with open(directory / "server.log", "ab") as log:
        processes.append(
            subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        )


def _wait(name: str, directory: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _START_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(_POLL_S)
    tail = (directory / "server.log").read_text(errors="replace").splitlines()[-15:]
    raise RuntimeError(f"{name} did not answer within {_START_S:g} s:\n" + "\n".join(tail))


def _ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
        conn.sendall(request)
        return conn.recv(64)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=1) as response:
        body: bytes = response.read()
        return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _versions() -> dict[str, str]:
    def package(name: str) -> str:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True
        )
        version = out.stdout.strip().split(":", 1)[-1]  # without the Debian epoch ("5:")
        return version or "unknown"

    return {
        "ZooKeeper": f"{package('zookeeper')} (Debian zookeeper)",
        "etcd": f"{package('etcd-server')} (Debian etcd-server)",
        "Redis": f"{package('redis-server')} (Debian redis-server)",
        "Java": f"{package('openjdk-17-jre-headless')} (Debian openjdk-17-jre-headless)",
    }
