"""Group names and the advisory-lock keys derived from them.

A group's lock is the two-int4 advisory lock ``(namespace, key)``. The key is
a documented, stable function of the name so that every language and tool can
compute it: the first four bytes of SHA-256 over the UTF-8 name, read as a
big-endian integer, with the top bit cleared (a non-negative int4 compares
directly with ``pg_locks.objid``). Collisions are possible (31 bits) and are
refused by a unique constraint on the stored key, never silently shared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from coordinator._errors import ConfigurationError

__all__ = [
    "DEFAULT_LOCK_NAMESPACE",
    "MAX_GROUP_NAME_BYTES",
    "group_lock_key",
    "group_set",
    "validate_group_name",
]

#: ``classid`` of every lock the coordinator takes: the bytes "pgrc".
DEFAULT_LOCK_NAMESPACE = 0x70677263

#: Matches the CHECK constraint on ``leaders.group_name``.
MAX_GROUP_NAME_BYTES = 200


def validate_group_name(name: str) -> str:
    """Return ``name`` if it can name a group, else raise ConfigurationError."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            f"group name {name!r} is empty: give each group a short name such as 'scheduler'"
        )
    if name != name.strip() or not name.isprintable():
        raise ConfigurationError(
            f"group name {name!r} has surrounding whitespace or control characters: "
            "use printable characters only"
        )
    size = len(name.encode("utf-8"))
    if size > MAX_GROUP_NAME_BYTES:
        raise ConfigurationError(
            f"group name {name[:40]!r}... is {size} bytes long: "
            f"use at most {MAX_GROUP_NAME_BYTES} bytes"
        )
    return name


def group_lock_key(name: str) -> int:
    """The advisory-lock key of group ``name``: a non-negative int4."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def group_set(names: Iterable[str]) -> str:
    """The fingerprint of a list of groups: the md5 of its names, sorted, one per line.

    Instances that run the same list share it: fair spreading counts them
    together, and registration records a list once for all of them.
    """
    listed = "\n".join(sorted(names)).encode()
    return hashlib.md5(listed, usedforsecurity=False).hexdigest()
