"""``coordinator run --exec -- CMD ARGS...``: a command that runs only while this instance leads.

On election the command starts with ``COORDINATOR_GROUP``, ``COORDINATOR_TERM``,
``COORDINATOR_INSTANCE_ID`` and ``COORDINATOR_SCHEMA`` in its environment: the
term is its fencing token, to pass to ``SELECT coordinator.assert_term(group,
term)`` at the start of its own transactions, on its own connection, with no
DSN from the coordinator. On a graceful hand-over (SIGTERM to the instance,
a resign) it gets SIGTERM, then SIGKILL after the grace period, before the
lock is released. On a lost leadership it gets SIGKILL at once: the lock may
already be someone else's. If it exits on its own, the exit code is logged and
the instance resigns, or starts it again in the same term (``restart``).

The command is held by :mod:`coordinator._leash`, a process that kills it at
the trust deadline even when this instance is frozen, and when this instance
dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Sequence

from coordinator._coordinator import Coordinator
from coordinator._errors import ConfigurationError
from coordinator._group import Group
from coordinator._logging import LogFormat, get_logger
from coordinator._signals import HeartbeatDone, Signal
from coordinator._term import GRACEFUL

__all__ = ["LeaderCommand", "add_exec_options", "leader_command"]

log = get_logger("coordinator.exec")

_GRACEFUL = {reason.value for reason in GRACEFUL}


class LeaderCommand:
    """Runs ``command`` while ``coordinator`` leads ``group``; one command per group."""

    def __init__(
        self,
        coordinator: Coordinator,
        group: Group,
        command: Sequence[str],
        *,
        grace: float,
        restart: bool = False,
        log_format: LogFormat = "console",
    ) -> None:
        timeout = coordinator.config.callback_timeout
        if not 0 <= grace < timeout:
            raise ConfigurationError(
                f"the exec grace period ({grace:g} s) must be at least 0 and shorter than "
                f"callback_timeout ({timeout:g} s), or the lock could be handed over while the "
                "command still runs: lower --exec-grace or raise --callback-timeout"
            )
        if not command:
            raise ConfigurationError("--exec needs a command: coordinator run ... --exec -- CMD")
        if shutil.which(command[0]) is None:
            raise ConfigurationError(
                f"--exec: command {command[0]!r} is not found or not executable: give its path, "
                "or install it on this host's PATH"
            )
        self._group = group
        self._command = list(command)
        self._grace = grace
        self._restart = restart
        self._log_format = log_format
        self._env = {
            "COORDINATOR_GROUP": group.name,
            "COORDINATOR_INSTANCE_ID": coordinator.instance_id,
            "COORDINATOR_SCHEMA": coordinator.config.schema,
        }
        self._leash: asyncio.subprocess.Process | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._log = log.bind(group=group.name)
        group.on_elected(self._start)
        group.on_demoted(self._stop)
        coordinator.add_listener(self._heard)

    async def _start(self, term: int) -> None:
        deadline = self._group.trusted_until
        if deadline is None:
            return  # the term ended before its callbacks ran
        leash = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "coordinator._leash",
            "--deadline",
            repr(deadline),
            "--log-format",
            self._log_format,
            "--",
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            env={**os.environ, **self._env, "COORDINATOR_TERM": str(term)},
        )
        self._leash = leash
        watcher = asyncio.create_task(self._watch(leash, term), name="coordinator-exec")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _stop(self, reason: str) -> None:
        leash, self._leash = self._leash, None
        if leash is None:
            return
        grace = self._grace if reason in _GRACEFUL else 0.0
        self._order(leash, f"stop {grace!r}")
        code = await leash.wait()
        self._log.info("exec_child_stopped", exit_code=code, reason=reason)

    async def _watch(self, leash: asyncio.subprocess.Process, term: int) -> None:
        """When the command ends while its leadership goes on: resign, or start it again."""
        code = await leash.wait()
        if self._leash is not leash:
            return  # stopped by _stop, which logs it
        self._leash = None
        leading = self._group.term == term
        then = ("restart" if self._restart else "resign") if leading else "none"
        self._log.warning("exec_child_exited", exit_code=code, term=term, then=then)
        if then == "restart":
            await self._start(term)
        elif then == "resign":
            # Asked for, not awaited: the hand-over's on_demoted ends this watch's leash.
            self._resigning = asyncio.create_task(self._group.resign())

    def _heard(self, signal: Signal) -> None:
        """After a heartbeat, hand the leash the deadline it may have moved."""
        if isinstance(signal, HeartbeatDone) and self._leash is not None:
            # The group applies the heartbeat right after emitting the signal.
            asyncio.get_running_loop().call_soon(self._renew)

    def _renew(self) -> None:
        deadline = self._group.trusted_until
        if deadline is not None and self._leash is not None:
            self._order(self._leash, f"until {deadline!r}")

    @staticmethod
    def _order(leash: asyncio.subprocess.Process, line: str) -> None:
        assert leash.stdin is not None
        with contextlib.suppress(ConnectionError):  # it has ended; its watcher says so
            leash.stdin.write(f"{line}\n".encode())


def add_exec_options(parser: argparse.ArgumentParser) -> None:
    """``--exec -- CMD ARGS...`` and its two options, for ``coordinator run``."""
    parser.usage = "%(prog)s [options] [--exec -- CMD ARGS...]"
    parser.add_argument(
        "--exec",
        action="store_true",
        help="run the command after -- only while this instance leads its one --group",
    )
    parser.add_argument("exec_command", nargs="*", metavar="-- CMD ARGS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--exec-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on a graceful hand-over, SIGKILL the command this long after SIGTERM (default: 5)",
    )
    parser.add_argument(
        "--exec-restart",
        action="store_true",
        help="start the command again when it exits on its own, instead of resigning",
    )


def leader_command(coordinator: Coordinator, args: argparse.Namespace) -> LeaderCommand | None:
    """The :class:`LeaderCommand` that ``--exec`` asks for, if it does."""
    if not args.exec:
        if args.exec_command:
            raise ConfigurationError(
                f"unexpected argument {args.exec_command[0]!r}: to run a command while leading, "
                "put it after --exec --, as in: coordinator run --group NAME --exec -- CMD ARGS"
            )
        return None
    command = args.exec_command
    groups = list(coordinator.groups.values())
    if len(groups) != 1:
        raise ConfigurationError(
            f"--exec runs one command for one group, and {len(groups)} groups are given: "
            "pass exactly one --group (run one instance per command)"
        )
    return LeaderCommand(
        coordinator,
        groups[0],
        command,
        grace=args.exec_grace,
        restart=args.exec_restart,
        log_format=args.log_format,
    )
