"""Candidates: which live members campaign for which group, and who should lead it.

In poll mode every process of a fleet runs the same list of groups. If each
campaigned for every group, each would keep a waiting elector per group (a
task, a future, about 4 KB) and try every free lock each poll: 50 processes
x 100,000 groups do not fit in memory. Instead the groups are cut into
:data:`SHARDS` shards by lock key, and each shard ranks the live members by
rendezvous hashing (a hash of member and shard, highest first). Every
process computes the same ranking from the same list of live members, with
no coordination, and when a member leaves, only its shards change hands.

- Without fair spreading, the first :data:`CANDIDATES` members of a shard's
  ranking campaign for its groups: each process for about
  ``CANDIDATES x groups / members`` of them, and a dead member's groups
  already have a live candidate waiting.
- With fair spreading, each shard goes to the first member in its ranking
  that still has room under the fair share ``ceil(groups / members)``
  (biggest shards first; a shard that fits nobody whole is split group by
  group), so every member leads at most its share, and campaigns only for
  what it should lead.

Shards are also the NOTIFY channels (:func:`shard_channel`): a process
listens only to the shards of the groups it campaigns for, so the news of
100,000 hand-overs is not parsed by every process.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CANDIDATES",
    "SHARDS",
    "Candidates",
    "Plan",
    "handover_channel",
    "members_channel",
    "shard_of",
]

#: Shards per schema: the unit of candidacy.
SHARDS = 1024
#: Channels on which hand-overs are announced, by lock key: a shard's groups
#: all go to channel ``shard % HANDOVER_CHANNELS``. Fewer than the shards
#: because PostgreSQL checks every notification against each listening
#: backend's channels one by one: a session listening to the 900-odd shards
#: of its 2,000 groups cost the server 3.4 us per notification, and a cold
#: start of 100,000 groups is 100,000 notifications for each of 50 sessions.
#: The database's record_event (migration 0009) computes the same channel.
HANDOVER_CHANNELS = 64
#: Members that campaign for each shard's groups without fair spreading.
CANDIDATES = 2


def shard_of(lock_key: int) -> int:
    return lock_key % SHARDS


def members_channel(schema: str) -> str:
    """The channel on which a watcher says that the live members changed."""
    return f"{schema}_members"


def handover_channel(schema: str, lock_key: int) -> str:
    """The channel on which the hand-overs of the group with ``lock_key`` are announced."""
    return f"{schema}_handover_{lock_key % HANDOVER_CHANNELS}"


@dataclass(frozen=True)
class Plan:
    """What one member does for a given list of live members."""

    members: tuple[str, ...]
    #: The groups it campaigns for (its electors run).
    wanted: frozenset[str]
    #: With fair spreading: the groups it should lead, at most its fair share.
    assigned: frozenset[str]


class Candidates:
    """The rendezvous ranking of one list of groups, seen by member ``me``."""

    def __init__(self, me: str, keys: Mapping[str, int], *, fair: bool) -> None:
        self._me = me
        self._fair = fair
        self._total = len(keys)
        # Each shard's groups in the order of their keys, the same everywhere
        # (a shard split group by group is split alike); sorted shard by shard,
        # which at 100,000 groups is a third faster than one sort of them all.
        by_shard: list[list[tuple[int, str]]] = [[] for _ in range(SHARDS)]
        for name, key in keys.items():
            by_shard[shard_of(key)].append((key, name))
        shards = [
            (shard, [name for _, name in sorted(groups)])
            for shard, groups in enumerate(by_shard)
            if groups
        ]
        # Biggest first: they pack best under the share; ties by shard, the same everywhere.
        self._shards = sorted(shards, key=lambda item: (-len(item[1]), item[0]))
        self._scores: dict[str, tuple[int, ...]] = {}

    def plan(self, live: Iterable[str]) -> Plan:
        members = sorted({*live, self._me})
        self._scores = {m: s for m, s in self._scores.items() if m in members}
        # One tuple per shard, of every member's score: each ranking is a sort in C.
        by_shard = list(zip(*(self._scores_of(member) for member in members), strict=True))
        me = members.index(self._me)
        share = math.ceil(self._total / len(members))
        load = [0] * len(members)
        wanted: set[str] = set()
        assigned: set[str] = set()
        for shard, groups in self._shards:
            ranking = sorted(range(len(members)), key=by_shard[shard].__getitem__, reverse=True)
            if not self._fair:
                if me in ranking[:CANDIDATES]:
                    wanted.update(groups)
                continue
            whole = next((i for i in ranking if load[i] + len(groups) <= share), None)
            if whole is not None:
                load[whole] += len(groups)
                if whole == me:
                    assigned.update(groups)
                continue
            for group in groups:  # some room is left: at least one member is under its share
                taker = next(i for i in ranking if load[i] < share)
                load[taker] += 1
                if taker == me:
                    assigned.add(group)
        return Plan(
            tuple(members), frozenset(assigned if self._fair else wanted), frozenset(assigned)
        )

    def _scores_of(self, member: str) -> tuple[int, ...]:
        """The member's rendezvous score for each shard: 8 bytes each of SHAKE-128 of its name."""
        scores = self._scores.get(member)
        if scores is None:
            stream = hashlib.shake_128(member.encode()).digest(8 * SHARDS)
            scores = self._scores[member] = struct.unpack(f">{SHARDS}Q", stream)
        return scores
