"""One ``coordinator run`` instance as a real OS process, with its JSON log followed live.

A real process is what fault tests need: SIGKILL, SIGSTOP and SIGTERM act
on it exactly as an orchestrator's would, which no in-process fake can do.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from coordinator.testing._managed import Managed

__all__ = ["CoordinatorProcess"]

_TAIL_LINES = 20
_READER_JOIN_TIMEOUT = 10.0


class CoordinatorProcess(Managed):
    """Runs ``python -m coordinator run ... --log-format json`` and collects its log records.

    Each stdout line becomes a record: the parsed JSON object, or
    ``{"event": <line>, "raw": True}`` when the line is not one. Stderr lines
    (warnings, tracebacks) are kept as ``{"event": <line>, "raw": True,
    "stream": "stderr"}``, so error messages can show them in order.
    """

    def __init__(
        self,
        dsn: str,
        groups: Sequence[str],
        *,
        instance_id: str,
        ttl: float | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._instance_id = instance_id
        args = [sys.executable, "-m", "coordinator", "run", "--dsn", dsn]
        for group in groups:
            args += ["--group", group]
        args += ["--instance-id", instance_id]
        for option, value in (
            ("--ttl", ttl),
            ("--heartbeat-interval", heartbeat_interval),
            ("--heartbeat-timeout", heartbeat_timeout),
        ):
            if value is not None:
                args += [option, str(float(value))]
        self._args = [*args, "--log-format", "json", *extra_args]
        # Unbuffered, so that each record arrives when it is logged, not when a buffer fills.
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()
        self._records: list[dict[str, Any]] = []
        self._lines: list[str] = []
        self._consumed: set[int] = set()
        self._output_ended = False

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self._instance_id} is already started")
        self._process = subprocess.Popen(
            self._args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env,
        )
        self._reader = threading.Thread(
            target=self._read_output,
            args=(self._process,),
            name=f"CoordinatorProcess-{self._instance_id}",
            daemon=True,
        )
        self._reader.start()

    def wait_for(self, event: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """The first record not yet returned by ``wait_for`` with ``event`` and ``fields``.

        Waits up to ``timeout`` seconds (0: only look at what arrived); raises
        TimeoutError, carrying the last log lines, if none comes in time or
        the process's output ends first.
        """
        self._started()
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index, record in enumerate(self._records):
                    if index not in self._consumed and _matches(record, event, fields):
                        self._consumed.add(index)
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._output_ended:
                    wanted = ", ".join([repr(event), *(f"{k}={v!r}" for k, v in fields.items())])
                    why = "its output ended" if self._output_ended else f"{timeout:g} s passed"
                    raise TimeoutError(self._describe(f"no record ({wanted}) before {why}"))
                self._changed.wait(remaining)

    def records(self) -> list[dict[str, Any]]:
        """Every record so far, in order, whether or not ``wait_for`` returned it."""
        with self._changed:
            return list(self._records)

    def kill(self) -> None:
        self._started().kill()

    def freeze(self) -> None:
        """SIGSTOP: the process stops in its tracks, sockets open, as a long GC pause would."""
        self._started().send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._started().send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        self._started().terminate()

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the process has ended; TimeoutError if it runs on."""
        try:
            return self._started().wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(self._describe(f"still running after {timeout:g} s")) from None

    def close(self) -> None:
        """SIGKILL it unless it has ended, reap it and collect the rest of its output."""
        process, reader = self._process, self._reader
        if process is None or reader is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(_READER_JOIN_TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __repr__(self) -> str:
        pid = self._process.pid if self._process is not None else "not started"
        return f"<CoordinatorProcess {self._instance_id} pid {pid}>"

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"{self._instance_id} is not started")
        return self._process

    def _describe(self, problem: str) -> str:
        process = self._started()
        code = process.poll()
        state = "running" if code is None else f"exited with code {code}"
        with self._changed:
            tail = "\n".join(self._lines[-_TAIL_LINES:]) or "(no output)"
        return (
            f"{self._instance_id} (pid {process.pid}, {state}): {problem}; "
            f"its last log lines:\n{tail}"
        )

    def _read_output(self, process: subprocess.Popen[bytes]) -> None:
        """Split both pipes into lines, in one thread, until both reach their end."""
        pending: dict[int, bytes] = {}
        with selectors.DefaultSelector() as selector:
            for stream, from_stderr in ((process.stdout, False), (process.stderr, True)):
                assert stream is not None
                selector.register(stream, selectors.EVENT_READ, from_stderr)
                pending[stream.fileno()] = b""
            while selector.get_map():
                for key, _ in selector.select():
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        *lines, pending[key.fd] = (pending[key.fd] + chunk).split(b"\n")
                    else:
                        selector.unregister(key.fileobj)
                        lines = [pending[key.fd]]
                    self._add(lines, from_stderr=key.data)
        with self._changed:
            self._output_ended = True
            self._changed.notify_all()

    def _add(self, lines: list[bytes], *, from_stderr: bool) -> None:
        texts = [text for line in lines if (text := line.decode(errors="replace").rstrip())]
        if not texts:
            return
        records = [_parse(text, from_stderr=from_stderr) for text in texts]
        with self._changed:
            self._lines += texts
            self._records += records
            self._changed.notify_all()


def _parse(text: str, *, from_stderr: bool) -> dict[str, Any]:
    if from_stderr:
        return {"event": text, "raw": True, "stream": "stderr"}
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return record
    return {"event": text, "raw": True}


def _matches(record: dict[str, Any], event: str, fields: Mapping[str, Any]) -> bool:
    return record.get("event") == event and all(
        name in record and record[name] == value for name, value in fields.items()
    )
