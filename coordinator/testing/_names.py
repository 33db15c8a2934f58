"""Many group names at once, for tests and benchmarks of thousands of groups."""

from __future__ import annotations

from coordinator._keys import group_lock_key

__all__ = ["distinct_group_names"]


def distinct_group_names(count: int, prefix: str = "tenant-") -> list[str]:
    """``count`` names ``<prefix>000000``, ``<prefix>000001``... whose lock keys all differ.

    Lock keys have 31 bits, so among thousands of names a few collide by
    chance (1 in 10,000 at 1,000 names) and would be refused: those are skipped.
    """
    chosen: dict[int, str] = {}
    serial = 0
    while len(chosen) < count:
        name = f"{prefix}{serial:06d}"
        chosen.setdefault(group_lock_key(name), name)
        serial += 1
    return list(chosen.values())
