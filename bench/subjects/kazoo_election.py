"""A leader on kazoo's ``Election`` recipe (ZooKeeper), reporting what kazoo tells it.

``Election.run(func)`` blocks until this client's znode is first in line,
then calls ``func``: that is ``elected``. A leader learns that it may have
lost from the client's state listener: ``SUSPENDED`` (connection lost) or
``LOST`` (session expired), reported as ``demoted``. SIGTERM stops the
client, which closes the session and deletes its znode: the graceful path.
Runs in the benchmark's own environment; ``--timeout`` is kazoo's session
timeout (10 s by default).
"""

from __future__ import annotations

import argparse
import signal
import threading

from kazoo.client import KazooClient, KazooState  # type: ignore[import-untyped]
from kazoo.recipe.election import Election  # type: ignore[import-untyped]

from bench.emit import emit


def _lead(args: argparse.Namespace) -> None:
    client = KazooClient(hosts=args.hosts, timeout=args.timeout)
    leading = threading.Event()
    stopping = threading.Event()

    def on_state(state: str) -> None:
        if leading.is_set() and state in (KazooState.SUSPENDED, KazooState.LOST):
            leading.clear()
            emit("demoted", reason=str(state).lower())

    client.add_listener(on_state)
    client.start()
    election = Election(client, f"/bench/{args.election}", identifier=args.name)

    def serve() -> None:
        leading.set()
        emit("elected")
        while leading.is_set() and not stopping.wait(0.05):
            pass

    def campaign() -> None:
        while not stopping.is_set():
            emit("campaigning")
            try:
                election.run(serve)
            except Exception as error:  # noqa: BLE001 - a lost session: campaign again
                emit("campaign_failed", error=repr(error))
                stopping.wait(0.5)

    threading.Thread(target=campaign, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    emit("started")
    while not stopping.wait(3600):
        pass
    client.stop()
    client.close()
    emit("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--election", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    _lead(parser.parse_args())
