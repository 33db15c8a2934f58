"""``python -m bench``: every measurement, in one run, on one embedded PostgreSQL 18.

Creates the peers' virtual environments if needed, starts PostgreSQL and
the peers' servers (ZooKeeper, etcd, Redis; ``bench/setup.sh`` installs
them), then measures in turn: the floor, pg-coordinator's four faults, the
hand-over trace, the millisecond peers (PostgreSQL-based, and every peer's
graceful stop) one at a time, then the peers whose failover waits for a
timeout (seconds) all at once, APScheduler 4, and the overhead at rest.
Each distribution is printed as it completes; at the end ``RESULTS.md``,
``results.json`` and ``failover.png`` are written (into ``bench/`` unless
``--out`` says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import environment
from bench.cluster import Fault
from bench.database import Database, embedded_server
from bench.floor import measure_commit, measure_floor_kill, measure_floor_unlock
from bench.ours import Failovers, Settings, measure_failover
from bench.overhead import measure_overhead
from bench.peer_apscheduler import measure_apscheduler
from bench.peers import (
    NEVER_WINDOW_S,
    Context,
    HangSeries,
    Peer,
    PeerResults,
    measure_peer,
    peers,
)
from bench.peers import (
    Series as PeerSeries,
)
from bench.plot import Range, Series, plot_failovers
from bench.published import PUBLISHED
from bench.results import Results, keep_sections, markdown, raw
from bench.servers import Servers, peer_servers
from bench.stats import Distribution, format_seconds
from bench.trace import measure_trace, print_trace
from bench.venvs import APSCHEDULER4, ETCD3, PALS
from coordinator.testing import LocalPostgres

__all__ = ["main"]

#: Short, so that a hang or partition trial takes seconds; the results quote it.
HANG_SETTINGS = Settings(ttl=2.0, heartbeat_interval=0.25, heartbeat_timeout=0.5)
#: How often the APScheduler 4 schedule is due.
SCHEDULE_INTERVAL_S = 1.0
#: The peers' series whose figures are seconds set by timeouts run side by side, this many.
CONCURRENT_TIMEOUT_SERIES = 8


@dataclass(frozen=True)
class Plan:
    """How many trials each measurement gets, and how long the windows last."""

    crash_trials: int  # the floor's kill, pg-coordinator's kill, term and trace, fast peers
    hang_trials: int  # pg-coordinator's stop and blackhole: about 3.3 s each
    scheduler_trials: int  # APScheduler 4: about 2 s each
    cheap_trials: int  # the floor's unlock and commit: milliseconds each
    slow_peer_trials: int  # each fault of a peer that waits for a timeout: seconds each
    overhead_window: float

    @classmethod
    def for_trials(cls, trials: int, *, overhead_window: float = 60.0) -> Plan:
        return cls(
            crash_trials=trials,
            hang_trials=max(3, math.ceil(trials * 0.5)),
            scheduler_trials=max(3, math.ceil(trials * 0.4)),
            cheap_trials=2 * trials,
            slow_peer_trials=max(5, math.ceil(trials * 0.05)),
            overhead_window=overhead_window,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--trials",
        type=int,
        default=100,
        help="trials of each crash-like measurement (100); the slower ones get fewer in proportion",
    )
    parser.add_argument("--quick", action="store_true", help="20 trials and a 15 s overhead window")
    parser.add_argument(
        "--peer-trials",
        type=int,
        help="trials of each fault of the peers that wait for a timeout (5)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="where to write results"
    )
    args = parser.parse_args(argv)
    plan = Plan.for_trials(20, overhead_window=15.0) if args.quick else Plan.for_trials(args.trials)
    if args.peer_trials is not None:
        plan = dataclasses.replace(plan, slow_peer_trials=args.peer_trials)
    command = _command(sys.argv[1:] if argv is None else list(argv))

    for env in (APSCHEDULER4, PALS, ETCD3):
        env.ensure()
    log_dir = Path(tempfile.mkdtemp(prefix="pg-coordinator-bench-"))
    started = time.monotonic()
    try:
        with embedded_server() as server, peer_servers() as servers:
            results = asyncio.run(_measure(server, servers, plan, log_dir, command, started))
    except BaseException:
        print(f"\nthe processes' logs are kept in {log_dir}", file=sys.stderr)
        raise
    shutil.rmtree(log_dir, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    page = args.out / "RESULTS.md"
    previous = page.read_text() if page.exists() else ""
    page.write_text(keep_sections(markdown(results), previous))
    (args.out / "results.json").write_text(json.dumps(raw(results), indent=1) + "\n")
    _plot(results, args.out / "failover.png")
    print(f"\nwrote {args.out / 'RESULTS.md'}, results.json and failover.png")
    return 0


async def _measure(
    server: LocalPostgres,
    servers: Servers,
    plan: Plan,
    log_dir: Path,
    command: str,
    started: float,
) -> Results:
    async def db(name: str) -> Database:
        return await Database.create(server, name)

    def show(label: str, distribution: Distribution) -> Distribution:
        print(f"{label:<46} {distribution.summary()}", flush=True)
        return distribution

    machine = environment.machine()  # first, for the load average before the run
    print(f"PostgreSQL {server.version} on 127.0.0.1:{server.port}; {servers}", flush=True)
    print(f"plan: {plan}", flush=True)
    floor = await db("bench_floor")
    floor_kill = show(
        "floor: SIGKILL of the holder", await measure_floor_kill(floor, plan.crash_trials, log_dir)
    )
    floor_unlock = show(
        "floor: pg_advisory_unlock", await measure_floor_unlock(floor, plan.cheap_trials)
    )
    commit = show("floor: one durable commit", await measure_commit(floor, plan.cheap_trials))

    ours: dict[Fault, Failovers] = {}
    for fault in Fault:
        crash_like = fault in (Fault.KILL, Fault.TERM)
        ours[fault] = await measure_failover(
            await db(f"bench_ours_{fault.value}"),
            fault,
            Settings() if crash_like else HANG_SETTINGS,
            plan.crash_trials if crash_like else plan.hang_trials,
            log_dir,
        )
        show(f"pg-coordinator: {fault.value}", ours[fault].failover)

    traces = {}
    for fault in (Fault.TERM, Fault.KILL):
        traces[fault] = await measure_trace(
            await db(f"bench_trace_{fault.value}"), fault, plan.crash_trials, log_dir
        )
        print_trace(traces[fault])

    peer_results = await _measure_peers(servers, plan, log_dir, db)
    apscheduler = await measure_apscheduler(
        await db("bench_apscheduler"),
        APSCHEDULER4.python,
        plan.scheduler_trials,
        SCHEDULE_INTERVAL_S,
        log_dir,
    )
    show("APScheduler 4: kill until the next run", apscheduler.kill_to_run)
    show("APScheduler 4: that run late by", apscheduler.late)

    print(f"overhead: {plan.overhead_window:g} s at rest ...", flush=True)
    overhead = await measure_overhead(
        floor,
        {name: await db(f"idle_{name}") for name in ("ours", "pals", "apscheduler")},
        PALS.python,
        APSCHEDULER4.python,
        plan.overhead_window,
        log_dir,
    )
    for footprint in overhead:
        print(f"  {footprint}")

    versions = {"PostgreSQL": await environment.server_version(floor)}
    versions |= environment.our_versions()
    versions |= environment.peer_versions()
    versions |= servers.versions
    packages = dict(versions)
    for name, env in (("APScheduler 4", APSCHEDULER4), ("pals", PALS), ("python-etcd3", ETCD3)):
        installed = env.versions()
        packages |= installed
        versions[f"{name} venv"] = ", ".join(f"{k} {v}" for k, v in installed.items())
    return Results(
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        wall_seconds=time.monotonic() - started,
        machine=machine,
        versions=versions,
        packages=packages,
        floor_kill=floor_kill,
        floor_unlock=floor_unlock,
        commit=commit,
        ours=ours,
        traces=traces,
        peers=peer_results,
        apscheduler=apscheduler,
        overhead=overhead,
        overhead_window=plan.overhead_window,
    )


async def _measure_peers(
    servers: Servers, plan: Plan, log_dir: Path, db: Callable[[str], Awaitable[Database]]
) -> list[PeerResults]:
    """Every peer and profile: crash, graceful stop and hang.

    One series at a time where the figures are milliseconds (everything of
    the PostgreSQL-based peers, every other peer's graceful stop at its
    defaults), so that nothing else runs meanwhile; then the crash and hang
    series of the others side by side, since their figures are seconds that
    their timeouts set, longest first.
    """
    ctx = Context(
        servers, {"pals": await db("bench_pals"), "tooz-pg": await db("bench_tooz_pg")}, log_dir
    )
    every = peers(ETCD3.python, servers)
    found: dict[str, dict[Fault, PeerSeries | HangSeries]] = {p.key: {} for p in every}

    async def measure(peer: Peer, faults: Sequence[Fault], trials: int) -> None:
        for fault, series in (await measure_peer(peer, ctx, faults, trials)).items():
            found[peer.key][fault] = series
            print(f"{peer.label + ': ' + fault.value:<46} {_peer_summary(series)}", flush=True)

    for peer in every:
        if peer.fast:
            await measure(peer, (Fault.KILL, Fault.TERM, Fault.STOP), plan.crash_trials)
        elif peer.profile == "defaults":
            await measure(peer, (Fault.TERM,), plan.slow_peer_trials)
    slow = [(p, f) for p in every if not p.fast for f in (Fault.KILL, Fault.STOP)]
    slow.sort(key=lambda series: -(series[0].expiry or NEVER_WINDOW_S))
    running = asyncio.Semaphore(CONCURRENT_TIMEOUT_SERIES)

    async def measure_side_by_side(peer: Peer, fault: Fault) -> None:
        async with running:
            await measure(peer, (fault,), plan.slow_peer_trials)

    print(f"peers: {len(slow)} timeout-bound series, {CONCURRENT_TIMEOUT_SERIES} at a time ...")
    await asyncio.gather(*(measure_side_by_side(p, f) for p, f in slow))
    order = (Fault.KILL, Fault.TERM, Fault.STOP)
    return [PeerResults(p, {f: found[p.key][f] for f in order if f in found[p.key]}) for p in every]


def _peer_summary(series: PeerSeries | HangSeries) -> str:
    if isinstance(series, HangSeries):
        if series.takeover is None:
            return f"no takeover within {series.none_within:g} s"
        told = [t for t in series.told if t is not None]
        return (
            f"takeover median {format_seconds(series.takeover.median)} (n={series.takeover.n}); "
            f"old leader told in {len(told)} of {len(series.told)}"
            + (f", median {format_seconds(sorted(told)[len(told) // 2])}" if told else "")
        )
    if series.failover is None:
        return f"no takeover within {series.none_within:g} s"
    return series.failover.summary()


def _command(args: list[str]) -> str:
    """How this run was started, as a reader would type it."""
    if "MAKELEVEL" in os.environ:
        return "make bench" + (f" BENCH_ARGS={shlex.quote(shlex.join(args))}" if args else "")
    return shlex.join(["python", "-m", "bench", *args])


_PLOTTED = {Fault.KILL: "SIGKILL", Fault.TERM: "SIGTERM"}


def _plot(r: Results, path: Path) -> None:
    series = [
        Series("floor: SIGKILL of a bare lock holder", "floor", r.floor_kill),
        Series("floor: pg_advisory_unlock", "floor", r.floor_unlock),
        *(
            Series(f"pg-coordinator: {fault.value}", "ours", o.failover)
            for fault, o in r.ours.items()
        ),
        *(
            Series(f"{p.peer.label}: {_PLOTTED[f]}", "peer", d)
            for p in r.peers
            for f, series in p.faults.items()
            if f in _PLOTTED
            and (d := series.failover if isinstance(series, PeerSeries) else None) is not None
        ),
        Series(
            f"APScheduler 4: SIGKILL until the next run (every {r.apscheduler.interval:g} s)",
            "peer",
            r.apscheduler.kill_to_run,
        ),
    ]
    ranges = [Range(f"{p.system.split(' (')[0]}: crash", *p.crash) for p in PUBLISHED]
    ttl = HANG_SETTINGS.ttl or 0.0
    plot_failovers(
        series,
        ranges,
        ttl,
        "Failover: from the fault until the new leader's code runs\n"
        f"PostgreSQL {r.versions['PostgreSQL']}, {r.machine['CPUs (nproc)']} CPUs; "
        f"pg-coordinator kill and term with its defaults, stop and blackhole with ttl {ttl:g} s",
        path,
    )
