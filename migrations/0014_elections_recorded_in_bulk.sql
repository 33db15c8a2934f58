-- pg-coordinator schema, version 14: a term's "elected" event is written
-- with the term, in the same statement, for every group at once.
--
-- start_terms (migration 0007) recorded each new term's event by calling
-- record_event once per group: a SQL function that is not inlined, so each
-- group paid a function call, the look-up of the schema's name and two
-- statements of its own. Taking office for 100,000 groups, 2,000 a
-- statement, took 3.6-3.9 s of server CPU; with the events inserted by one
-- INSERT over the terms started and the notifications sent from the
-- statement's own rows, 2.3 s (measured on a fresh database, 50 calls of
-- take_free_offices for 2,000 groups each, by the server's CPU time).
--
-- The events and their notifications are the same as before: one row in
-- events and one notification on <schema>_leadership with the payload
-- {group, kind, term, instance_id, reason} per term started, all in the
-- statement's transaction. Nothing else changes; the signature, the owner
-- and the grants stay, so no grant is needed again.

CREATE OR REPLACE FUNCTION coordinator.start_terms(
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
    ), recorded AS (
        INSERT INTO coordinator.events (group_name, kind, term, instance_id, reason)
        SELECT office.group_name, 'elected', office.term, start_terms.instance_id, NULL
          FROM office
    ), here AS (
        SELECT c.relnamespace::regnamespace::text AS schema FROM pg_class AS c
         WHERE c.oid = 'coordinator.leaders'::regclass
    )
    SELECT office.group_name, office.term, office.acquired_at, ended
      FROM office, here,
           LATERAL pg_notify(here.schema || '_leadership',
                             json_build_object('group', office.group_name, 'kind', 'elected',
                                               'term', office.term,
                                               'instance_id', start_terms.instance_id,
                                               'reason', NULL)::text) AS notified;
END
$$;
