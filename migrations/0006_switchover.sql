-- pg-coordinator schema, version 6: switchover, an operator's hand-over.
--
-- request_switchover(group, target) asks the group's live leader to hand
-- over, to the named member or (target NULL) to any other member. It checks
-- that the group exists, that a live leader holds it, and that the target is
-- a live member (heartbeat younger than the group's ttl) other than the
-- leader, or without a target that some other live member exists; otherwise
-- it raises SQLSTATE LT004 with the cause, and writes nothing. Then it
-- records one request per group and notifies <schema>_switchover.
--
-- The leader acts on it: its control connection listens on that channel and
-- re-reads the request (the notification is only a hint; each heartbeat
-- cycle re-reads pending requests too), ends its term gracefully (on_demoted
-- drained) and resigns with reason 'switchover'. Fencing is unchanged: the
-- old leader's term ends before it unlocks, and the next term is issued by
-- take_office only to the backend that holds the lock.
--
-- While the request is fresh, take_office refuses (SQLSTATE LT003) anyone
-- but the target, or without a target the leader that handed over; the
-- refused caller unlocks and waits again. The request lives one ttl from
-- the request, and again one ttl from the resignation: a target that died
-- holds the group back for at most one ttl after the hand-over, then anyone
-- may take office. take_office consumes the request of every group it
-- starts a term in.
--
-- Rolling upgrade from version 5: instances of the previous release ignore
-- requests (the request expires unanswered), and take office only through
-- the new take_office, which honours them.

CREATE TABLE coordinator.switchovers (
    group_name      text        PRIMARY KEY
                                REFERENCES coordinator.leaders (group_name) ON DELETE CASCADE,
    term            bigint      NOT NULL,  -- the term asked to hand over
    from_instance   text        NOT NULL,  -- its holder
    target          text,                  -- NULL: any other member
    requested_by    text        NOT NULL DEFAULT session_user,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL
);

CREATE FUNCTION coordinator.request_switchover(group_name text, target text)
RETURNS TABLE (term bigint, holder text, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    office record;
    others integer;
BEGIN
    SELECT s.leader, s.term, l.ttl INTO office
      FROM coordinator.leader_status AS s
      JOIN coordinator.leaders AS l ON l.group_name = s.group_name
     WHERE s.group_name = request_switchover.group_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'group % is unknown in this schema: check the name (coordinator status '
                        'lists the groups)', quote_literal(request_switchover.group_name)
              USING ERRCODE = 'LT004';
    END IF;
    IF office.leader IS NULL THEN
        RAISE EXCEPTION 'nobody leads group %: there is nothing to hand over; an instance takes '
                        'office on its own once it runs', quote_literal(request_switchover.group_name)
              USING ERRCODE = 'LT004';
    END IF;
    IF request_switchover.target = office.leader THEN
        RAISE EXCEPTION '% already leads group %: name another member, or leave out the target',
                        quote_literal(office.leader), quote_literal(request_switchover.group_name)
              USING ERRCODE = 'LT004';
    END IF;
    SELECT count(*) INTO others
      FROM coordinator.heartbeats AS h
     WHERE h.group_name = request_switchover.group_name AND h.instance_id <> office.leader
       AND h.heartbeat_at > now() - office.ttl
       AND (request_switchover.target IS NULL OR h.instance_id = request_switchover.target);
    IF others = 0 THEN
        IF request_switchover.target IS NOT NULL THEN
            RAISE EXCEPTION '% is not a live member of group % (no heartbeat within its ttl): '
                            'name one that coordinator status --members shows as live',
                            quote_literal(request_switchover.target),
                            quote_literal(request_switchover.group_name)
                  USING ERRCODE = 'LT004';
        END IF;
        RAISE EXCEPTION 'group % has no live member but its leader %: start another instance '
                        'first, or nobody could take over',
                        quote_literal(request_switchover.group_name), quote_literal(office.leader)
              USING ERRCODE = 'LT004';
    END IF;
    RETURN QUERY
    WITH request AS (
        INSERT INTO coordinator.switchovers AS s
               (group_name, term, from_instance, target, expires_at)
        VALUES (request_switchover.group_name, office.term, office.leader,
                request_switchover.target, clock_timestamp() + office.ttl)
        ON CONFLICT (group_name) DO UPDATE
           SET term = excluded.term, from_instance = excluded.from_instance,
               target = excluded.target, requested_by = excluded.requested_by,
               requested_at = excluded.requested_at, expires_at = excluded.expires_at
        RETURNING s.group_name, s.term, s.from_instance, s.target, s.expires_at
    )
    SELECT request.term, request.from_instance, request.expires_at
      FROM request,
           LATERAL pg_notify(
               (SELECT c.relnamespace::regnamespace::text FROM pg_class AS c
                 WHERE c.oid = 'coordinator.leaders'::regclass) || '_switchover',
               json_build_object('group', request.group_name, 'term', request.term,
                                 'instance_id', request.from_instance,
                                 'target', request.target)::text) AS notified;
END
$$;

-- take_office as in version 4 (and 5), and: refused (LT003) to anyone a fresh
-- switchover does not name; consumes the request of every group taken.
CREATE OR REPLACE FUNCTION coordinator.take_office(
    group_names text[], instance_id text, host text, pid integer, ttl_s float8)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    refused text[];
    reserved text;
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
    -- A switchover in progress reserves the group for its target (or, without
    -- a target, for anyone but the leader that hands over) until it expires.
    SELECT string_agg(format('%s (for %s)', s.group_name,
                             coalesce(quote_literal(s.target),
                                      'anyone but ' || quote_literal(s.from_instance))),
                      ', ' ORDER BY s.group_name)
      INTO reserved
      FROM coordinator.switchovers AS s
     WHERE s.group_name = ANY(take_office.group_names)
       AND s.expires_at > clock_timestamp()
       AND CASE WHEN s.target IS NULL THEN s.from_instance = take_office.instance_id
                ELSE s.target <> take_office.instance_id END;
    IF reserved IS NOT NULL THEN
        RAISE EXCEPTION 'a switchover reserves group(s) %', reserved
              USING ERRCODE = 'LT003',
                    HINT = 'unlock and wait: the switchover''s target takes office, or the '
                           'reservation expires one ttl after the hand-over';
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
    ), handed_over AS (
        DELETE FROM coordinator.switchovers AS s
         WHERE s.group_name IN (SELECT office.group_name FROM office)
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


-- resign as in version 4 (and 5), and: a resignation for a switchover records
-- reason 'switchover to <target>' and starts the request's last ttl (so does
-- any resignation of the term while the request is fresh).
CREATE OR REPLACE FUNCTION coordinator.resign(group_name text, instance_id text, term bigint, reason text)
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
    ), handing_over AS (
        UPDATE coordinator.switchovers AS s
           SET expires_at = clock_timestamp() + l.ttl
          FROM cleared, coordinator.leaders AS l
         WHERE s.group_name = resign.group_name AND s.term = cleared.term
           AND l.group_name = s.group_name
           -- The leader acted on it while it was fresh, or it still is; a
           -- lapsed request is never revived by a later resignation.
           AND (resign.reason = 'switchover' OR s.expires_at > clock_timestamp())
        RETURNING s.target
    ), beat AS (
        UPDATE coordinator.heartbeats AS h
           SET role = 'follower', term = NULL, backend_pid = NULL, heartbeat_at = now()
          FROM cleared
         WHERE h.group_name = resign.group_name AND h.instance_id = resign.instance_id
    )
    SELECT cleared.term
      FROM cleared, LATERAL coordinator.record_event(resign.group_name, 'resigned', cleared.term,
                                                     resign.instance_id,
                                                     CASE WHEN resign.reason = 'switchover'
                                                          THEN coalesce((SELECT 'switchover to '
                                                                         || h.target
                                                                           FROM handing_over AS h),
                                                                        resign.reason)
                                                          ELSE resign.reason END) AS recorded
$$;


REVOKE ALL ON FUNCTION coordinator.request_switchover(text, text) FROM PUBLIC;

COMMENT ON FUNCTION coordinator.request_switchover(text, text) IS
    'Ask the live leader of a group to hand over, to target or (NULL) to any other live member '
    '(SQLSTATE LT004 with the cause if it cannot).';
