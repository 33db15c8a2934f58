-- pg-coordinator schema, version 4: the database decides who may lead.
--
-- Every change of state goes through the functions below. They run with the
-- rights of the schema's owner (SECURITY DEFINER, with a fixed search_path),
-- so a role that runs coordinators needs EXECUTE on them and SELECT on what
-- it reads, and no INSERT, UPDATE or DELETE on any table
-- (coordinator/sql/least_privilege.sql grants exactly that).
--
-- The rule they enforce: a term is issued only to the backend that holds the
-- group's advisory lock. take_office looks in pg_locks for a granted lock of
-- the calling backend (pg_backend_pid()) on the group's own (namespace, key)
-- pair, read from the leaders row and not from the caller, and only then
-- increments the term. The leader's heartbeat and resignation check the
-- caller's backend and term the same way; fencing judges staleness on the
-- database clock itself; history is appended and pruned only here.
--
-- Terms never repeat and never go backwards (a term is a fencing token that
-- other systems may keep):
--
-- * take_office commits with synchronous_commit at least 'on', whatever the
--   session or the server says, so a term handed out survives a crash of the
--   server (and, with a synchronous standby, a failover);
-- * a term carries the server's timeline in its upper 32 bits: promotion of
--   a standby always starts a new, higher timeline, so the first term issued
--   after a failover is greater than any issued before it, even by a primary
--   whose last increments the standby never received. On timeline 1 terms
--   are 1, 2, 3 ... as before; on timeline 2 they start at 2^32 + 1.
--
-- Rolling upgrade from version 2: this file only adds functions and columns
-- and changes no privilege, so instances of the previous release keep
-- electing beside new ones. Once every instance runs the new release, run
-- `coordinator grant` again: it revokes the direct writes the previous
-- release needed.

-- The retention of history, configured here by the owner: the runtime role
-- may ask to keep events longer, never shorter.
CREATE TABLE coordinator.settings (
    singleton           boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    events_retention    interval NOT NULL DEFAULT interval '7 days'
                                 CHECK (events_retention >= interval '0')
);
INSERT INTO coordinator.settings DEFAULT VALUES;

-- One change of leadership: appended to the history and announced on this
-- schema's channel, <schema>_leadership (delivered when the transaction commits).
CREATE FUNCTION coordinator.record_event(
    group_name text, kind text, term bigint, instance_id text, reason text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO coordinator.events (group_name, kind, term, instance_id, reason)
    VALUES (record_event.group_name, record_event.kind, record_event.term,
            record_event.instance_id, record_event.reason);
    SELECT pg_notify(
        (SELECT c.relnamespace::regnamespace::text FROM pg_class AS c
          WHERE c.oid = 'coordinator.leaders'::regclass) || '_leadership',
        json_build_object('group', record_event.group_name, 'kind', record_event.kind,
                          'term', record_event.term, 'instance_id', record_event.instance_id,
                          'reason', record_event.reason)::text);
$$;

-- The advisory locks granted to the calling backend in this database, in
-- the two-int4 keyspace (pg_locks shows classid = namespace, objid = key,
-- objsubid = 2). pg_backend_pid() is the caller's backend even here.
CREATE FUNCTION coordinator.my_locks()
RETURNS TABLE (lock_namespace oid, lock_key oid)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.classid, k.objid
      FROM pg_locks AS k
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
       AND k.pid = pg_backend_pid()
       AND k.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
$$;

-- The backend that holds a group's lock, if any.
CREATE FUNCTION coordinator.lock_holder(lock_namespace integer, lock_key integer)
RETURNS integer
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.pid
      FROM pg_locks AS k
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
       AND k.classid = lock_holder.lock_namespace::oid AND k.objid = lock_holder.lock_key::oid
       AND k.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
     LIMIT 1
$$;

-- The first term of this server's timeline: (timeline - 1) * 2^32 + 1.
-- pg_walfile_name names the timeline that WAL is written on now; it is
-- read on the primary only (taking office on a standby fails anyway). A
-- service that offers no WAL functions counts from 1 on one timeline.
CREATE FUNCTION coordinator.timeline_first_term()
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ((('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint - 1)
            << 32) + 1;
EXCEPTION WHEN undefined_function OR feature_not_supported OR insufficient_privilege THEN
    RETURN 1;
END
$$;

-- Groups are registered on first use. A name whose key another group has
-- is skipped (the caller reads the conflict from the table and reports it).
CREATE FUNCTION coordinator.register_groups(
    group_names text[], lock_keys integer[], lock_namespace integer, ttl_s float8)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key, ttl)
    SELECT g.name, register_groups.lock_namespace, g.key, make_interval(secs => register_groups.ttl_s)
      FROM unnest(group_names, lock_keys) AS g(name, key)
    ON CONFLICT DO NOTHING
$$;

-- Ends the backends of fenced transactions of these groups that are still
-- open (assert_term marks each with a shared transaction-level advisory lock
-- in the one-bigint keyspace: namespace << 32 | key, objsubid = 1), records
-- each in the history and returns their pids. Only a new leader that holds
-- the groups' locks calls this, after its bounded wait for them ran out.
CREATE FUNCTION coordinator.end_fenced_transactions(group_names text[], new_holder text)
RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ended integer[] := '{}';
    victim record;
BEGIN
    FOR victim IN
        SELECT l.group_name, l.term, l.holder, k.pid, a.usename, a.application_name,
               extract(epoch FROM clock_timestamp() - a.xact_start)::numeric(12, 3) AS open_s
          FROM coordinator.leaders AS l
          JOIN pg_locks AS k
            ON k.locktype = 'advisory' AND k.objsubid = 1 AND k.granted
           AND k.database = (SELECT d.oid FROM pg_database AS d
                              WHERE d.datname = current_database())
           AND k.classid = l.lock_namespace::oid AND k.objid = l.lock_key::oid
          LEFT JOIN pg_stat_activity AS a ON a.pid = k.pid
         WHERE l.group_name = ANY(group_names) AND k.pid <> pg_backend_pid()
    LOOP
        BEGIN
            IF NOT pg_terminate_backend(victim.pid) THEN
                CONTINUE;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'may not terminate backend % of a fenced transaction of group %: %',
                          victim.pid, quote_literal(victim.group_name), SQLERRM
                  USING HINT = 'grant pg_signal_backend to the schema owner';
            CONTINUE;
        END;
        ended := ended || victim.pid;
        PERFORM coordinator.record_event(
            victim.group_name, 'fenced', victim.term, victim.holder,
            format('fenced transaction of term %s in backend %s (user %s, application %s) '
                   'open %s s held the next term off; terminated for %s',
                   victim.term, victim.pid, victim.usename,
                   quote_literal(coalesce(victim.application_name, '')),
                   victim.open_s, new_holder));
    END LOOP;
    RETURN ended;
END
$$;

-- Take office in every group of group_names, whose advisory locks the calling
-- backend must hold: the term grows by one (at least to the first term of
-- this timeline), the holder, its first heartbeat and an 'elected' event are
-- written, and a notification is sent. Raises SQLSTATE LT002 if any lock is
-- not held by the caller, and nothing is written.
--
-- The term update waits for fenced transactions of the old term (they hold
-- FOR SHARE on the row). The session's lock_timeout bounds that wait; when it
-- runs out, those transactions' backends are terminated (each recorded as a
-- 'fenced' event and returned in ended_backends) and the update is tried once
-- more, again bounded by lock_timeout. A blocker that cannot be terminated
-- (a superuser's backend, or an owner without pg_signal_backend) leaves
-- lock_not_available (55P03) to the caller, who retries.
CREATE FUNCTION coordinator.take_office(
    group_names text[], instance_id text, host text, pid integer, ttl_s float8)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    refused text[];
    first_term bigint := coordinator.timeline_first_term();
    ended integer[] := '{}';
BEGIN
    SELECT array_agg(g.name ORDER BY g.name) INTO refused
      FROM unnest(take_office.group_names) AS g(name)
     WHERE NOT EXISTS (
           SELECT 1 FROM coordinator.leaders AS l
             JOIN coordinator.my_locks() AS m
               ON m.lock_namespace = l.lock_namespace::oid AND m.lock_key = l.lock_key::oid
            WHERE l.group_name = g.name);
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'this session does not hold the advisory lock of group(s) %',
                        array_to_string(refused, ', ')
              USING ERRCODE = 'LT002',
                    HINT = 'a term is issued only to the backend that holds the group''s lock: '
                           'take office after pg_advisory_lock(namespace, key) is granted';
    END IF;
    -- A term handed out must survive a crash: never commit it asynchronously.
    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    BEGIN
        PERFORM 1 FROM coordinator.leaders AS l
         WHERE l.group_name = ANY(take_office.group_names)
         ORDER BY l.group_name
           FOR NO KEY UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        ended := coordinator.end_fenced_transactions(take_office.group_names,
                                                     take_office.instance_id);
        IF cardinality(ended) = 0 THEN
            RAISE;
        END IF;
        PERFORM 1 FROM coordinator.leaders AS l
         WHERE l.group_name = ANY(take_office.group_names)
         ORDER BY l.group_name
           FOR NO KEY UPDATE;
    END;
    -- Times are clock_timestamp(): the row lock may have been waited for, and
    -- the first heartbeat must not be born old.
    RETURN QUERY
    WITH office AS (
        UPDATE coordinator.leaders AS l
           SET term = greatest(l.term + 1, first_term), holder = take_office.instance_id,
               holder_host = take_office.host, holder_pid = take_office.pid,
               backend_pid = pg_backend_pid(), acquired_at = clock_timestamp(),
               ttl = make_interval(secs => take_office.ttl_s)
         WHERE l.group_name = ANY(take_office.group_names)
        RETURNING l.group_name, l.term, l.acquired_at
    ), beat AS (
        INSERT INTO coordinator.heartbeats AS h
               (group_name, instance_id, role, term, host, pid, backend_pid, heartbeat_at)
        SELECT office.group_name, take_office.instance_id, 'leader', office.term,
               take_office.host, take_office.pid, pg_backend_pid(), office.acquired_at
          FROM office
        ON CONFLICT (group_name, instance_id) DO UPDATE
           SET role = 'leader', term = excluded.term, host = excluded.host,
               pid = excluded.pid, backend_pid = excluded.backend_pid,
               heartbeat_at = excluded.heartbeat_at
    )
    SELECT office.group_name, office.term, office.acquired_at, ended
      FROM office, LATERAL coordinator.record_event(office.group_name, 'elected', office.term,
                                                    take_office.instance_id, NULL) AS recorded;
END
$$;

-- The leader's heartbeat, on the session that holds the locks: refreshed only
-- for groups whose lock this backend holds and whose row still names this
-- instance and term. A group missing from the answer is no longer ours. It
-- never touches the leader row, which fenced transactions may hold FOR SHARE.
CREATE FUNCTION coordinator.leader_heartbeat(
    instance_id text, lock_namespace integer, group_names text[], terms bigint[])
RETURNS TABLE (group_name text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE coordinator.heartbeats AS h
       SET heartbeat_at = now()
      FROM unnest(group_names, terms) AS t(group_name, term), coordinator.leaders AS l
     WHERE h.group_name = t.group_name AND h.instance_id = leader_heartbeat.instance_id
       AND h.term = t.term AND h.role = 'leader' AND l.group_name = t.group_name
       AND l.lock_namespace = leader_heartbeat.lock_namespace
       AND (l.lock_namespace::oid, l.lock_key::oid) IN (SELECT * FROM coordinator.my_locks())
    RETURNING h.group_name
$$;

-- The members' heartbeat, for every group an instance follows. A row that
-- says "leader" is left alone while the leader row still names that instance
-- and term: a follower beat racing with taking office must not undo it.
CREATE FUNCTION coordinator.member_heartbeat(
    group_names text[], instance_id text, host text, pid integer)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO coordinator.heartbeats AS h
           (group_name, instance_id, role, host, pid, heartbeat_at)
    SELECT g, member_heartbeat.instance_id, 'follower', member_heartbeat.host,
           member_heartbeat.pid, now()
      FROM unnest(member_heartbeat.group_names) AS g
    ON CONFLICT (group_name, instance_id) DO UPDATE
       SET role = 'follower', term = NULL, backend_pid = NULL, host = excluded.host,
           pid = excluded.pid, heartbeat_at = now()
     WHERE h.role = 'follower' OR NOT coalesce((
           -- A locking read sees a take_office that committed while this
           -- statement waited for the heartbeat row; a plain read would see
           -- the snapshot from before it and undo the new leadership.
           SELECT l.holder IS NOT DISTINCT FROM h.instance_id AND l.term = h.term
             FROM coordinator.leaders AS l
            WHERE l.group_name = h.group_name
              FOR SHARE), false)
$$;

-- Resign: only the backend that holds the lock, for its own instance and
-- term. The session's lock_timeout bounds the wait for this term's fenced
-- transactions (lock_not_available: the caller skips the record and unlocks).
CREATE FUNCTION coordinator.resign(group_name text, instance_id text, term bigint, reason text)
RETURNS TABLE (resigned_term bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH cleared AS (
        UPDATE coordinator.leaders AS l
           SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
         WHERE l.group_name = resign.group_name AND l.holder = resign.instance_id
           AND l.term = resign.term
           AND (l.lock_namespace::oid, l.lock_key::oid) IN (SELECT * FROM coordinator.my_locks())
        RETURNING l.term
    ), beat AS (
        UPDATE coordinator.heartbeats AS h
           SET role = 'follower', term = NULL, backend_pid = NULL, heartbeat_at = now()
          FROM cleared
         WHERE h.group_name = resign.group_name AND h.instance_id = resign.instance_id
    )
    SELECT cleared.term
      FROM cleared, LATERAL coordinator.record_event(resign.group_name, 'resigned', cleared.term,
                                                     resign.instance_id, resign.reason) AS recorded
$$;

-- A leadership whose session is gone, recorded from another connection so
-- the history says what happened. Refused (nothing written) while the
-- recorded backend still holds the lock in that term: a live leader cannot
-- be demoted by someone else's word.
CREATE FUNCTION coordinator.record_lost(group_name text, instance_id text, term bigint, reason text)
RETURNS TABLE (lost_term bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ended AS (
        SELECT record_lost.term
         WHERE NOT EXISTS (
               SELECT 1 FROM coordinator.leaders AS l
                WHERE l.group_name = record_lost.group_name
                  AND l.holder = record_lost.instance_id AND l.term = record_lost.term
                  AND coordinator.lock_holder(l.lock_namespace, l.lock_key) = l.backend_pid)
    ), beat AS (
        UPDATE coordinator.heartbeats AS h
           SET role = 'follower', term = NULL, backend_pid = NULL
          FROM ended
         WHERE h.group_name = record_lost.group_name AND h.instance_id = record_lost.instance_id
           AND h.term = ended.term
    )
    SELECT ended.term
      FROM ended, LATERAL coordinator.record_event(record_lost.group_name, 'lost', ended.term,
                                                   record_lost.instance_id,
                                                   record_lost.reason) AS recorded
$$;

-- The monitor, for every group in the schema. A stale holder (heartbeat older
-- than its ttl on the database clock) whose recorded backend still holds the
-- lock is terminated; one whose lock is held by nobody is marked vacant.
-- FOR SHARE on the leader row pins the recorded term and backend pid: the
-- next leader's term update waits for this statement, so it is never hit.
-- SKIP LOCKED passes over a row whose next leader is taking office now.
CREATE FUNCTION coordinator.fence_stale_leaders(fencer text)
RETURNS TABLE (group_name text, kind text, term bigint, instance_id text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH stale AS (
        SELECT l.group_name, l.term, l.holder, l.backend_pid,
               extract(epoch FROM now() - h.heartbeat_at)::float8 AS heartbeat_age_s,
               coordinator.lock_holder(l.lock_namespace, l.lock_key) AS lock_pid
          FROM coordinator.leaders AS l
          LEFT JOIN coordinator.heartbeats AS h
                 ON h.group_name = l.group_name AND h.instance_id = l.holder AND h.term = l.term
         WHERE l.holder IS NOT NULL
           AND (h.heartbeat_at IS NULL OR h.heartbeat_at < now() - l.ttl)
           -- A row locked below is re-read in its newest version; if a next
           -- leader took office meanwhile, it joins no heartbeat row of its
           -- own here and would look stale. No leader is stale before a ttl
           -- has passed since it took office, so this spares it.
           AND l.acquired_at < now() - l.ttl
           FOR SHARE OF l SKIP LOCKED
    ), fenced AS (
        SELECT stale.*, pg_terminate_backend(stale.backend_pid) AS terminated
          FROM stale
         WHERE stale.lock_pid = stale.backend_pid
    ), vacated AS (
        UPDATE coordinator.leaders AS l
           SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
          FROM stale
         WHERE l.group_name = stale.group_name AND l.term = stale.term
           AND stale.lock_pid IS NULL
        RETURNING l.group_name, stale.term, stale.holder, stale.heartbeat_age_s
    ), history AS (
        SELECT group_name, 'fenced' AS kind, term, holder,
               format('heartbeat %s s old, backend %s terminated by %s',
                      round(heartbeat_age_s::numeric, 3), backend_pid, fencer) AS reason
          FROM fenced WHERE terminated
        UNION ALL
        SELECT group_name, 'expired', term, holder,
               format('heartbeat %s s old and no lock held', round(heartbeat_age_s::numeric, 3))
          FROM vacated
    )
    SELECT history.group_name, history.kind, history.term, history.holder
      FROM history, LATERAL coordinator.record_event(history.group_name, history.kind,
                                                     history.term, history.holder,
                                                     history.reason) AS recorded
$$;

-- History older than the retention asked for, but never younger than the
-- retention configured in coordinator.settings, is deleted.
CREATE FUNCTION coordinator.prune_events(retention_s float8)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH pruned AS (
        DELETE FROM coordinator.events AS e
         WHERE e.at < now() - greatest(make_interval(secs => retention_s),
                                       (SELECT s.events_retention FROM coordinator.settings AS s))
        RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;

-- Members that stopped heartbeating long ago (crashed, never came back); never
-- one younger than its group's ttl, and never the recorded leader.
CREATE FUNCTION coordinator.prune_members(retention_s float8)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH pruned AS (
        DELETE FROM coordinator.heartbeats AS h
         USING coordinator.leaders AS l
         WHERE l.group_name = h.group_name
           AND h.heartbeat_at < now() - greatest(make_interval(secs => retention_s), l.ttl)
           AND NOT coalesce(l.holder = h.instance_id AND l.term = h.term, false)
        RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;

-- An instance that stops deletes its own follower rows.
CREATE FUNCTION coordinator.leave_groups(instance_id text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM coordinator.heartbeats AS h
     WHERE h.instance_id = leave_groups.instance_id AND h.role = 'follower'
$$;

-- The fencing token check, as in version 2, and two changes: the error names
-- the terms, not the holder; and the transaction is marked in pg_locks (a
-- shared transaction-level advisory lock on namespace << 32 | key in the
-- one-bigint keyspace, objsubid = 1), so that a next leader kept waiting
-- past its bound can find and end exactly these transactions.
CREATE OR REPLACE FUNCTION coordinator.assert_term(group_name text, term bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current_term   bigint;
    current_holder text;
    group_ttl_ms   bigint;
    configured_ms  bigint;
    marker         bigint;
BEGIN
    SELECT l.term, l.holder, greatest(1, (extract(epoch FROM l.ttl) * 1000)::bigint),
           (l.lock_namespace::bigint << 32) | (l.lock_key::bigint & 4294967295)
      INTO current_term, current_holder, group_ttl_ms, marker
      FROM coordinator.leaders AS l
     WHERE l.group_name = assert_term.group_name
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'group % is not registered in coordinator.leaders',
                        quote_literal(assert_term.group_name)
              USING ERRCODE = 'undefined_object',
                    HINT = 'check the group name; a group is registered when a coordinator first joins it';
    END IF;
    IF current_holder IS NULL OR current_term IS DISTINCT FROM assert_term.term THEN
        RAISE EXCEPTION 'term % of group % is not current (%)',
                        assert_term.term, quote_literal(assert_term.group_name),
                        CASE WHEN current_holder IS NULL THEN 'the group has no leader'
                             ELSE 'the group is at term ' || current_term END
              USING ERRCODE = 'LT001',
                    HINT = 'a newer leader exists or the leadership ended: stop the work of this term; the transaction must roll back';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(marker);
    SELECT s.setting::bigint INTO configured_ms
      FROM pg_catalog.pg_settings AS s
     WHERE s.name = 'idle_in_transaction_session_timeout';
    IF configured_ms = 0 OR configured_ms > group_ttl_ms THEN
        PERFORM pg_catalog.set_config(
            'idle_in_transaction_session_timeout', group_ttl_ms::text, true);
    END IF;
    RETURN current_term;
END
$$;

-- Who leads, for readers; the columns of version 1, and who squats: a
-- backend that holds the group's lock but is neither the recorded leader's
-- nor a coordinator session (named coordinator:<instance> by a role that may
-- take office). While it holds the lock, the group can elect nobody.
CREATE OR REPLACE VIEW coordinator.leader_status AS
WITH locks AS MATERIALIZED (
    SELECT k.classid, k.objid, k.pid
      FROM pg_catalog.pg_locks AS k
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
       AND k.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
), holders AS MATERIALIZED (
    SELECT a.pid, a.usename::text AS usename, a.application_name,
           a.application_name LIKE 'coordinator:%'
           AND has_function_privilege(
                   a.usesysid,
                   'coordinator.take_office(text[], text, text, integer, double precision)',
                   'EXECUTE') AS is_coordinator
      FROM pg_catalog.pg_stat_activity AS a
     WHERE a.pid IN (SELECT pid FROM locks)
)
SELECT
    l.group_name,
    CASE WHEN NOT stale.is_stale THEN l.holder END        AS leader,
    l.holder,
    l.term,
    l.acquired_at,
    h.heartbeat_at,
    extract(epoch FROM now() - h.heartbeat_at)::float8    AS heartbeat_age_s,
    extract(epoch FROM l.ttl)::float8                      AS ttl_s,
    lock.pid                                               AS lock_pid,
    lock.pid IS NOT NULL                                   AS lock_held,
    stale.is_stale,
    squat.pid                                              AS squatter_pid,
    squat.usename                                          AS squatter_user,
    squat.application_name                                 AS squatter_application
FROM coordinator.leaders AS l
LEFT JOIN coordinator.heartbeats AS h
       ON h.group_name = l.group_name AND h.instance_id = l.holder AND h.term = l.term
LEFT JOIN locks AS lock
       ON lock.classid = l.lock_namespace::oid AND lock.objid = l.lock_key::oid
LEFT JOIN holders AS squat
       ON squat.pid = lock.pid AND lock.pid IS DISTINCT FROM l.backend_pid
      AND NOT squat.is_coordinator
CROSS JOIN LATERAL (
    SELECT l.holder IS NOT NULL AND (
               h.heartbeat_at IS NULL
            OR now() - h.heartbeat_at > l.ttl
            OR lock.pid IS DISTINCT FROM l.backend_pid
           ) AS is_stale
) AS stale;

REVOKE ALL ON FUNCTION
    coordinator.record_event(text, text, bigint, text, text),
    coordinator.my_locks(),
    coordinator.lock_holder(integer, integer),
    coordinator.timeline_first_term(),
    coordinator.end_fenced_transactions(text[], text),
    coordinator.register_groups(text[], integer[], integer, float8),
    coordinator.take_office(text[], text, text, integer, float8),
    coordinator.leader_heartbeat(text, integer, text[], bigint[]),
    coordinator.member_heartbeat(text[], text, text, integer),
    coordinator.resign(text, text, bigint, text),
    coordinator.record_lost(text, text, bigint, text),
    coordinator.fence_stale_leaders(text),
    coordinator.prune_events(float8),
    coordinator.prune_members(float8),
    coordinator.leave_groups(text)
FROM PUBLIC;

COMMENT ON FUNCTION coordinator.take_office(text[], text, text, integer, float8) IS
    'Start the next term of each group whose advisory lock the calling backend holds '
    '(SQLSTATE LT002 otherwise); the term carries the server timeline in its upper 32 bits.';
