"""The command of the ``--exec`` tests: records its start and its SIGTERM, then waits.

Each record is one JSON line appended to ``$EXEC_RECORDS`` (O_APPEND: whole
lines, whichever process writes), stamped with ``time.monotonic()``, the
clock every process of the machine shares. SIGUSR1 makes it exit with
status 3, as a command that ends on its own.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

EXIT_ON_ITS_OWN = 3


def record(event: str, **fields: Any) -> None:
    line = {
        "event": event,
        "at": time.monotonic(),
        "pid": os.getpid(),
        "group": os.environ["COORDINATOR_GROUP"],
        "term": int(os.environ["COORDINATOR_TERM"]),
        "instance_id": os.environ["COORDINATOR_INSTANCE_ID"],
        **fields,
    }
    fd = os.open(os.environ["EXEC_RECORDS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def main() -> int:
    record("started", schema=os.environ["COORDINATOR_SCHEMA"])

    def terminated(signum: int, frame: object) -> None:
        record("terminated")
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGUSR1, lambda signum, frame: sys.exit(EXIT_ON_ITS_OWN))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
