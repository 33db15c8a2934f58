"""The chaos runner: start instances, inject random faults, then check.

Every instance reaches PostgreSQL through a TCP proxy of its own, so that a
silent partition can cut off exactly one of them. Faults are spaced so that
each one's recovery is measured on its own. The server runs as production
does (``fsync`` and ``synchronous_commit`` on) unless ``--server
async-commit`` asks for ``synchronous_commit = off``; it tracks commit
timestamps, by which the checker orders the ledger. While it runs, one line
per fault shows the counts so far, and each violation is printed when found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from chaos.checker import (
    Fault,
    LedgerRow,
    Overlap,
    Violation,
    belief_overlaps,
    check_dead_loops,
    check_fencing,
    check_output,
    check_recovery,
    check_terms,
    offices_from_records,
)
from chaos.worker import LEDGER_DDL
from coordinator import migrate
from coordinator.testing import LocalPostgres, TcpProxy

TTL = 2.0
HEARTBEAT_INTERVAL = 0.25
HEARTBEAT_TIMEOUT = 0.5
#: A crash is noticed by the server at once: a leader must be back well under a second.
CRASH_BOUND = 1.0
#: A hang or partition is judged on the database clock: ttl, plus a monitor interval, plus slack.
HANG_BOUND = TTL + HEARTBEAT_INTERVAL + 1.0
#: After a restart, reconnection waits out jittered back-off and the server's own start.
RESTART_BOUND = 10.0
#: How long the backends of a SIGKILLed server may take to be gone.
CRASH_CLEANUP_TIMEOUT = 30.0
#: How long the server refuses writes in a read-only window.
READ_ONLY_WINDOW = 3.0
#: Poll mode's followers try free groups this often, so a crash is noticed within it.
POLL_INTERVAL = 0.25
FAULT_KINDS = (
    "kill",
    "stop",
    "partition",
    "terminate_backend",
    "restart_fast",
    "restart_immediate",
    "read_only",
    "promote",
)
#: Faults a run injects unless told: every kind.
DEFAULT_FAULTS = FAULT_KINDS
#: Settings of the server: commit timestamps always; durable as production, or async commit.
SERVERS = {
    "durable": {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"},
    "async-commit": {"fsync": "on", "synchronous_commit": "off", "full_page_writes": "on"},
}


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class Instance:
    instance_id: str
    proxy: TcpProxy
    log: Path
    groups: list[str]
    server_dsn: str
    wait: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def outputs(self) -> tuple[Path, Path]:
        """Its stdout and stderr, kept across restarts."""
        return self.log.with_suffix(".stdout"), self.log.with_suffix(".stderr")

    def start(self) -> None:
        stdout, stderr = (path.open("ab") for path in self.outputs)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chaos.worker",
                "--dsn",
                self.proxy.dsn(self.server_dsn),
                "--instance-id",
                self.instance_id,
                "--groups",
                ",".join(self.groups),
                "--ttl",
                str(TTL),
                "--heartbeat-interval",
                str(HEARTBEAT_INTERVAL),
                "--heartbeat-timeout",
                str(HEARTBEAT_TIMEOUT),
                "--log",
                str(self.log),
                "--wait",
                self.wait,
                "--poll-interval",
                str(POLL_INTERVAL),
            ],
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        stdout.close()
        stderr.close()

    def retarget(self, port: int) -> None:
        """Point this instance's proxy at another server, on the same port as before."""
        listen = self.proxy.port
        self.proxy.close()
        self.proxy = TcpProxy("127.0.0.1", port, listen_port=listen)
        self.proxy.start()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def stop(self) -> Violation | None:
        """SIGTERM, and wait: a clean stop exits 0 within the time it has."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return Violation("shutdown", f"{self.instance_id} did not stop within 15 s of SIGTERM")
        if code != 0:
            return Violation("shutdown", f"{self.instance_id} exited {code} after SIGTERM")
        return None


@dataclass
class Chaos:
    server: LocalPostgres
    dsn: str
    instances: list[Instance]
    groups: list[str]
    rng: random.Random
    kinds: tuple[str, ...]
    faults: list[Fault] = field(default_factory=list)
    standby: LocalPostgres | None = None
    #: Poll mode notices a free lock within a poll interval, on top of every bound.
    slack: float = 0.0
    started: float = field(default_factory=now)
    reported: set[Violation] = field(default_factory=set)

    async def leaders(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT group_name, leader FROM coordinator.leader_status")
        finally:
            await conn.close()
        return {r["group_name"]: r["leader"] for r in rows if r["leader"] is not None}

    async def victim(self) -> tuple[Instance, tuple[str, ...]]:
        """A current leader (faults on followers prove little), and the groups it leads."""
        leaders = await self.leaders()
        leading = set(leaders.values())
        pool = [i for i in self.instances if i.instance_id in leading] or self.instances
        victim = self.rng.choice(pool)
        return victim, tuple(g for g, leader in leaders.items() if leader == victim.instance_id)

    def note(self, kind: str, target: str, groups: tuple[str, ...], bound: float) -> None:
        self.faults.append(Fault(kind, now(), target, groups, bound + self.slack))

    async def inject(self, kind: str) -> None:
        if kind == "restart_fast":
            self.note(kind, "*", tuple(self.groups), RESTART_BOUND)
            await asyncio.to_thread(self.server.restart)
            return
        if kind == "restart_immediate":
            # SIGKILL of the postmaster and its backends: crash recovery on start,
            # as after `pg_ctl -m immediate` or a host that died.
            self.note(kind, "*", tuple(self.groups), RESTART_BOUND)
            await asyncio.to_thread(crash, self.server)
            await asyncio.to_thread(self.server.start)
            return
        if kind == "promote":
            self.note(kind, "*", tuple(self.groups), RESTART_BOUND)
            await self.promote()
            return
        if kind == "read_only":
            bound = READ_ONLY_WINDOW + RESTART_BOUND
            self.note(kind, "*", tuple(self.groups), bound)
            await self.read_only_window()
            return
        victim, led = await self.victim()
        if kind == "kill":
            self.note(kind, victim.instance_id, led, CRASH_BOUND)
            victim.signal(signal.SIGKILL)
            assert victim.process is not None
            victim.process.wait()
            victim.start()
        elif kind == "stop":
            self.note(kind, victim.instance_id, led, HANG_BOUND)
            victim.signal(signal.SIGSTOP)
            await asyncio.sleep(TTL * 1.5)
            victim.signal(signal.SIGCONT)
        elif kind == "partition":
            self.note(kind, victim.instance_id, led, HANG_BOUND)
            victim.proxy.blackhole()
            await asyncio.sleep(TTL * 1.5)
            victim.proxy.heal()
            victim.proxy.reset()  # the cut connections could never resume
        elif kind == "terminate_backend":
            await self.terminate_lock_session(victim)

    async def terminate_lock_session(self, victim: Instance) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            row = await conn.fetchrow(
                "SELECT group_name, backend_pid FROM coordinator.leaders WHERE holder = $1 "
                "ORDER BY random() LIMIT 1",
                victim.instance_id,
            )
            if row is not None:
                led = (row["group_name"],)
                self.note("terminate_backend", victim.instance_id, led, CRASH_BOUND)
                await conn.execute("SELECT pg_terminate_backend($1)", row["backend_pid"])
        finally:
            await conn.close()

    async def promote(self) -> None:
        """The primary crashes; its streaming standby is promoted and takes every proxy.

        The standby replicates asynchronously, so commits it had not received
        when the primary died are lost, as on a real failover set up so. A
        new standby of the new primary is made ready for the next promotion.
        """
        assert self.standby is not None, "a run with promote faults starts a standby"
        old, new = self.server, self.standby
        await asyncio.to_thread(crash, old)
        conn = await asyncpg.connect(new.dsn)
        try:
            await conn.execute("SELECT pg_promote(wait => true)")
        finally:
            await conn.close()
        for instance in self.instances:
            await asyncio.to_thread(instance.retarget, new.port)
        self.server, self.dsn = new, new.dsn
        self.standby = await asyncio.to_thread(new.create_standby)

    async def read_only_window(self) -> None:
        """Every new transaction read-only for a while, as during a failover, then writable."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("SET default_transaction_read_only = off")  # this session writes
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(READ_ONLY_WINDOW)
            await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def run(self, duration: float, pause: Callable[[], float]) -> None:
        for instance in self.instances:
            instance.start()
        deadline = now() + duration
        await asyncio.sleep(2.0)  # let the first elections settle
        while now() < deadline:
            await self.inject(self.rng.choice(self.kinds))
            await asyncio.sleep(pause())
            await self.progress()

    async def progress(self) -> None:
        """One line of counts so far, and each violation the first time it is seen."""
        counts = Counter(f.kind for f in self.faults)
        so_far = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
        print(f"[{now() - self.started:6.1f} s] faults {len(self.faults)}: {so_far}", flush=True)
        try:
            found = await self.violations(settled=now() - RESTART_BOUND - READ_ONLY_WINDOW)
        except (OSError, asyncpg.PostgresError) as error:
            print(f"  (cannot check now: {error})", flush=True)
            return
        for violation in found:
            if violation not in self.reported:
                self.reported.add(violation)
                print(f"  VIOLATION [{violation.rule}] {violation.detail}", flush=True)

    async def violations(self, settled: float = float("inf")) -> list[Violation]:
        """What the checker finds now; recovery only for faults before ``settled``."""
        records = read_records([m.log for m in self.instances])
        offices = offices_from_records(records)
        faults = [f for f in self.faults if f.at < settled]
        recovery, _, _ = check_recovery(faults, offices)
        return (
            check_terms(offices)
            + check_fencing(await read_ledger(self.dsn))
            + check_dead_loops(records)
            + check_output(read_outputs(self.instances))
            + recovery
        )


def crash(server: LocalPostgres) -> None:
    """SIGKILL the server and every backend at once, as if the host died; wait until all are gone.

    Each backend makes itself a process-group leader (``setsid`` in
    PostgreSQL's ``InitPostmasterChild``), so killing the postmaster's group
    leaves them to notice its death on their own, and on a busy machine one
    may still hold the shared memory when the next start begins, which then
    refuses to run. So they are found and killed here too.
    """
    backends = _children(server.pid)
    server.kill()
    for pid in backends:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = now() + CRASH_CLEANUP_TIMEOUT
    while any(_alive(pid) for pid in backends) and now() < deadline:
        time.sleep(0.01)


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running or not yet reaped as anything but a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_records(paths: list[Path]) -> list[dict[str, object]]:
    records = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
    return records


def read_outputs(instances: list[Instance]) -> list[tuple[str, str]]:
    return [
        (path.name, path.read_text(errors="replace"))
        for instance in instances
        for path in instance.outputs
        if path.exists()
    ]


async def read_ledger(dsn: str) -> list[LedgerRow]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT group_name, term, id,"
            " extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed"
            " FROM chaos_ledger"
        )
    finally:
        await conn.close()
    return [LedgerRow(r["group_name"], r["term"], r["committed"], r["id"]) for r in rows]


def summarize(
    faults: list[Fault],
    recoveries: dict[str, list[float]],
    leaderless: float,
    writes: int,
    offices: int,
    overlaps: list[Overlap],
    violations: list[Violation],
) -> str:
    lines = [f"faults injected: {len(faults)}"]
    for kind, count in sorted(Counter(f.kind for f in faults).items()):
        took = sorted(recoveries.get(kind, []))
        if took:
            median_ms, max_ms = statistics.median(took) * 1000, took[-1] * 1000
            lines.append(
                f"  {kind:<18} {count:>3}   recovery median {median_ms:8.1f} ms"
                f"   max {max_ms:8.1f} ms   ({len(took)} group outages)"
            )
        else:
            lines.append(f"  {kind:<18} {count:>3}   (no leader was affected)")
    lines.append(f"leaderless time, summed over groups: {leaderless:.2f} s")
    lines.append(f"terms of office: {offices}; fenced ledger writes: {writes}")
    longest = max((o.seconds for o in overlaps), default=0.0)
    lines.append(
        f"belief overlaps (is_leader on two instances, reported, not failed): {len(overlaps)}"
        + (f", longest {longest * 1000:.1f} ms" if overlaps else "")
    )
    lines.extend(
        f"  group {o.group}: {o.before.instance} (term {o.before.term}) and "
        f"{o.after.instance} (term {o.after.term}) for {o.seconds * 1000:.1f} ms"
        for o in overlaps
    )
    acting = sum(1 for v in violations if v.rule == "fencing")
    lines.append(f"acting overlaps (old-term commits after a newer term's): {acting}")
    lines.append(f"violations: {len(violations)}")
    lines.extend(f"  [{v.rule}] {v.detail}" for v in violations)
    return "\n".join(lines)


async def chaos(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    names = [f"group-{n}" for n in range(1, args.groups + 1)]
    workdir = Path(tempfile.mkdtemp(prefix="pg-coordinator-chaos-"))
    settings = {**SERVERS[args.server], "track_commit_timestamp": "on"}
    print(
        f"chaos: {args.duration:g} s of {', '.join(args.faults)} on the {args.server} server, "
        f"{args.instances} instances, {args.groups} groups, wait {args.wait}, seed {args.seed}",
        flush=True,
    )
    with LocalPostgres.embedded(settings=settings) as server:
        await migrate(server.dsn)
        conn = await asyncpg.connect(server.dsn)
        await conn.execute(LEDGER_DDL)
        await conn.close()
        members = [
            Instance(
                f"chaos-{n}",
                TcpProxy("127.0.0.1", server.port),
                workdir / f"chaos-{n}.jsonl",
                names,
                server.dsn,
                args.wait,
            )
            for n in range(1, args.instances + 1)
        ]
        for member in members:
            member.proxy.start()
        run = Chaos(server, server.dsn, members, names, rng, tuple(args.faults))
        run.slack = POLL_INTERVAL if args.wait == "poll" else 0.0
        if "promote" in args.faults:
            run.standby = await asyncio.to_thread(server.create_standby)
        try:
            await run.run(
                args.duration, pause=lambda: rng.uniform(RESTART_BOUND / 4, RESTART_BOUND / 2)
            )
            await asyncio.sleep(HANG_BOUND)  # the last fault's recovery
        finally:
            stops = [member.stop() for member in members]
            for member in members:
                member.proxy.close()
        ledger = await read_ledger(run.dsn)
        violations = await run.violations() + [stop for stop in stops if stop is not None]
    offices = offices_from_records(read_records([m.log for m in members]))
    _, recoveries, leaderless = check_recovery(run.faults, offices)
    overlaps = belief_overlaps(offices)
    print(
        summarize(
            run.faults, recoveries, leaderless, len(ledger), len(offices), overlaps, violations
        )
    )
    print(f"(seed {args.seed}; instance logs and output in {workdir})")
    return 1 if violations else 0


def _kinds(text: str) -> list[str]:
    if text.strip() == "all":
        return list(FAULT_KINDS)
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault {', '.join(unknown) or '(none)'}: choose from {', '.join(FAULT_KINDS)}"
        )
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults (300)")
    parser.add_argument("--instances", type=int, default=4, help="worker processes (4)")
    parser.add_argument("--groups", type=int, default=3, help="groups every worker joins (3)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="of the random faults")
    parser.add_argument(
        "--wait",
        choices=("block", "poll"),
        default="block",
        help="how followers wait: a blocked connection per group, or polling one (block)",
    )
    parser.add_argument(
        "--server",
        choices=tuple(SERVERS),
        default="durable",
        help="durable: fsync and synchronous_commit on, as in production; "
        "async-commit: synchronous_commit off (durable)",
    )
    parser.add_argument(
        "--faults",
        type=_kinds,
        default=list(DEFAULT_FAULTS),
        metavar="KIND,KIND",
        help=f"the faults to inject, comma-separated, or all ({','.join(FAULT_KINDS)}); "
        "default: all",
    )
    raise SystemExit(asyncio.run(chaos(parser.parse_args())))
