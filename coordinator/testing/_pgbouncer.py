"""A throwaway PgBouncer in front of a PostgreSQL server, in a chosen pool mode.

PgBouncer refuses to run as root, so when this process is root it runs as
the same system user as :class:`LocalPostgres` (``-u``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from coordinator.testing._managed import Managed
from coordinator.testing._postgres import _free_port, _server_user

__all__ = ["PgBouncer"]

PoolMode = Literal["session", "transaction", "statement"]

_READY_TIMEOUT = 30.0


class PgBouncer(Managed):
    """PgBouncer listening on 127.0.0.1, forwarding every database to one server.

    Clients are trusted; PgBouncer logs in to the server with ``user`` and
    ``password``. :meth:`dsn` rewrites a server DSN to go through it.
    """

    def __init__(
        self,
        server_host: str,
        server_port: int,
        *,
        pool_mode: PoolMode,
        user: str = "postgres",
        password: str = "",
    ) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).is_file():
            raise FileNotFoundError("pgbouncer is not installed: apt-get install pgbouncer")
        self._binary = binary
        self._target = (server_host, server_port)
        self._pool_mode = pool_mode
        self._user = user
        self._password = password
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        user = _server_user()
        self._dir = Path(tempfile.mkdtemp(prefix="pg-coordinator-bouncer-"))
        self.port = _free_port()
        host, port = self._target
        (self._dir / "userlist.txt").write_text(f'"{self._user}" ""\n')
        (self._dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port} user={self._user} password={self._password}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir =\nauth_type = trust\nauth_file = {self._dir / 'userlist.txt'}\n"
            f"pool_mode = {self._pool_mode}\n"
            f"logfile = {self._dir / 'pgbouncer.log'}\n"
            "max_client_conn = 500\ndefault_pool_size = 50\n"
        )
        command = [self._binary]
        if user is not None:
            shutil.chown(self._dir, user.pw_uid, user.pw_gid)
            for path in self._dir.iterdir():
                shutil.chown(path, user.pw_uid, user.pw_gid)
            command += ["-u", user.pw_name]
        command.append(str(self._dir / "pgbouncer.ini"))
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                self.close()
                raise RuntimeError(f"pgbouncer did not start: {stderr.strip()}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def dsn(self, database: str) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()
        self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
