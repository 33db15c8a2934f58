"""A leader on tooz, on any of its back ends, reporting what tooz tells it.

``--mode election`` (ZooKeeper, Redis): join a group, register a
``watch_elected_as_leader`` callback and call ``run_watchers()`` every
``--poll`` seconds, as tooz requires; the callback is ``elected``. tooz has
no callback for losing leadership, so this never reports ``demoted``.
``--mode lock`` (PostgreSQL, whose driver has locks only, and etcd3gw,
whose driver has no election): block in ``get_lock(...).acquire()``, then
lead. SIGTERM stands down (where the
driver can) and stops the coordinator, which releases its locks: the
graceful path. The back end's
settings (``timeout``, ``lock_timeout``...) are options in ``--url``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

import tooz
from tooz import coordination

from bench.emit import emit


def _lead(args: argparse.Namespace) -> None:
    coordinator = coordination.get_coordinator(args.url, args.name.encode())
    coordinator.start(start_heart=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    group = args.election.encode()
    emit("started")
    if args.mode == "lock":
        lock = coordinator.get_lock(group)
        emit("campaigning")
        lock.acquire(blocking=True)
        emit("elected")
        stopping.wait()
        lock.release()
    else:
        for request in (coordinator.create_group, coordinator.join_group):
            with contextlib.suppress(
                coordination.GroupAlreadyExist, coordination.MemberAlreadyExist
            ):
                request(group).get()

        def elected(event: coordination.LeaderElected) -> None:
            emit("elected")

        coordinator.watch_elected_as_leader(group, elected)
        emit("campaigning")
        while not stopping.is_set():
            coordinator.run_watchers()
            stopping.wait(args.poll)
        # Redis and etcd3gw cannot stand down; stop() releases the leader's lock.
        with contextlib.suppress(tooz.NotImplemented):
            coordinator.stand_down_group_leader(group)
    coordinator.stop()
    emit("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--election", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--mode", choices=("election", "lock"), default="election")
    parser.add_argument("--poll", type=float, default=0.1)
    _lead(parser.parse_args())
