"""``coordinator probe``: exit 0 or 1 from the local instance's state, for exec probes.

Leadership lives in the memory of the ``coordinator run`` process (its trust
deadline is checked on each read), and the database cannot tell it: a row
may still name a leader that has already demoted itself. So the probe asks
that process, at the address it serves (``--http``, ``COORDINATOR_HTTP`` or
the config file, the same setting ``run`` reads), and passes on its answer.
An unreachable process is a failure too. The address ``0.0.0.0`` (or ``::``)
that ``run`` listens on is reached on the loopback address.
"""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.parse

from coordinator._config import check_seconds
from coordinator._errors import ConfigurationError
from coordinator.cli._common import Subparsers
from coordinator.cli._settings import Address, add_settings, duration

__all__ = ["probe", "register"]

_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "probe", help="exit 0 if the local `coordinator run --http` is ready (or live, or leads)"
    )
    add_settings(parser, "http")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--leader", metavar="GROUP", help="succeed only while this instance leads GROUP"
    )
    which.add_argument("--live", action="store_true", help="ask /livez instead of /readyz")
    parser.add_argument(
        "--timeout",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="how long to wait for the answer, e.g. 2s or 500ms (default: 2s)",
    )
    # It speaks HTTP only: no library events to quiet, so structlog is never imported.
    parser.set_defaults(handler=handle, uses_library=False)


def handle(args: argparse.Namespace) -> int:
    check_seconds("probe --timeout", args.timeout, 0.001, 3600.0, "")
    if args.http is None:
        raise ConfigurationError(
            "no address to probe: pass --http HOST:PORT as given to `coordinator run`, "
            "or set COORDINATOR_HTTP"
        )
    if args.leader:
        path = "/leader/" + urllib.parse.quote(args.leader, safe="")
    else:
        path = "/livez" if args.live else "/readyz"
    ok, message = probe(args.http, path, timeout=args.timeout)
    print(message)
    return 0 if ok else 1


def probe(address: Address, path: str, *, timeout: float) -> tuple[bool, str]:
    """GET ``path`` from the instance at ``address``: 200 or not, and one line saying why."""
    host = _LOOPBACK.get(address.host, address.host)
    url = f"http://{Address(host, address.port)}{path}"
    connection = http.client.HTTPConnection(host, address.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        return False, (
            f"cannot reach {url} ({error}): is `coordinator run --http {address}` running?"
        )
    finally:
        connection.close()
    return status == 200, f"{url}: {status} {_reason(body)}"


def _reason(body: bytes) -> str:
    """The reason the endpoint gave, or for /leader/{group} who leads."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:200]
    if not isinstance(answer, dict):
        return str(answer)[:200]
    if "reason" in answer:
        return str(answer["reason"])
    if "error" in answer:
        return str(answer["error"])
    group = answer.get("group")
    if answer.get("is_leader"):
        return f"this instance leads {group!r}"
    return (
        f"this instance does not lead {group!r}; the leader is {answer.get('leader') or 'unknown'}"
    )
