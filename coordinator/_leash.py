"""The leash: a small process between ``coordinator run --exec`` and the command it runs.

The instance itself can be frozen (SIGSTOP, a stalled VM, a blocked event
loop) or killed, and the command must not outlive its leadership either way.
So the command is held by a process of its own that judges for itself:

* The instance writes ``until DEADLINE`` on the leash's stdin after every
  heartbeat: the ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in
  every process of the machine) the term is trusted until. When it passes
  without a newer one, the leash SIGKILLs the command at once: at the moment
  the instance would demote itself, so before any other instance may fence
  it and take office.
* End of file on stdin means the instance is gone (its pipes close when it is
  killed): SIGKILL the command.
* ``stop GRACE``: SIGTERM, up to GRACE seconds, then SIGKILL.

The command runs in a session of its own, so that the signals reach its whole
process group (a shell's children too), and with ``PR_SET_PDEATHSIG`` set to
SIGKILL, so that it dies if the leash itself is killed. Its stdin is
``/dev/null``; stdout and stderr are the instance's. The leash exits with the
command's status, or 128 + the signal number that ended it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from coordinator._logging import configure_logging, get_logger

__all__ = ["main"]

log = get_logger("coordinator.exec")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_format)
    # The instance decides when the command stops; a signal meant for it
    # (a terminal's ^C, a whole process group) must not end the leash first.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    orders = _Orders(args.deadline)
    orders.catch_up()
    if orders.gone or orders.stop is not None or orders.deadline <= time.monotonic():
        log.warning("exec_child_not_started", reason="the leadership ended first")
        return 1
    try:
        child = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )
    except OSError as error:
        log.error("exec_failed", command=args.command[0], error=f"{type(error).__name__}: {error}")
        return 127
    log.info("exec_child_started", pid=child.pid, command=args.command[0])
    pidfd = os.pidfd_open(child.pid)
    try:
        _hold(child, pidfd, orders)
    finally:
        # Until it is reaped, the ended child keeps its process group's id: anything
        # it left behind in the group goes with it.
        _signal_group(child, signal.SIGKILL)
        os.close(pidfd)
    code = child.wait()
    return code if code >= 0 else 128 - code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coordinator._leash")
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    parser.add_argument("command", nargs="+")
    return parser


def _die_with(parent: int) -> Callable[[], None]:
    """In the child before exec: get SIGKILL when the leash dies (also if it already has)."""

    def preexec() -> None:
        # Ignored signals would stay ignored across exec (and a shell could not trap them).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _Orders:
    """The instance's lines on stdin: ``until DEADLINE`` and ``stop GRACE``; EOF: it is gone."""

    def __init__(self, deadline: float) -> None:
        self.fd = sys.stdin.fileno()
        self.deadline = deadline
        self.stop: float | None = None
        self.gone = False
        self._pending = b""

    def read(self) -> None:
        """Take in what has arrived; call it when stdin is readable."""
        chunk = os.read(self.fd, 4096)
        if not chunk:
            self.gone = True
            return
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            order, _, value = line.decode().partition(" ")
            if order == "until":
                self.deadline = float(value)
            elif order == "stop":
                self.stop = float(value)

    def catch_up(self) -> None:
        """Everything that queued while this process started, before the deadline is judged."""
        while not self.gone and select.select([self.fd], [], [], 0)[0]:
            self.read()


def _hold(child: subprocess.Popen[bytes], pidfd: int, orders: _Orders) -> None:
    """Follow the instance's orders until the child ends, killing it when they stop coming."""
    with selectors.DefaultSelector() as selector:
        selector.register(pidfd, selectors.EVENT_READ)
        selector.register(orders.fd, selectors.EVENT_READ)
        while True:
            if orders.gone:
                _kill(child, pidfd, "instance_gone")
                return
            if orders.stop is not None:
                _stop(child, pidfd, grace=orders.stop, deadline=orders.deadline)
                return
            ready = selector.select(max(0.0, orders.deadline - time.monotonic()))
            if not ready and time.monotonic() >= orders.deadline:
                _kill(child, pidfd, "trust_expired")
                return
            for key, _ in ready:
                if key.fd == pidfd:
                    return  # ended on its own
                orders.read()


def _stop(child: subprocess.Popen[bytes], pidfd: int, *, grace: float, deadline: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, or sooner if the trust deadline is nearer."""
    if grace > 0:
        _signal_group(child, signal.SIGTERM)
        if _ended(pidfd, min(grace, deadline - time.monotonic())):
            return
    _kill(child, pidfd, "grace_over" if grace > 0 else "leadership_lost")


def _kill(child: subprocess.Popen[bytes], pidfd: int, reason: str) -> None:
    _signal_group(child, signal.SIGKILL)
    _ended(pidfd, None)
    # The moment it was dead, on the clock every process of this machine shares.
    log.warning("exec_child_killed", pid=child.pid, reason=reason, dead_at=time.monotonic())


def _ended(pidfd: int, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: for ever) for the child to end, without reaping it."""
    readable, _, _ = select.select([pidfd], [], [], None if timeout is None else max(0.0, timeout))
    return bool(readable)


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(child.pid, signum)


if __name__ == "__main__":
    sys.exit(main())
