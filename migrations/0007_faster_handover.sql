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
-- resign_and_unlock(group, instance, term, reason, namespace, key) is the
-- graceful hand-over's one statement. It checks the lock and takes the
-- leader row, releases the advisory lock, and only then writes the
-- resignation: the next waiter is granted the lock while the resignation is
-- being written, and its take_office waits for the leader row until the
-- resignation commits, so the history still reads "resigned" before
-- "elected". An open fenced transaction of the term holds the row off
-- (FOR SHARE); the caller's lock_timeout bounds that wait, as before.
-- resign() and resign_and_unlock() share record_resignation(), which checks
-- nothing and is called only by them.
--
-- Rolling upgrade from version 6: the previous release resigns through
-- resign() and its own statement, both unchanged in effect. Re-run
-- `coordinator grant` after the rollout: the runtime role needs EXECUTE on
-- resign_and_unlock.

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
    PERFORM 1 FROM coordinator.leaders AS l
      JOIN coordinator.my_locks() AS m
        ON m.lock_namespace = l.lock_namespace::oid AND m.lock_key = l.lock_key::oid
     WHERE l.group_name = resign_and_unlock.group_name
       AND l.holder = resign_and_unlock.instance_id AND l.term = resign_and_unlock.term
       FOR NO KEY UPDATE OF l;
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

REVOKE ALL ON FUNCTION
    coordinator.record_resignation(text, text, bigint, text),
    coordinator.resign_and_unlock(text, text, bigint, text, integer, integer)
FROM PUBLIC;

COMMENT ON FUNCTION coordinator.resign_and_unlock(text, text, bigint, text, integer, integer) IS
    'Resign the term and release the group''s advisory lock in one statement: the lock is '
    'released once the leader row is held, before the resignation is written.';
