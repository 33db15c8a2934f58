"""Every statement the coordinator sends, in one place.

The schema name is substituted once per coordinator (``{schema}``); the
notification channel likewise (``{channel}``). Migrations are plain SQL files
in ``migrations/``; everything else is here, so a reviewer sees it all.
That is why this is the longest module: it holds a list, not logic.

Advisory locks use the two-int4 keyspace: in ``pg_locks`` such a lock shows
``classid = namespace``, ``objid = key``, ``objsubid = 2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

__all__ = ["Statements", "in_schema", "notify_channel", "switchover_channel"]

# Where a shipped SQL file (migrations/, sql/least_privilege.sql) names the
# default schema: a qualified name, or the schema in CREATE/GRANT ... SCHEMA.
_SCHEMA_REFERENCE = re.compile(
    r"\bcoordinator(?=\.)|(?<=SCHEMA )coordinator\b|(?<=SCHEMA IF NOT EXISTS )coordinator\b"
)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which leadership changes are announced."""
    return f"{schema}_leadership"


def switchover_channel(schema: str) -> str:
    """The channel on which switchover requests are announced to the leaders."""
    return f"{schema}_switchover"


def in_schema(script: str, schema: str) -> str:
    """A shipped SQL file with its references to the default schema moved to ``schema``."""
    if schema == "coordinator":
        return script
    return _SCHEMA_REFERENCE.sub(f'"{schema}"', script)


@dataclass(frozen=True)
class Statements:
    """The coordinator's SQL, bound to one schema by :meth:`for_schema`."""

    server_facts: str = """
        SELECT pg_is_in_recovery() AS in_recovery,
               pg_backend_pid() AS backend_pid,
               current_setting('server_version_num')::int AS version_num
    """

    # Server-side keepalives and tcp_user_timeout: a vanished client's session
    # (and so its lock) dies in seconds instead of after the OS defaults. The
    # same round trip brings the server's facts for the connect checks.
    # Also read committed, whatever the database's default: the protocol's
    # statements wait for row locks where serializable would fail them.
    set_keepalives: str = """
        SELECT set_config('tcp_keepalives_idle', $1, false),
               set_config('tcp_keepalives_interval', $2, false),
               set_config('tcp_keepalives_count', $3, false),
               set_config('tcp_user_timeout', $4, false),
               set_config('default_transaction_isolation', 'read committed', false),
               pg_is_in_recovery() AS in_recovery,
               pg_backend_pid() AS backend_pid
    """

    schema_version: str = "SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"

    # $1 names, $2 keys, $3 namespace, $4 ttl seconds. A name whose key is
    # taken by another group is skipped here and reported from group_keys.
    # Every change of state is a function of the schema's owner
    # (migrations/0004_authority.sql); the statements here only call them.
    register_groups: str = """
        SELECT {schema}.register_groups($1::text[], $2::int[], $3, $4)
    """

    # Whether the list of groups whose fingerprint is $1 (``group_set``) is
    # registered in namespace $2: then registering writes nothing and no name
    # can collide, so a fleet that restarts with 100,000 groups reads one row.
    group_set_registered: str = """
        SELECT EXISTS (SELECT 1 FROM {schema}.group_sets
                        WHERE group_set = $1 AND lock_namespace = $2)
    """

    # Registers a list of groups once, taking turns with other instances:
    # false when it was registered meanwhile. $1 fingerprint, $2 names,
    # $3 keys, $4 namespace, $5 ttl.
    register_group_set: str = """
        SELECT {schema}.register_group_set($1, $2::text[], $3::int[], $4, $5)
    """

    group_keys: str = """
        SELECT g.name AS wanted, l.group_name, l.lock_namespace, l.lock_key
          FROM unnest($1::text[], $2::int[]) AS g(name, key)
          JOIN {schema}.leaders AS l
            ON l.group_name = g.name OR (l.lock_namespace = $3 AND l.lock_key = g.key)
    """

    # How many locks the server's shared lock table can hold at all.
    lock_capacity: str = """
        SELECT current_setting('max_locks_per_transaction')::int
               * (current_setting('max_connections')::int
                  + current_setting('max_prepared_transactions')::int)
    """

    # A lock session's waits are bounded by the coordinator, never by a
    # server-wide default: a statement timeout would cut a follower's wait.
    # (It has to be set before the waiting statement starts: its timer is
    # armed when a statement begins.) The session's lock_timeout, $1, bounds
    # how long taking office and resigning wait for fenced transactions, in
    # single-statement transactions: the fewest round trips after a grant.
    # A waiting backend whose client died leaves the lock queue within a
    # quarter second (PostgreSQL 14 and later check the socket while a
    # statement runs): it can no longer be granted the lock, and take office,
    # for a process that is gone. Its statements, and those of the functions
    # they call, are planned once, generically: the plans the rehearsal
    # below makes are the ones the hand-over runs (with custom plans, each
    # of a statement's first five runs is planned again).
    lock_session_setup: str = """
        SELECT set_config('statement_timeout', '0', false), set_config('lock_timeout', $1, false),
               set_config('client_connection_check_interval', '250ms', false),
               set_config('plan_cache_mode', 'force_generic_plan', false)
    """

    # A blocking follower's wait and the new leader's take office, in one
    # statement (migrations/0007_faster_handover.sql): no round trip lies
    # between the grant and the term. $1 group, $2 instance, $3 host, $4 pid,
    # $5 ttl, $6 how long to wait (ms). No row: not granted within $6, and
    # nothing written; the follower sends it again. A row without a term:
    # the group has no leader row (register it again). Otherwise
    # take_office's answer.
    campaign: str = """
        SELECT group_name, term, acquired_at, ended_backends
          FROM {schema}.campaign($1, $2, $3, $4, $5, $6)
    """

    # The group's next term, drawn durably before a blocking follower waits
    # (migrations/0015_terms_drawn_ahead.sql): taking office with it then
    # commits without a WAL flush. It writes nothing (and costs no flush)
    # while the number drawn is still above the group's term; the group's
    # followers share it. $1 group; NULL: no leader row, or the group's
    # terms are exhausted.
    draw_term: str = "SELECT {schema}.draw_term($1)"

    unlock: str = "SELECT pg_advisory_unlock($1, $2)"

    lock_is_mine: str = """
        SELECT EXISTS (
            SELECT 1 FROM pg_catalog.pg_locks
            WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
              AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2
        )
    """

    # Shared-session mode: try the locks of the given groups and take office
    # for those granted, in one statement (migration 0012). The caller never
    # passes a group whose lock its session already holds (advisory locks
    # stack, and a second grant would need a second unlock): it keeps the
    # exact set of keys granted to the session, and replaces a session whose
    # locks are in doubt. A lock granted in the statement itself needs no look
    # in pg_locks, which copies the whole lock table (100,000 entries at
    # scale). A row without a term: the group was refused (refused_sqlstate,
    # refusal: a switchover reserves it, fenced transactions hold its row
    # past the lock_timeout, its term would not fit) and its lock released,
    # or it has no leader row (a server that lost recent commits). On any
    # other error the function has released what it was granted.
    # $1 group names, $2 instance, $3 host, $4 pid, $5 ttl.
    take_free_offices: str = """
        SELECT group_name, term, acquired_at, ended_backends, refused_sqlstate, refusal
          FROM {schema}.take_free_offices($1::text[], $2, $3, $4, $5)
    """

    # Live shared sessions that run the same list of groups ($1, its md5):
    # the members among whom the groups' candidates and fair shares are
    # ranked, oldest first (the oldest watch the others). A session whose
    # backend is gone (its process was killed) stops counting at once, not a
    # ttl later.
    live_members: str = """
        SELECT s.instance_id FROM {schema}.sessions AS s
         WHERE s.group_set = $1 AND s.heartbeat_at > now() - s.ttl
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                        WHERE a.pid = s.backend_pid
                          AND a.application_name = left('coordinator:' || s.instance_id, 63))
         ORDER BY s.started_at, s.instance_id
    """

    # A watcher saw the live members change: everyone looks again. A hint
    # only (anyone may send it); it costs a look, nothing more.
    # $1 the channel (coordinator._candidates.members_channel).
    notify_members_changed: str = "SELECT pg_notify($1, '')"

    # Poll mode elects its monitor without a lock: the instance with the
    # oldest live session runs the complete per-group scan. With no live
    # session (blocking mode) every instance runs it. $1 instance.
    is_monitor: str = """
        SELECT coalesce((
            SELECT s.instance_id = $1 FROM {schema}.sessions AS s
             WHERE s.heartbeat_at > now() - s.ttl
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                            WHERE a.pid = s.backend_pid
                              AND a.application_name = left('coordinator:' || s.instance_id, 63))
             ORDER BY s.started_at, s.instance_id
             LIMIT 1), true)
    """

    # Shared-session mode: its waits on fenced transactions (taking office,
    # resigning) are bounded by the session's lock_timeout; it never blocks
    # on an advisory lock, so the bound can stay for the session's life.
    set_session_lock_timeout: str = "SELECT set_config('lock_timeout', $1, false)"

    # $1 group names, $2 instance, $3 host, $4 pid, $5 ttl seconds. One
    # transaction for any number of groups whose locks this session holds
    # (the function checks pg_locks for this backend and raises LT002
    # otherwise). Its wait for fenced transactions of the old term is bounded
    # by the session's lock_timeout; past it, their backends are terminated
    # (ended_backends) and the wait is tried once more.
    take_office: str = """
        SELECT group_name, term, acquired_at, ended_backends
          FROM {schema}.take_office($1::text[], $2, $3, $4, $5)
    """

    # $1 instance, $2 namespace, $3 group names, $4 their terms. Runs on the
    # session that holds the locks; returns the groups still ours: a group
    # missing from the answer lost its lock or its term. Never touches the
    # leader row, which fenced transactions may hold FOR SHARE.
    leader_heartbeat: str = """
        SELECT group_name FROM {schema}.leader_heartbeat($1, $2, $3::text[], $4::bigint[])
    """

    # Poll mode: one row per shared session is the liveness of everything it
    # does, leading and following (migrations/0008_session_liveness.sql).
    # $1 instance, $2 host, $3 pid, $4 group count, $5 group set, $6 ttl
    # seconds, $7 group names led, $8 their terms; returns the seats lost.
    session_heartbeat: str = """
        SELECT lost_group
          FROM {schema}.session_heartbeat($1, $2, $3, $4, $5, $6, $7::text[], $8::bigint[])
    """

    close_session: str = "SELECT {schema}.close_session($1)"

    # Many resignations of this session, and their unlocks, in one statement:
    # the locks are free before the commit sends the NOTIFY, so that a
    # poller woken by it finds them free (with the unlocks a statement
    # later, it tried too early and waited a whole poll). A successor that
    # gets a lock before the commit waits for it in take_office's row lock.
    # $1 group names, $2 instance, $3 their terms, $4 their reasons,
    # $5 the lock namespace, $6 the groups' keys.
    resign_seats: str = """
        WITH resigned AS MATERIALIZED (
            SELECT count(*) AS seats
              FROM {schema}.resign_seats($1::text[], $2, $3::bigint[], $4::text[])
        )
        SELECT count(*) FILTER (WHERE pg_advisory_unlock($5, k))
          FROM resigned, unnest($6::int[]) AS k
    """

    # The cheap monitor, run by every instance in poll mode: stale sessions.
    fence_stale_sessions: str = """
        SELECT group_name, kind, term, instance_id FROM {schema}.fence_stale_sessions($1)
    """

    # One statement for every group this instance follows. A row that says
    # "leader" is left alone while the leader table still names that instance
    # and term: a follower beat racing with taking office must not undo it.
    member_heartbeat: str = "SELECT {schema}.member_heartbeat($1::text[], $2, $3, $4)"

    # $1 group, $2 instance, $3 term, $4 reason: a switchover's resignation,
    # committed before the unlock (see resign_and_unlock in _session.py).
    resign: str = "SELECT resigned_term FROM {schema}.resign($1, $2, $3, $4)"

    # Resign and unlock in one round trip: $1 group, $2 instance, $3 term, $4
    # reason, $5 and $6 the lock (migrations/0007_faster_handover.sql). The
    # function releases the lock as soon as it holds the leader row, before
    # it writes the resignation: the next waiter is granted the lock and
    # starts taking office meanwhile, and its term update waits for the
    # leader row, so it sees the resignation. This commit is asynchronous:
    # nothing it writes is a term, and it is durable by the time the next
    # leader's term is (the WAL is flushed in order), or within three
    # wal_writer_delay. If
    # this term's fenced transactions outlast the lock_timeout, the statement
    # fails before the unlock (lock_not_available): the caller unlocks on
    # its own.
    resign_and_unlock: str = """
        SELECT (r).resigned_term, (r).unlocked
          FROM (SELECT {schema}.resign_and_unlock($1, $2, $3, $4, $5, $6) AS r
                  FROM (SELECT set_config('synchronous_commit', 'off', true) OFFSET 0) AS async
                OFFSET 0) AS resigned
    """

    # Run once on a new lock session, while it follows: take office in a
    # group of the backend's own, resign and unlock, and roll it all back
    # (migrations/0013_rehearse_handover.sql). Nothing is written, but the
    # server loads the catalogs and plans every statement on the path now,
    # so that taking office and resigning later cost their execution only
    # (on a fresh backend, a first hand-over takes about 2 ms longer). True
    # if it ran to the end. $1 instance, $2 host, $3 pid, $4 ttl.
    rehearse_handover: str = "SELECT {schema}.rehearse_handover($1, $2, $3, $4)"

    # Written from the control connection after leaderships lost their
    # session, so the history says what happened: one statement for any
    # number of them (a shared session takes thousands down at once).
    # Best effort: the database may be gone, and each is refused while that
    # term's backend still holds the lock. $1 group names, $2 their terms,
    # $3 reasons, $4 instance.
    record_lost: str = """
        SELECT group_name, lost_term
          FROM {schema}.record_lost_all($1::text[], $4, $2::bigint[], $3::text[])
    """

    # The monitor, in one statement. A stale holder (heartbeat older than its
    # ttl on the database clock) whose recorded backend still holds the lock is
    # terminated, once per backend (migration 0005); one whose lock is held by
    # nobody is marked vacant. Every group gets its own event.
    fence_stale_leaders: str = """
        SELECT group_name, kind, term, instance_id FROM {schema}.fence_stale_leaders($1)
    """

    # History past $1 seconds, but never younger than the retention the
    # schema's owner set in the settings table.
    prune_events: str = "SELECT {schema}.prune_events($1)"

    # Members that stopped heartbeating long ago (crashed, never came back).
    prune_members: str = "SELECT {schema}.prune_members($1)"

    # Committed asynchronously: a stopping instance's last write must not
    # take a WAL flush from the next leader's term (rows that a crash loses
    # expire anyway).
    leave_groups: str = """
        SELECT {schema}.leave_groups($1)
          FROM (SELECT set_config('synchronous_commit', 'off', true) OFFSET 0) AS async
    """

    leader_status: str = """
        SELECT group_name, leader, holder, term, acquired_at, heartbeat_at, heartbeat_age_s,
               ttl_s, lock_pid, lock_held, is_stale, squatter_pid, squatter_user,
               squatter_application
          FROM {schema}.leader_status
         ORDER BY group_name
    """

    # Every member of every group, from the heartbeat table, with the verdict
    # of leader_status on who leads. Live: heartbeat younger than the group's ttl.
    # A member in poll mode beats through its session's row, not its own.
    members: str = """
        SELECT h.group_name, h.instance_id, h.term, h.host, h.pid, h.joined_at,
               beat.at AS heartbeat_at,
               extract(epoch FROM now() - beat.at)::float8 AS heartbeat_age_s,
               now() - beat.at <= l.ttl AS is_live,
               coalesce(s.leader = h.instance_id AND s.term = h.term, false) AS is_leader
          FROM {schema}.heartbeats AS h
          JOIN {schema}.leaders AS l ON l.group_name = h.group_name
          JOIN {schema}.leader_status AS s ON s.group_name = h.group_name
          LEFT JOIN {schema}.sessions AS session ON session.instance_id = h.instance_id
         CROSS JOIN LATERAL (SELECT greatest(h.heartbeat_at, session.heartbeat_at) AS at) AS beat
         ORDER BY h.group_name, h.instance_id
    """

    # The first statement of a fenced transaction (migrations/0002_fencing.sql,
    # 0004_authority.sql): FOR SHARE on the leader row, term check, idle
    # limit, a mark in pg_locks. $1 group, $2 term.
    assert_term: str = "SELECT {schema}.assert_term($1, $2)"

    # $1 group or NULL for all, $2 earliest time or NULL, $3 seconds back from
    # the database's now() or NULL. Ordered as recorded.
    history: str = """
        SELECT id, at, group_name, kind, term, instance_id, reason
          FROM {schema}.events
         WHERE ($1::text IS NULL OR group_name = $1)
           AND ($2::timestamptz IS NULL OR at >= $2)
           AND ($3::float8 IS NULL OR at >= now() - make_interval(secs => $3))
         ORDER BY at, id
    """

    # Groups whose lock a backend holds that is neither the leader's nor a
    # coordinator session: nobody can be elected there while it does.
    squatted_locks: str = """
        SELECT group_name, squatter_pid, squatter_user, squatter_application
          FROM {schema}.leader_status
         WHERE squatter_pid IS NOT NULL
    """

    # A notification is a hint: before it is believed, the event it announces
    # must be in the history. $1 group, $2 kind, $3 term, $4 instance.
    confirm_event: str = """
        SELECT at, reason FROM {schema}.events
         WHERE group_name = $1 AND kind = $2 AND term = $3
           AND instance_id IS NOT DISTINCT FROM $4
         ORDER BY at DESC
         LIMIT 1
    """

    # Keeps an idle LISTEN connection honest: a dead peer shows up as an error.
    ping: str = "SELECT 1"

    # Sessions blocked in pg_advisory_lock: followers lined up to take over
    # (`coordinator demo` waits for them before each fault).
    lock_waiters: str = """
        SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND NOT granted
    """

    # The migration runner (coordinator/_migrations.py); the migrations
    # themselves are the files in migrations/. A session lock serialises
    # concurrent runners; $1 namespace, $2 key.
    migration_lock: str = "SELECT pg_advisory_lock($1, $2)"

    migrations_table: str = """
        CREATE SCHEMA IF NOT EXISTS {schema};
        CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
            version    integer     PRIMARY KEY,
            name       text        NOT NULL,
            checksum   text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
    """

    migrations_table_exists: str = "SELECT to_regclass('{schema}.schema_migrations') IS NOT NULL"

    applied_migrations: str = "SELECT version, name, checksum FROM {schema}.schema_migrations"

    record_migration: str = """
        INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)
    """

    # `coordinator grant`; the rest of its SQL is coordinator/sql/least_privilege.sql.
    # {role} is a checked, quoted identifier. Utility statements take no
    # parameters, so the password goes in as a SCRAM verifier (base64 and
    # "$:" only), never as clear text that the server could log.
    set_role_password: str = "ALTER ROLE {role} WITH LOGIN PASSWORD '{verifier}'"
    # Fencing and ending old fenced transactions run with the schema owner's rights.
    grant_signal_backend: str = """
        DO $$
        BEGIN
            EXECUTE format('GRANT pg_signal_backend TO %s', (
                SELECT n.nspowner::regrole::text
                  FROM pg_catalog.pg_namespace AS n
                 WHERE n.oid = (SELECT c.relnamespace FROM pg_catalog.pg_class AS c
                                 WHERE c.oid = '{schema}.leaders'::regclass)));
        END
        $$"""
    # Only roles granted CONNECT (the coordinator's, and whoever else is
    # granted it) may then connect, and so take an advisory lock at all.
    revoke_public_connect: str = """
        DO $$
        BEGIN
            EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
        END
        $$"""

    # -- the shared timetable of leader-only jobs (migrations/0003_jobs.sql) --

    # $1 group. What the previous leaders left: one row per job.
    timetable: str = """
        SELECT job_id, trigger, last_fire_at, next_fire_at
          FROM {schema}.jobs WHERE group_name = $1
    """

    # $1 group, $2 term, $3 job ids, $4 trigger texts, $5 next fire times.
    sync_jobs: str = "SELECT {schema}.sync_jobs($1, $2, $3, $4, $5)"

    # $1 group, $2 term. Runs that no term finished: a fenced one may be claimed again.
    open_ticks: str = """
        SELECT job_id, scheduled_at, term, mode, attempt
          FROM {schema}.job_runs
         WHERE group_name = $1 AND term < $2 AND outcome IN ('running', 'interrupted')
         ORDER BY scheduled_at
    """

    # $1 group, $2 term, $3 job, $4 fire time, $5 instance, $6 mode, $7 outcome, $8 next fire
    # time. The attempt number, or NULL if the tick is taken.
    claim_tick: str = "SELECT {schema}.claim_tick($1, $2, $3, $4, $5, $6, $7, $8)"

    # $1 group, $2 term, $3 job, $4 fire time, $5 outcome, $6 duration in seconds.
    finish_tick: str = "SELECT {schema}.finish_tick($1, $2, $3, $4, $5, $6)"

    # $1 group, $2 term, $3 the job ids whose open fenced ticks run again.
    abandon_ticks: str = "SELECT {schema}.abandon_ticks($1, $2, $3)"

    # $1 group or NULL for all. Each job with its latest claimed tick.
    jobs: str = """
        SELECT j.group_name, j.job_id, j.trigger, j.last_fire_at, j.next_fire_at,
               r.scheduled_at AS last_scheduled_at, r.term AS last_term,
               r.instance_id AS last_instance_id, r.outcome AS last_outcome,
               r.duration_s AS last_duration_s, r.attempt AS last_attempt
          FROM {schema}.jobs AS j
          LEFT JOIN LATERAL (
              SELECT scheduled_at, term, instance_id, outcome, duration_s, attempt
                FROM {schema}.job_runs AS r
               WHERE r.group_name = j.group_name AND r.job_id = j.job_id
               ORDER BY r.scheduled_at DESC
               LIMIT 1
          ) AS r ON true
         WHERE $1::text IS NULL OR j.group_name = $1
         ORDER BY j.group_name, j.job_id
    """

    # Runs are history, pruned with the events' retention.
    prune_job_runs: str = "SELECT {schema}.prune_job_runs($1)"

    # -- switchover (migration 0006) ------------------------------------------

    # $1 group, $2 target instance or NULL for any other live member. The
    # function refuses with SQLSTATE LT004 and the cause, writing nothing.
    request_switchover: str = """
        SELECT term, holder, expires_at FROM {schema}.request_switchover($1, $2)
    """

    # The fresh requests that ask this instance ($1) to hand over: a
    # notification on the switchover channel is only a hint to read them.
    pending_switchovers: str = """
        SELECT group_name, term, target FROM {schema}.switchovers
         WHERE from_instance = $1 AND expires_at > now()
    """

    # Who leads $1 now, and until when a request still stands, for the
    # requester that waits for the hand-over.
    group_leader: str = """
        SELECT s.leader, s.term, r.expires_at AS request_stands_until
          FROM {schema}.leader_status AS s
          LEFT JOIN {schema}.switchovers AS r
                 ON r.group_name = s.group_name AND r.expires_at > now()
         WHERE s.group_name = $1
    """

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        """Bind every statement to ``schema`` (a validated plain identifier)."""
        channel = notify_channel(schema)
        return cls(
            **{
                f.name: f.default.replace("{schema}", f'"{schema}"').replace("{channel}", channel)
                for f in fields(cls)
                if isinstance(f.default, str)
            }
        )
