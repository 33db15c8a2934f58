"""Job continuity: does a leader-only job every 1 s keep its ticks across failovers?

    python -m bench.jobs                    # 30 faults of each kind, both systems
    python -m bench.jobs --faults 3         # a quick look
    python -m bench.jobs --kinds "kill between runs"   # measure one kind again

Three replicas (``bench/job_subject.py``) run one leader-only job every
second on one embedded PostgreSQL 18 (durable settings, commit timestamps
on); each run inserts a row and holds its transaction for 0.3 s. Faults, one
at a time, each followed by a restart of the replica it took down: SIGKILL
of the leader between runs, SIGKILL during a run, SIGSTOP past the ttl
(then SIGCONT), SIGTERM during a run. Per kind: the longest gap between
consecutive committed ticks, early runs (a gap shorter than the interval
minus 0.2 s), ticks run twice, ticks of the 1 s grid that never ran, stale
commits (a row of an older term committed after one of a newer term) and the
time from the new leader's election to its first run.

Both systems run the same subject: this tree (the shared timetable) and the
tree before it (``git archive`` of the parent of the commit that added
``migrations/0003_jobs.sql``), whose leader-only jobs live in each replica's
memory. Writes the "Job continuity" section of ``bench/RESULTS.md`` and the
samples to ``bench/jobs.json``; with ``--kinds``, the kinds measured replace
theirs in the samples and the others are kept, each row saying which run it
comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.database import DURABLE, Database
from bench.scale import write_section
from bench.stats import Distribution, format_seconds
from coordinator import migrate
from coordinator.testing import LocalPostgres

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUBJECT = HERE / "job_subject.py"
SAMPLES = HERE / "jobs.json"
BEGIN, END = "<!-- jobs:begin -->", "<!-- jobs:end -->"
SYSTEMS = ("baseline", "timetable")
KINDS = ("kill between runs", "kill during a run", "stop past the ttl", "term during a run")
INTERVAL, WORK, TTL, HEARTBEAT, GRACE = 1.0, 0.3, 3.0, 1.0, 10
EARLY_S = 0.2
WAIT_S = 30.0
POLL_S = 0.01

CREATE_TICKS = """
    CREATE TABLE bench_ticks (
        id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        scheduled_at timestamptz,
        term         bigint      NOT NULL,
        instance_id  text        NOT NULL,
        at           timestamptz NOT NULL DEFAULT clock_timestamp()
    )
"""
# A run in progress: its transaction inserted the row and now holds it open.
IN_RUN = """
    SELECT count(*) FROM pg_stat_activity
     WHERE datname = current_database() AND state = 'idle in transaction'
       AND query LIKE 'INSERT INTO bench_ticks%'
"""
TICKS = """
    SELECT scheduled_at, term, at, pg_xact_commit_timestamp(xmin) AS committed
      FROM bench_ticks ORDER BY committed, id
"""


@dataclass
class Fault:
    kind: str
    at: datetime
    old_term: int
    new_term: int = 0
    elected_at: datetime | None = None


@dataclass
class KindFigures:
    """One system's figures for one kind of fault."""

    gaps: list[float] = field(default_factory=list)  # per fault, the longest gap around it
    elected_to_first_run: list[float] = field(default_factory=list)
    early: int = 0
    twice: int = 0
    not_run: int = 0
    stale: int = 0


class Replicas:
    """The three subject processes of one system; their output goes to files."""

    def __init__(self, dsn: str, python_path: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.python_path = python_path
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._started = 0

    def start(self) -> str:
        self._started += 1
        instance_id = f"replica-{self._started}"
        env = {**os.environ, "PYTHONPATH": self.python_path}
        command = [sys.executable, str(SUBJECT), "--dsn", self.dsn, "--instance-id", instance_id]
        command += ["--interval", str(INTERVAL), "--work", str(WORK), "--grace", str(GRACE)]
        command += ["--ttl", str(TTL), "--heartbeat", str(HEARTBEAT)]
        with (self.log_dir / f"{instance_id}.log").open("wb") as log:
            self.processes[instance_id] = subprocess.Popen(
                command, cwd=tempfile.gettempdir(), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return instance_id

    def send(self, instance_id: str, signum: signal.Signals) -> None:
        self.processes[instance_id].send_signal(signum)

    async def wait_exit(self, instance_id: str) -> None:
        await asyncio.to_thread(self.processes.pop(instance_id).wait, WAIT_S)

    def close(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait()

    def tracebacks(self) -> int:
        return sum(
            log.read_text(errors="replace").count("Traceback") for log in self.log_dir.iterdir()
        )


async def until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


class Probe:
    """The driver's own connection: who leads, whether a run is in progress, the ticks."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def leader(self, after_term: int = 0) -> tuple[str, int] | None:
        row = await self.conn.fetchrow(
            "SELECT leader, term FROM coordinator.leader_status WHERE group_name = 'bench-jobs'"
        )
        if row is None or row["leader"] is None or row["term"] <= after_term:
            return None
        return row["leader"], row["term"]

    async def on_time(self, term: int) -> int:
        """Commits of ``term`` whose run started within half an interval of its fire time."""
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM bench_ticks WHERE term = $1 AND "
            "(scheduled_at IS NULL OR at - scheduled_at < make_interval(secs => $2))",
            term,
            INTERVAL / 2,
        )
        return count

    async def committed(self, term: int) -> int:
        """The runs of ``term`` committed so far."""
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM bench_ticks WHERE term = $1", term
        )
        return count

    async def in_run(self) -> bool:
        return bool(await self.conn.fetchval(IN_RUN))

    async def elected_at(self, term: int) -> datetime | None:
        at: datetime | None = await self.conn.fetchval(
            "SELECT at FROM coordinator.events WHERE group_name = 'bench-jobs' "
            "AND kind = 'elected' AND term = $1",
            term,
        )
        return at


async def one_fault(probe: Probe, replicas: Replicas, kind: str) -> Fault:
    leader, term = await until("a leader", probe.leader)
    await until("two ticks of the term on time", lambda: _at_least(probe, term, 2))
    await until("a run", probe.in_run)
    if kind == "kill between runs":
        # Between runs means after the run's commit, not after its INSERT: a
        # fenced run still has its own statements to make before COMMIT, and a
        # kill there is a kill during a run (the tick runs again).
        committed = await probe.committed(term)
        await until("the run to commit", lambda: _more(probe, term, committed))
    fault = Fault(kind, datetime.now(UTC), term)
    signum = {
        "kill between runs": signal.SIGKILL,
        "kill during a run": signal.SIGKILL,
        "stop past the ttl": signal.SIGSTOP,
        "term during a run": signal.SIGTERM,
    }[kind]
    replicas.send(leader, signum)
    _, fault.new_term = await until("a new leader", lambda: probe.leader(term))
    await until("two ticks of the new term on time", lambda: _at_least(probe, fault.new_term, 2))
    fault.elected_at = await probe.elected_at(fault.new_term)
    if signum is signal.SIGSTOP:
        replicas.send(leader, signal.SIGCONT)  # it rejoins as a follower
    else:
        await replicas.wait_exit(leader)
        replicas.start()
    return fault


async def _at_least(probe: Probe, term: int, count: int) -> bool:
    """The term has settled: ``count`` runs on time (after a catch-up, say)."""
    return await probe.on_time(term) >= count


async def _more(probe: Probe, term: int, than: int) -> bool:
    return await probe.committed(term) > than


def figures(records: list[asyncpg.Record], faults: list[Fault]) -> dict[str, KindFigures]:
    """Each fault's window: from its fault to the next fault (or the end)."""
    by_kind = {kind: KindFigures() for kind in KINDS}
    ticks = _with_stale(records)
    for index, fault in enumerate(faults):
        end = faults[index + 1].at if index + 1 < len(faults) else None
        # The last commit before the fault opens the window: the gap across the fault counts.
        before = [t for t in ticks if t["committed"] < fault.at]
        window = before[-1:] + [
            t for t in ticks if t["committed"] >= fault.at and (end is None or t["committed"] < end)
        ]
        kind = by_kind[fault.kind]
        gaps = [
            (later["committed"] - earlier["committed"]).total_seconds()
            for earlier, later in itertools.pairwise(window)
        ]
        if gaps:
            kind.gaps.append(max(gaps))
            kind.early += sum(
                1 for earlier, later in itertools.pairwise(window) if _early(earlier, later)
            )
        kind.not_run += _not_run(window)
        kind.stale += sum(1 for t in window if t["stale"])
        scheduled = [t["scheduled_at"] for t in window if t["scheduled_at"] is not None]
        kind.twice += len(scheduled) - len(set(scheduled))
        first = next((t for t in window if t["term"] == fault.new_term), None)
        if first is not None and fault.elected_at is not None:
            kind.elected_to_first_run.append((first["at"] - fault.elected_at).total_seconds())
    return by_kind


def _early(earlier: dict[str, Any], later: dict[str, Any]) -> bool:
    """A run that started sooner than one interval (less 0.2 s) after the previous one was due."""
    due = earlier["scheduled_at"] or earlier["at"]
    return bool((later["at"] - due).total_seconds() < INTERVAL - EARLY_S)


def _not_run(window: list[dict[str, Any]]) -> int:
    """Ticks of the grid with no commit: by fire time where known, else by commit gaps."""
    if all(t["scheduled_at"] is not None for t in window):
        times = sorted({t["scheduled_at"] for t in window})
    else:
        times = [t["committed"] for t in window]
    return sum(
        max(0, round((later - earlier).total_seconds() / INTERVAL) - 1)
        for earlier, later in itertools.pairwise(times)
    )


def _with_stale(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """The ticks in commit order, each marked stale if a newer term committed before it."""
    newest, ticks = 0, []
    for record in records:
        ticks.append({**dict(record), "stale": record["term"] < newest})
        newest = max(newest, record["term"])
    return ticks


async def measure(
    server: LocalPostgres, system: str, faults: int, kinds: list[str], log_root: Path
) -> dict[str, Any]:
    database = await Database.create(server, f"jobs_{system}")
    with _code_of(system) as python_path:
        await _migrate(database.dsn, system, python_path)
        await database.execute(CREATE_TICKS)
        log_dir = log_root / system
        log_dir.mkdir(parents=True)
        replicas = Replicas(database.dsn, python_path, log_dir)
        conn = await asyncpg.connect(database.dsn)
        done: list[Fault] = []
        try:
            for _ in range(3):
                replicas.start()
            probe = Probe(conn)
            for round_ in range(faults):
                for kind in kinds:
                    done.append(await one_fault(probe, replicas, kind))
                    print(f"{system}: {kind} {round_ + 1}/{faults}", flush=True)
            ticks = list(await conn.fetch(TICKS))
        finally:
            await conn.close()
            replicas.close()
    by_kind = figures(ticks, done)
    return {
        "system": system,
        "tracebacks": replicas.tracebacks(),
        "kinds": {kind: asdict(by_kind[kind]) for kind in kinds},
    }


async def _migrate(dsn: str, system: str, python_path: str) -> None:
    if system == "timetable":
        await migrate(dsn)
        return
    code = f"import asyncio, coordinator; asyncio.run(coordinator.migrate({dsn!r}))"
    env = {**os.environ, "PYTHONPATH": python_path}
    command = [sys.executable, "-c", code]
    await asyncio.to_thread(subprocess.run, command, env=env, cwd=tempfile.gettempdir(), check=True)


@contextlib.contextmanager
def _code_of(system: str) -> Iterator[str]:
    """This tree for ``timetable``; for ``baseline`` the tree before the shared timetable."""
    if system == "timetable":
        yield str(ROOT)
        return
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "migrations/0003_jobs.sql"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as where:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", f"{added}^"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(where, filter="data")
        yield where


def merged(
    previous: list[dict[str, Any]], fresh: list[dict[str, Any]], measured: str
) -> list[dict[str, Any]]:
    """The samples: each system's kinds from ``fresh`` (run ``measured``), the rest kept."""
    systems = {result["system"]: result for result in previous}
    for result in fresh:
        kept = systems.get(result["system"], {"system": result["system"], "kinds": {}})
        kinds = dict(kept["kinds"])
        for kind, samples in result["kinds"].items():
            kinds[kind] = {**samples, "measured": measured}
        tracebacks = {
            run: count
            for run, count in kept.get("tracebacks", {}).items()
            if any(samples["measured"] == run for samples in kinds.values())
        }
        systems[result["system"]] = {
            "system": result["system"],
            "tracebacks": {**tracebacks, measured: result["tracebacks"]},
            "kinds": kinds,
        }
    return list(systems.values())


def report(results: list[dict[str, Any]]) -> str:
    runs = sorted(  # oldest first: a label ends with its date
        {f["measured"] for r in results for f in r["kinds"].values()},
        key=lambda run: run.rpartition(" on ")[2],
    )
    faults = {len(f["gaps"]) for r in results for f in r["kinds"].values()}  # one gap per fault
    where = (
        f"by {runs[0]}"
        if len(runs) == 1
        else "in several runs: " + "; ".join(f"{_rows_of(results, run)} by {run}" for run in runs)
    )
    lines = [
        BEGIN,
        "## Job continuity",
        "",
        f"Measured {where}. 3 replicas "
        f"(`bench/job_subject.py`), one leader-only job every {INTERVAL:g} s whose run inserts "
        f"a row and holds its transaction {WORK:g} s; ttl {TTL:g} s, heartbeat every "
        f"{HEARTBEAT:g} s, `misfire_grace_time` {GRACE} s, `coalesce=True` (APScheduler's "
        f"default); {_faults(faults)} faults of each kind, one at a time, on one embedded "
        "PostgreSQL 18 (durable settings, "
        "`track_commit_timestamp` on). *timetable* is this version (the job takes its run "
        "context and writes through `run.fenced()`); *before* is the version before the shared "
        "timetable (jobs in each replica's memory, writing through `group.fenced`). Gaps are "
        "between consecutive commits (`pg_xact_commit_timestamp`); samples in "
        "[jobs.json](jobs.json). A kill between runs comes right after a run's commit.",
        "",
        "| fault | system | longest gap: median / p99 / max | early runs | run twice | "
        "not run | stale commits | election to first run: median / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        for result in results:
            if kind not in result["kinds"]:
                continue
            f = result["kinds"][kind]
            gaps = Distribution.of(f["gaps"])
            first = Distribution.of(f["elected_to_first_run"] or [0.0])
            twice = f["twice"] if result["system"] == "timetable" else "not known"
            lines.append(
                f"| {kind} | {_label(result['system'])} | {format_seconds(gaps.median)} / "
                f"{format_seconds(gaps.p99)} / {format_seconds(gaps.max)} | {f['early']} | "
                f"{twice} | {f['not_run']} | {f['stale']} | {format_seconds(first.median)} / "
                f"{format_seconds(first.max)} |"
            )
    tracebacks = "; ".join(
        (f"in the run of {run}: " if len(runs) > 1 else "")
        + ", ".join(
            f"{_label(r['system'])} {r['tracebacks'][run]}"
            for r in results
            if run in r["tracebacks"]
        )
        for run in runs
    )
    lines += [
        "",
        f"Tracebacks in the replicas' output: {tracebacks}. *Early runs*: a run that started "
        f"less than {INTERVAL - EARLY_S:g} s after the previous run was due. *Not run*: ticks "
        f"of the {INTERVAL:g} s grid without a commit (by fire time where the system records "
        "it, else by gaps between commits); after a stop, the ticks due while nobody led are "
        "coalesced into one run, as `coalesce=True` asks. *Run twice* needs the fire time, "
        "which only the timetable records. *Election to first run*: from the new term's "
        "`elected` event to its first run's insert.",
        END,
    ]
    return "\n".join(lines)


def _rows_of(results: list[dict[str, Any]], run: str) -> str:
    """Which rows of the table ``run`` measured: "the *before* rows of *kill between runs*"."""
    parts = []
    for r in results:
        kinds = [kind for kind in KINDS if r["kinds"].get(kind, {}).get("measured") == run]
        if kinds:
            which = "" if len(kinds) == len(KINDS) else " of " + ", ".join(f"*{k}*" for k in kinds)
            parts.append(f"the *{_label(r['system'])}* rows{which}")
    return " and ".join(parts)


def _faults(counts: set[int]) -> str:
    return str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"


def _label(system: str) -> str:
    return "timetable" if system == "timetable" else "before"


async def run(args: argparse.Namespace) -> None:
    settings = {**DURABLE, "track_commit_timestamp": "on"}
    fresh = []
    with (
        LocalPostgres.embedded(settings=settings) as server,
        tempfile.TemporaryDirectory(prefix="bench-jobs-") as logs,
    ):
        for system in args.systems:
            fresh.append(await measure(server, system, args.faults, args.kinds, Path(logs)))
    command = "python -m bench.jobs" + (f" --faults {args.faults}" if args.faults != 30 else "")
    everything = args.kinds == list(KINDS) and args.systems == list(SYSTEMS)
    if args.systems != list(SYSTEMS):
        command += " --systems " + " ".join(args.systems)
    if args.kinds != list(KINDS):
        command += " --kinds " + " ".join(f'"{kind}"' for kind in args.kinds)
    measured = f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    previous = [] if everything else json.loads(SAMPLES.read_text())
    results = merged(previous, fresh, measured)
    section = report(results)
    print(section)
    if not args.dry_run:
        write_section(section, BEGIN, END)
        SAMPLES.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("--faults", type=int, default=30, help="faults of each kind (30)")
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=list(SYSTEMS),
        help="which systems to measure (both)",
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="which faults to measure (all); the others keep their samples in jobs.json",
    )
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the results")
    args = parser.parse_args()
    if args.faults < 1:
        parser.error("--faults must be at least 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
