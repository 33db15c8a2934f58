"""A leader loop on pals, with pals' defaults: block in ``acquire()`` until the lock is ours.

``Locker(app, url).lock(name).acquire()`` waits in ``pg_advisory_lock`` with
a 30 s ``lock_timeout`` (pals' default) and returns False on timeout, so the
loop asks again. Runs in the pals virtual environment.
"""

from __future__ import annotations

import sys
import time

import pals  # type: ignore[import-not-found]

from bench.emit import emit


def _lead(url: str) -> None:
    lock = pals.Locker("pg-coordinator-bench", url).lock("leader")
    emit("started")
    while not lock.acquire():
        pass
    emit("elected")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    _lead(sys.argv[1])
