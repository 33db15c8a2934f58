"""``coordinator jobs``: the shared timetable of leader-only jobs, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from datetime import datetime

from coordinator._timetable import JobStatus, read_jobs
from coordinator.cli._common import Subparsers, add_database_options, require_dsn

__all__ = ["format_jobs", "register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "jobs", help="show each leader-only job's last and next fire time and who ran it"
    )
    add_database_options(parser)
    parser.add_argument("--group", help="only this group (default: every group)")
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    jobs = asyncio.run(read_jobs(require_dsn(args), group=args.group, schema=args.schema))
    if args.json:
        print(json.dumps([job.as_json() for job in jobs], indent=2))
    else:
        print(format_jobs(jobs, group=args.group))
    return 0


def format_jobs(jobs: Sequence[JobStatus], *, group: str | None = None) -> str:
    """A fixed-width table for people: one line per job."""
    if not jobs:
        return "no leader-only jobs on the timetable" + (f" of group {group}" if group else "")
    header = ("GROUP", "JOB", "TRIGGER", "LAST FIRE", "NEXT FIRE", "RAN BY", "TERM", "OUTCOME")
    lines = [header]
    for job in jobs:
        outcome = job.last_outcome or "-"
        if job.last_duration_s is not None:
            outcome += f" in {job.last_duration_s:.3f} s"
        if job.last_attempt is not None and job.last_attempt > 1:
            outcome += f" (attempt {job.last_attempt})"
        lines.append(
            (
                job.group,
                job.job_id,
                job.trigger,
                _time(job.last_scheduled_at),
                _time(job.next_fire_at),
                job.last_instance_id or "-",
                str(job.last_term) if job.last_term is not None else "-",
                outcome,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _time(at: datetime | None) -> str:
    return at.isoformat(timespec="milliseconds") if at is not None else "-"
