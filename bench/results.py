"""Everything one run measured, and the page (``bench/RESULTS.md``) that reports it.

Every figure is printed with its ratio to the floor of the same run and to
each peer: measured peers by their medians, published peers (only those
that cannot run here) by the window their default timings allow, which is
labelled as such wherever it appears.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from bench.cluster import Fault
from bench.ours import Failovers
from bench.overhead import Footprint
from bench.peer_apscheduler import LEASE_S, ApschedulerResults
from bench.peers import HangSeries, Peer, PeerResults, Series
from bench.published import PUBLISHED
from bench.stats import Distribution, format_range, format_seconds
from bench.trace import Trace

__all__ = ["Results", "keep_sections", "markdown", "raw"]


@dataclass(frozen=True)
class Results:
    command: str
    date: str
    wall_seconds: float
    machine: dict[str, str]
    versions: dict[str, str]
    #: Every distribution's version, from all the environments, for the peers' rows.
    packages: dict[str, str]
    floor_kill: Distribution
    floor_unlock: Distribution
    commit: Distribution
    ours: dict[Fault, Failovers]
    traces: dict[Fault, Trace]
    peers: list[PeerResults]
    apscheduler: ApschedulerResults
    overhead: list[Footprint]
    overhead_window: float


_FAULTS = {
    Fault.KILL: "SIGKILL of the leader (crash)",
    Fault.TERM: "SIGTERM of the leader (graceful stop)",
    Fault.STOP: "SIGSTOP of the leader (hang)",
    Fault.BLACKHOLE: "blackholed connections of the leader (partition)",
}
_SHORT = {
    Fault.KILL: "Crash",
    Fault.TERM: "Graceful stop",
    Fault.STOP: "Hang",
    Fault.BLACKHOLE: "Partition",
}


def markdown(r: Results) -> str:
    """The whole results page."""
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"Measured by `{r.command}` on {r.date}, all on one embedded PostgreSQL "
            f"{r.versions['PostgreSQL']} in one run of {r.wall_seconds / 60:.1f} minutes. "
            "How it measures: [docs/benchmarks.md](../docs/benchmarks.md). Raw samples: "
            "[results.json](results.json).",
            "",
            "![Failover distributions](failover.png)",
            "",
            *_headline(r),
            *_goals(r),
            *_failover_table(r),
            *_trace(r),
            *_findings(r),
            *_overhead(r),
            *_published(),
            *_environment(r),
        ]
    )


#: A section of the page that another program writes (``python -m bench.scale``).
_OWNED_SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.DOTALL)


def keep_sections(page: str, previous: str) -> str:
    """``page``, followed by the sections other programs own in the ``previous`` page."""
    kept = [match.group(0) for match in _OWNED_SECTION.finditer(previous)]
    return "\n\n".join([page.rstrip("\n"), *kept]) + "\n"


def raw(r: Results) -> dict[str, Any]:
    """The samples and settings behind the page, for anyone who wants other statistics."""
    return {
        "command": r.command,
        "date": r.date,
        "machine": r.machine,
        "versions": r.versions,
        "seconds": {
            "floor_kill": r.floor_kill.samples,
            "floor_unlock": r.floor_unlock.samples,
            "durable_commit": r.commit.samples,
            **{f"pg_coordinator_{f.value}": o.failover.samples for f, o in r.ours.items()},
            **{f"pg_coordinator_{f.value}_settled": o.settled.samples for f, o in r.ours.items()},
            **{
                f"{p.peer.key}_{f.value}": _samples(series)
                for p in r.peers
                for f, series in p.faults.items()
            },
            **{
                f"{p.peer.key}_stop_told": list(series.told)
                for p in r.peers
                for series in p.faults.values()
                if isinstance(series, HangSeries)
            },
            "apscheduler4_kill_to_run": r.apscheduler.kill_to_run.samples,
            "apscheduler4_late": r.apscheduler.late.samples,
        },
        "settings": {f.value: asdict(o.settings) for f, o in r.ours.items()},
        "peer_settings": {p.peer.key: f"{p.peer.label}: {p.peer.settings}" for p in r.peers},
        "trace": {
            f.value: {ph.point: {"at": ph.at.samples, "step": ph.step.samples} for ph in t.phases}
            for f, t in r.traces.items()
        },
        "overhead": [asdict(f) for f in r.overhead],
        "overhead_window_s": r.overhead_window,
    }


def _cell(d: Distribution) -> str:
    return format_seconds(d.median)


def _times(ratio: float) -> str:
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 10:
        return f"{ratio:.0f}x"
    return f"{ratio:.1f}x"


def _window(low: float, high: float, ours: float) -> str:
    """A published window and how many times pg-coordinator's median it spans."""
    if high == 0:
        return "immediate"
    factors = _times(high / ours) if low == high else f"{_times(low / ours)}-{_times(high / ours)}"
    return f"{format_range(low, high)} ({factors})"


def _samples(series: Series | HangSeries) -> tuple[float, ...]:
    d = series.takeover if isinstance(series, HangSeries) else series.failover
    return () if d is None else d.samples


def _pals(r: Results) -> PeerResults:
    return next(p for p in r.peers if p.peer.key == "pals")


def _failover(series: Series | HangSeries | None) -> Distribution | None:
    if series is None:
        return None
    return series.takeover if isinstance(series, HangSeries) else series.failover


def _peer_cell(series: Series | HangSeries | None, ours: Distribution) -> str:
    """A peer's median and its multiple of pg-coordinator's, or why there is none."""
    if series is None:
        return "as defaults"
    d = _failover(series)
    if d is None:
        return f"**none** within {series.none_within:g} s"
    cell = f"{_cell(d)} ({_times(d.median / ours.median)})"
    return (
        cell if series.none_within is None else f"{cell}; then none within {series.none_within:g} s"
    )


def _told(series: Series | HangSeries | None) -> str:
    if not isinstance(series, HangSeries):
        return ""
    if not series.told:
        return "not asked: it kept the lock"
    told = sorted(t for t in series.told if t is not None)
    if not told:
        return f"**never** (0 of {len(series.told)} within {series.told_window:g} s)"
    median = Distribution.of(told).median
    return f"{len(told)} of {len(series.told)}, {format_seconds(median)} after SIGCONT"


def _version(peer: Peer, r: Results) -> str:
    packages = ", ".join(f"{name} {r.packages.get(name, '?')}" for name in peer.packages)
    store = peer.store.split(" ")[0]
    server = r.versions.get(store, "?").split(" (")[0]
    return f"{packages}; {store} {server}"


def _headline(r: Results) -> list[str]:
    kill, term, stop, _ = (r.ours[f].failover for f in Fault)
    ttl = r.ours[Fault.STOP].settings.ttl
    assert ttl is not None
    stop_told = r.ours[Fault.STOP]
    aps = r.apscheduler
    header = [
        "system (profile)",
        "versions",
        "settings",
        "crash (SIGKILL)",
        "graceful (SIGTERM)",
        "hang (SIGSTOP): takeover",
        "hang: old leader told it lost",
    ]
    told_ours = (
        f"{stop_told.failover.n} of {stop_told.failover.n} ("
        + ", ".join(sorted(stop_told.demotion_reasons))
        + ": its trust deadline passed while it was frozen)"
    )
    rows = [
        [
            "**pg-coordinator** (defaults; hang: short ttl)",
            f"pg-coordinator {r.versions['pg-coordinator']}; PostgreSQL {r.versions['PostgreSQL']}",
            f"ttl 15 s, heartbeat every 5 s; hang: ttl {ttl:g} s",
            f"**{_cell(kill)}**",
            f"**{_cell(term)}**",
            f"{_cell(stop)} ({stop.median / ttl:.2f}x ttl)",
            told_ours,
        ],
        [
            "floor: bare `pg_advisory_lock` waiter",
            f"asyncpg {r.versions['asyncpg']}",
            "",
            f"{_cell(r.floor_kill)} (ours {_times(kill.median / r.floor_kill.median)})",
            f"{_cell(r.floor_unlock)} (ours {_times(term.median / r.floor_unlock.median)})",
            "",
            "",
        ],
    ]
    for result in r.peers:
        faults = result.faults
        rows.append(
            [
                result.peer.label,
                _version(result.peer, r),
                result.peer.settings,
                _peer_cell(faults.get(Fault.KILL), kill),
                _peer_cell(faults.get(Fault.TERM), term),
                _peer_cell(faults.get(Fault.STOP), stop),
                _told(faults.get(Fault.STOP)),
            ]
        )
    rows.append(
        [
            "APScheduler 4 (no leader: next run of the schedule elsewhere)",
            r.versions.get("APScheduler 4 venv", "").split(",")[0],
            f"schedule every {aps.interval:g} s; lease 30 s",
            f"{_cell(aps.kill_to_run)} ({_times(aps.kill_to_run.median / kill.median)})",
            "no leader",
            "not measured",
            "",
        ]
    )
    for p in PUBLISHED:
        graceful = "n/a" if p.graceful is None else _window(*p.graceful, term.median)
        rows.append(
            [
                f"{p.system.split(' (')[0]} * (**not measured**: published defaults)",
                "",
                p.defaults,
                _window(*p.crash, kill.median),
                graceful,
                _window(*p.crash, stop.median),
                "",
            ]
        )
    return [
        "## Headline",
        "",
        "Median time from the fault until the new leader's code runs, every system measured in "
        "this run with the same harness (three processes each, the fault injected into the "
        "leader), except the rows marked *: those cannot run here and are the window their "
        "published default timings allow (see [below](#published-peers-not-measured)). In "
        "brackets: a peer's time as a multiple of pg-coordinator's median; in the floor row, "
        "pg-coordinator's median as a multiple of the floor. **none** means no other member "
        "took office within the window: such a peer keeps its lock until the frozen or dead "
        "holder's connection is closed. **as defaults**: a graceful stop does not depend on "
        "the timeouts that the aggressive profile shortens, so it was measured at the "
        "defaults only. The last column: after SIGCONT, was the resumed old leader told that "
        "it no longer leads, and how soon? (**never**: it went on believing that it led.) "
        "Each peer's hang is measured at its own settings; pg-coordinator's hang row uses "
        f"ttl {ttl:g} s (with its default ttl of 15 s it would take about 15 s).",
        "",
        *_table(header, rows),
        "",
    ]


def _goals(r: Results) -> list[str]:
    pals = _pals(r)
    lines = ["## pg-coordinator against pals, in this run", ""]
    for fault, goal in ((Fault.TERM, 1.5), (Fault.KILL, 1.1)):
        theirs = _failover(pals.faults.get(fault))
        ours = r.ours[fault].failover
        if theirs is None:
            continue
        ratio = ours.median / theirs.median
        verdict = "met" if ratio <= goal else "not met"
        lines.append(
            f"- **{_SHORT[fault]}**: pg-coordinator {format_seconds(ours.median)}, pals "
            f"{format_seconds(theirs.median)} (medians): **{ratio:.2f}x** pals "
            f"(goal at most {goal:g}x: {verdict})."
        )
    return [*lines, ""]


def _failover_table(r: Results) -> list[str]:
    rows: list[tuple[str, str, Distribution, str]] = [
        ("floor", "SIGKILL of a bare asyncpg lock holder", r.floor_kill, ""),
        ("floor", "`pg_advisory_unlock` by the holder", r.floor_unlock, ""),
        ("floor", "one durable single-row UPDATE (round trip + commit)", r.commit, ""),
    ]
    for fault, o in r.ours.items():
        rows.append(
            (
                "pg-coordinator",
                f"{_FAULTS[fault]}; {o.settings.describe()}",
                o.failover,
                _versus(r, o),
            )
        )
    what = {Fault.KILL: "SIGKILL of the leader", Fault.TERM: "SIGTERM of the leader"}
    what[Fault.STOP] = "SIGSTOP of the leader until another took office"
    for result in r.peers:
        for fault, series in result.faults.items():
            d = _failover(series)
            if d is not None:
                rows.append(
                    (
                        result.peer.label,
                        f"{what[fault]}; {result.peer.settings}",
                        d,
                        "",
                    )
                )
    rows += [
        (
            "APScheduler 4",
            f"SIGKILL of a scheduler until the schedule runs elsewhere (every "
            f"{r.apscheduler.interval:g} s); defaults otherwise",
            r.apscheduler.kill_to_run,
            "",
        ),
        (
            "APScheduler 4",
            "how late that run started past its due time",
            r.apscheduler.late,
            "",
        ),
    ]
    header = ["system", "what", "n", "median", "p90", "p99", "max", "median vs floor or ttl"]
    body = [
        [
            system,
            what,
            str(d.n),
            format_seconds(d.median),
            format_seconds(d.p90),
            format_seconds(d.p99),
            format_seconds(d.max),
            ratio,
        ]
        for system, what, d, ratio in rows
    ]
    return [
        "## Failover distributions",
        "",
        f"Every pg-coordinator trial runs {r.ours[Fault.KILL].instances} instances as separate "
        "processes, one leading and the others blocked in `pg_advisory_lock`; the time is "
        "taken inside the new leader's `on_elected` callback.",
        "",
        *_table(header, body),
        "",
    ]


def _versus(r: Results, o: Failovers) -> str:
    """A pg-coordinator median against what bounds it: the floor of its kind, or the ttl."""
    if o.fault is Fault.KILL:
        return f"{o.failover.median / r.floor_kill.median:.1f}x floor"
    if o.fault is Fault.TERM:
        return f"{o.failover.median / r.floor_unlock.median:.1f}x floor"
    assert o.settings.ttl is not None
    return f"{o.failover.median / o.settings.ttl:.2f}x ttl"


def _findings(r: Results) -> list[str]:
    kill = r.ours[Fault.KILL].failover
    overhead = kill.median - r.floor_kill.median
    lines = [
        "## What the figures show",
        "",
        f"- **Crash.** pg-coordinator's median is {format_seconds(overhead)} above the floor "
        f"({format_seconds(r.floor_kill.median)}). The follower's waiting statement takes "
        "office as soon as the server grants the lock (term, heartbeat, event, NOTIFY, one "
        "transaction), with no round trip to the client between; the term's number was drawn "
        "durably while the follower waited, so that commit waits for no WAL flush (a bare "
        f"durable commit takes {format_seconds(r.commit.median)} here). `on_elected` runs "
        "before `leadership_acquired` is logged. A pals follower only "
        "returns from `pg_advisory_lock`: "
        f"{format_seconds(_cell_median(_pals(r), Fault.KILL))}.",
        f"- **Graceful stop.** {format_seconds(r.ours[Fault.TERM].failover.median)} against "
        f"{format_seconds(r.floor_unlock.median)} for a bare unlock: on SIGTERM the leader "
        "runs `on_demoted`, then one statement holds the leader row, unlocks and writes the "
        "resignation, committed asynchronously; the next leader's term waits for that "
        "commit, and commits asynchronously too, with the number it drew durably before it "
        "waited. Each lock session rehearsed "
        "the hand-over when it started (and rolled it back), so neither backend loads or "
        "plans anything on the way.",
    ]
    lines += _trace_findings(r)
    for fault in (Fault.STOP, Fault.BLACKHOLE):
        o = r.ours[fault]
        ttl = o.settings.ttl
        assert ttl is not None
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(o.demotion_reasons.items()))
        lines.append(
            f"- **{_SHORT[fault]}.** New leader after "
            f"{o.failover.median / ttl:.2f}x ttl at the median (max {o.failover.max / ttl:.2f}x);"
            f" the old leader reported its demotion as: {reasons}."
        )
    ahead = r.ours[Fault.BLACKHOLE].demoted_ahead
    if ahead is not None:
        lines.append(
            f"- **No overlap in a partition.** The partitioned leader demoted itself before the "
            f"new leader took office in every trial: {format_seconds(ahead.min)} ahead at the "
            f"least, {format_seconds(ahead.median)} at the median."
            if ahead.min > 0
            else f"- **Overlap in a partition.** In some trials the new leader took office "
            f"before the partitioned one demoted itself (by up to {format_seconds(-ahead.min)})."
        )
    churned = {f: o.churned for f, o in r.ours.items() if o.churned}
    if not churned:
        lines.append(
            "- **No churn.** In every pg-coordinator trial exactly one new leader took office "
            "and was still in office when the cluster had settled again."
        )
    else:
        counts = ", ".join(
            f"{count} of {r.ours[f].failover.n} {f.value} trials" for f, count in churned.items()
        )
        lines.append(
            f"- **Churn after fencing.** In {counts}, more than one new leader took office "
            "before the cluster settled: a follower's monitor terminated the session of the "
            "leader that had just taken office. The figures above are to the first new "
            "leader; to the one that stayed, the medians are "
            + ", ".join(f"{format_seconds(r.ours[f].settled.median)} ({f.value})" for f in churned)
            + "."
        )
    never = [p.peer.label for p in r.peers if _failover(p.faults.get(Fault.STOP)) is None]
    if never:
        lines.append(
            f"- **No takeover from a frozen holder**: {', '.join(never)}. Nothing ends a "
            "frozen holder's session or lock, so it stays held until the process resumes or "
            "the server's TCP keepalive gives up (about two hours with the operating "
            "system's defaults)."
        )
    untold = [
        p.peer.label
        for p in r.peers
        if isinstance(series := p.faults.get(Fault.STOP), HangSeries)
        and series.told
        and series.told_count == 0
    ]
    if untold:
        lines.append(
            f"- **Two leaders after a hang**: {', '.join(untold)} never told the resumed old "
            "leader that another had taken office: it went on believing that it led, beside "
            "the new one, until it was stopped."
        )
    aps = r.apscheduler
    lines.append(
        f"- **APScheduler 4** has no leader: killing a scheduler costs the schedule little "
        f"beyond its next due time, unless the kill lands while that scheduler holds the "
        f"schedule's lease ({LEASE_S:g} s by default). Then the schedule stops: 4.0.0a6 "
        "looks for due schedules again only at the next fire time of an unleased schedule "
        "or when a schedule is added or changed, so no survivor runs it until some scheduler "
        f"starts. This run: {aps.stuck} of {aps.stuck + aps.late.n} kills stopped the "
        f"schedule (no run within {aps.stuck_after:g} s; left out of its figures above)."
    )
    return [*lines, ""]


def _trace_findings(r: Results) -> list[str]:
    """What the trace says about where pg-coordinator's time goes, past pals's."""
    lines = []
    for fault, trace in r.traces.items():
        at = {p.point: p.at.median for p in trace.phases}
        office = at.get("take office commit recorded")
        answered = at.get("the next leader's lock wait and take office answered")
        elected = at.get("the next leader's on_elected runs")
        if office is None or answered is None or elected is None:
            continue
        tail = (
            f"{format_seconds(answered - office)} from that commit record to the answer (the "
            f"reply: no WAL flush), and {format_seconds(elected - answered)} to "
            "`on_elected`"
        )
        resigned = at.get("resign commit recorded")
        sent = at.get("resign and unlock sent")
        if fault is Fault.TERM and resigned is not None and sent is not None:
            lines.append(
                f"- **Where a graceful hand-over's time goes** (trace medians): "
                f"{format_seconds(sent)} until the old leader sends its resignation (signal "
                f"handling, `on_demoted`); {format_seconds(resigned - sent)} until the "
                "resignation commits (the statement unlocks before it writes, and the next "
                "leader's waiting statement starts taking office meanwhile); "
                f"{format_seconds(office - resigned)} until the next term commits (its update "
                f"waits on the leader row for the resignation's commit); {tail}. pals does "
                "only the unlock."
            )
        elif fault is Fault.KILL:
            lines.append(
                f"- **Where a crash failover's time goes** (trace medians): "
                f"{format_seconds(office)} until the next term's commit is recorded (the server "
                "notices the dead session and grants the lock, as for any waiter, and the "
                "waiting statement takes office at once); "
                f"{tail}. pals only returns from the wait."
            )
    return lines


def _cell_median(result: PeerResults, fault: Fault) -> float:
    d = _failover(result.faults.get(fault))
    return float("nan") if d is None else d.median


def _trace(r: Results) -> list[str]:
    lines = [
        "## Where a hand-over's time goes",
        "",
        f"A separate series of {r.ours[Fault.KILL].instances} traced instances (library "
        "defaults) per fault: `python -m bench` runs them with `--trace`, which adds a report "
        "from the SIGTERM handler and from the client for each granted lock wait (which takes "
        "office too), take-office and resign statement (the resignation unlocks too; "
        "answered at the time shown, sent at "
        "that minus its elapsed time), and reads each commit's time from "
        "`pg_xact_commit_timestamp` of the `resigned` and `elected` events (PostgreSQL "
        "takes it just before the commit's WAL flush). Times are from the signal; **at** is "
        "the median time of the point, **step** the median time from the previous point in "
        "the same trial. The library is unchanged; only the benchmark's subject adds these "
        "reports.",
        "",
    ]
    for fault, trace in r.traces.items():
        total = next((p.at.median for p in trace.phases if "on_elected" in p.point), None)
        untraced = format_seconds(r.ours[fault].failover.median)
        lines += [
            f"**{_FAULTS[fault]}**, {trace.trials} trials"
            + (f", median to `on_elected` {format_seconds(total)}" if total is not None else "")
            + f" (the untraced series above: {untraced}):",
            "",
            *_table(
                ["point", "at (median)", "step (median)", "step p90"],
                [
                    [
                        p.point,
                        format_seconds(p.at.median),
                        format_seconds(p.step.median),
                        format_seconds(p.step.p90),
                    ]
                    for p in trace.phases
                ],
            ),
            "",
        ]
    return lines


def _overhead(r: Results) -> list[str]:
    header = [
        "system",
        "role",
        "processes",
        "connections each",
        "statements/s each",
        "client CPU each",
        "server CPU each",
    ]
    body = [
        [
            f.system,
            f.role,
            str(f.processes),
            f"{f.connections:g}",
            f"{f.statements_per_s:.2f}",
            f"{f.client_cpu_percent:.2f} %",
            f"{f.server_cpu_percent:.2f} %",
        ]
        for f in r.overhead
    ]
    return [
        "## Overhead at rest",
        "",
        f"Three instances of each system idle side by side with default settings for "
        f"{r.overhead_window:g} s, each system in its own database. Connections are matched "
        "to processes by client port; statements are counted from the server log "
        "(`log_statement = 'all'` on those databases); CPU is user plus system time, as a "
        "percentage of one core, of the process and, for server CPU, of its backends "
        "(the kernel counts in 10 ms ticks).",
        "",
        *_table(header, body),
        "",
    ]


def _published() -> list[str]:
    header = ["system", "defaults", "crash or hang", "graceful", "how", "source"]
    body = [
        [
            p.system,
            p.defaults,
            format_range(*p.crash),
            "n/a" if p.graceful is None else format_range(*p.graceful),
            p.derivation,
            p.source,
        ]
        for p in PUBLISHED
    ]
    return [
        "## Published peers (not measured)",
        "",
        "These cannot run on this machine (no Kubernetes, Go, Elixir or Java application "
        "stack here). Each row "
        "is derived from the default timings in the peer's own source, as the window in "
        "which the next leader can act, counted from the fault.",
        "",
        *_table(header, body),
        "",
    ]


def _environment(r: Results) -> list[str]:
    rows = [[name, value] for name, value in {**r.machine, **r.versions}.items()]
    return [
        "## Machine and versions",
        "",
        *_table(["", ""], rows),
        "",
        "PostgreSQL ran with its durable defaults (`fsync`, `synchronous_commit`, "
        "`full_page_writes` on), listening on 127.0.0.1; every client connected over TCP.",
        "",
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]
