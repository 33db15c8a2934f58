"""``coordinator grant``: create a role with only what the coordinator needs.

It runs ``coordinator/sql/least_privilege.sql`` (documented there, line by
line) with the role and schema named on the command line, as the DSN's role,
which must own the schema or be a superuser. ``--print`` shows the SQL for a
DBA to review or run with psql instead.

A password is read from an environment variable, never from a flag, and
is sent as a SCRAM-SHA-256 verifier, so that the clear text reaches neither
the server nor its statement log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import re
import textwrap
from importlib import resources

import asyncpg

from coordinator._config import ConnectionOptions
from coordinator._connect import connect
from coordinator._errors import ConfigurationError, CoordinatorError
from coordinator._migrations import check_schema
from coordinator._sql import Statements, in_schema
from coordinator.cli._common import Subparsers, add_database_options, require_dsn

__all__ = ["grant_sql", "register", "scram_verifier"]

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# How the script names the role and the schema.
_ROLE_LITERAL = re.compile(r"'coordinator_app'")
_ROLE_IDENTIFIER = re.compile(r"\bcoordinator_app\b")
_SCRAM_ITERATIONS = 4096  # PostgreSQL's default, scram_iterations


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "grant", help="create a role with only the rights the coordinator needs"
    )
    add_database_options(parser)
    parser.add_argument("--role", required=True, help="the role to create or grant to")
    parser.add_argument(
        "--password-env",
        metavar="VARIABLE",
        help="set the role's password from this environment variable (also makes it LOGIN)",
    )
    parser.add_argument(
        "--fence-any-role",
        action="store_true",
        help="grant pg_signal_backend to the schema's owner, whose functions fence stale "
        "leaders and end old fenced transactions, when it is not a superuser",
    )
    parser.add_argument(
        "--revoke-public-connect",
        action="store_true",
        help="revoke CONNECT on the database from PUBLIC, so that roles not granted it cannot "
        "take the coordinator's advisory locks (grant CONNECT to every role that must connect)",
    )
    parser.add_argument("--print", action="store_true", help="print the SQL instead of running it")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    sql = grant_sql(
        args.role,
        args.schema,
        fence_any_role=args.fence_any_role,
        revoke_public_connect=args.revoke_public_connect,
    )
    if args.print:
        if args.password_env:
            raise ConfigurationError(
                "--print shows no password: drop --password-env, and set the password "
                "with psql's \\password, which sends no clear text either"
            )
        print(sql)
        return 0
    password = _password(args.password_env) if args.password_env else None
    asyncio.run(_grant(require_dsn(args), args.schema, args.role, sql, password))
    print(
        f"role {args.role} may now run the coordinator in schema {args.schema}"
        + ("; password set" if password is not None else "")
        + ("; the schema's owner may fence leaders of any role" if args.fence_any_role else "")
        + ("; PUBLIC may no longer connect" if args.revoke_public_connect else "")
    )
    return 0


def grant_sql(
    role: str, schema: str, *, fence_any_role: bool = False, revoke_public_connect: bool = False
) -> str:
    """The least-privilege script with ``role`` and ``schema`` in place of its own names."""
    for kind, name in (("role", role), ("schema", schema)):
        if not _IDENTIFIER.match(name) or name.startswith("pg_"):
            raise ConfigurationError(
                f"{kind} name {name!r} is not a plain lower-case SQL identifier: use letters, "
                "digits and underscores, not starting with pg_, e.g. coordinator_app"
            )
    identifier = f'"{role}"'
    script = resources.files("coordinator").joinpath("sql/least_privilege.sql").read_text()
    script = _ROLE_LITERAL.sub(f"'{role}'", script)
    script = _ROLE_IDENTIFIER.sub(identifier, script)
    script = in_schema(script, schema)
    statements = Statements.for_schema(schema)
    if fence_any_role:
        script += textwrap.dedent(statements.grant_signal_backend).strip() + ";\n"
    if revoke_public_connect:
        script += textwrap.dedent(statements.revoke_public_connect).strip() + ";\n"
    return script


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _password(variable: str) -> str:
    password = os.environ.get(variable)
    if not password:
        raise ConfigurationError(
            f"--password-env names ${variable}, which is unset or empty: export the password "
            "in it, or leave --password-env out"
        )
    # Non-ASCII passwords go through SASLprep on both sides, which is not done here.
    if not (password.isascii() and password.isprintable()):
        raise ConfigurationError(
            f"the password in ${variable} has characters other than printable ASCII: use "
            "such a password, or set it with psql's \\password"
        )
    return password


async def _grant(dsn: str, schema: str, role: str, sql: str, password: str | None) -> None:
    statements = Statements.for_schema(schema)
    options = ConnectionOptions(dsn=dsn, application_name="coordinator:grant")
    conn = await connect(options)
    try:
        await check_schema(conn, schema, statements.schema_version)
        async with conn.transaction():
            await conn.execute(sql)
            if password is not None:
                await conn.execute(
                    statements.set_role_password.replace("{role}", f'"{role}"').replace(
                        "{verifier}", scram_verifier(password)
                    )
                )
    except asyncpg.InsufficientPrivilegeError as error:
        raise CoordinatorError(
            f"the DSN's role may not grant in schema {schema} or create roles ({error}): "
            "run grant as the schema's owner, with CREATEROLE, or as a superuser"
        ) from None
    except asyncpg.ReadOnlySQLTransactionError:
        raise CoordinatorError(
            f"the database at {options.redacted_dsn} is read-only (a standby, or "
            "default_transaction_read_only is on): run grant against the primary"
        ) from None
    finally:
        await conn.close()
