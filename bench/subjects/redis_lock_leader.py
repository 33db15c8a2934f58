"""A leader on python-redis-lock: block in ``Lock.acquire()``, then lead.

``--expire`` is the lock's expiry in seconds (None, the library's default,
means the lock never expires); with it, ``auto_renewal`` extends the lock
every two thirds of that. A waiter blocks in ``BLPOP`` on the lock's signal
list, which ``release()`` pushes to, and otherwise wakes every ``expire``
seconds to try again. The library never tells a holder that its lock
expired, so this never reports ``demoted``. SIGTERM releases the lock: the
graceful path. The client has ``socket_timeout=None``: with redis-py's
5 s default a waiter's ``BLPOP`` fails after 5 s.
"""

from __future__ import annotations

import argparse
import signal
import threading

import redis
import redis_lock  # type: ignore[import-untyped]

from bench.emit import emit


def _lead(args: argparse.Namespace) -> None:
    host, port = args.redis.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=None)
    lock = redis_lock.Lock(
        client, args.election, expire=args.expire, auto_renewal=args.expire is not None
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    emit("started")
    emit("campaigning")
    lock.acquire()
    emit("elected")
    stopping.wait()
    lock.release()
    emit("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--election", required=True)
    parser.add_argument("--expire", type=int)
    _lead(parser.parse_args())
