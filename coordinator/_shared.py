"""The shared campaign: one connection per process for any number of groups.

The blocking campaign spends one connection per group, which is right for a
handful of groups and wrong for thousands: connections are PostgreSQL's
scarce resource. Here one session holds every lock this process leads.
Followers do not block; every ``poll_interval`` (sooner when a NOTIFY says a
leader resigned or was fenced) the poller tries all free groups it follows
in one statement, takes office for everything it won in one transaction,
and heartbeats everything it leads in one statement.

The price is crash failover: a dead leader cannot NOTIFY, so its groups wait
for the next poll. The trust deadline, fencing and terms work as in the
blocking campaign, with one difference: the session is shared, so when it
closes or its state is in doubt, every term on it ends together and the
session is replaced. That also keeps the rule that a lock is never tried
again on a session that holds it (advisory locks stack). A group whose term
just ended is not tried for two polls, so that the followers who waited get
it first, as they would in a lock queue.

The poller never dies: any error ends the session's terms, is logged once
with its cause, and is retried on a fresh, checked session after a jittered
back-off; :attr:`SharedCampaign.problem` says why meanwhile.

The module is longer than most (about 370 lines) because it is one concept
whose parts share one state: the session, the groups waiting, the terms
held and their cool-downs. Split, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from coordinator._campaign import Seat, Trouble
from coordinator._candidates import Candidates, Plan, handover_channel, members_channel
from coordinator._config import HOST, CoordinatorConfig
from coordinator._connect import connect
from coordinator._describe import describe_error
from coordinator._logging import get_logger
from coordinator._session import (
    RESERVED_SQLSTATE,
    log_ended_transactions,
    resign_and_unlock,
    term_exhausted,
)
from coordinator._signals import HeartbeatDone
from coordinator._sql import Statements, switchover_channel
from coordinator._term import DemotionReason, Term

__all__ = ["SharedCampaign"]

log = get_logger()

#: The oldest live members look at the members every poll and say when they
#: changed; the others look only then (and once a ttl), so that at rest the
#: database answers two such looks a poll, not one per process.
WATCHERS = 2
#: Kinds of NOTIFY after which a group may be free: worth polling at once.
_VACATING = frozenset({"resigned", "fenced", "expired", "lost"})
#: The most groups tried and taken office for, or resigned, in one statement,
#: and the most electors started or handed over after one poll: a process
#: alone with 100,000 groups takes them in rounds this size, polling again at
#: once, so that neither a statement nor a burst of electors holds the shared
#: session or the event loop (and so the heartbeat) for long.
BATCH = 2000


class SharedCampaign:
    """The poller, and the one connection that holds this process's locks."""

    def __init__(
        self, config: CoordinatorConfig, sql: Statements, keys: Mapping[str, int], group_set: str
    ) -> None:
        self._config = config
        self._sql = sql
        self._keys = dict(keys)  # group -> lock key
        # Fair spreading counts the live sessions that run this same list.
        self._group_set = group_set
        self._candidates = Candidates(config.instance_id, keys, fair=config.fair_spread)
        self._plan: Plan | None = None
        self._members_seen = 0
        self._members_news = True  # look at the live members at the next poll
        self._summoned: set[str] = set()  # groups a switchover names this instance for
        self._watching = False
        self._looked_at = -math.inf
        self._shed_from = -math.inf  # fair spreading hands over from then on (see _replan)
        self._listening: set[str] = set()  # the hand-over channels this session listens to
        #: Set after every poll: the coordinator starts the electors of the groups
        #: in :attr:`wanted` that do not run.
        self.polled = asyncio.Event()
        #: Counts what can make a resting elector wanted again (a new plan, a
        #: switchover's summons): the coordinator looks for electors to start only
        #: when it moved, not among 100,000 groups at every poll.
        self.candidacies_changed = 0
        self._conn: asyncpg.Connection | None = None
        self._busy = asyncio.Lock()
        self._wake = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[Term | None]] = {}
        self._held: dict[str, Term] = {}  # in the order taken
        self._locked: set[int] = set()  # the keys granted to the session, exactly
        self._beats = 0
        self._cooldown: dict[str, float] = {}
        self._resigning: list[_Resignation] = []
        self._background: set[asyncio.Task[None]] = set()
        self._trouble = Trouble(config)
        self._exhausted: dict[str, str] = {}  # group -> why it can never take office
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._lock_timeout = f"{int(config.office_wait * 1000)}ms"
        self._log = log.bind(instance_id=config.instance_id)

    def candidacy(self, group: str) -> SharedCandidacy:
        """The campaign of one group, as its elector drives it."""
        return SharedCandidacy(self, group)

    @property
    def problem(self) -> str | None:
        return self._trouble.problem

    def problem_of(self, group: str) -> str | None:
        """Why ``group`` cannot be won now: the session's trouble, or the group's own."""
        return self._trouble.problem or self._exhausted.get(group)

    def problems(self) -> dict[str, str]:
        """Every group that cannot be won now, and why: all of them while the session fails."""
        if self._trouble.problem is not None:
            return dict.fromkeys(self._keys, self._trouble.problem)
        return dict(self._exhausted)

    @property
    def backend_pid(self) -> int:
        return int(self._conn.get_server_pid()) if self._conn is not None else 0

    @property
    def wanted(self) -> frozenset[str]:
        """The groups this process campaigns for now: its candidacies (see ``_candidates``),
        and those a switchover named it the target of."""
        wanted = self._plan.wanted if self._plan is not None else frozenset()
        return wanted | self._summoned if self._summoned else wanted

    def wants(self, group: str) -> bool:
        """``group in self.wanted``, without building the set (each elector asks)."""
        return (self._plan is not None and group in self._plan.wanted) or group in self._summoned

    # -- driven by the electors and the heartbeat job -------------------------------

    async def win(self, group: str) -> Term | None:
        """Wait until the poller wins ``group`` and takes office.

        None once this process is no longer a candidate for ``group``: its
        elector then rests, and costs no task, until it is a candidate again.
        """
        if not self.wants(group):
            return None
        future: asyncio.Future[Term | None] = asyncio.get_running_loop().create_future()
        self._waiting[group] = future
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            won = future.result() if future.done() and not future.cancelled() else None
            if won is not None:
                # Won just as the elector stopped: hand it straight back.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.resign(group, won, DemotionReason.STOPPING))
            raise
        finally:
            if self._waiting.get(group) is future:
                del self._waiting[group]

    async def resign(self, group: str, term: Term, reason: DemotionReason) -> None:
        """Clear the holder, record why, notify, unlock; then stay away for a while.

        Resignations that come together (a process handing over its surplus,
        or stopping) go out together, in one statement: thousands of them
        one round trip and one commit each would take minutes.
        """
        conn = self._conn
        self._held.pop(group, None)
        if reason in (DemotionReason.RESIGNED, DemotionReason.SWITCHOVER):
            self._cool_down(group)  # handing over means letting someone else take it
        if conn is None or conn.is_closed():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resigning.append(_Resignation(group, term.number, reason, done))
        if len(self._resigning) == 1:
            task = asyncio.create_task(self._resign_together(conn))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        await asyncio.shield(done)

    async def _resign_together(self, conn: asyncpg.Connection) -> None:
        """Every resignation queued, :data:`BATCH` a statement, the session free between."""
        while self._resigning:
            batch: list[_Resignation] = []
            try:
                async with asyncio.timeout(self._config.resign_timeout), self._busy:
                    batch, self._resigning = self._resigning[:BATCH], self._resigning[BATCH:]
                    await self._resign_batch(conn, batch)
            except BaseException as error:
                # Locks may still be held on a session that no longer knows them: replace it.
                self.abort()
                for resignation in [*batch, *self._resigning]:
                    if not resignation.done.done():
                        resignation.done.set_exception(error)
                self._resigning = []
                if not isinstance(error, Exception):
                    raise
                return
            for resignation in batch:
                resignation.done.set_result(None)

    async def _resign_batch(self, conn: asyncpg.Connection, batch: list[_Resignation]) -> None:
        ns, me = self._config.lock_namespace, self._config.instance_id
        try:
            await conn.execute(
                self._sql.resign_seats,
                [r.group for r in batch],
                me,
                [r.term for r in batch],
                [str(r.reason) for r in batch],
                ns,
                [self._keys[r.group] for r in batch],
            )
        except asyncpg.LockNotAvailableError:
            # Fenced transactions of some term are still open: one by one, so
            # that only theirs skip the record.
            for r in batch:
                lock = (ns, self._keys[r.group])
                await resign_and_unlock(conn, self._sql, r.group, me, r.term, r.reason, lock)
                self._locked.discard(lock[1])
            return
        self._locked.difference_update(self._keys[r.group] for r in batch)

    def abort(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()

    async def heartbeat(self) -> HeartbeatDone | None:
        """One statement, on the session's one row, for every group led and followed.

        A successful beat keeps the session from being fenced for a ttl, and
        so extends the trust of every seat on it. Each beat also checks a
        slice of the seats against the leader table, so that each is checked
        once a ttl: a seat's lock cannot be lost while the session lives,
        and checking all of them every beat was most of the cost at rest.
        """
        conn = self._conn
        if conn is None or conn.is_closed():
            return None
        held = {group: term for group, term in self._held.items() if term.ended is None}
        slices = max(1, int(self._config.ttl // self._config.heartbeat_interval))
        self._beats += 1
        checked = {
            group: term
            for group, term in held.items()
            if self._keys[group] % slices == self._beats % slices
        }
        started = time.monotonic()
        groups = (*held, *(group for group in self._waiting if group not in held))
        try:
            async with asyncio.timeout(self._config.heartbeat_timeout), self._busy:
                rows = await self._beat(conn, checked)
        except Exception as error:  # noqa: BLE001 - the trust deadline deals with failures
            self._log.warning("heartbeat_failed", groups=len(held), error=describe_error(error))
            return HeartbeatDone(groups, time.monotonic() - started, ok=False, batch=True)
        lost = {row["lost_group"] for row in rows}
        if None in lost:  # the session row is another live backend's: nothing is ours
            lost = set(held)
        for group, term in held.items():
            if group in lost:
                term.end(DemotionReason.LOCK_LOST)
            else:
                term.extend(started)
        return HeartbeatDone(groups, time.monotonic() - started, ok=True, batch=True)

    async def _beat(
        self, conn: asyncpg.Connection, held: Mapping[str, Term]
    ) -> list[asyncpg.Record]:
        return list(
            await conn.fetch(
                self._sql.session_heartbeat,
                self._config.instance_id,
                HOST,
                os.getpid(),
                len(self._keys),
                self._group_set,
                self._config.ttl,
                list(held),
                [term.number for term in held.values()],
            )
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="coordinator-shared-campaign")

    async def stop(self) -> None:
        """Called after every elector has stopped (and resigned)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a session row left behind goes stale
                async with asyncio.timeout(self._config.heartbeat_timeout):
                    await self._conn.execute(self._sql.close_session, self._config.instance_id)
            try:
                await self._conn.close(timeout=self._config.heartbeat_timeout)
            except Exception:  # noqa: BLE001 - closing still has to free the socket
                self._conn.terminate()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._connect()
                await self._poll()
                self.polled.set()
                failures = 0
                self._trouble.cleared()
            except Exception as error:  # noqa: BLE001 - the poller never dies
                failures += 1
                event = (
                    "lock_table_full"
                    if isinstance(error, asyncpg.OutOfMemoryError)
                    else "poll_failed"
                )
                self._log.warning(event, error=self._trouble.failed(error), attempt=failures)
                # Locks a failed statement may have granted are not in office: start clean.
                self.abort()
            await self._sleep(
                self._config.reconnect_delay(failures) if failures else self._until_next_poll()
            )

    def _until_next_poll(self) -> float:
        """A poll interval, or less when a group waiting for it comes out of its cool-down.

        Waking then, not a poll later, keeps the order of a lock queue: the
        one who handed over earlier gets the next turn.
        """
        now = time.monotonic()
        ends = [
            end for group, end in self._cooldown.items() if group in self._waiting and end > now
        ]
        return min([self._config.poll_interval, *(end - now for end in ends)])

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _connect(self) -> None:
        conn = await connect(self._config.connection)
        try:
            await conn.execute(self._sql.set_session_lock_timeout, self._lock_timeout)
            self._listening = set()
            self._locked = set()
            self._members_news = True
            await conn.add_listener(members_channel(self._config.schema), self._members_changed)
            await conn.add_listener(switchover_channel(self._config.schema), self._switchover)
            await self._listen(conn, self.wanted)
            await self._beat(conn, {})  # counted as a member before the first poll
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._closed)
        self._conn = conn

    async def _listen(self, conn: asyncpg.Connection, groups: frozenset[str]) -> None:
        """Listen to the hand-over channels of ``groups``: others' hand-overs are not news here."""
        channels = {handover_channel(self._config.schema, self._keys[group]) for group in groups}
        for channel in sorted(channels - self._listening):
            await conn.add_listener(channel, self._notified)
            self._listening.add(channel)

    def _closed(self, conn: asyncpg.Connection) -> None:
        """Every term on this session ends with it."""
        if conn is not self._conn:
            return
        held, self._held = self._held, {}
        for group, term in held.items():
            self._cool_down(group)
            term.end(DemotionReason.CONNECTION_LOST)
        self._wake.set()

    def _cool_down(self, group: str) -> None:
        self._cooldown[group] = time.monotonic() + 2 * self._config.poll_interval

    def _switchover(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A switchover names this instance: campaign for that group, candidate or not."""
        try:
            request = json.loads(payload)
        except ValueError:
            return
        group = request.get("group")
        if request.get("target") == self._config.instance_id and group in self._keys:
            self._summoned.add(group)
            self.candidacies_changed += 1
            self.polled.set()  # its elector starts now
            self._wake.set()

    def _members_changed(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._members_news = True
        self._wake.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            return
        if change.get("kind") in _VACATING and change.get("group") in self._waiting:
            self._wake.set()

    # -- one poll ---------------------------------------------------------------------

    async def _poll(self) -> None:
        conn = self._conn
        assert conn is not None
        plan = await self._replan(conn)
        if plan is None:
            return  # members are joining: wait until they all count
        now = time.monotonic()
        candidates = [
            name
            for name in self._waiting
            if self.wants(name)
            and name not in self._held
            and self._keys[name] not in self._locked
            and self._cooldown.get(name, 0.0) <= now
        ]
        if candidates:  # none at rest: every group this process should lead, it leads
            # In random order, so that instances polling together do not all
            # contend for the same groups first; the rest at the next poll, at once.
            random.shuffle(candidates)
            if len(candidates) > BATCH:
                candidates = candidates[:BATCH]
                self._wake.set()
            if await self._take_office(conn, candidates):
                return  # what nobody led goes first: hand over at a poll that won nothing
        if self._config.fair_spread and now >= self._shed_from:
            self._shed(plan.assigned)

    async def _take_office(self, conn: asyncpg.Connection, candidates: list[str]) -> int:
        """Try the locks of ``candidates`` and start the next term of every group won, in
        one statement; a group whose term is refused comes back without its lock. Returns
        how many were won."""
        started = time.monotonic()
        args = (candidates, self._config.instance_id, HOST, os.getpid(), self._config.ttl)
        async with self._busy:
            rows = await conn.fetch(self._sql.take_free_offices, *args)
        offices: list[tuple[str, int]] = []
        unregistered: list[str] = []
        for row in rows:
            group = row["group_name"]
            if row["term"] is not None:
                log_ended_transactions(group, row)
                offices.append((group, row["term"]))
            elif row["refused_sqlstate"] is not None:
                self._refused(group, row["refused_sqlstate"], row["refusal"])
            else:
                unregistered.append(group)
        if unregistered:
            await self._register_again(conn, unregistered)
        self._locked.update(self._keys[group] for group, _ in offices)
        for group, number in offices:
            self._summoned.discard(group)
            self._exhausted.pop(group, None)
            term = self._held[group] = Term(number, started, self._config.trust_window)
            future = self._waiting.pop(group, None)
            if future is None or future.done():
                # The group stopped while we won it: hand it straight back.
                await self.resign(group, term, DemotionReason.STOPPING)
            else:
                future.set_result(term)
        return len(offices)

    def _refused(self, group: str, sqlstate: str, refusal: str) -> None:
        """A group whose lock was granted but whose term could not start (its lock is
        released again): a switchover reserves it, fenced transactions of the old term
        are still open, or its next term would not fit."""
        if sqlstate == RESERVED_SQLSTATE:
            self._cool_down(group)  # the member a switchover names goes first
            self._log.info("switchover_standing_aside", group=group, reason=refusal)
        elif sqlstate == asyncpg.LockNotAvailableError.sqlstate:
            self._log.warning(
                "take_office_waiting",
                group=group,
                reason="fenced transactions of the previous term are still open",
            )
        else:  # numeric_value_out_of_range
            error = term_exhausted([group])
            if group not in self._exhausted:  # said once; tried again every poll
                self._log.warning("take_office_failed", group=group, error=str(error))
            self._exhausted[group] = describe_error(error)

    async def _register_again(self, conn: asyncpg.Connection, groups: list[str]) -> None:
        """Groups without a leader row (a server that lost recent commits): register them
        again (what exists is left alone) and try them at once."""
        async with self._busy:
            await conn.execute(
                self._sql.register_groups,
                groups,
                [self._keys[group] for group in groups],
                self._config.lock_namespace,
                self._config.ttl,
            )
        self._log.warning("groups_registered_again", groups=len(groups))
        self._wake.set()

    async def _replan(self, conn: asyncpg.Connection) -> Plan | None:
        """The candidacies and, with fair spreading, the shares, for the members live now.

        The members are looked at when a watcher (one of the :data:`WATCHERS`
        oldest, which look every poll) said they changed, and once a ttl. With
        fair spreading, nothing is taken or handed over while members are
        joining (more than at the last look): the first of many processes
        started together would otherwise win everything, then hand nearly all
        of it over again. A member that left counts at once, so a crashed
        process's groups are taken at the next poll. What the new shares move
        between the living is handed over a poll interval later, and only at a
        poll that won nothing, so that the hand-overs (at 100,000 groups twice
        as many as the orphans) do not hold up the groups that nobody leads.
        """
        now = time.monotonic()
        fresh = now - self._looked_at < self._config.ttl
        if self._plan is not None and fresh and not (self._watching or self._members_news):
            return self._plan
        self._members_news = False
        self._looked_at = now
        async with self._busy:
            rows = await conn.fetch(self._sql.live_members, self._group_set)
        live = [row["instance_id"] for row in rows]
        self._watching = self._config.instance_id in live[:WATCHERS]
        joining = len(live) > self._members_seen
        self._members_seen = len(live)
        changed = self._plan is None or set(self._plan.members) != {*live, self._config.instance_id}
        if changed and self._watching:
            async with self._busy:
                await conn.execute(
                    self._sql.notify_members_changed, members_channel(self._config.schema)
                )
        if joining and self._config.fair_spread:
            self._members_news = True  # look again at the next poll
            return None
        if changed:
            plan = self._plan = self._candidates.plan(live)
            self.candidacies_changed += 1
            self._shed_from = now + self._config.poll_interval
            async with self._busy:
                await self._listen(conn, plan.wanted)
            for group, future in self._waiting.items():
                if not self.wants(group) and not future.done():
                    future.set_result(None)  # not a candidate any more: its elector rests
        return self._plan

    def _shed(self, assigned: frozenset[str]) -> None:
        """Hand over what this process leads but another member should (fair spreading)."""
        surplus = [
            term
            for group, term in self._held.items()
            if term.ended is None and group not in assigned
        ]
        if len(surplus) > BATCH:  # a batch a poll, the next at once: the loop stays free
            surplus = surplus[:BATCH]
            self._wake.set()
        for term in surplus:
            term.end(DemotionReason.RESIGNED)
        if surplus:
            self._log.info("spreading_leaderships", share=len(assigned), handing_over=len(surplus))


@dataclass(frozen=True)
class _Resignation:
    group: str
    term: int
    reason: DemotionReason
    done: asyncio.Future[None]


class SharedCandidacy:
    """One group's campaign on the shared session."""

    def __init__(self, shared: SharedCampaign, group: str) -> None:
        self._shared = shared
        self._group = group

    @property
    def problem(self) -> str | None:
        return self._shared.problem_of(self._group)

    async def win(self) -> tuple[Seat, Term] | None:
        term = await self._shared.win(self._group)
        return None if term is None else (_SharedSeat(self._shared, self._group), term)

    async def close(self) -> None:
        """The shared session outlives the groups; the coordinator stops it last."""


class _SharedSeat:
    """One group's leadership on the shared session."""

    def __init__(self, shared: SharedCampaign, group: str) -> None:
        self._shared = shared
        self._group = group

    @property
    def backend_pid(self) -> int:
        return self._shared.backend_pid

    async def resign(self, term: Term, reason: DemotionReason) -> None:
        await self._shared.resign(self._group, term, reason)

    def abort(self) -> None:
        """The term ended abnormally: the shared session's state is in doubt, replace it."""
        self._shared.abort()
