"""The ``coordinator`` command. One module per subcommand, each with
``register(subparsers)`` adding its parser and setting ``handler``.

Expected failures (bad input, unreachable database, missing migration) print
one line that names the cause and the fix, and exit with status 1; usage
errors exit with 2. Nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from coordinator._errors import CoordinatorError
from coordinator._logging import configure_logging
from coordinator.cli import demo, grant, history, jobs, migrate, probe, run, status, watch
from coordinator.cli._settings import resolve_settings

__all__ = ["main"]

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (migrate, grant, run, probe, status, history, jobs, watch, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="Leader election for applications that already run on PostgreSQL.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Commands that print their own results keep the library's events quiet;
    # `run` configures its own output.
    configure_logging("console", level=logging.WARNING)
    try:
        resolve_settings(args)
        return int(args.handler(args))
    except CoordinatorError as error:
        print(f"coordinator: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
