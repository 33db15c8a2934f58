"""Opening connections the coordinator can trust.

Every lock session is a dedicated connection, never a pooled one: a pool's
reset runs ``pg_advisory_unlock_all()``. Each connection sets server-side
keepalives and ``tcp_user_timeout`` so that the session of a client that
vanished from the network dies in seconds, not after the OS defaults (hours),
and names itself in ``pg_stat_activity``.

Every new connection is checked, not only the first one: a multi-host DSN
can reconnect to a standby after the primary restarts (advisory locks work
there, writes do not), so a reconnect runs the same refusals as start-up.
"""

from __future__ import annotations

import socket
from typing import Any

import asyncpg

from coordinator._config import ConnectionOptions
from coordinator._errors import (
    ConfigurationError,
    ConnectionFailed,
    LoginRefused,
    UnsupportedDatabase,
)
from coordinator._sql import Statements

__all__ = ["TRANSIENT_ERRORS", "connect"]

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


async def connect(options: ConnectionOptions) -> asyncpg.Connection:
    """Open one dedicated, checked connection; raise ConnectionFailed with the cause and the fix.

    Raises UnsupportedDatabase for a standby or a transaction pooler.
    """
    conn = await _open(options)
    try:
        facts = await conn.fetchrow(Statements.set_keepalives, *options.keepalive_settings())
        await _check_server(options, conn, facts)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def _open(options: ConnectionOptions, *, cache: bool = True) -> asyncpg.Connection:
    """Connect; ``cache=False`` for unnamed statements only (safe behind any pooler)."""
    where = options.redacted_dsn
    kwargs: dict[str, Any] = {
        "timeout": options.connect_timeout,
        # Only application_name in the startup packet: poolers such as PgBouncer
        # refuse unknown startup parameters. The keepalives are SET afterwards.
        "server_settings": {"application_name": options.application_name[:63]},
        "statement_cache_size": 100 if cache else 0,
    }
    try:
        return await asyncpg.connect(options.dsn, **kwargs)
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
            f"no answer from {where} within {options.connect_timeout:g} s: "
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


async def _check_server(
    options: ConnectionOptions, conn: asyncpg.Connection, facts: asyncpg.Record
) -> None:
    """Refuse a standby and a transaction- or statement-pooling proxy.

    Behind any pooler the handshake's backend pid differs from
    ``pg_backend_pid()``; that tells "pooled", not which mode. A second
    client tells the modes apart: in session mode each client keeps its own
    backend, while in transaction mode the backend that the first client
    just released is handed to the next one.

    ``facts`` come from the connection's first statement: through a
    transaction pooler a whole prepare-and-execute up to its Sync is one
    transaction, so it answers before we refuse.
    """
    if facts["in_recovery"]:
        raise UnsupportedDatabase(
            f"{options.redacted_dsn} is a standby (read-only replica): point the DSN at the "
            "primary, or add target_session_attrs=read-write to a multi-host DSN"
        )
    if conn.get_server_pid() == facts["backend_pid"]:
        return
    # Behind a pooler. Two more clients, with unnamed statements only (a named
    # one would not exist on the backend a transaction pooler hands out next).
    first_client = await _open(options, cache=False)
    try:
        second_client = await _open(options, cache=False)
        try:
            first = (await first_client.fetchrow(Statements.server_facts))["backend_pid"]
            second = (await second_client.fetchrow(Statements.server_facts))["backend_pid"]
        finally:
            await second_client.close()
    finally:
        await first_client.close()
    if first == second:
        raise UnsupportedDatabase(
            f"{options.redacted_dsn} goes through a connection pooler in transaction or statement "
            "mode, which cannot keep session advisory locks: connect directly to PostgreSQL or "
            "use a pool in session mode (PgBouncer pool_mode = session)"
        )
