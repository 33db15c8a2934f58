"""A leader on an etcd lease, with python-etcd3's ``Lock``.

``Lock(name, ttl)`` puts its key with a lease of ``ttl`` seconds (60 by
default) if the key does not exist, and otherwise watches the key until it
changes and tries again: a crashed holder's key goes when its lease
expires; a released one at once. The holder keeps the lease alive every
third of the ttl; a refresh that finds the lease gone (TTL 0, as after a
freeze longer than the ttl) is reported as ``demoted``. SIGTERM releases
the lock: the graceful path. Runs in the python-etcd3 environment
(protobuf<4, tenacity<7).
"""

from __future__ import annotations

import argparse
import signal
import threading

import etcd3  # type: ignore[import-not-found]

from bench.emit import emit


def _lead(args: argparse.Namespace) -> None:
    host, port = args.etcd.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port))
    lock = client.lock(args.election, ttl=args.ttl)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    emit("started")
    emit("campaigning")
    lock.acquire(timeout=None)
    emit("elected")
    leading = True
    while not stopping.wait(args.ttl / 3):
        if leading and lock.refresh()[0].TTL <= 0:
            leading = False
            emit("demoted", reason="lease_expired")
    if leading:
        lock.release()
    emit("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--election", required=True)
    parser.add_argument("--ttl", type=int, default=60)
    _lead(parser.parse_args())
