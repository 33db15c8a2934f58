"""The ``coordinator`` command. One module per subcommand, each with
``register(subparsers)`` adding its parser and setting ``handler``.

Only the module of the subcommand that runs is imported (all of them for
``coordinator --help``), so that an exec probe does not load the elector.

Expected failures (bad input, unreachable database, missing migration) print
one line that names the cause and the fix, and exit with status 1; usage
errors exit with 2. Nothing prints a traceback for them, nor for a reader
that closes the pipe early (``coordinator history | head -1``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from coordinator._errors import CoordinatorError
from coordinator.cli._settings import resolve_settings

__all__ = ["main"]

#: The subcommands, in the order ``--help`` lists them; each is the module of that name.
COMMANDS = (
    "migrate",
    "grant",
    "run",
    "probe",
    "status",
    "history",
    "jobs",
    "watch",
    "resign",
    "demo",
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, the other subcommands are only names (never parsed)."""
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="Leader election for applications that already run on PostgreSQL.",
    )
    # A subcommand that needs none of the library (`probe`) sets this to False.
    parser.set_defaults(uses_library=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if command in (None, name):
            importlib.import_module(f"coordinator.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(chosen).parse_args(argv)
    if args.uses_library:
        # Commands that print their own results keep the library's events quiet;
        # `run` configures its own output.
        from coordinator._logging import configure_logging

        configure_logging("console", level=logging.WARNING)
    try:
        resolve_settings(args)
        status = int(args.handler(args))
        sys.stdout.flush()
    except CoordinatorError as error:
        print(f"coordinator: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    return status


def _reader_went_away() -> int:
    """The reader of standard output closed it (``| head``): stop quietly, as ``cat`` does.

    Standard output is pointed at /dev/null so that the interpreter's own
    flush at exit does not fail a second time.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
