"""The measured peers: what users would pick instead, each at its defaults and most aggressive.

Every peer is a :class:`Peer`: a subject module (``bench.subjects.*``), the
interpreter that runs it, and the command-line arguments of one settings
profile. All of them run through :class:`~bench.cluster.Cluster`, three
members at a time, with the same three faults:

* **crash**: SIGKILL of the leader, until another member reports ``elected``;
* **graceful**: SIGTERM, on which each subject takes its library's own
  release path (close the session, release the lock, stand down);
* **hang**: SIGSTOP; SIGCONT once another member took office (or after a
  window without one); then whether the resumed leader is told it lost.

A series that finds no takeover within its window stops there: every such
peer keeps the lock by design (nothing expires it), and the next trial
would only wait as long again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import peer_pals
from bench.children import Child
from bench.cluster import Cluster, Fault, Member, NoTakeover, Spawn
from bench.database import Database
from bench.servers import Servers
from bench.stats import Distribution
from bench.venvs import PALS

__all__ = [
    "Context",
    "HangSeries",
    "Peer",
    "PeerResults",
    "Series",
    "measure_peer",
    "peers",
]

#: No takeover within this window means none is coming (for peers that never expire a lock).
NEVER_WINDOW_S = 10.0
#: How long a resumed leader has to report that it lost.
TOLD_WINDOW_S = 3.0
_INSTANCES = 3
_SETTLE_FAST_S = 0.2
_SETTLE_SLOW_S = 1.0


@dataclass(frozen=True)
class Context:
    """What a subject's arguments are made from."""

    servers: Servers
    #: One PostgreSQL database per PostgreSQL-based peer, by peer key.
    databases: dict[str, Database]
    log_dir: Path


Args = Callable[[Context, str, str], list[str]]  # (context, election name, member name)


@dataclass(frozen=True)
class Peer:
    key: str  # unique, for names and databases
    system: str  # what a reader knows it as
    store: str
    profile: str  # "defaults" or "aggressive"
    settings: str  # the settings in words
    python: Path
    module: str
    args: Args
    #: The longest takeover after a crash that the settings allow; None: none ever comes.
    expiry: float | None
    #: The distributions whose versions describe it (looked up in the results' versions).
    packages: tuple[str, ...] = ()
    #: Whether its sessions name their member in ``databases[key]``, so that the line-up
    #: reads the holder from ``pg_locks`` rather than from the reports.
    named_in_pg_locks: bool = False

    @property
    def label(self) -> str:
        return f"{self.system} on {self.store} ({self.profile})"

    @property
    def fast(self) -> bool:
        """Whether a crash hands over in milliseconds (no expiry: PostgreSQL's session end)."""
        return self.store == "PostgreSQL"

    @property
    def bound(self) -> float:
        """How long a crash or hang trial waits for a takeover."""
        return NEVER_WINDOW_S if self.expiry is None else 2 * self.expiry + 5.0


@dataclass(frozen=True)
class Series:
    """One fault's trials; ``none_within`` is set when a trial found no takeover in it."""

    failover: Distribution | None
    none_within: float | None = None


@dataclass(frozen=True)
class HangSeries:
    #: Takeovers from SIGSTOP; none_within is set when a freeze saw none.
    takeover: Distribution | None
    none_within: float | None
    #: Per trial with a takeover: seconds from SIGCONT until the old leader was told, or None.
    told: tuple[float | None, ...]
    told_window: float

    @property
    def told_count(self) -> int:
        return sum(t is not None for t in self.told)


@dataclass(frozen=True)
class PeerResults:
    peer: Peer
    faults: dict[Fault, Series | HangSeries]


def peers(env_python: Path, servers: Servers) -> list[Peer]:
    """Every peer and profile, in the order the results list them."""
    ours = Path(sys.executable)
    zk, etcd, redis = servers.zookeeper, servers.etcd, servers.redis

    def kazoo(timeout: float | None) -> Args:
        extra = [] if timeout is None else ["--timeout", repr(timeout)]
        return lambda _, election, name: [
            *("--hosts", zk, "--election", election, "--name", name),
            *extra,
        ]

    def tooz(url: str, *, lock: bool = False) -> Args:
        mode = ["--mode", "lock"] if lock else []
        return lambda _, election, name: [
            *("--url", url, "--election", election, "--name", name),
            *mode,
        ]

    def tooz_pg(ctx: Context, election: str, name: str) -> list[str]:
        return [
            *("--url", ctx.databases["tooz-pg"].dsn, "--election", election, "--name", name),
            *("--mode", "lock"),
        ]

    def etcd3(ttl: int | None) -> Args:
        extra = [] if ttl is None else ["--ttl", str(ttl)]
        return lambda _, election, name: ["--etcd", etcd, "--election", election, *extra]

    def redis_lock(expire: int | None) -> Args:
        extra = [] if expire is None else ["--expire", str(expire)]
        return lambda _, election, name: ["--redis", redis, "--election", election, *extra]

    def pals(ctx: Context, election: str, name: str) -> list[str]:
        return peer_pals.leader_args(ctx.databases["pals"], name)

    poll = "run_watchers() every 0.1 s"
    kazoo_module, tooz_module = "bench.subjects.kazoo_election", "bench.subjects.tooz_leader"
    etcd3_module, redis_lock_module = (
        "bench.subjects.etcd3_leader",
        "bench.subjects.redis_lock_leader",
    )
    # tooz's etcd3gw driver has no election (watch_elected_as_leader is not implemented):
    # it is measured as a leader loop on its lease-based lock, like its PostgreSQL driver.
    return [
        Peer(
            "pals",
            "pals",
            "PostgreSQL",
            "defaults",
            "no timing settings (lock_timeout 30 s only bounds one wait)",
            PALS.python,
            peer_pals.MODULE,
            pals,
            None,
            packages=("pals", "psycopg", "sqlalchemy"),
            named_in_pg_locks=True,
        ),
        Peer(
            "tooz-pg",
            "tooz lock",
            "PostgreSQL",
            "defaults",
            "no timing settings (the PostgreSQL driver has locks only)",
            ours,
            tooz_module,
            tooz_pg,
            None,
            packages=("tooz", "psycopg2-binary"),
        ),
        Peer(
            "kazoo",
            "kazoo Election",
            "ZooKeeper",
            "defaults",
            "session timeout 10 s",
            ours,
            kazoo_module,
            kazoo(None),
            10.0,
            packages=("kazoo",),
        ),
        Peer(
            "kazoo-4",
            "kazoo Election",
            "ZooKeeper",
            "aggressive",
            "session timeout 4 s (2 x tickTime: the server's minimum)",
            ours,
            kazoo_module,
            kazoo(4.0),
            4.0,
            packages=("kazoo",),
        ),
        Peer(
            "tooz-zk",
            "tooz election",
            "ZooKeeper",
            "defaults",
            f"timeout 10 s; {poll}",
            ours,
            tooz_module,
            tooz(f"zookeeper://{zk}"),
            10.0,
            packages=("tooz", "kazoo"),
        ),
        Peer(
            "tooz-zk-4",
            "tooz election",
            "ZooKeeper",
            "aggressive",
            f"timeout 4 s; {poll}",
            ours,
            tooz_module,
            tooz(f"zookeeper://{zk}?timeout=4"),
            4.0,
            packages=("tooz", "kazoo"),
        ),
        Peer(
            "tooz-redis",
            "tooz election",
            "Redis",
            "defaults",
            f"timeout 30 s; {poll}",
            ours,
            tooz_module,
            tooz(f"redis://{redis}"),
            30.0,
            packages=("tooz", "redis"),
        ),
        Peer(
            "tooz-redis-2",
            "tooz election",
            "Redis",
            "aggressive",
            f"timeout 2 s; {poll}",
            ours,
            tooz_module,
            tooz(f"redis://{redis}?timeout=2"),
            2.0,
            packages=("tooz", "redis"),
        ),
        Peer(
            "tooz-etcd",
            "tooz lock",
            "etcd (etcd3gw)",
            "defaults",
            "lock_timeout 30 s",
            ours,
            tooz_module,
            tooz(f"etcd3+http://{etcd}", lock=True),
            30.0,
            packages=("tooz", "etcd3gw"),
        ),
        Peer(
            "tooz-etcd-2",
            "tooz lock",
            "etcd (etcd3gw)",
            "aggressive",
            "timeout 2 s (lock_timeout follows it)",
            ours,
            tooz_module,
            tooz(f"etcd3+http://{etcd}?timeout=2", lock=True),
            2.0,
            packages=("tooz", "etcd3gw"),
        ),
        Peer(
            "etcd3",
            "python-etcd3 lease lock",
            "etcd",
            "defaults",
            "lease ttl 60 s, kept alive every 20 s",
            env_python,
            etcd3_module,
            etcd3(None),
            60.0,
            packages=("etcd3", "grpcio"),
        ),
        Peer(
            "etcd3-2",
            "python-etcd3 lease lock",
            "etcd",
            "aggressive",
            "lease ttl 2 s, kept alive every 0.67 s",
            env_python,
            etcd3_module,
            etcd3(2),
            2.0,
            packages=("etcd3", "grpcio"),
        ),
        Peer(
            "redis-lock",
            "python-redis-lock",
            "Redis",
            "defaults",
            "expire None: the lock never expires",
            ours,
            redis_lock_module,
            redis_lock(None),
            None,
            packages=("python-redis-lock", "redis"),
        ),
        Peer(
            "redis-lock-2",
            "python-redis-lock",
            "Redis",
            "aggressive",
            "expire 2 s with auto_renewal (every 1.33 s)",
            ours,
            redis_lock_module,
            redis_lock(2),
            2.0,
            packages=("python-redis-lock", "redis"),
        ),
    ]


async def measure_peer(
    peer: Peer, ctx: Context, faults: Sequence[Fault], trials: int
) -> dict[Fault, Series | HangSeries]:
    """``trials`` of each of ``faults`` (KILL, TERM, STOP), each fault on a fresh cluster."""
    results: dict[Fault, Series | HangSeries] = {}
    for fault in faults:
        name = f"{peer.key}-{fault.value}"
        cluster = Cluster(
            ctx.databases[peer.key] if peer.named_in_pg_locks else None,
            _INSTANCES,
            name,
            _spawner(peer, ctx, name),
            _SETTLE_FAST_S if peer.fast else _SETTLE_SLOW_S,
        )
        try:
            await cluster.start()
            if fault is Fault.STOP:
                results[fault] = await _hangs(cluster, peer, trials)
            else:
                results[fault] = await _failovers(cluster, peer, fault, trials)
        finally:
            await cluster.close()
    return results


async def _failovers(cluster: Cluster, peer: Peer, fault: Fault, trials: int) -> Series:
    samples = []
    bound = peer.bound if fault is Fault.KILL else NEVER_WINDOW_S
    for _ in range(trials):
        try:
            samples.append((await cluster.trial(fault, bound)).failover)
        except NoTakeover:
            return Series(Distribution.of(samples) if samples else None, bound)
    return Series(Distribution.of(samples))


async def _hangs(cluster: Cluster, peer: Peer, trials: int) -> HangSeries:
    takeovers: list[float] = []
    told: list[float | None] = []
    for _ in range(trials):
        hang = await cluster.hang(peer.bound, TOLD_WINDOW_S)
        if hang.takeover is None:
            return HangSeries(
                Distribution.of(takeovers) if takeovers else None,
                peer.bound,
                tuple(told),
                TOLD_WINDOW_S,
            )
        takeovers.append(hang.takeover)
        told.append(hang.told)
    return HangSeries(Distribution.of(takeovers), None, tuple(told), TOLD_WINDOW_S)


def _spawner(peer: Peer, ctx: Context, election: str) -> Spawn:
    async def spawn(name: str) -> Member:
        child = Child(name, peer.python, peer.module, peer.args(ctx, election, name), ctx.log_dir)
        await child.start()
        return Member(child)

    return spawn
