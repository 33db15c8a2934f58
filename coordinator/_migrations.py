"""The built-in migration runner.

The SQL files in ``migrations/`` are plain and numbered (``0001_init.sql``),
so any migration tool can apply them. This runner records each applied
version with its checksum, applies each file in its own transaction, and
serialises concurrent runs (many replicas starting at once) with an advisory
lock, so ``coordinator migrate`` is safe to run from every pod.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from coordinator._config import ConnectionOptions
from coordinator._connect import connect
from coordinator._errors import MigrationError, SchemaNotMigrated
from coordinator._keys import DEFAULT_LOCK_NAMESPACE, group_lock_key
from coordinator._logging import get_logger
from coordinator._sql import Statements, in_schema

__all__ = ["GRANT_HINT", "Migration", "available_migrations", "check_schema", "migrate"]

log = get_logger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file as shipped, before any schema substitution."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    def sql_for(self, schema: str) -> str:
        return in_schema(self.sql, schema)


def _migrations_dir() -> Path:
    """The SQL files: inside the installed wheel, or beside the package in a checkout."""
    packaged = Path(str(resources.files("coordinator"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def available_migrations() -> list[Migration]:
    found = []
    for path in sorted(_migrations_dir().glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"unexpected file {path.name} among the migrations: name files NNNN_name.sql"
            )
        found.append(Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(
            f"migrations must be numbered 1, 2, 3 ... without gaps, found {versions}"
        )
    return found


def latest_version() -> int:
    return len(available_migrations())


async def migrate(
    dsn: str, *, schema: str = "coordinator", connect_timeout: float = 5.0
) -> list[int]:
    """Apply pending migrations to ``schema``; return the versions applied (empty if none)."""
    sql = Statements.for_schema(schema)
    migrations = available_migrations()
    conn = await connect(
        ConnectionOptions(
            dsn=dsn, connect_timeout=connect_timeout, application_name="coordinator:migrate"
        )
    )
    try:
        # A session lock, held across the per-file transactions; taken before
        # anything is created so concurrent runners never race on DDL.
        await conn.execute(
            sql.migration_lock, DEFAULT_LOCK_NAMESPACE, group_lock_key(f"migrations:{schema}")
        )
        # The bookkeeping table is created in the transaction of the first
        # migration, so that a migration that fails leaves nothing behind.
        exists = await conn.fetchval(sql.migrations_table_exists)
        applied = (
            {row["version"]: row for row in await conn.fetch(sql.applied_migrations)}
            if exists
            else {}
        )
        _check_applied(applied, migrations)
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql.migrations_table)
                await conn.execute(migration.sql_for(schema))
                await conn.execute(
                    sql.record_migration, migration.version, migration.name, migration.checksum
                )
            log.info(
                "migration_applied", version=migration.version, name=migration.name, schema=schema
            )
            done.append(migration.version)
        return done
    except asyncpg.PostgresError as error:
        raise MigrationError(f"migration failed in schema {schema!r}: {error}") from error
    finally:
        await conn.close()


def _check_applied(applied: dict[int, asyncpg.Record], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version} ({row['name']}), which this version of "
                "pg-coordinator does not know: upgrade pg-coordinator"
            )
        if row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.name} was changed after it was applied (checksum "
                f"{row['checksum'][:12]} in the database, {migration.checksum[:12]} in the file): "
                "restore the original file and add changes as a new numbered migration"
            )


#: What a role missing a privilege needs (after every migration that adds one).
GRANT_HINT = "run `coordinator grant --role <role>` as the schema's owner (see docs/operations.md)"


async def check_schema(conn: asyncpg.Connection, schema: str, schema_version_sql: str) -> None:
    """Refuse to start on a schema that is missing or older than this code."""
    hint = f"run `coordinator migrate` (schema {schema!r}) against this database first"
    try:
        have = await conn.fetchval(schema_version_sql)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        raise SchemaNotMigrated(f"the coordinator tables are missing: {hint}") from None
    except asyncpg.InsufficientPrivilegeError:
        raise SchemaNotMigrated(f"this role may not use schema {schema!r}: {GRANT_HINT}") from None
    need = latest_version()
    if have < need:
        raise SchemaNotMigrated(
            f"the coordinator schema is at version {have}, this version needs {need}: {hint}"
        )
