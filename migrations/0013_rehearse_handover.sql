-- pg-coordinator schema, version 13: a new lock session rehearses the whole
-- hand-over, not only its first statements.
--
-- A blocking follower's new session used to rehearse by taking office in no
-- group and resigning a term that never exists. That plans the statements
-- that run on no rows, but a term's event, its resignation's writes and the
-- tables they touch were still loaded and planned for the first time on the
-- hand-over's path: in a graceful hand-over the resigning backend and the
-- one taking office each pay that once in their lives, one after the other,
-- about 2 ms here against 0.5 ms once warm.
--
-- rehearse_handover(instance, host, pid, ttl) runs the real hand-over on a
-- group of its own: it registers the group, campaigns for it (its lock is
-- free, so it is granted at once and a term starts), resigns and unlocks,
-- and then rolls all of it back. It runs in a subtransaction that always
-- ends in an error it catches, so nothing it wrote is ever seen by anyone:
-- no row, no event, no notification (only the events' identity sequence
-- moves on). What stays is what the backend learned: its catalog caches and
-- the plans of every statement on the path. The lock sessions plan their
-- statements generically (plan_cache_mode), so those plans are the ones the
-- hand-over uses.
--
-- The rehearsal's group cannot be one of the application's: its lock is in
-- namespace -1 (a coordinator's lock_namespace is never negative), keyed by
-- the backend's pid, which no other live backend has. Its name is unique
-- for the same reason; should a real group already bear it, the rehearsal
-- is skipped. So is it when the lock is not granted within a millisecond
-- (another application holds that very advisory lock). Returns whether it
-- ran to the end. Any other error is raised as it is; a session-level lock
-- outlives the rolled-back subtransaction, so the caller's session may then
-- still hold the rehearsal's lock (a lock session that fails to start is
-- closed, which releases it).
--
-- Run `coordinator grant` again after migrating: the runtime role needs
-- EXECUTE on rehearse_handover.

CREATE FUNCTION coordinator.rehearse_handover(
    instance_id text, host text, pid integer, ttl_s float8)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rehearsal_group constant text := 'rehearsal of backend ' || pg_backend_pid();
    rehearsal_namespace constant integer := -1;
    office record;
    rehearsed boolean := false;
BEGIN
    BEGIN
        INSERT INTO coordinator.leaders (group_name, lock_namespace, lock_key, ttl)
        VALUES (rehearsal_group, rehearsal_namespace, pg_backend_pid(),
                make_interval(secs => rehearse_handover.ttl_s));
        SELECT c.term INTO office
          FROM coordinator.campaign(rehearsal_group, rehearse_handover.instance_id,
                                    rehearse_handover.host, rehearse_handover.pid,
                                    rehearse_handover.ttl_s, 1) AS c;
        IF FOUND THEN
            PERFORM coordinator.resign_and_unlock(rehearsal_group, rehearse_handover.instance_id,
                                                  office.term, 'rehearsal',
                                                  rehearsal_namespace, pg_backend_pid());
            rehearsed := true;
        END IF;
        RAISE EXCEPTION 'rehearsal over' USING ERRCODE = 'LT0R0';
    EXCEPTION
        WHEN SQLSTATE 'LT0R0' THEN
            RETURN rehearsed;
        WHEN unique_violation THEN
            RETURN false;
    END;
END
$$;

REVOKE ALL ON FUNCTION coordinator.rehearse_handover(text, text, integer, float8) FROM PUBLIC;

COMMENT ON FUNCTION coordinator.rehearse_handover(text, text, integer, float8) IS
    'Take office in a group of the calling backend''s own, resign and unlock, then roll it all '
    'back: the backend loads and plans the hand-over''s path before it is needed.';
