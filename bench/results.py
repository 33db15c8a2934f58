"""Everything one run measured, and the page (``bench/RESULTS.md``) that reports it.

Every figure is printed with its ratio to the floor of the same run and to
each peer: measured peers by their medians, published peers by the window
their default timings allow, which is labelled as such wherever it appears.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from bench.cluster import Fault
from bench.ours import Failovers
from bench.overhead import Footprint
from bench.peer_apscheduler import LEASE_S, ApschedulerResults
from bench.peer_pals import PalsResults
from bench.published import PUBLISHED, Published
from bench.stats import Distribution, format_range, format_seconds

__all__ = ["Results", "keep_sections", "markdown", "raw"]


@dataclass(frozen=True)
class Results:
    command: str
    date: str
    wall_seconds: float
    machine: dict[str, str]
    versions: dict[str, str]
    floor_kill: Distribution
    floor_unlock: Distribution
    commit: Distribution
    ours: dict[Fault, Failovers]
    pals: PalsResults
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
            *_failover_table(r),
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
            "pals_kill": r.pals.kill.samples,
            "apscheduler4_kill_to_run": r.apscheduler.kill_to_run.samples,
            "apscheduler4_late": r.apscheduler.late.samples,
        },
        "settings": {f.value: asdict(o.settings) for f, o in r.ours.items()},
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


def _headline(r: Results) -> list[str]:
    kill, term, stop, hole = (r.ours[f].failover for f in Fault)
    ttl = r.ours[Fault.STOP].settings.ttl
    assert ttl is not None
    aps = r.apscheduler
    pals_hang = (
        f"none within {r.pals.hang_window:g} s (>{_times(r.pals.hang_window / stop.median)})"
        if r.pals.hang_takeover is None
        else f"{format_seconds(r.pals.hang_takeover)}"
    )

    def published(p: Published, ours: Distribution, graceful: bool = False) -> str:
        window = p.graceful if graceful else p.crash
        return "n/a" if window is None else _window(*window, ours.median)

    header = ["fault", "pg-coordinator (median)", "floor", "pals", "APScheduler 4"]
    header += [f"{p.system.split(' (')[0]} *" for p in PUBLISHED]
    rows = [
        [
            "crash (SIGKILL)",
            _cell(kill),
            f"{_cell(r.floor_kill)} (ours {_times(kill.median / r.floor_kill.median)})",
            f"{_cell(r.pals.kill)} ({_times(r.pals.kill.median / kill.median)})",
            f"{_cell(aps.kill_to_run)} ({_times(aps.kill_to_run.median / kill.median)})",
            *(published(p, kill) for p in PUBLISHED),
        ],
        [
            "graceful (SIGTERM)",
            _cell(term),
            f"{_cell(r.floor_unlock)} (ours {_times(term.median / r.floor_unlock.median)})",
            "no graceful path",
            "no leader",
            *(published(p, term, graceful=True) for p in PUBLISHED),
        ],
        [
            f"hang (SIGSTOP), ttl {ttl:g} s",
            f"{_cell(stop)} ({stop.median / ttl:.2f}x ttl)",
            f"ttl {ttl:g} s",
            pals_hang,
            "no leader",
            *(published(p, stop) for p in PUBLISHED),
        ],
        [
            f"partition (blackhole), ttl {ttl:g} s",
            f"{_cell(hole)} ({hole.median / ttl:.2f}x ttl)",
            f"ttl {ttl:g} s",
            "not measured",
            "no leader",
            *(published(p, hole) for p in PUBLISHED),
        ],
    ]
    return [
        "## Headline",
        "",
        "Median time from the fault until the new leader's code runs. In brackets: in the "
        "floor column, pg-coordinator's median as a multiple of the floor; in a peer's column, "
        "the peer's time as a multiple of pg-coordinator's median. Columns marked * are **not "
        "measured**: they "
        "are the window the peer's published default timings allow (see "
        "[below](#published-peers-not-measured)). APScheduler 4 has no leader: its figure is "
        f"the time until the schedule (due every {aps.interval:g} s) next runs on a surviving "
        "scheduler.",
        "",
        *_table(header, rows),
        "",
    ]


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
    rows += [
        (
            "pals",
            "SIGKILL of the holder; pals defaults",
            r.pals.kill,
            f"{r.pals.kill.median / r.floor_kill.median:.1f}x floor",
        ),
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
        f"({format_seconds(r.floor_kill.median)}). Once the lock is granted, the new leader "
        "takes office in one statement on its session (the prepared take-office statement: "
        "term, heartbeat, event, NOTIFY, committed as one durable transaction: "
        f"{format_seconds(r.commit.median)} alone here) and logs "
        "`leadership_acquired` before `on_elected` runs; each round trip needs the client and "
        "its backend scheduled again. A pals follower only returns from `pg_advisory_lock`: "
        f"{format_seconds(r.pals.kill.median)}.",
        f"- **Graceful stop.** {format_seconds(r.ours[Fault.TERM].failover.median)} against "
        f"{format_seconds(r.floor_unlock.median)} for a bare unlock: on SIGTERM the leader "
        "runs `on_demoted`, commits its resignation in one statement and only then unlocks, "
        "and the next "
        "leader takes office as above.",
    ]
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
    if r.pals.hang_takeover is None:
        lines.append(
            f"- **pals and a hang.** With the holder frozen, no pals follower took the lock "
            f"within {r.pals.hang_window:g} s: nothing ends a frozen holder's session, so the "
            "lock stays held until the process resumes or the server's TCP keepalive gives up "
            "(about two hours with the operating system's defaults)."
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
        "These cannot run on this machine (no Kubernetes, Go, Elixir or Java here). Each row "
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
