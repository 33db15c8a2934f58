"""One chaos instance: a coordinator whose leaders append fenced writes to a ledger.

Each instance records, on its own monotonic clock (``CLOCK_MONOTONIC`` is
system-wide on Linux, so the records of all instances compare), every moment
it acted as leader: the time is read *before* ``is_leader`` is checked, so a
freeze between the two can only make the record earlier, never later. The
checker derives the intervals of office from these records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import IO

import asyncpg

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
        )
        self.pool: asyncpg.Pool | None = None
        for name in args.groups.split(","):
            group = self.coordinator.group(name)
            group.on_elected(self.elected_handler(group))
        self.tasks: set[asyncio.Task[None]] = set()

    def elected_handler(self, group: Group) -> Callable[[int], None]:
        return lambda term: self.start_work(group, term)

    def record(self, kind: str, group: str, term: int, mono: float) -> None:
        self.log.write(
            json.dumps(
                {
                    "kind": kind,
                    "instance": self.args.instance_id,
                    "group": group,
                    "term": term,
                    "mono": mono,
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
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with self.coordinator:
            await stop.wait()
        await self.pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--groups", required=True, help="comma-separated")
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--heartbeat-interval", type=float, required=True)
    parser.add_argument("--heartbeat-timeout", type=float, required=True)
    parser.add_argument("--log", required=True)
    asyncio.run(Worker(parser.parse_args()).run())


if __name__ == "__main__":
    main()
