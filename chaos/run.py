"""The chaos runner: start instances, inject random faults, then check.

Every instance reaches PostgreSQL through a TCP proxy of its own, so that a
silent partition can cut off exactly one of them. Faults are spaced so that
each one's recovery is measured on its own.
"""

from __future__ import annotations

import argparse
import asyncio
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
    Violation,
    check_fencing,
    check_offices,
    check_recovery,
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
FAULT_KINDS = ("kill", "stop", "partition", "terminate_backend", "restart_server")


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class Instance:
    instance_id: str
    proxy: TcpProxy
    log: Path
    groups: list[str]
    server_dsn: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Chaos:
    server: LocalPostgres
    dsn: str
    instances: list[Instance]
    groups: list[str]
    rng: random.Random
    faults: list[Fault] = field(default_factory=list)

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

    async def inject(self, kind: str) -> None:
        if kind == "restart_server":
            self.faults.append(Fault(kind, now(), "*", tuple(self.groups), RESTART_BOUND))
            await asyncio.to_thread(self.server.restart)
            return
        victim, led = await self.victim()
        if kind == "kill":
            self.faults.append(Fault(kind, now(), victim.instance_id, led, CRASH_BOUND))
            victim.signal(signal.SIGKILL)
            assert victim.process is not None
            victim.process.wait()
            victim.start()
        elif kind == "stop":
            self.faults.append(Fault(kind, now(), victim.instance_id, led, HANG_BOUND))
            victim.signal(signal.SIGSTOP)
            await asyncio.sleep(TTL * 1.5)
            victim.signal(signal.SIGCONT)
        elif kind == "partition":
            self.faults.append(Fault(kind, now(), victim.instance_id, led, HANG_BOUND))
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
                self.faults.append(
                    Fault(
                        "terminate_backend",
                        now(),
                        victim.instance_id,
                        (row["group_name"],),
                        CRASH_BOUND,
                    )
                )
                await conn.execute("SELECT pg_terminate_backend($1)", row["backend_pid"])
        finally:
            await conn.close()

    async def run(self, duration: float, pause: Callable[[], float]) -> None:
        for instance in self.instances:
            instance.start()
        deadline = now() + duration
        await asyncio.sleep(2.0)  # let the first elections settle
        while now() < deadline:
            await self.inject(self.rng.choice(FAULT_KINDS))
            await asyncio.sleep(pause())


def read_records(paths: list[Path]) -> list[dict[str, object]]:
    records = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
    return records


async def read_ledger(dsn: str) -> list[tuple[str, int, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT group_name, term, id FROM chaos_ledger")
    finally:
        await conn.close()
    return [(r["group_name"], r["term"], r["id"]) for r in rows]


def summarize(
    faults: list[Fault],
    recoveries: dict[str, list[float]],
    leaderless: float,
    writes: int,
    offices: int,
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
    lines.append(f"violations: {len(violations)}")
    lines.extend(f"  [{v.rule}] {v.detail}" for v in violations)
    return "\n".join(lines)


async def chaos(duration: float, instances: int, groups: int, seed: int) -> int:
    rng = random.Random(seed)
    names = [f"group-{n}" for n in range(1, groups + 1)]
    workdir = Path(tempfile.mkdtemp(prefix="pg-coordinator-chaos-"))
    with LocalPostgres.embedded() as server:
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
            )
            for n in range(1, instances + 1)
        ]
        for member in members:
            member.proxy.start()
        run = Chaos(server, server.dsn, members, names, rng)
        try:
            await run.run(duration, pause=lambda: rng.uniform(RESTART_BOUND / 4, RESTART_BOUND / 2))
            await asyncio.sleep(HANG_BOUND)  # the last fault's recovery
        finally:
            for member in members:
                member.stop()
                member.proxy.close()
        ledger = await read_ledger(server.dsn)
    offices = offices_from_records(read_records([m.log for m in members]))
    recovery_violations, recoveries, leaderless = check_recovery(run.faults, offices)
    violations = check_offices(offices) + check_fencing(ledger) + recovery_violations
    print(summarize(run.faults, recoveries, leaderless, len(ledger), len(offices), violations))
    print(f"(seed {seed}; instance logs in {workdir})")
    return 1 if violations else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults (300)")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    raise SystemExit(asyncio.run(chaos(args.duration, args.instances, args.groups, args.seed)))
