"""The exceptions pg-coordinator raises.

A small, flat set, each deriving from the closest builtin. Losing an election
is an outcome, not an exception. Every message names the cause and the fix,
because the CLI prints it as the one line an operator sees.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionFailed",
    "CoordinatorError",
    "KeyCollisionError",
    "LoginRefused",
    "MigrationError",
    "NotLeader",
    "SchemaNotMigrated",
    "StaleTerm",
    "SwitchoverFailed",
    "TermExhausted",
    "UnsupportedDatabase",
]


class CoordinatorError(Exception):
    """Base class of every error pg-coordinator raises on purpose."""


class ConfigurationError(CoordinatorError, ValueError):
    """A setting or group name is invalid; raised at construction."""


class KeyCollisionError(ConfigurationError):
    """Two group names hash to the same advisory-lock key."""


class ConnectionFailed(CoordinatorError, ConnectionError):
    """The database could not be reached or refused the credentials."""


class LoginRefused(ConnectionFailed):
    """The database refused the user, password or database name: retrying cannot help."""


class UnsupportedDatabase(CoordinatorError, RuntimeError):
    """The server cannot hold session locks for us: a standby or a transaction pooler."""


class SchemaNotMigrated(CoordinatorError, RuntimeError):
    """The coordinator's tables are missing or older than this version needs."""


class MigrationError(CoordinatorError, RuntimeError):
    """A migration cannot be applied, or an applied one was changed afterwards."""


class NotLeader(CoordinatorError, RuntimeError):
    """An operation that needs leadership ran on an instance that does not lead."""


class StaleTerm(NotLeader):
    """A fenced write carried a term that is no longer current: a newer leader exists."""


class SwitchoverFailed(CoordinatorError, RuntimeError):
    """A switchover was refused, or the hand-over did not finish in time."""


class TermExhausted(CoordinatorError, OverflowError):
    """A group's next term would not fit in a bigint: it can never be led again."""
