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
from collections.abc import Iterable, Sequence

from coordinator._errors import ConfigurationError

__all__ = [
    "DEFAULT_LOCK_NAMESPACE",
    "MAX_GROUP_NAME_BYTES",
    "first_invalid_group_name",
    "group_lock_key",
    "group_lock_keys",
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


#: A name of at most this many characters fits MAX_GROUP_NAME_BYTES (4 bytes a character).
_SURELY_SHORT = MAX_GROUP_NAME_BYTES // 4


def first_invalid_group_name(names: Sequence[str]) -> int | None:
    """The index of the first name of ``names`` that cannot name a group, or None.

    The same rules as :func:`validate_group_name` (which says what is wrong),
    checked in one pass: a process of a fleet reads 100,000 names at start,
    and a call per name was most of that.
    """
    fits = [
        type(name) is str
        and name.isprintable()
        and 0 < len(name) <= _SURELY_SHORT
        and not name[0].isspace()
        and not name[-1].isspace()
        for name in names
    ]
    if all(fits):
        return None
    for index, name in enumerate(names):  # the rare long name, or a bad one
        if not fits[index]:
            try:
                validate_group_name(name)
            except ConfigurationError:
                return index
    return None


def group_lock_key(name: str) -> int:
    """The advisory-lock key of group ``name``: a non-negative int4."""
    return group_lock_keys([name])[0]


def group_lock_keys(names: Iterable[str]) -> list[int]:
    """:func:`group_lock_key` of each name, in one pass (100,000 names at a fleet's start)."""
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    return [from_bytes(sha256(name.encode()).digest()[:4], "big") & 0x7FFF_FFFF for name in names]


def group_set(names: Iterable[str]) -> str:
    """The fingerprint of a list of groups: the md5 of its names, sorted, one per line.

    Instances that run the same list share it: fair spreading counts them
    together, and registration records a list once for all of them.
    """
    listed = "\n".join(sorted(names)).encode()
    return hashlib.md5(listed, usedforsecurity=False).hexdigest()
