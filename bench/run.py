"""``python -m bench``: every measurement, in one run, on one embedded PostgreSQL 18.

Creates the peers' virtual environments if needed, starts the server, then
measures in turn: the floor, pg-coordinator's four faults, pals, APScheduler
4, and the overhead at rest. Each distribution is printed as it completes;
at the end ``RESULTS.md``, ``results.json`` and ``failover.png`` are written
(into ``bench/`` unless ``--out`` says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
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
from bench.peer_pals import measure_pals
from bench.plot import Range, Series, plot_failovers
from bench.published import PUBLISHED
from bench.results import Results, keep_sections, markdown, raw
from bench.stats import Distribution
from bench.venvs import APSCHEDULER4, PALS
from coordinator.testing import LocalPostgres

__all__ = ["main"]

#: Short, so that a hang or partition trial takes seconds; the results quote it.
HANG_SETTINGS = Settings(ttl=2.0, heartbeat_interval=0.25, heartbeat_timeout=0.5)
#: How often the APScheduler 4 schedule is due.
SCHEDULE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Plan:
    """How many trials each measurement gets, and how long the windows last."""

    crash_trials: int  # the floor's kill, pg-coordinator's kill and term, pals' kill
    hang_trials: int  # pg-coordinator's stop and blackhole: about 3.3 s each
    scheduler_trials: int  # APScheduler 4: about 2 s each
    cheap_trials: int  # the floor's unlock and commit: milliseconds each
    overhead_window: float
    pals_hang_window: float

    @classmethod
    def for_trials(cls, trials: int, *, overhead_window: float = 60.0) -> Plan:
        return cls(
            crash_trials=trials,
            hang_trials=max(3, math.ceil(trials * 0.5)),
            scheduler_trials=max(3, math.ceil(trials * 0.4)),
            cheap_trials=2 * trials,
            overhead_window=overhead_window,
            pals_hang_window=5 * (HANG_SETTINGS.ttl or 0.0),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--trials",
        type=int,
        default=100,
        help="trials of each crash-like measurement (100); the slower ones get fewer in proportion",
    )
    parser.add_argument(
        "--quick", action="store_true", help="20 trials and a 15 s overhead window: a few minutes"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="where to write results"
    )
    args = parser.parse_args(argv)
    plan = Plan.for_trials(20, overhead_window=15.0) if args.quick else Plan.for_trials(args.trials)
    command = _command(sys.argv[1:] if argv is None else list(argv))

    for env in (APSCHEDULER4, PALS):
        env.ensure()
    log_dir = Path(tempfile.mkdtemp(prefix="pg-coordinator-bench-"))
    started = time.monotonic()
    try:
        with embedded_server() as server:
            results = asyncio.run(_measure(server, plan, log_dir, command, started))
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
    server: LocalPostgres, plan: Plan, log_dir: Path, command: str, started: float
) -> Results:
    async def db(name: str) -> Database:
        return await Database.create(server, name)

    def show(label: str, distribution: Distribution) -> Distribution:
        print(f"{label:<46} {distribution.summary()}", flush=True)
        return distribution

    machine = environment.machine()  # first, for the load average before the run
    print(f"PostgreSQL {server.version} on 127.0.0.1:{server.port}; plan: {plan}", flush=True)
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

    pals = await measure_pals(
        await db("bench_pals"),
        PALS.python,
        plan.crash_trials,
        plan.pals_hang_window,
        log_dir,
    )
    show("pals: kill", pals.kill)
    print(f"{'pals: stop':<46} takeover {pals.hang_takeover} within {pals.hang_window:g} s")
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
    for name, env in (("APScheduler 4", APSCHEDULER4), ("pals", PALS)):
        installed = env.versions()
        versions[f"{name} venv"] = ", ".join(f"{k} {v}" for k, v in installed.items())
    return Results(
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        wall_seconds=time.monotonic() - started,
        machine=machine,
        versions=versions,
        floor_kill=floor_kill,
        floor_unlock=floor_unlock,
        commit=commit,
        ours=ours,
        pals=pals,
        apscheduler=apscheduler,
        overhead=overhead,
        overhead_window=plan.overhead_window,
    )


def _command(args: list[str]) -> str:
    """How this run was started, as a reader would type it."""
    if "MAKELEVEL" in os.environ:
        return "make bench" + (f" BENCH_ARGS={shlex.quote(shlex.join(args))}" if args else "")
    return shlex.join(["python", "-m", "bench", *args])


def _plot(r: Results, path: Path) -> None:
    series = [
        Series("floor: SIGKILL of a bare lock holder", "floor", r.floor_kill),
        Series("floor: pg_advisory_unlock", "floor", r.floor_unlock),
        *(
            Series(f"pg-coordinator: {fault.value}", "ours", o.failover)
            for fault, o in r.ours.items()
        ),
        Series("pals: SIGKILL", "peer", r.pals.kill),
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
