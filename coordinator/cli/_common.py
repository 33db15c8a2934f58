"""Options and checks shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, TypeAlias

from coordinator._errors import CoordinatorError

__all__ = ["Subparsers", "add_database_options", "require_dsn"]

if TYPE_CHECKING:
    # argparse has no public name for what add_subparsers() returns.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get("COORDINATOR_DSN"),
        help="PostgreSQL DSN (default: $COORDINATOR_DSN)",
    )
    parser.add_argument(
        "--schema",
        default=os.environ.get("COORDINATOR_SCHEMA", "coordinator"),
        help="schema of the coordinator's tables (default: coordinator)",
    )


def require_dsn(args: argparse.Namespace) -> str:
    if not args.dsn:
        raise CoordinatorError(
            "no database given: pass --dsn or set COORDINATOR_DSN, "
            "e.g. postgresql://user:password@host:5432/dbname"
        )
    return str(args.dsn)
