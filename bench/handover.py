"""``python -m bench.handover``: pg-coordinator's hand-over against pals's, side by side.

The short form of the headline comparison, for iterating on the hand-over
path: on one embedded PostgreSQL 18, ``--rounds`` rounds of a crash
(SIGKILL) and a graceful stop (SIGTERM) of pg-coordinator's leader and of
pals's, ``--trials`` each per round, interleaved so that the machine's load
falls on both alike; then the hand-over trace of each fault. Prints each
pooled distribution and the ratio of the medians, and the floor (a bare
unlock to a waiter, one durable commit) after a short and a long rest.
pals needs only PostgreSQL (its virtual environment is made if missing);
no other peer server is started.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.cluster import Fault
from bench.database import Database, embedded_server
from bench.floor import measure_commit, measure_floor_unlock
from bench.ours import Settings, run_trials
from bench.peers import Context, Series, measure_peer, peers
from bench.servers import Servers
from bench.stats import Distribution
from bench.trace import measure_trace, print_trace
from bench.venvs import ETCD3, PALS
from coordinator.testing import LocalPostgres

__all__ = ["main"]

FAULTS = (Fault.KILL, Fault.TERM)
#: The floor's rests: nearly back to back, and as idle as the machine is between faults.
RESTS_S = (0.01, 0.5)
#: pals needs no peer server: its lock is PostgreSQL's.
NO_SERVERS = Servers(zookeeper="", etcd="", redis="", versions={})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handover", description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="trials per fault per round (20)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    args = parser.parse_args(argv)
    PALS.ensure()
    log_dir = Path(tempfile.mkdtemp(prefix="pg-coordinator-handover-"))
    try:
        with embedded_server() as server:
            asyncio.run(_measure(server, args.trials, args.rounds, log_dir))
    except BaseException:
        print(f"\nthe processes' logs are kept in {log_dir}", file=sys.stderr)
        raise
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


async def _measure(server: LocalPostgres, trials: int, rounds: int, log_dir: Path) -> None:
    created = 0

    async def db() -> Database:
        nonlocal created
        created += 1
        return await Database.create(server, f"bench_handover_{created}")

    pals = next(p for p in peers(ETCD3.python, NO_SERVERS) if p.key == "pals")
    ours: dict[Fault, list[float]] = {fault: [] for fault in FAULTS}
    theirs: dict[Fault, list[float]] = {fault: [] for fault in FAULTS}
    for round_number in range(1, rounds + 1):
        for fault in FAULTS:
            results = await run_trials(await db(), fault, Settings(), trials, log_dir)
            ours[fault] += [trial.failover for trial in results]
        context = Context(NO_SERVERS, {pals.key: await db()}, log_dir)
        for fault, series in (await measure_peer(pals, context, FAULTS, trials)).items():
            if isinstance(series, Series) and series.failover is not None:
                theirs[fault] += series.failover.samples
        print(f"round {round_number} of {rounds} done", flush=True)
    for fault in FAULTS:
        mine, peer = Distribution.of(ours[fault]), Distribution.of(theirs[fault])
        print(f"pg-coordinator {fault.value:<5} {mine.summary()}")
        print(f"pals           {fault.value:<5} {peer.summary()}")
        print(f"  ratio of medians: {mine.median / peer.median:.2f}x", flush=True)
    for fault in (Fault.TERM, Fault.KILL):
        print_trace(await measure_trace(await db(), fault, trials * rounds, log_dir))
    print("the floor, after a short and a long rest:")
    for rest_s in RESTS_S:
        unlock = await measure_floor_unlock(await db(), trials * rounds, rest_s)
        commit = await measure_commit(await db(), trials * rounds, rest_s)
        print(f"  bare unlock to waiter  rest {rest_s:4.2f} s  {unlock.summary()}")
        print(f"  one durable commit     rest {rest_s:4.2f} s  {commit.summary()}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
