"""``python -m bench.scale``: many groups, in shared-session and blocking mode.

Measures, on one embedded PostgreSQL 18, with real ``coordinator run``
processes:

- one process with N groups: connections used, transactions per second at
  rest, time from start to leading every group, and the time for a second,
  following process to lead them all after the first is SIGKILLed;
- many processes sharing G groups: time until every group has a leader, the
  spread of leaderships (most and fewest per process) with and without fair
  spreading, and the database's CPU and transactions per second at rest;
- the tier: 50 processes with fair spreading and 1,000, 10,000 and 100,000
  groups: time until every group is led, the cost at rest (database CPU,
  transactions/s, per group), and the time until the groups of a SIGKILLed
  process are all led again. Its plot is ``bench/scale.png``.

Times come from the processes' own log timestamps, and in the tier from the
history (the first ``elected`` event of each group, on the database clock of
this same machine). The results go to the terminal and replace the "Scale"
section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.database import Database
from bench.plot import plot_costs
from coordinator import migrate
from coordinator.testing import CoordinatorProcess, LocalPostgres
from coordinator.testing import distinct_group_names as group_names

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PLOT = RESULTS.parent / "scale.png"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
#: The tier's own part of that section: ``--tier-only`` replaces just this.
TIER_BEGIN, TIER_END = "<!-- scale-tier:begin -->", "<!-- scale-tier:end -->"
#: Production-like timings: the defaults but for a 1 s poll.
TIMINGS = {"ttl": 15.0, "heartbeat_interval": 5.0, "heartbeat_timeout": 5.0}
#: The tier's timings, for every row alike: twice the defaults. Fifty processes
#: taking office for 100,000 groups at once keep 2 cores busy for about 15 s,
#: and a heartbeat at the defaults' 15 s ttl does not get through.
TIER_TIMINGS = {"ttl": 30.0, "heartbeat_interval": 10.0, "heartbeat_timeout": 10.0}
POLL_INTERVAL = 1.0
REST_WINDOW = 15.0
WAIT = 300.0
#: The machine is shared: a tier stops when less memory than this is left.
MEMORY_FLOOR = 8 * 2**30


def logged_at(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


@dataclass
class Rig:
    server: LocalPostgres
    dsn: str

    async def fetchval(self, sql: str, *args: object) -> object:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def leaders(self) -> dict[str, int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT leader, count(*) AS n FROM coordinator.leader_status "
                "WHERE leader IS NOT NULL GROUP BY leader"
            )
        finally:
            await conn.close()
        return {row["leader"]: row["n"] for row in rows}

    async def wait_for(self, condition: str, *args: object, every: float = 0.05) -> float:
        """Poll a boolean SQL condition until true; return the wall time it became true."""
        deadline = time.monotonic() + WAIT
        while not await self.fetchval(condition, *args):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {WAIT:g} s: {condition}")
            if psutil.virtual_memory().available < MEMORY_FLOOR:
                raise MemoryError("the machine is running out of memory; the run is stopped")
            await asyncio.sleep(every)
        return time.time()

    async def connections(self, instance_id: str) -> int:
        return int(
            str(
                await self.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    f"coordinator:{instance_id}",
                )
            )
        )

    async def at_rest(self, window: float = REST_WINDOW) -> tuple[float, float]:
        """Transactions per second and database CPU (share of one core) over a quiet window."""
        cpu_before = self._server_cpu()
        xacts_before = await self._xacts()
        started = time.monotonic()
        await asyncio.sleep(window)  # a measurement window, not a wait for a condition
        elapsed = time.monotonic() - started
        xacts = (await self._xacts() - xacts_before) / elapsed
        cpu_after = self._server_cpu()
        # Backends that ended during the window (the bench's own) are left out.
        spent = sum(cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items())
        return xacts, spent / elapsed

    def _server_cpu(self) -> dict[int, float]:
        """CPU seconds of the server and each of its backends, by pid."""
        server = psutil.Process(self.server.pid)
        return {p.pid: _cpu(p) for p in (server, *server.children(recursive=True))}

    async def _xacts(self) -> int:
        # The statistics are flushed at most once a second; force it for this session.
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def spawn(rig: Rig, instance_id: str, groups: Sequence[str], *extra: str) -> CoordinatorProcess:
    process = CoordinatorProcess(
        rig.dsn,
        groups,
        instance_id=instance_id,
        extra_args=extra,
        ttl=TIMINGS["ttl"],
        heartbeat_interval=TIMINGS["heartbeat_interval"],
        heartbeat_timeout=TIMINGS["heartbeat_timeout"],
    )
    process.start()
    return process


async def last_election(process: CoordinatorProcess, count: int) -> float:
    """When ``process`` logged the last of ``count`` elections (its log may lag the database)."""
    deadline = time.monotonic() + WAIT
    while True:
        acquired = [r for r in process.records() if r.get("event") == "leadership_acquired"]
        if len(acquired) >= count:
            return max(logged_at(r) for r in acquired)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{process.instance_id} logged {len(acquired)} elections, not {count}"
            )
        await asyncio.sleep(0.05)


async def one_process(rig: Rig, count: int, wait: str) -> dict[str, float]:
    """One process with ``count`` groups, then a follower that takes them all over."""
    groups = group_names(count)
    mode = ["--wait", wait, "--poll-interval", str(POLL_INTERVAL)]
    started = time.time()
    first = spawn(rig, f"{wait}-first", groups, *mode)
    second = None
    try:
        await rig.wait_for(
            "SELECT count(*) = $1 FROM coordinator.leader_status WHERE leader = $2",
            count,
            first.instance_id,
        )
        cold = await last_election(first, count) - started
        connections = await rig.connections(first.instance_id)
        xacts, _ = await rig.at_rest()
        second = spawn(rig, f"{wait}-second", groups, *mode)
        if wait == "poll":
            # One session row beats for every group the second one follows.
            await rig.wait_for(
                "SELECT count(*) = 1 FROM coordinator.sessions WHERE instance_id = $1",
                second.instance_id,
            )
        else:
            # Lined up: every follower session blocked in pg_advisory_lock.
            await rig.wait_for(
                "SELECT count(*) = $1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                count,
            )
        killed = time.time()
        os.kill(first.pid, signal.SIGKILL)
        await rig.wait_for(
            "SELECT count(*) = $1 FROM coordinator.leader_status WHERE leader = $2",
            count,
            second.instance_id,
        )
        await last_election(second, count)
        acquired = [
            logged_at(r) for r in second.records() if r.get("event") == "leadership_acquired"
        ]
        return {
            "groups": count,
            "connections": connections,
            "xacts_per_s": xacts,
            "cold_start_s": cold,
            "takeover_first_s": min(acquired) - killed,
            "takeover_all_s": max(acquired) - killed,
        }
    finally:
        first.close()
        if second is not None:
            second.close()


async def many_processes(rig: Rig, processes: int, count: int, fair: bool) -> dict[str, float]:
    """``processes`` instances of ``count`` groups started together."""
    groups = group_names(count)
    extra = [
        "--wait",
        "poll",
        "--poll-interval",
        str(POLL_INTERVAL),
        "--fair-spread",
        "true" if fair else "false",
    ]
    started = time.time()
    members = [
        spawn(rig, f"{'fair' if fair else 'plain'}-{n:02d}", groups, *extra)
        for n in range(processes)
    ]
    try:
        everyone = await rig.wait_for(
            "SELECT count(*) = $1 FROM coordinator.leader_status WHERE leader IS NOT NULL", count
        )
        if fair:
            # Spreading is done when nobody leads more than its share plus the hysteresis.
            limit = math.ceil(count / processes) + 1
            await rig.wait_for(
                "SELECT coalesce(max(n), 0) <= $1 FROM (SELECT count(*) AS n "
                "FROM coordinator.leader_status WHERE leader IS NOT NULL GROUP BY leader) AS s",
                limit,
            )
        xacts, cpu = await rig.at_rest()
        spread = await rig.leaders()
        per_process = [spread.get(m.instance_id, 0) for m in members]
        return {
            "processes": processes,
            "groups": count,
            "all_led_s": everyone - started,
            "most": max(per_process),
            "fewest": min(per_process),
            "xacts_per_s": xacts,
            "db_cpu": cpu,
        }
    finally:
        for member in members:
            member.close()


class TierMember:
    """A ``coordinator run`` of the tier, configured by a TOML file, logging to a file.

    Not through a pipe, as :class:`CoordinatorProcess` reads: at 100,000
    groups fifty processes log their elections faster than one reader
    parses them on 2 shared cores, and a process blocked on a full pipe
    stops in its tracks, heartbeat and all.
    """

    def __init__(self, rig: Rig, instance_id: str, config: Path) -> None:
        self.instance_id = instance_id
        self._log = config.parent / f"{instance_id}.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "coordinator", "run", "--dsn", rig.dsn,
                 "--instance-id", instance_id, "--config", str(config), "--log-format", "json"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self._process.pid

    def records(self) -> list[dict[str, Any]]:
        """The JSON records of its log so far (stderr's plain lines are left out)."""
        records = []
        for line in self._log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


def tier_config(directory: Path, count: int) -> Path:
    """The tier's settings file; its groups are in a groups file, one name per line."""
    groups = directory / f"tier-{count}.txt"
    groups.write_text("".join(f"{name}\n" for name in group_names(count)))
    path = directory / f"tier-{count}.toml"
    lines = [
        f"{name} = {value}"
        for name, value in {**TIER_TIMINGS, "poll_interval": POLL_INTERVAL}.items()
    ]
    lines += ['wait = "poll"', "fair_spread = true", f'groups_file = "{groups}"']
    path.write_text("\n".join([*lines, ""]))
    return path


#: The tier watches the leader table, not the view: at 100,000 groups every read
#: of the view copies the lock table, and the watching must not be the load.
LED = "FROM coordinator.leaders WHERE holder IS NOT NULL"


async def all_led_at(rig: Rig, count: int, since: float) -> float:
    """When the last group first got a leader: the latest first ``elected`` event."""
    await rig.wait_for(f"SELECT count(*) = $1 {LED}", count, every=0.5)
    return float(
        str(
            await rig.fetchval(
                "SELECT extract(epoch FROM max(first)) FROM (SELECT min(at) AS first "
                "FROM coordinator.events WHERE kind = 'elected' AND at >= to_timestamp($1) "
                "GROUP BY group_name) AS e",
                since,
            )
        )
    )


async def tier(rig: Rig, processes: int, count: int) -> dict[str, float]:
    """``processes`` instances with fair spreading share ``count`` groups; one is SIGKILLed."""
    with tempfile.TemporaryDirectory() as directory:
        config = tier_config(Path(directory), count)
        started = time.time()
        members, spawned = [], []
        for n in range(processes):
            spawned.append(time.time())
            members.append(TierMember(rig, f"tier-{n:02d}", config))
        try:
            row = await _tier_run(rig, members, count, started)
            return {**row, **start_up(members, spawned, started)}
        finally:
            for member in members:
                member.close()


def start_up(members: list[TierMember], spawned: list[float], started: float) -> dict[str, float]:
    """How long each process took from its spawn to ``coordinator_started`` (connected,
    groups registered, electing), and when the last one got there."""
    ready = [
        next(logged_at(r) for r in member.records() if r.get("event") == "coordinator_started")
        for member in members
    ]
    took = [at - spawn for at, spawn in zip(ready, spawned, strict=True)]
    return {
        "start_up_median_s": statistics.median(took),
        "start_up_max_s": max(took),
        "last_started_s": max(ready) - started,
    }


async def _tier_run(
    rig: Rig, members: list[TierMember], count: int, started: float
) -> dict[str, float]:
    processes = len(members)
    await rig.wait_for("SELECT count(*) = $1 FROM coordinator.sessions", processes, every=0.5)
    all_joined = time.time()
    all_led = await all_led_at(rig, count, started)
    spread_at = await spread(rig, count, processes)
    # A ttl long: every heartbeat, every look at the members and one per-group scan.
    xacts, cpu = await rig.at_rest(TIER_TIMINGS["ttl"])
    # The readers' view agrees: every group led by a live holder.
    seen = await rig.fetchval(
        "SELECT count(*) FROM coordinator.leader_status WHERE leader IS NOT NULL"
    )
    if seen != count:
        raise RuntimeError(f"leader_status shows {seen} of {count} groups led")
    memory = sum(_rss(member.pid) for member in members) / processes
    # A watcher (the second oldest), one from the middle, the newest.
    victims = [members[1], members[processes // 2], members[-1]]
    re_led = []
    for killed, victim in enumerate(victims):
        # Each kill hits a settled fleet: the previous kill's shares have moved.
        await spread(rig, count, processes - killed)
        re_led.append(await _kill_and_wait(rig, victim))
    return {
        "processes": processes,
        "groups": count,
        "all_joined_s": all_joined - started,
        "all_led_s": all_led - started,
        "led_after_joined_s": max(0.0, all_led - all_joined),
        "spread_s": spread_at - started,
        "xacts_per_s": xacts,
        "db_cpu": cpu,
        "rss_mb": memory / 2**20,
        "orphans": sum(orphans for orphans, _ in re_led) / len(re_led),
        "re_led_median_s": statistics.median(seconds for _, seconds in re_led),
        "re_led_max_s": max(seconds for _, seconds in re_led),
    }


async def spread(rig: Rig, count: int, processes: int) -> float:
    """When every group is led and nobody leads more than its share plus one."""
    return await rig.wait_for(
        f"SELECT coalesce(sum(n), 0) = $1 AND coalesce(max(n), 0) <= $2 FROM "
        f"(SELECT count(*) AS n {LED} GROUP BY holder) AS s",
        count,
        math.ceil(count / processes) + 1,
        every=0.5,
    )


async def _kill_and_wait(rig: Rig, victim: TierMember) -> tuple[int, float]:
    """SIGKILL ``victim``; return how many groups it led and when the last was led again."""
    conn = await asyncpg.connect(rig.dsn)
    try:
        orphans = [
            row["group_name"]
            for row in await conn.fetch(
                "SELECT group_name FROM coordinator.leaders WHERE holder = $1",
                victim.instance_id,
            )
        ]
        killed = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while await conn.fetchval(
            f"SELECT count(*) {LED} AND group_name = ANY($1) AND holder <> $2",
            orphans,
            victim.instance_id,
        ) < len(orphans):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the groups of {victim.instance_id} were not led again")
            await asyncio.sleep(0.1)
        re_led = await conn.fetchval(
            "SELECT extract(epoch FROM max(first)) FROM (SELECT min(at) AS first "
            "FROM coordinator.events WHERE kind = 'elected' AND group_name = ANY($1) "
            "AND at >= to_timestamp($2) GROUP BY group_name) AS e",
            orphans,
            killed,
        )
    finally:
        await conn.close()
    return len(orphans), float(re_led) - killed


def _rss(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0.0


async def fresh_database(server: LocalPostgres, name: str) -> str:
    database = await Database.create(server, name)
    await migrate(database.dsn)
    return database.dsn


def report(single: list[dict[str, Any]], spread: list[dict[str, Any]], command: str) -> str:
    lines = [
        BEGIN,
        "## Scale",
        "",
        f"Command: `{command}`. Settings: ttl {TIMINGS['ttl']:g} s, heartbeat every "
        f"{TIMINGS['heartbeat_interval']:g} s, poll interval {POLL_INTERVAL:g} s; "
        f"rest windows of {REST_WINDOW:g} s. Times are from the processes' own logs.",
        "",
        "### One process, then a second one that takes over after SIGKILL",
        "",
        "| mode | groups | connections | transactions/s at rest | cold start: all led | "
        "takeover: first group | takeover: all groups |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in single:
        lines.append(
            f"| {row['mode']} | {row['groups']:.0f} | {row['connections']:.0f} | "
            f"{row['xacts_per_s']:.1f} | {row['cold_start_s']:.2f} s | "
            f"{row['takeover_first_s'] * 1000:.0f} ms | {row['takeover_all_s']:.2f} s |"
        )
    lines += [
        "",
        "Blocking mode needs a connection per group and process, so it runs here with "
        "fewer groups; 1,000 groups would take 1,001 connections per process.",
        "",
        "### Many processes sharing the groups (shared-session mode)",
        "",
        "| fair spreading | processes x groups | all groups led | leaderships per process "
        "(most / fewest) | database CPU at rest | transactions/s at rest |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for row in spread:
        lines.append(
            f"| {'on' if row['fair'] else 'off'} | {row['processes']:.0f} x {row['groups']:.0f} "
            f"| {row['all_led_s']:.2f} s | {row['most']:.0f} / {row['fewest']:.0f} | "
            f"{row['db_cpu'] * 100:.1f} % of a core | {row['xacts_per_s']:.1f} |"
        )
    lines += [
        "",
        "In blocking mode the same 20 x 200 would need 4,020 connections; it is not run.",
    ]
    lines += ["", TIER_BEGIN, TIER_END, END]
    return "\n".join(lines)


def tier_report(tiers: list[dict[str, Any]], failed: list[tuple[str, str]], command: str) -> str:
    lines = [
        TIER_BEGIN,
        "### The tier: many processes, fair spreading on, three SIGKILLed in turn",
        "",
        f"Command: `{command}` (one trial per row), on one embedded PostgreSQL 18 with "
        "`max_locks_per_transaction = 512` and `max_connections = 600`. Settings: "
        f"ttl {TIER_TIMINGS['ttl']:g} s, heartbeat every "
        f"{TIER_TIMINGS['heartbeat_interval']:g} s (timeout "
        f"{TIER_TIMINGS['heartbeat_timeout']:g} s), poll interval {POLL_INTERVAL:g} s; "
        "the rest window is one ttl long.",
        "",
        "| processes x groups | one process's start-up (median / max) | "
        "all processes connected | all groups led | "
        "led after the last connected | spread evenly | database CPU at rest | "
        "per 1,000 groups | transactions/s at rest | client memory per process | "
        "SIGKILL of 3 in turn: their groups all led again (median / max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in tiers:
        lines.append(
            f"| {row['processes']:.0f} x {row['groups']:,.0f} | "
            f"{row['start_up_median_s']:.1f} s / {row['start_up_max_s']:.1f} s | "
            f"{row['all_joined_s']:.1f} s | "
            f"{row['all_led_s']:.1f} s | {row['led_after_joined_s']:.1f} s | "
            f"{row['spread_s']:.1f} s | {row['db_cpu'] * 100:.1f} % of a core | "
            f"{row['db_cpu'] * 100 * 1000 / row['groups']:.3f} % | {row['xacts_per_s']:.1f} | "
            f"{row['rss_mb']:.0f} MB | {row['re_led_median_s']:.2f} s / "
            f"{row['re_led_max_s']:.2f} s ({row['orphans']:.0f} groups) |"
        )
    lines += [f"| {row} | did not settle: {why} |" + " |" * 9 for row, why in failed]
    lines += [
        "",
        "Times are from the start of the first process; a process's start-up is from "
        "its spawn to its `coordinator_started` (connected, groups registered, electing), "
        'with all of them starting at once. "All groups led" is the first '
        '`elected` event of the last group to get a leader; "spread evenly" is when no '
        "process leads more than its share plus one. The plot is "
        "[scale.png](scale.png).",
        TIER_END,
    ]
    return "\n".join(lines)


def write_section(section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the part of bench/RESULTS.md between ``begin`` and ``end`` (or append it)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


async def run(args: argparse.Namespace) -> None:
    # The tier's 100,000 locks need a bigger lock table: 600 x 512 slots.
    settings = {"max_connections": "600", "max_locks_per_transaction": "512"}
    with LocalPostgres.embedded(settings=settings) as server:
        single: list[dict[str, Any]] = []
        singles = [] if args.tier_only else [("poll", args.groups), ("block", args.block_groups)]
        for mode, count in singles:
            rig = Rig(server, await fresh_database(server, f"scale_{mode}"))
            row = await one_process(rig, count, mode)
            single.append({"mode": mode, **row})
            print(f"one process, {mode}: {row}", flush=True)
        spread: list[dict[str, Any]] = []
        for fair in [] if args.tier_only else [False, True]:
            rig = Rig(server, await fresh_database(server, f"spread_{fair}"))
            row = await many_processes(rig, args.processes, args.shared_groups, fair)
            spread.append({"fair": fair, **row})
            print(f"{args.processes} processes, fair={fair}: {row}", flush=True)
        tiers: list[dict[str, Any]] = []
        failed: list[tuple[str, str]] = []  # (processes x groups, why)
        for processes, count in args.tiers:
            rig = Rig(server, await fresh_database(server, f"tier_{processes}_{count}"))
            try:
                row = await tier(rig, processes, count)
            except (TimeoutError, MemoryError) as error:  # the smaller rows still count
                print(f"tier, {processes} processes x {count} groups: failed: {error}", flush=True)
                failed.append((f"{processes} x {count:,}", str(error).split(":")[0]))
                continue
            tiers.append(row)
            print(f"tier, {processes} processes x {count} groups: {row}", flush=True)
    if not args.tier_only:
        section = report(single, spread, args.command)
        print(section)
        write_section(section)
    if tiers:
        plot_costs(tiers, PLOT)
        section = tier_report(tiers, failed, args.command)
        print(section)
        write_section(section, TIER_BEGIN, TIER_END)


DEFAULT_TIERS = "50x1000,50x10000,50x100000"


def tiers_argument(text: str) -> list[tuple[int, int]]:
    tiers = []
    for item in filter(None, text.split(",")):
        processes, _, groups = item.partition("x")
        if not (processes.isdigit() and groups.isdigit()):
            raise argparse.ArgumentTypeError(f"{item!r} is not PROCESSESxGROUPS, e.g. 50x1000")
        tiers.append((int(processes), int(groups)))
    return tiers


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument(
        "--tier-only",
        action="store_true",
        help="run only the tier, and replace only its part of RESULTS.md",
    )
    parser.add_argument("--groups", type=int, default=1000, help="one process, poll mode")
    parser.add_argument("--block-groups", type=int, default=200, help="one process, block mode")
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--shared-groups", type=int, default=200)
    parser.add_argument(
        "--tiers",
        type=tiers_argument,
        default=tiers_argument(DEFAULT_TIERS),
        help=f"PROCESSESxGROUPS, comma-separated ({DEFAULT_TIERS}); empty to skip the tier",
    )
    args = parser.parse_args()
    args.command = "python -m bench.scale " + " ".join(sys.argv[1:])
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
