"""A measured process, seen from the driver: start it, fault it, read its reports.

A child is any Python module that reports through :mod:`bench.emit`, run by
any interpreter (ours or a peer's virtual environment). Its stdout is parsed
into records as they arrive; its stderr goes to a log file that error
messages quote, so a failed run says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Child", "Record", "after", "first_record"]

Record = dict[str, Any]
Match = Callable[[Record], bool]

_REPO = Path(__file__).resolve().parent.parent
_TAIL_LINES = 15


class Child:
    """``python -m MODULE ARGS`` as a real process, run from the repository root."""

    def __init__(
        self, name: str, python: Path, module: str, args: Sequence[str], log_dir: Path
    ) -> None:
        self.name = name
        self._argv = [str(python), "-m", module, *args]
        self._log_path = log_dir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._records: list[Record] = []
        self._changed = asyncio.Condition()
        self._ended = False

    async def start(self) -> None:
        with open(self._log_path, "ab") as log:  # noqa: ASYNC230 - a local file, opened at once
            self._process = await asyncio.create_subprocess_exec(
                *self._argv,
                cwd=_REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._reader = asyncio.create_task(self._read(self._process))

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def records(self) -> list[Record]:
        return list(self._records)

    @property
    def ended(self) -> bool:
        """Whether its stdout has closed: it exited, or is about to."""
        return self._ended

    def send(self, signum: signal.Signals) -> None:
        self._started().send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            return await self._started().wait()

    async def wait_for(self, event: str, timeout: float, match: Match | None = None) -> Record:
        """The first record, old or new, of ``event`` that ``match`` accepts."""

        def found() -> Record | None:
            for record in self._records:
                if record.get("event") == event and (match is None or match(record)):
                    return record
            return None

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: found() is not None or self._ended)
        except TimeoutError:
            raise TimeoutError(self.describe(f"no {event!r} within {timeout:g} s")) from None
        record = found()
        if record is None:
            raise RuntimeError(self.describe(f"exited before reporting {event!r}"))
        return record

    def describe(self, problem: str) -> str:
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()[-_TAIL_LINES:]
        except FileNotFoundError:
            lines = []
        tail = "\n".join(lines) or "(no stderr)"
        return f"{self.name}: {problem}; the end of its stderr ({self._log_path}):\n{tail}"

    async def close(self) -> None:
        """SIGCONT and SIGKILL unless it ended; reap it."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            # By pid: Popen.send_signal() would poll, reaping a child that just died
            # behind asyncio's back. Until asyncio reaps it, the pid cannot be reused.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        if self._reader is not None:
            await self._reader

    def _started(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a library printing to stdout is not a report
            if isinstance(record, dict):
                async with self._changed:
                    self._records.append(record)
                    self._changed.notify_all()
        async with self._changed:
            self._ended = True
            self._changed.notify_all()


def after(t: float) -> Match:
    """Accepts the records reported after monotonic time ``t``."""
    return lambda record: float(record["t"]) > t


async def first_record(
    children: Iterable[Child], event: str, timeout: float, match: Match | None = None
) -> tuple[Child, Record]:
    """Whichever of ``children`` first has a record of ``event`` that ``match`` accepts."""
    waits = {
        asyncio.create_task(child.wait_for(event, timeout, match)): child for child in children
    }
    pending = set(waits)
    try:
        while pending:  # each wait ends by itself: a record, its timeout, or its child's exit
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    return waits[task], task.result()
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    names = ", ".join(child.name for child in waits.values())
    raise TimeoutError(f"none of {names} reported {event!r} within {timeout:g} s")
