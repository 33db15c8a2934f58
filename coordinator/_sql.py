"""Every statement the coordinator sends, in one place.

The schema name is substituted once per coordinator (``{schema}``); the
notification channel likewise (``{channel}``). Migrations are plain SQL files
in ``migrations/``; everything else is here, so a reviewer sees it all.

Advisory locks use the two-int4 keyspace: in ``pg_locks`` such a lock shows
``classid = namespace``, ``objid = key``, ``objsubid = 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Statements", "notify_channel"]


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which leadership changes are announced."""
    return f"{schema}_leadership"


@dataclass(frozen=True)
class Statements:
    """The coordinator's SQL, bound to one schema by :meth:`for_schema`."""

    server_facts: str = """
        SELECT pg_is_in_recovery() AS in_recovery,
               pg_backend_pid() AS backend_pid,
               current_setting('server_version_num')::int AS version_num
    """

    # Server-side keepalives and tcp_user_timeout: a vanished client's session
    # (and so its lock) dies in seconds instead of after the OS defaults.
    set_keepalives: str = """
        SELECT set_config('tcp_keepalives_idle', $1, false),
               set_config('tcp_keepalives_interval', $2, false),
               set_config('tcp_keepalives_count', $3, false),
               set_config('tcp_user_timeout', $4, false)
    """

    schema_version: str = "SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"

    # $1 names, $2 keys, $3 namespace, $4 ttl seconds. A name whose key is
    # taken by another group is skipped here and reported from group_keys.
    register_groups: str = """
        INSERT INTO {schema}.leaders (group_name, lock_namespace, lock_key, ttl)
        SELECT g.name, $3, g.key, make_interval(secs => $4)
          FROM unnest($1::text[], $2::int[]) AS g(name, key)
        ON CONFLICT DO NOTHING
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
    # armed when a statement begins.)
    no_statement_timeout: str = "SELECT set_config('statement_timeout', '0', false)"

    # Blocks until granted: the wake-up on the holder's death is what makes
    # crash failover take milliseconds. Nested so that they run in order:
    # no lock_timeout may cut the wait short; once the lock is granted, the
    # session's lock_timeout becomes $3, which bounds how long taking office
    # and resigning wait for fenced transactions, in single-statement
    # transactions: the fewest round trips after a grant.
    wait_for_lock: str = """
        SELECT set_config('lock_timeout', $3, false)
          FROM (SELECT pg_advisory_lock($1, $2)
                  FROM (SELECT set_config('lock_timeout', '0', false) OFFSET 0) AS unbounded
                OFFSET 0) AS granted
    """

    unlock: str = "SELECT pg_advisory_unlock($1, $2)"

    lock_is_mine: str = """
        SELECT EXISTS (
            SELECT 1 FROM pg_catalog.pg_locks
            WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
              AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2
        )
    """

    # Shared-session mode: the keys this session holds, to reconcile after an error.
    held_keys: str = """
        SELECT objid::bigint::int AS lock_key FROM pg_catalog.pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
           AND classid = $1::int::oid AND objsubid = 2
    """

    # Shared-session mode: try the given groups in one statement, winning at
    # most $3 of them (the scan stops at the limit, so no further lock is
    # taken). The CASE makes sure a key this session already holds is never
    # tried again: advisory locks stack, and a second grant would need a
    # second unlock.
    try_locks: str = """
        WITH mine AS (
            SELECT objid::bigint AS lock_key FROM pg_catalog.pg_locks
             WHERE locktype = 'advisory' AND pid = pg_backend_pid()
               AND classid = $1::int::oid AND objsubid = 2
        )
        SELECT k AS lock_key FROM unnest($2::int[]) AS k
         WHERE CASE WHEN k::bigint IN (SELECT lock_key FROM mine) THEN false
                    ELSE pg_try_advisory_lock($1, k) END
         LIMIT $3
    """

    # Live members of these groups: the fair share is groups / members.
    live_members: str = """
        SELECT count(DISTINCT instance_id) FROM {schema}.heartbeats
         WHERE group_name = ANY($1::text[])
           AND heartbeat_at > now() - make_interval(secs => $2)
    """

    # Shared-session mode: its waits on fenced transactions (taking office,
    # resigning) are bounded by the session's lock_timeout; it never blocks
    # on an advisory lock, so the bound can stay for the session's life.
    set_session_lock_timeout: str = "SELECT set_config('lock_timeout', $1, false)"

    # $1 group, $2 instance, $3 host, $4 pid, $5 ttl seconds
    # $1 group names, $2 instance, $3 host, $4 pid, $5 ttl seconds. One
    # transaction for any number of groups whose locks this session holds.
    # Times are clock_timestamp(): the update may have waited for fenced
    # transactions, and the first heartbeat must not be born old.
    take_office: str = """
        WITH office AS (
            UPDATE {schema}.leaders
               SET term = term + 1, holder = $2, holder_host = $3, holder_pid = $4,
                   backend_pid = pg_backend_pid(), acquired_at = clock_timestamp(),
                   ttl = make_interval(secs => $5)
             WHERE group_name = ANY($1::text[])
            RETURNING group_name, term, acquired_at
        ), beat AS (
            INSERT INTO {schema}.heartbeats AS h
                   (group_name, instance_id, role, term, host, pid, backend_pid, heartbeat_at)
            SELECT office.group_name, $2, 'leader', office.term, $3, $4, pg_backend_pid(),
                   office.acquired_at
              FROM office
            ON CONFLICT (group_name, instance_id) DO UPDATE
               SET role = 'leader', term = excluded.term, host = excluded.host,
                   pid = excluded.pid, backend_pid = excluded.backend_pid,
                   heartbeat_at = excluded.heartbeat_at
        ), event AS (
            INSERT INTO {schema}.events (group_name, kind, term, instance_id)
            SELECT office.group_name, 'elected', office.term, $2 FROM office
        )
        SELECT office.group_name, office.term, office.acquired_at,
               pg_notify('{channel}', json_build_object(
                   'group', office.group_name, 'kind', 'elected', 'term', office.term,
                   'instance_id', $2::text)::text) AS notified
          FROM office
    """

    # Runs on the lock session. Succeeds only while this backend still holds
    # the lock and the row still names this instance and term; fewer rows
    # means leadership is gone. It never touches the leader row.
    # $1 instance, $2 namespace, $3 group names, $4 their terms. Runs on the
    # session that holds the locks; returns the groups still ours: a group
    # missing from the answer lost its lock or its term. Never touches the
    # leader row, which fenced transactions may hold FOR SHARE.
    leader_heartbeat: str = """
        WITH mine AS (
            SELECT objid::bigint AS lock_key FROM pg_catalog.pg_locks
             WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
               AND classid = $2::int::oid AND objsubid = 2
        )
        UPDATE {schema}.heartbeats AS h
           SET heartbeat_at = now()
          FROM unnest($3::text[], $4::bigint[]) AS t(group_name, term), {schema}.leaders AS l
         WHERE h.group_name = t.group_name AND h.instance_id = $1 AND h.term = t.term
           AND h.role = 'leader' AND l.group_name = t.group_name
           AND l.lock_key::bigint IN (SELECT lock_key FROM mine)
        RETURNING h.group_name
    """

    # One statement for every group this instance follows. A row that says
    # "leader" is left alone while the leader table still names that instance
    # and term: a follower beat racing with taking office must not undo it.
    member_heartbeat: str = """
        INSERT INTO {schema}.heartbeats AS h
               (group_name, instance_id, role, host, pid, heartbeat_at)
        SELECT g, $2, 'follower', $3, $4, now() FROM unnest($1::text[]) AS g
        ON CONFLICT (group_name, instance_id) DO UPDATE
           SET role = 'follower', term = NULL, backend_pid = NULL, host = excluded.host,
               pid = excluded.pid, heartbeat_at = now()
         WHERE h.role = 'follower' OR NOT coalesce((
               -- A locking read sees a take_office that committed while this
               -- statement waited for the heartbeat row; a plain read would
               -- see the snapshot from before it and undo the new leadership.
               SELECT l.holder IS NOT DISTINCT FROM h.instance_id AND l.term = h.term
                 FROM {schema}.leaders AS l
                WHERE l.group_name = h.group_name
                  FOR SHARE), false)
    """

    # $1 group, $2 instance, $3 term, $4 reason
    resign: str = """
        WITH cleared AS (
            UPDATE {schema}.leaders
               SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
             WHERE group_name = $1 AND holder = $2 AND term = $3
            RETURNING term
        ), beat AS (
            UPDATE {schema}.heartbeats
               SET role = 'follower', term = NULL, backend_pid = NULL, heartbeat_at = now()
             WHERE group_name = $1 AND instance_id = $2
        ), event AS (
            INSERT INTO {schema}.events (group_name, kind, term, instance_id, reason)
            SELECT $1, 'resigned', cleared.term, $2, $4 FROM cleared
        )
        SELECT pg_notify('{channel}', json_build_object(
                   'group', $1::text, 'kind', 'resigned', 'term', cleared.term,
                   'instance_id', $2::text, 'reason', $4::text)::text) AS notified
        FROM cleared
    """

    # Written from the control connection after a leader lost its session, so
    # the history says what happened. Best effort: the database may be gone.
    record_lost: str = """
        WITH event AS (
            INSERT INTO {schema}.events (group_name, kind, term, instance_id, reason)
            VALUES ($1, 'lost', $3, $2, $4)
        ), beat AS (
            UPDATE {schema}.heartbeats
               SET role = 'follower', term = NULL, backend_pid = NULL
             WHERE group_name = $1 AND instance_id = $2 AND term = $3
        )
        SELECT pg_notify('{channel}', json_build_object(
                   'group', $1::text, 'kind', 'lost', 'term', $3::bigint,
                   'instance_id', $2::text, 'reason', $4::text)::text)
    """

    # The monitor, in one statement. A stale holder (heartbeat older than its
    # ttl on the database clock) whose recorded backend still holds the lock is
    # terminated; one whose lock is held by nobody is marked vacant. FOR SHARE
    # on the leader row pins the recorded term and backend pid: the next
    # leader's term update waits for this statement, so it can never be hit.
    # SKIP LOCKED passes over a row whose next leader is taking office now.
    fence_stale_leaders: str = """
        WITH stale AS (
            SELECT l.group_name, l.term, l.holder, l.backend_pid, l.lock_namespace, l.lock_key,
                   extract(epoch FROM now() - h.heartbeat_at)::float8 AS heartbeat_age_s,
                   (SELECT k.pid FROM pg_catalog.pg_locks AS k
                     WHERE k.locktype = 'advisory' AND k.granted
                       AND k.database = (SELECT oid FROM pg_catalog.pg_database
                                          WHERE datname = current_database())
                       AND k.classid = l.lock_namespace::oid AND k.objid = l.lock_key::oid
                       AND k.objsubid = 2
                     LIMIT 1) AS lock_pid
              FROM {schema}.leaders AS l
              LEFT JOIN {schema}.heartbeats AS h
                     ON h.group_name = l.group_name AND h.instance_id = l.holder
                    AND h.term = l.term
             WHERE l.holder IS NOT NULL
               AND (h.heartbeat_at IS NULL OR h.heartbeat_at < now() - l.ttl)
               -- A row locked below is re-read in its newest version; if a next
               -- leader took office meanwhile, it joins no heartbeat row of its
               -- own here and would look stale. No leader is stale before a
               -- ttl has passed since it took office, so this spares it.
               AND l.acquired_at < now() - l.ttl
               FOR SHARE OF l SKIP LOCKED
        ), fenced AS (
            SELECT stale.*, pg_terminate_backend(stale.backend_pid) AS terminated
              FROM stale
             WHERE stale.lock_pid = stale.backend_pid
        ), vacated AS (
            UPDATE {schema}.leaders AS l
               SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
              FROM stale
             WHERE l.group_name = stale.group_name AND l.term = stale.term
               AND stale.lock_pid IS NULL
            RETURNING l.group_name, stale.term, stale.holder, stale.heartbeat_age_s
        ), history AS (
            INSERT INTO {schema}.events (group_name, kind, term, instance_id, reason)
            SELECT group_name, 'fenced', term, holder,
                   format('heartbeat %s s old, backend %s terminated by %s',
                          round(heartbeat_age_s::numeric, 3), backend_pid, $1::text)
              FROM fenced WHERE terminated
            UNION ALL
            SELECT group_name, 'expired', term, holder,
                   format('heartbeat %s s old and no lock held', round(heartbeat_age_s::numeric, 3))
              FROM vacated
            RETURNING group_name, kind, term, instance_id, reason
        ), notified AS (
            SELECT pg_notify('{channel}', json_build_object(
                       'group', group_name, 'kind', kind, 'term', term,
                       'instance_id', instance_id, 'reason', reason)::text)
              FROM history
        )
        SELECT history.group_name, history.kind, history.term, history.instance_id,
               (SELECT count(*) FROM notified) AS notified
          FROM history
    """

    prune_events: str = """
        DELETE FROM {schema}.events WHERE at < now() - make_interval(secs => $1)
    """

    # Members that stopped heartbeating long ago (crashed, never came back).
    prune_members: str = """
        DELETE FROM {schema}.heartbeats AS h
         WHERE h.heartbeat_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (
               SELECT 1 FROM {schema}.leaders AS l
                WHERE l.group_name = h.group_name AND l.holder = h.instance_id
                  AND l.term = h.term)
    """

    leave_groups: str = """
        DELETE FROM {schema}.heartbeats WHERE instance_id = $1 AND role = 'follower'
    """

    leader_status: str = """
        SELECT group_name, leader, holder, term, acquired_at, heartbeat_at, heartbeat_age_s,
               ttl_s, lock_pid, lock_held, is_stale
          FROM {schema}.leader_status
         ORDER BY group_name
    """

    # Every member of every group, from the heartbeat table, with the verdict
    # of leader_status on who leads. Live: heartbeat younger than the group's ttl.
    members: str = """
        SELECT h.group_name, h.instance_id, h.term, h.host, h.pid, h.joined_at, h.heartbeat_at,
               extract(epoch FROM now() - h.heartbeat_at)::float8 AS heartbeat_age_s,
               now() - h.heartbeat_at <= l.ttl AS is_live,
               coalesce(s.leader = h.instance_id AND s.term = h.term, false) AS is_leader
          FROM {schema}.heartbeats AS h
          JOIN {schema}.leaders AS l ON l.group_name = h.group_name
          JOIN {schema}.leader_status AS s ON s.group_name = h.group_name
         ORDER BY h.group_name, h.instance_id
    """

    # The first statement of a fenced transaction (migrations/0002_fencing.sql):
    # FOR SHARE on the leader row, term check, idle limit. $1 group, $2 term.
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

    # Keeps an idle LISTEN connection honest: a dead peer shows up as an error.
    ping: str = "SELECT 1"

    # `coordinator grant`; the rest of its SQL is coordinator/sql/least_privilege.sql.
    # {role} is a checked, quoted identifier. Utility statements take no
    # parameters, so the password goes in as a SCRAM verifier (base64 and
    # "$:" only), never as clear text that the server could log.
    set_role_password: str = "ALTER ROLE {role} WITH LOGIN PASSWORD '{verifier}'"
    grant_signal_backend: str = "GRANT pg_signal_backend TO {role}"

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
    prune_job_runs: str = """
        DELETE FROM {schema}.job_runs WHERE claimed_at < now() - make_interval(secs => $1)
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
