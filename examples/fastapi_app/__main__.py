"""Run the example with one command: replicas of the app on one PostgreSQL.

    python -m examples.fastapi_app                 # an embedded PostgreSQL 18
    COORDINATOR_DSN=postgresql://... python -m examples.fastapi_app --replicas 3

Replica n listens on http://127.0.0.1:<port + n - 1>/. Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

from coordinator import ConfigurationError

from .app import Settings

APP = "examples.fastapi_app.app:create_app"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi_app", description=__doc__)
    parser.add_argument("--replicas", type=int, default=2, help="how many replicas (2)")
    parser.add_argument("--port", type=int, default=8001, help="port of the first replica (8001)")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    with contextlib.ExitStack() as stack:
        dsn = os.environ.get("COORDINATOR_DSN")
        if not dsn:
            from coordinator.testing import LocalPostgres

            print("COORDINATOR_DSN is not set: starting an embedded PostgreSQL ...", flush=True)
            dsn = stack.enter_context(LocalPostgres.embedded()).dsn
        try:
            Settings.from_env({**os.environ, "COORDINATOR_DSN": dsn})
        except ConfigurationError as error:
            print(f"example: error: {error}", file=sys.stderr)
            return 1
        replicas = []
        for n in range(1, args.replicas + 1):
            port = args.port + n - 1
            env = {**os.environ, "COORDINATOR_DSN": dsn, "INSTANCE_ID": f"replica-{n}"}
            command = [sys.executable, "-m", "uvicorn", "--factory", APP, "--port", str(port)]
            replicas.append(subprocess.Popen([*command, "--log-level", "warning"], env=env))
            stack.callback(_stop, replicas[-1])
            print(f"replica-{n}: http://127.0.0.1:{port}/  (also /leader and /ticks)", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            while all(replica.poll() is None for replica in replicas):
                time.sleep(0.5)
    return 0


def _stop(replica: subprocess.Popen[bytes]) -> None:
    if replica.poll() is None:
        replica.terminate()
    replica.wait()


if __name__ == "__main__":
    raise SystemExit(main())
