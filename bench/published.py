"""Peers that cannot run here, as analytic rows from their published defaults.

None of these is measured. Each row derives, from the default timings in
the peer's own source, the window in which a new leader (or a recovering
node) can act after the old one crashed or hung, measured from the fault.
A hang looks the same as a crash to all of them: a lease or check-in just
stops being renewed. The sources are quoted by repository, path and commit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "Published"]


@dataclass(frozen=True)
class Published:
    system: str
    defaults: str
    #: Earliest and latest takeover after a crash (or hang), in seconds from the fault.
    crash: tuple[float, float]
    #: The same after a graceful stop with default settings; None where not applicable.
    graceful: tuple[float, float] | None
    derivation: str
    source: str


PUBLISHED = (
    Published(
        system="Kubernetes Lease (client-go leaderelection)",
        defaults="LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s, JitterFactor 1.2",
        crash=(13.0, 23.8),
        graceful=(13.0, 23.8),
        derivation=(
            "the leader renews every RetryPeriod, so its last renewal is 0-2 s before the crash; "
            "a candidate polls every 2-4.4 s (RetryPeriod x 1 to 1+JitterFactor), notes the "
            "renewal at its next poll, and takes over at its first poll once LeaseDuration has "
            "passed since then: 15 - 2 to 15 + 4.4 + 4.4 s. ReleaseOnCancel is off by default, "
            "so a graceful stop leaves the lease to expire as well"
        ),
        source=(
            "kubernetes/kubernetes staging/src/k8s.io/component-base/config/v1alpha1/defaults.go "
            "(RecommendedDefaultLeaderElectionConfiguration) @008b365; "
            "staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go "
            "(JitterFactor, acquire, release) @0138c82"
        ),
    ),
    Published(
        system="River (Go, riverqueue/river leader elector)",
        defaults="electInterval 5 s, jitter 1 s, TTL = electInterval + 10 s padding = 15 s",
        crash=(10.0, 21.0),
        graceful=(0.0, 0.05),
        derivation=(
            "the leader re-elects every 5 s, so its leadership expires 10-15 s after the crash; "
            "followers try every 5-6 s and win at their first try after expiry. On a graceful "
            "stop the leader deletes its row and NOTIFYs; followers try again after 0-50 ms"
        ),
        source=(
            "riverqueue/river internal/leadership/elector.go (electIntervalDefault, "
            "electIntervalJitterDefault, electIntervalTTLPaddingDefault, leaderTTL) @04a975d"
        ),
    ),
    Published(
        system="Oban (Elixir, Oban.Peers.Postgres)",
        defaults="interval 30 s, leader_boost 2 (the leader refreshes every 15 s)",
        crash=(15.0, 60.0),
        graceful=(0.0, 0.0),
        derivation=(
            "a peer row expires 30 s after the leader's last refresh, which was 0-15 s before "
            "the crash; followers try every 30 s at most (jittered down) and win at their first "
            "try after expiry. On a graceful stop the leader deletes its row and notifies, and "
            "followers run an election at once"
        ),
        source=(
            "oban-bg/oban lib/oban/peers/postgres.ex (State interval, leader_boost, "
            "schedule_election, upsert_peer, terminate) @2951eae"
        ),
    ),
    Published(
        system="Quartz (Java, clustered JDBC job store)",
        defaults="clusterCheckinInterval 7.5 s, plus a fixed 7.5 s grace",
        crash=(7.5, 22.5),
        graceful=None,
        derivation=(
            "no leader: a node counts as failed once its last check-in (0-7.5 s before the "
            "crash) is older than the check-in interval plus 7.5 s, and a survivor notices at "
            "its next check-in, every 7.5 s; only then are the dead node's in-flight jobs "
            "recovered. A graceful shutdown leaves nothing to recover"
        ),
        source=(
            "quartz-scheduler/quartz quartz/src/main/java/org/quartz/impl/jdbcjobstore/"
            "JobStoreSupport.java (clusterCheckinInterval, calcFailedIfAfter, "
            "findFailedInstances) @028f1b9"
        ),
    ),
)
