"""Options, checks and output shared by the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

from coordinator._errors import CoordinatorError
from coordinator.cli._settings import add_settings

if TYPE_CHECKING:
    from coordinator._observe import LeadershipEvent

__all__ = [
    "Columns",
    "Subparsers",
    "add_database_options",
    "event_cells",
    "event_columns",
    "require_dsn",
]

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


class Columns:
    """Left-aligned columns, two spaces apart, as wide as the widest cell seen so far.

    A table known in advance is measured first (:meth:`widen` every row); a
    stream of lines (``watch``) starts from ``minimum`` widths and widens
    as it goes. The last column is never
    padded, so a long reason does not push anything.
    """

    def __init__(self, minimum: Sequence[int] = ()) -> None:
        self._widths = list(minimum)

    def widen(self, cells: Sequence[str]) -> None:
        for i, cell in enumerate(cells[:-1]):
            self.at_least(i, len(cell))

    def at_least(self, column: int, width: int) -> None:
        while len(self._widths) <= column:
            self._widths.append(0)
        self._widths[column] = max(self._widths[column], width)

    def line(self, cells: Sequence[str]) -> str:
        self.widen(cells)
        padded = [cell.ljust(width) for cell, width in zip(cells, self._widths, strict=False)]
        return "  ".join([*padded, *cells[len(padded) :]]).rstrip()

    def table(self, rows: Sequence[Sequence[str]]) -> str:
        for row in rows:
            self.widen(row)
        return "\n".join(self.line(row) for row in rows)


#: Event columns that a stream knows in advance: the time, and the longest kind.
_EVENT_WIDTHS = (len("2024-05-01T12:00:00.000+00:00"), 0, len("resigned"))
_GROUP_COLUMN = 1


def event_columns(groups: Iterable[str] = ()) -> Columns:
    """Columns for :func:`event_cells` lines; the group column fits each of ``groups``."""
    columns = Columns(_EVENT_WIDTHS)
    columns.at_least(_GROUP_COLUMN, max((len(group) for group in groups), default=0))
    return columns


def event_cells(event: LeadershipEvent, *, received_at: datetime | None = None) -> list[str]:
    """One event for people: time, group, kind, term, instance, and the reason if any."""
    at = event.at or received_at
    who = event.instance_id or "-"
    if event.kind == "current":
        who = f"leader {event.instance_id}" if event.instance_id else "no leader"
    return [
        at.isoformat(timespec="milliseconds") if at else "-",
        event.group,
        event.kind,
        f"term {event.term}",
        who,
        f"({event.reason})" if event.reason else "",
    ]
