"""One chaos instance: a coordinator whose leaders append fenced writes to a ledger.

Each instance records, on its own monotonic clock (``CLOCK_MONOTONIC`` is
system-wide on Linux, so the records of all instances compare), every moment
it acted as leader: the time is read *before* ``is_leader`` is checked, so a
freeze between the two can only make the record earlier, never later. The
checker derives the intervals of office from these records.

An election loop must never end while the coordinator runs. A watcher checks
the loops' tasks (private attributes: no public API exposes them) and
records any that ended, with its exception, as ``loop_died``; the runner
fails the run on it, as on any traceback in the worker's output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import IO

import asyncpg

from chaos.checker import STARTED_MARK, STOPPING_MARK
from coordinator import Coordinator, Group, NotLeader
from coordinator._connect import TRANSIENT_ERRORS

LEDGER_DDL = """
    CREATE TABLE IF NOT EXISTS chaos_ledger (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        group_name  text    NOT NULL,
        term        bigint  NOT NULL,
        instance_id text    NOT NULL,
        mono        float8  NOT NULL
    )
"""
WRITE_EVERY = 0.02
LOOP_CHECK_EVERY = 0.2


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log: IO[str] = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the process's life
        self.coordinator = Coordinator(
            args.dsn,
            instance_id=args.instance_id,
            ttl=args.ttl,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            connect_timeout=2.0,
            reconnect_max=0.5,
            wait=args.wait,
            poll_interval=args.poll_interval,
        )
        self.pool: asyncpg.Pool | None = None
        for name in args.groups.split(","):
            group = self.coordinator.group(name)
            group.on_elected(self.elected_handler(group))
        self.tasks: set[asyncio.Task[None]] = set()

    def elected_handler(self, group: Group) -> Callable[[int], None]:
        return lambda term: self.start_work(group, term)

    def record(self, kind: str, group: str, term: int, mono: float, **extra: object) -> None:
        self.log.write(
            json.dumps(
                {
                    "kind": kind,
                    "instance": self.args.instance_id,
                    "group": group,
                    "term": term,
                    "mono": mono,
                    **extra,
                }
            )
            + "\n"
        )

    def start_work(self, group: Group, term: int) -> None:
        task = asyncio.create_task(self.work(group, term))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def work(self, group: Group, term: int) -> None:
        assert self.pool is not None
        while True:
            now = time.clock_gettime(time.CLOCK_MONOTONIC)
            if group.term != term:  # reads the trust deadline: false once it has passed
                return
            self.record("acting", group.name, term, now)
            try:
                async with group.fenced(self.pool, term=term) as tx:
                    await tx.conn.execute(
                        "INSERT INTO chaos_ledger (group_name, term, instance_id, mono) "
                        "VALUES ($1, $2, $3, $4)",
                        group.name,
                        term,
                        self.args.instance_id,
                        now,
                    )
            except NotLeader:  # StaleTerm too: this term is over
                return
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
                pass  # the database judges; a failed write simply did not happen
            await asyncio.sleep(WRITE_EVERY)

    async def run(self) -> None:
        # The application's own pool; a write stuck on a silent network times out.
        self.pool = await asyncpg.create_pool(
            self.args.dsn,
            min_size=0,
            max_size=8,
            command_timeout=self.args.ttl,
            timeout=2.0,
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stopping, stop)
        print(STARTED_MARK, file=sys.stderr, flush=True)
        async with self.coordinator:
            watcher = asyncio.create_task(self.watch_loops())
            await stop.wait()
            watcher.cancel()
        await self.pool.close()

    def stopping(self, stop: asyncio.Event) -> None:
        """Mark where shutdown begins in the output, so its tracebacks are told apart."""
        print(STOPPING_MARK, file=sys.stderr, flush=True)
        stop.set()

    def loop_tasks(self) -> Iterator[tuple[str, asyncio.Task[None] | None]]:
        for name, group in self.coordinator.groups.items():
            yield name, getattr(getattr(group, "_elector", None), "_task", None)
        shared = getattr(self.coordinator, "_shared", None)
        if shared is not None:
            yield "*shared session*", getattr(shared, "_task", None)

    async def watch_loops(self) -> None:
        """Record each election loop that ended while the coordinator runs."""
        reported: set[str] = set()
        while True:
            await asyncio.sleep(LOOP_CHECK_EVERY)
            for name, task in self.loop_tasks():
                if task is None or not task.done() or name in reported:
                    continue
                reported.add(name)
                error = None if task.cancelled() else task.exception()
                now = time.clock_gettime(time.CLOCK_MONOTONIC)
                self.record("loop_died", name, -1, now, error=repr(error))
                print(f"election loop of {name} ended while running: {error!r}", file=sys.stderr)
                if error is not None:
                    traceback.print_exception(error, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--groups", required=True, help="comma-separated")
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--heartbeat-interval", type=float, required=True)
    parser.add_argument("--heartbeat-timeout", type=float, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--wait", choices=("block", "poll"), default="block")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    asyncio.run(Worker(parser.parse_args()).run())


if __name__ == "__main__":
    main()
