"""Options and checks shared by the subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

from coordinator._errors import CoordinatorError
from coordinator.cli._settings import add_settings

__all__ = ["Subparsers", "add_database_options", "require_dsn"]

if TYPE_CHECKING:
    # argparse has no public name for what add_subparsers() returns.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """``--dsn`` and ``--schema``, also from COORDINATOR_DSN, COORDINATOR_SCHEMA or --config."""
    add_settings(parser, "dsn", "schema")


def require_dsn(args: argparse.Namespace) -> str:
    if not args.dsn:
        raise CoordinatorError(
            "no database given: pass --dsn, set COORDINATOR_DSN or put dsn in the config file, "
            "e.g. postgresql://user@host:5432/dbname with the password in PGPASSWORD"
        )
    return str(args.dsn)
