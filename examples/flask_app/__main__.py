"""Serve one replica of the example: ``python -m examples.flask_app --port 8001``.

With ``--port 0`` the system picks a free port. The first line on stdout
says which: ``{"listening": PORT}``. SIGTERM or Ctrl-C resigns and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from types import FrameType

from werkzeug.serving import make_server

from .app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.flask_app", description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--instance-id")
    parser.add_argument("--tick-interval", type=float, default=1.0)
    for timing in ("--ttl", "--heartbeat-interval", "--heartbeat-timeout"):
        parser.add_argument(timing, type=float)
    args = parser.parse_args(argv)
    timings = {
        name: value
        for name in ("ttl", "heartbeat_interval", "heartbeat_timeout")
        if (value := getattr(args, name)) is not None
    }
    app = create_app(
        os.environ["COORDINATOR_DSN"],
        instance_id=args.instance_id,
        tick_interval=args.tick_interval,
        **timings,
    )
    server = make_server("127.0.0.1", args.port, app, threaded=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"listening": server.server_port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.extensions["shut_down"]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
