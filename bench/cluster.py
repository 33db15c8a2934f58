"""A cluster of real elector processes sharing one advisory lock, and one fault at a time.

Any elector whose processes report ``elected`` when they take office (and
``demoted`` when they leave it, if they can) fits. On PostgreSQL (given a
database), each member's sessions carry its name as their
``application_name`` (pg-coordinator prefixes it with ``coordinator:``), so
the driver reads from ``pg_locks`` which member holds the lock, and each
trial waits until one member holds it, has reported taking office last, and
has kept the lock for a settling time, with every other member blocked in
``pg_advisory_lock``. Without a database (ZooKeeper, etcd, Redis) the
reports alone say it: the member that reported ``elected`` last and not
``demoted`` since leads, once every other member has reported
``campaigning`` (it is about to wait) and the settling time has passed.
Then the driver reads the monotonic clock, injects the fault into that
member, and takes the first ``elected`` report made after it:

* ``kill``: SIGKILL; the server ends the session and the lock passes on.
* ``term``: SIGTERM; the process leaves as its library does on shutdown.
* ``stop``: SIGSTOP; sockets stay open and nothing answers.
* ``blackhole``: the member's TCP proxy drops every byte, sockets open.

Killed and terminated leaders are replaced by a fresh process; frozen and
partitioned ones are let go again once they report their demotion, and
rejoin as followers. :meth:`Cluster.hang` is the peers' freeze: it does
not require a takeover, and asks whether the resumed leader is told that
it lost.
"""

from __future__ import annotations

import asyncio
import enum
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.children import Child, Record, after, first_record
from bench.database import Database
from bench.emit import now
from coordinator.testing import TcpProxy

__all__ = ["Cluster", "Fault", "Hang", "Member", "NoTakeover", "Spawn", "Trial"]

_LINE_UP_S = 60.0
_POLL_S = 0.02


class NoTakeover(TimeoutError):
    """No other member took office within the trial's bound."""


class Fault(enum.Enum):
    KILL = "kill"
    TERM = "term"
    STOP = "stop"
    BLACKHOLE = "blackhole"


@dataclass
class Member:
    """A started process and, when its connections go through one, its proxy."""

    child: Child
    proxy: TcpProxy | None = None


@dataclass(frozen=True)
class Trial:
    """What one fault did; times in seconds from the injection."""

    #: To the first ``elected`` after the fault: the failover.
    failover: float
    #: To the ``elected`` of the leader still in office once the cluster lined up again.
    settled: float
    #: Elections between the fault and the line-up; more than one means churn.
    elections: int
    #: When the old leader reported its demotion; None if it was replaced instead.
    demoted_after: float | None
    reason: str | None
    #: The faulted leader and the member that took office first after it.
    leader: Child
    successor: Child
    #: The monotonic time of the injection.
    injected: float


@dataclass(frozen=True)
class Hang:
    """What one freeze of the leader (SIGSTOP, later SIGCONT) did, in seconds."""

    #: From SIGSTOP to another member's ``elected``; None if nobody took office in the window.
    takeover: float | None
    #: From SIGCONT to the resumed leader's ``demoted``; None if it was not told in the window.
    told: float | None


#: Starts one member called ``name``.
Spawn = Callable[[str], Awaitable[Member]]


class Cluster:
    """``size`` members of one elector; a leader must hold for ``settle`` s before a fault.

    ``db`` is the database whose advisory lock the members contend for, or
    None when they elect elsewhere and only their reports say who leads.
    """

    def __init__(
        self, db: Database | None, size: int, name: str, spawn: Spawn, settle: float
    ) -> None:
        self._db = db
        self._size = size
        self._name = name
        self._spawn = spawn
        self._settle = settle
        self._members: list[Member] = []
        self._spawned = 0
        self._leader: Member | None = None

    @property
    def members(self) -> list[Member]:
        return list(self._members)

    @property
    def leader(self) -> Member:
        if self._leader is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._leader

    async def start(self) -> None:
        for _ in range(self._size):
            await self._add()
        self._leader = await self._line_up()

    async def trial(self, fault: Fault, bound: float) -> Trial:
        """Fault the leader; NoTakeover if no other member takes office within ``bound`` s."""
        old = self.leader
        others = [m.child for m in self._members if m is not old]
        started = now()
        _inject(fault, old)
        try:
            successor, elected = await first_record(others, "elected", bound, after(started))
        except TimeoutError as error:
            raise NoTakeover(str(error)) from None
        demoted = await self._recover(fault, old, started)
        self._leader = await self._line_up()
        elections = sorted(float(r["t"]) for r in self._elections() if float(r["t"]) > started)
        return Trial(
            failover=float(elected["t"]) - started,
            settled=elections[-1] - started,
            elections=len(elections),
            demoted_after=None if demoted is None else float(demoted["t"]) - started,
            reason=None if demoted is None else str(demoted["reason"]),
            leader=old.child,
            successor=successor,
            injected=started,
        )

    async def hang(self, window: float, told_window: float) -> Hang:
        """SIGSTOP the leader; SIGCONT it after a takeover, or after ``window`` s without one.

        After a takeover the resumed leader has ``told_window`` s to report
        ``demoted``; then it is replaced, told or not, since it may still
        believe that it leads. Without a takeover it still leads.
        """
        old = self.leader
        others = [m.child for m in self._members if m is not old]
        stopped = now()
        old.child.send(signal.SIGSTOP)
        try:
            _, elected = await first_record(others, "elected", window, after(stopped))
        except TimeoutError:  # no takeover
            old.child.send(signal.SIGCONT)
            self._leader = await self._line_up()
            return Hang(takeover=None, told=None)
        resumed = now()
        old.child.send(signal.SIGCONT)
        try:
            demoted = await old.child.wait_for("demoted", told_window, after(resumed))
        except TimeoutError:
            told = None
        else:
            told = float(demoted["t"]) - resumed
        await old.child.close()
        self._members.remove(old)
        await self._add()
        self._leader = await self._line_up()
        return Hang(takeover=float(elected["t"]) - stopped, told=told)

    async def close(self) -> None:
        for member in self._members:
            await member.child.close()
            if member.proxy is not None:
                # Let the connections end first: close() cancels their tasks, which
                # Python 3.11's stream callbacks report as tracebacks.
                member.proxy.reset()
                member.proxy.close()

    def _elections(self) -> list[Record]:
        return [r for m in self._members for r in m.child.records if r["event"] == "elected"]

    async def _line_up(self) -> Member:
        """The member that holds the lock, took office last, and kept the lock ``settle`` s."""
        if self._db is None:
            return await self._line_up_by_reports()
        deadline = now() + _LINE_UP_S
        while now() < deadline:
            await self._db.wait_advisory_locks(
                granted=1, waiting=self._size - 1, timeout=deadline - now()
            )
            holder = self._named(await self._db.lock_holder())
            elections = self._elections()
            if holder is not None and elections:
                latest = max(elections, key=lambda r: float(r["t"]))
                if latest in holder.child.records:
                    await asyncio.sleep(self._settle)
                    if self._named(await self._db.lock_holder()) is holder:
                        return holder
            await asyncio.sleep(_POLL_S)
        raise TimeoutError(f"{self._name}: no leader settled within {_LINE_UP_S:g} s")

    async def _line_up_by_reports(self) -> Member:
        """The member that reported ``elected`` last, still leading after ``settle`` s."""
        deadline = now() + _LINE_UP_S
        while now() < deadline:
            for member in self._members:
                if member.child.ended:
                    raise RuntimeError(member.child.describe("exited while lining up"))
            leader = self._reported_leader()
            if leader is not None:
                await asyncio.sleep(self._settle)
                if self._reported_leader() is leader:
                    return leader
            await asyncio.sleep(_POLL_S)
        raise TimeoutError(f"{self._name}: no leader settled within {_LINE_UP_S:g} s")

    def _reported_leader(self) -> Member | None:
        """Whoever took office last and has not reported losing it, once all others wait."""
        elections = self._elections()
        if not elections:
            return None
        latest = max(elections, key=lambda r: float(r["t"]))
        leader = next(m for m in self._members if latest in m.child.records)
        if any(
            r["event"] == "demoted" and float(r["t"]) >= float(latest["t"])
            for r in leader.child.records
        ):
            return None
        waiting = all(
            any(r["event"] == "campaigning" for r in m.child.records)
            for m in self._members
            if m is not leader
        )
        return leader if waiting else None

    def _named(self, application_name: str | None) -> Member | None:
        name = (application_name or "").rsplit(":", 1)[-1]
        return next((m for m in self._members if m.child.name == name), None)

    async def _recover(self, fault: Fault, old: Member, started: float) -> Record | None:
        """Back to full strength; the old leader's demotion report if it stays a member."""
        if fault in (Fault.KILL, Fault.TERM):
            if fault is Fault.TERM:
                await old.child.wait_exit(_LINE_UP_S)
            await old.child.close()
            self._members.remove(old)
            await self._add()
            return None
        if fault is Fault.STOP:
            old.child.send(signal.SIGCONT)
        demoted = await old.child.wait_for("demoted", _LINE_UP_S, after(started))
        if old.proxy is not None:
            # Heal first, then abort the cut connections, so the old leader reconnects at once.
            old.proxy.heal()
            old.proxy.reset()
        return demoted

    async def _add(self) -> None:
        self._spawned += 1
        self._members.append(await self._spawn(f"{self._name}-{self._spawned}"))


def _inject(fault: Fault, leader: Member) -> None:
    match fault:
        case Fault.KILL:
            leader.child.send(signal.SIGKILL)
        case Fault.TERM:
            leader.child.send(signal.SIGTERM)
        case Fault.STOP:
            leader.child.send(signal.SIGSTOP)
        case Fault.BLACKHOLE:
            if leader.proxy is None:
                raise RuntimeError("a blackhole needs members that connect through a proxy")
            leader.proxy.blackhole()
