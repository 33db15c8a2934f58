"""Opening connections the coordinator can trust.

Every lock session is a dedicated connection, never a pooled one: a pool's
reset runs ``pg_advisory_unlock_all()``. Each connection sets server-side
keepalives and ``tcp_user_timeout`` so that the session of a client that
vanished from the network dies in seconds, not after the OS defaults (hours),
and names itself in ``pg_stat_activity``.
"""

from __future__ import annotations

import socket
from typing import Any

import asyncpg

from coordinator._config import CoordinatorConfig
from coordinator._errors import (
    ConfigurationError,
    ConnectionFailed,
    LoginRefused,
    UnsupportedDatabase,
)
from coordinator._sql import Statements

__all__ = ["TRANSIENT_ERRORS", "check_server", "connect"]

#: Errors after which a retry on a new connection may succeed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    # A connection the server just closed can fail a pending operation this way.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, crash, cannot connect now
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, out of memory
)


def _keepalive_settings(config: CoordinatorConfig) -> tuple[str, str, str, str]:
    """Idle, interval and count of keepalives, and tcp_user_timeout in ms.

    A dead peer is noticed after idle + interval * count seconds without an
    answer, and unacknowledged data is given up after tcp_user_timeout.
    """
    return ("5", "2", "3", str(int(max(config.ttl, 5.0) * 1000)))


async def connect(config: CoordinatorConfig, *, check_pooler: bool = False) -> asyncpg.Connection:
    """Open one dedicated connection; raise ConnectionFailed with the cause and the fix."""
    where = config.redacted_dsn
    kwargs: dict[str, Any] = {
        "timeout": config.connect_timeout,
        # Only application_name in the startup packet: poolers such as PgBouncer
        # refuse unknown startup parameters. The keepalives are SET below.
        "server_settings": {"application_name": config.application_name},
        # Unnamed statements only, so that the checks below also run safely
        # behind a transaction pooler before we refuse it.
        "statement_cache_size": 0 if check_pooler else 100,
    }
    try:
        conn = await asyncpg.connect(config.dsn, **kwargs)
    except asyncpg.InvalidPasswordError:
        raise LoginRefused(
            f"the database refused the password for {where}: check the user and password in the DSN"
        ) from None
    except asyncpg.InvalidAuthorizationSpecificationError as error:
        raise LoginRefused(f"the database refused the login for {where}: {error}") from None
    except asyncpg.InvalidCatalogNameError:
        raise LoginRefused(
            f"the database named in {where} does not exist: create it or fix the DSN"
        ) from None
    except TimeoutError:
        raise ConnectionFailed(
            f"no answer from {where} within {config.connect_timeout:g} s: "
            "check the host, port and firewall"
        ) from None
    except socket.gaierror:
        raise ConnectionFailed(f"cannot resolve the host in {where}: check the DSN") from None
    except OSError as error:
        raise ConnectionFailed(
            f"cannot connect to {where} ({error.strerror or error}): "
            "check the DSN (--dsn or COORDINATOR_DSN) and that the server is running"
        ) from None
    except asyncpg.TargetServerAttributeNotMatched:
        raise ConnectionFailed(
            f"no host of {where} matches its target_session_attrs: none is the kind of server "
            "asked for (a primary for read-write), or it is being promoted; check the hosts"
        ) from None
    except asyncpg.PostgresError as error:
        raise ConnectionFailed(f"the database at {where} refused the connection: {error}") from None
    except ValueError as error:  # asyncpg's DSN parser; its message may quote the DSN
        raise ConfigurationError(
            f"the DSN {where} is malformed ({type(error).__name__}): "
            "check its form, postgresql://user@host:5432/dbname?param=value"
        ) from None
    try:
        await conn.execute(Statements.set_keepalives, *_keepalive_settings(config))
    except BaseException:
        conn.terminate()
        raise
    return conn


async def check_server(config: CoordinatorConfig, conn: asyncpg.Connection) -> None:
    """Refuse a standby and a transaction- or statement-pooling proxy.

    Behind any pooler the handshake's backend pid differs from
    ``pg_backend_pid()``; that tells "pooled", not which mode. A second
    client tells the modes apart: in session mode each client keeps its own
    backend, while in transaction mode the backend that the first client
    just released is handed to the next one.
    """
    facts = await conn.fetchrow(Statements.server_facts)
    if facts["in_recovery"]:
        raise UnsupportedDatabase(
            f"{config.redacted_dsn} is a standby (read-only replica): point the DSN at the primary"
        )
    if conn.get_server_pid() == facts["backend_pid"]:
        return
    other = await connect(config, check_pooler=True)
    try:
        first = (await conn.fetchrow(Statements.server_facts))["backend_pid"]
        second = (await other.fetchrow(Statements.server_facts))["backend_pid"]
    finally:
        await other.close()
    if first == second:
        raise UnsupportedDatabase(
            f"{config.redacted_dsn} goes through a connection pooler in transaction or statement "
            "mode, which cannot keep session advisory locks: connect directly to PostgreSQL or "
            "use a pool in session mode (PgBouncer pool_mode = session)"
        )
