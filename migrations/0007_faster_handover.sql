-- pg-coordinator schema, version 7: a hand-over in fewer steps.
--
-- my_locks() no longer sets its own search_path, so that the planner can
-- inline it into the queries that call it: every caller is a SECURITY
-- DEFINER function with a fixed search_path of its own, and its cached plan
-- then reads pg_locks directly, instead of calling a function that is
-- planned again on every call (a fifth of take_office's time). Its body
-- names everything with pg_catalog, for a caller that reaches it with a
-- search path of its own.
--
-- take_office() is its ownership check and start_terms(), which does the
-- rest (a switchover's reservation, the row lock, the term, heartbeat and
-- event) and is called only by owner functions: campaign() below has just
-- been granted the lock itself and needs no second look at pg_locks. The
-- switchover check builds its message only when a reservation exists.
--
-- resign_and_unlock(group, instance, term, reason, namespace, key) is the
-- graceful hand-over's one statement. It takes the leader row if it names
-- the calling backend as the one that took office for that term, releases
-- the advisory lock, and only then writes the
-- resignation: the next waiter is granted the lock while the resignation is
-- being written, and its take_office waits for the leader row until the
-- resignation commits, so the history still reads "resigned" before
-- "elected". An open fenced transaction of the term holds the row off
-- (FOR SHARE); the caller's lock_timeout bounds that wait, as before.
-- resign() and resign_and_unlock() share record_resignation(), which checks
-- nothing and is called only by them.
--
-- campaign(group, instance, host, pid, ttl, wait_ms) is a blocking
-- follower's wait and a new leader's take office in one statement: it waits
-- up to wait_ms for the group's advisory lock (the key stored in its leader
-- row) and, once granted, takes office as take_office() does (the same
-- answer, and every check but the look in pg_locks), so no round trip to
-- the client lies between the grant and the term. Not granted in time, it
-- returns no row and writes nothing, and the follower sends it again: a wait
-- is a statement, and a statement holds the backend's snapshot (and so the
-- database's xmin horizon) while it runs, so bounded waits keep a long-lived
-- follower from holding vacuum back. A group without a leader row (a server
-- that lost recent commits) gets a row without a term, and no lock. Once
-- granted, the lock stays with the session whatever happens next: a caller
-- whose take office failed (fenced transactions held it off, a switchover
-- reserves the group) still holds it, and unlocks or takes office again.
--
-- Rolling upgrade from version 6: the previous release resigns through
-- resign() and its own statement, and waits in pg_advisory_lock, both
-- unchanged in effect. Run `coordinator grant` before the rollout: the
-- runtime role needs EXECUTE on resign_and_unlock and campaign.

CREATE OR REPLACE FUNCTION coordinator.my_locks()
RETURNS TABLE (lock_namespace oid, lock_key oid)
LANGUAGE sql
STABLE
AS $$
    SELECT k.classid, k.objid
      FROM pg_catalog.pg_locks AS k
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
       AND k.pid = pg_catalog.pg_backend_pid()
       AND k.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                          WHERE d.datname = pg_catalog.current_database())
$$;

-- take_office's work once the lock is known to be the caller's.
CREATE FUNCTION coordinator.start_terms(
    group_names text[], instance_id text, host text, pid integer, ttl_s float8)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    reserved text;
    first_term bigint := coordinator.timeline_first_term();
    ended integer[] := '{}';
BEGIN
    -- A switchover in progress reserves the group for its target (or, without
    -- a target, for anyone but the leader that hands over) until it expires.
    IF EXISTS (SELECT 1 FROM coordinator.switchovers AS s
                WHERE s.group_name = ANY(start_terms.group_names)
                  AND s.expires_at > clock_timestamp()) THEN
        SELECT string_agg(format('%s (for %s)', s.group_name,
                                 coalesce(quote_literal(s.target),
                                          'anyone but ' || quote_literal(s.from_instance))),
                          ', ' ORDER BY s.group_name)
          INTO reserved
          FROM coordinator.switchovers AS s
         WHERE s.group_name = ANY(start_terms.group_names)
           AND s.expires_at > clock_timestamp()
           AND CASE WHEN s.target IS NULL THEN s.from_instance = start_terms.instance_id
                    ELSE s.target <> start_terms.instance_id END;
        IF reserved IS NOT NULL THEN
            RAISE EXCEPTION 'a switchover reserves group(s) %', reserved
                  USING ERRCODE = 'LT003',
                        HINT = 'unlock and wait: the switchover''s target takes office, or the '
                               'reservation expires one ttl after the hand-over';
        END IF;
    END IF;
    -- A term handed out must survive a crash: never commit it asynchronously.
    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    BEGIN
        PERFORM 1 FROM coordinator.leaders AS l
         WHERE l.group_name = ANY(start_terms.group_names)
         ORDER BY l.group_name
           FOR NO KEY UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        ended := coordinator.end_fenced_transactions(start_terms.group_names,
                                                     start_terms.instance_id);
        IF cardinality(ended) = 0 THEN
            RAISE;
        END IF;
        PERFORM 1 FROM coordinator.leaders AS l
         WHERE l.group_name = ANY(start_terms.group_names)
         ORDER BY l.group_name
           FOR NO KEY UPDATE;
    END;
    -- Times are clock_timestamp(): the row lock may have been waited for, and
    -- the first heartbeat must not be born old.
    RETURN QUERY
    WITH office AS (
        UPDATE coordinator.leaders AS l
           SET term = greatest(l.term + 1, first_term), holder = start_terms.instance_id,
               holder_host = start_terms.host, holder_pid = start_terms.pid,
               backend_pid = pg_backend_pid(), acquired_at = clock_timestamp(),
               ttl = make_interval(secs => start_terms.ttl_s)
         WHERE l.group_name = ANY(start_terms.group_names)
        RETURNING l.group_name, l.term, l.acquired_at
    ), handed_over AS (
        DELETE FROM coordinator.switchovers AS s
         WHERE s.group_name IN (SELECT office.group_name FROM office)
    ), beat AS (
        INSERT INTO coordinator.heartbeats AS h
               (group_name, instance_id, role, term, host, pid, backend_pid, heartbeat_at)
        SELECT office.group_name, start_terms.instance_id, 'leader', office.term,
               start_terms.host, start_terms.pid, pg_backend_pid(), office.acquired_at
          FROM office
        ON CONFLICT (group_name, instance_id) DO UPDATE
           SET role = 'leader', term = excluded.term, host = excluded.host,
               pid = excluded.pid, backend_pid = excluded.backend_pid,
               heartbeat_at = excluded.heartbeat_at
    )
    SELECT office.group_name, office.term, office.acquired_at, ended
      FROM office, LATERAL coordinator.record_event(office.group_name, 'elected', office.term,
                                                    start_terms.instance_id, NULL) AS recorded;
END
$$;

-- take_office as in version 6: a term only for the backend that holds the lock.
CREATE OR REPLACE FUNCTION coordinator.take_office(
    group_names text[], instance_id text, host text, pid integer, ttl_s float8)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    refused text[];
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
    RETURN QUERY SELECT * FROM coordinator.start_terms(take_office.group_names,
                                                       take_office.instance_id, take_office.host,
                                                       take_office.pid, take_office.ttl_s);
END
$$;

-- What a resignation writes: the holder cleared, a fresh switchover's last
-- ttl started, the heartbeat row a follower's, the event recorded and
-- notified. Returns the term resigned, or nothing if the row no longer names
-- this instance and term. Its callers check the lock first.
CREATE FUNCTION coordinator.record_resignation(
    group_name text, instance_id text, term bigint, reason text)
RETURNS TABLE (resigned_term bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH cleared AS (
        UPDATE coordinator.leaders AS l
           SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
         WHERE l.group_name = record_resignation.group_name
           AND l.holder = record_resignation.instance_id
           AND l.term = record_resignation.term
        RETURNING l.term
    ), handing_over AS (
        UPDATE coordinator.switchovers AS s
           SET expires_at = clock_timestamp() + l.ttl
          FROM cleared, coordinator.leaders AS l
         WHERE s.group_name = record_resignation.group_name AND s.term = cleared.term
           AND l.group_name = s.group_name
           -- The leader acted on it while it was fresh, or it still is; a
           -- lapsed request is never revived by a later resignation.
           AND (record_resignation.reason = 'switchover' OR s.expires_at > clock_timestamp())
        RETURNING s.target
    ), beat AS (
        UPDATE coordinator.heartbeats AS h
           SET role = 'follower', term = NULL, backend_pid = NULL, heartbeat_at = now()
          FROM cleared
         WHERE h.group_name = record_resignation.group_name
           AND h.instance_id = record_resignation.instance_id
    )
    SELECT cleared.term
      FROM cleared,
           LATERAL coordinator.record_event(
               record_resignation.group_name, 'resigned', cleared.term,
               record_resignation.instance_id,
               CASE WHEN record_resignation.reason = 'switchover'
                    THEN coalesce((SELECT 'switchover to ' || h.target FROM handing_over AS h),
                                  record_resignation.reason)
                    ELSE record_resignation.reason END) AS recorded
$$;

-- resign as in version 6: only the backend that holds the group's lock.
CREATE OR REPLACE FUNCTION coordinator.resign(group_name text, instance_id text, term bigint, reason text)
RETURNS TABLE (resigned_term bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM coordinator.leaders AS l
                 JOIN coordinator.my_locks() AS m
                   ON m.lock_namespace = l.lock_namespace::oid AND m.lock_key = l.lock_key::oid
                WHERE l.group_name = resign.group_name) THEN
        RETURN QUERY SELECT r.resigned_term
                       FROM coordinator.record_resignation(resign.group_name, resign.instance_id,
                                                           resign.term, resign.reason) AS r;
    END IF;
END
$$;

CREATE FUNCTION coordinator.resign_and_unlock(
    group_name text, instance_id text, term bigint, reason text,
    lock_namespace integer, lock_key integer)
RETURNS TABLE (resigned_term bigint, unlocked boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    ours boolean;
BEGIN
    -- The backend that took office for this term, and so holds the lock: a
    -- session gives its lock up only by unlocking it or by ending. (No look
    -- in pg_locks: this runs before the unlock, on the hand-over's path.)
    PERFORM 1 FROM coordinator.leaders AS l
     WHERE l.group_name = resign_and_unlock.group_name
       AND l.holder = resign_and_unlock.instance_id AND l.term = resign_and_unlock.term
       AND l.backend_pid = pg_backend_pid()
       FOR NO KEY UPDATE;
    ours := FOUND;
    unlocked := pg_advisory_unlock(resign_and_unlock.lock_namespace, resign_and_unlock.lock_key);
    IF ours THEN
        resigned_term := (SELECT r.resigned_term
                            FROM coordinator.record_resignation(
                                     resign_and_unlock.group_name, resign_and_unlock.instance_id,
                                     resign_and_unlock.term, resign_and_unlock.reason) AS r);
    END IF;
    RETURN NEXT;
END
$$;

CREATE FUNCTION coordinator.campaign(
    for_group text, instance_id text, host text, pid integer, ttl_s float8, wait_ms integer)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    office_wait text := current_setting('lock_timeout');
    group_lock record;
BEGIN
    SELECT l.lock_namespace, l.lock_key INTO group_lock
      FROM coordinator.leaders AS l WHERE l.group_name = campaign.for_group;
    IF NOT FOUND THEN
        -- No leader row (a server that lost recent commits): no lock to wait
        -- for. A row without a term says so; nothing was locked or written.
        group_name := campaign.for_group;
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM set_config('lock_timeout', campaign.wait_ms || 'ms', true);
    BEGIN
        PERFORM pg_advisory_lock(group_lock.lock_namespace, group_lock.lock_key);
    EXCEPTION WHEN lock_not_available THEN
        RETURN;
    END;
    PERFORM set_config('lock_timeout', office_wait, true);
    -- The group's lock was granted just now, to this backend: no need to look
    -- it up again.
    RETURN QUERY SELECT * FROM coordinator.start_terms(ARRAY[campaign.for_group],
                                                       campaign.instance_id, campaign.host,
                                                       campaign.pid, campaign.ttl_s);
END
$$;

REVOKE ALL ON FUNCTION
    coordinator.start_terms(text[], text, text, integer, float8),
    coordinator.record_resignation(text, text, bigint, text),
    coordinator.resign_and_unlock(text, text, bigint, text, integer, integer),
    coordinator.campaign(text, text, text, integer, float8, integer)
FROM PUBLIC;

COMMENT ON FUNCTION coordinator.campaign(text, text, text, integer, float8, integer) IS
    'Wait up to wait_ms for the group''s advisory lock and take office once granted '
    '(no row: not granted in time, nothing written).';

COMMENT ON FUNCTION coordinator.resign_and_unlock(text, text, bigint, text, integer, integer) IS
    'Resign the term and release the group''s advisory lock in one statement: the lock is '
    'released once the leader row is held, before the resignation is written.';
