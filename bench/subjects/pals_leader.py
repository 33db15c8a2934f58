"""A leader loop on pals, with pals' defaults: block in ``acquire()`` until the lock is ours.

``Locker(app, url).lock(name).acquire()`` waits in ``pg_advisory_lock`` with
a 30 s ``lock_timeout`` (pals' default) and returns False on timeout, so the
loop asks again. SIGTERM leaves the leader's ``try`` block, which releases
the lock as ``with lock:`` would: the graceful path. Runs in the pals
virtual environment.
"""

from __future__ import annotations

import signal
import sys
import time

import pals  # type: ignore[import-not-found]

from bench.emit import emit


def _lead(url: str) -> None:
    lock = pals.Locker("pg-coordinator-bench", url).lock("leader")
    signal.signal(signal.SIGTERM, _stop)
    emit("started")
    emit("campaigning")
    while not lock.acquire():
        pass
    emit("elected")
    try:
        while True:
            time.sleep(3600)
    finally:
        lock.release()
        emit("stopped")


def _stop(*_: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    _lead(sys.argv[1])
