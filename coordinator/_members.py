"""Membership: the groups' rows in the database, and the followers' heartbeat.

At start every group is registered (its row in ``leaders``, with its lock
key, so that a collision with another name is refused) after checking that
the server's lock table can hold them. Followers then heartbeat together,
one statement for every group this instance follows, so that the heartbeat
table shows every live member. A server that lost the rows (a crash restart
without durable commits) gets them again on the next heartbeat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import asyncpg

from coordinator._config import HOST, CoordinatorConfig
from coordinator._errors import ConfigurationError, KeyCollisionError, SchemaNotMigrated
from coordinator._keys import group_set
from coordinator._logging import get_logger
from coordinator._migrations import GRANT_HINT
from coordinator._signals import HeartbeatDone
from coordinator._sql import Statements

__all__ = ["Members"]

log = get_logger()


class Members:
    """This instance's groups (name -> lock key) as the database records them."""

    def __init__(self, config: CoordinatorConfig, sql: Statements, keys: Mapping[str, int]) -> None:
        self._config = config
        self._sql = sql
        self._keys = keys
        #: The fingerprint of this list of groups (see ``group_set``).
        self.group_set = group_set(keys)
        self._log = log.bind(instance_id=config.instance_id)

    @property
    def keys(self) -> Mapping[str, int]:
        return self._keys

    async def register(self, conn: asyncpg.Connection) -> None:
        """Refuse what cannot work, then record every group and its key in one transaction."""
        await self._check_capacity(conn)
        try:
            await self._register(conn)
        except asyncpg.InsufficientPrivilegeError as error:
            raise SchemaNotMigrated(
                f"this role may not register groups ({error}): {GRANT_HINT}"
            ) from None

    async def heartbeat(
        self, conn: asyncpg.Connection, following: list[str]
    ) -> HeartbeatDone | None:
        """The followers' heartbeat, one statement; None when this instance follows nothing."""
        if not following:
            return None
        started = time.monotonic()
        args = (following, self._config.instance_id, HOST, os.getpid())
        try:
            await conn.execute(self._sql.member_heartbeat, *args)
        except asyncpg.ForeignKeyViolationError:
            self._log.warning("groups_registered_again", groups=len(self._keys))
            await self._register(conn)
            await conn.execute(self._sql.member_heartbeat, *args)
        return HeartbeatDone(tuple(following), time.monotonic() - started, ok=True, batch=True)

    async def _register(self, conn: asyncpg.Connection) -> None:
        """Record every group and its key, in one transaction that a collision rolls back.

        A list of groups already registered is one row to read
        (``group_sets``), whatever its length; instances that start together
        take turns, so that one registers the list and the others find it.
        """
        ns = self._config.lock_namespace
        if await conn.fetchval(self._sql.group_set_registered, self.group_set, ns):
            return
        names, keys = list(self._keys), list(self._keys.values())
        async with conn.transaction():
            args = (self.group_set, names, keys, ns, self._config.ttl)
            if not await conn.fetchval(self._sql.register_group_set, *args):
                return  # another instance registered this list meanwhile
            for row in await conn.fetch(self._sql.group_keys, names, keys, ns):
                wanted, key = row["wanted"], self._keys[row["wanted"]]
                if row["group_name"] != wanted:
                    raise KeyCollisionError(
                        f"group {wanted!r} hashes to lock key {key}, which group "
                        f"{row['group_name']!r} already uses in this database: rename one of them"
                    )
                if (row["lock_namespace"], row["lock_key"]) != (ns, key):
                    raise ConfigurationError(
                        f"group {wanted!r} is registered with lock namespace "
                        f"{row['lock_namespace']}, this instance uses {ns}: give every instance "
                        "the same lock_namespace"
                    )

    async def _check_capacity(self, conn: asyncpg.Connection) -> None:
        """Refuse more groups than the server's shared lock table can ever hold."""
        capacity = await conn.fetchval(self._sql.lock_capacity)
        if len(self._keys) > capacity:
            raise ConfigurationError(
                f"{len(self._keys)} groups need as many advisory locks, but this server's lock "
                f"table holds {capacity} in all (max_locks_per_transaction x (max_connections + "
                "max_prepared_transactions)): raise max_locks_per_transaction or use fewer groups"
            )
        if len(self._keys) > capacity // 2:
            self._log.warning(
                "lock_table_nearly_full",
                groups=len(self._keys),
                capacity=capacity,
                fix="raise max_locks_per_transaction; other sessions need lock slots too",
            )
