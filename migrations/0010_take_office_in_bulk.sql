-- pg-coordinator schema, version 10: taking office, resigning and beating for
-- many groups at once cost the same however many locks and seats there are.
--
-- take_office checks that the caller's backend holds the advisory lock of
-- every group it asks a term for. Version 7 looked each group up in
-- my_locks(), and the planner ran that look once per group: each one copies
-- the server's whole lock table. With 100,000 locks held on the server, a
-- poll-mode session taking office for 2,000 groups spent 10 s in the check
-- alone, holding its session (and so its heartbeat) all that time. Now the
-- caller's locks are copied once and joined by hash.
--
-- take_office plans each statement for its arguments (plan_cache_mode), so
-- the planner knows how many groups it is given: from the sixth call on, a
-- plan made for any array took 1 s at 10,000 locks and 10 s at 50,000, and
-- 0.3-0.5 s with it at every count. The refusal names at most ten of the
-- groups, and how many more.
--
-- resign_seats recognises the caller as the backend that took office for
-- each term (leaders.backend_pid), as resign_and_unlock does: a session gives
-- its lock up only by unlocking it or by ending. It joined the groups to a
-- copy of the lock table, which the planner took for one row: 188 s to
-- resign 500 groups of a session holding 50,000, then 2-7 s each time.
-- resign_seats and session_heartbeat also name their groups by key, beside
-- the join: the planner took a session's leader rows for two, and scanned
-- them all for each group (2.4 s to resign 500, 0.4 s to beat 700, now
-- 0.1 s and under 0.1 s).
--
-- The signature and the grants are unchanged: no `coordinator grant` is
-- needed, and earlier releases call the same function.

CREATE OR REPLACE FUNCTION coordinator.take_office(
    group_names text[], instance_id text, host text, pid integer, ttl_s float8)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    refused text[];
BEGIN
    WITH mine AS MATERIALIZED (
        SELECT * FROM coordinator.my_locks()
    )
    SELECT array_agg(g.name ORDER BY g.name) INTO refused
      FROM unnest(take_office.group_names) AS g(name)
      LEFT JOIN coordinator.leaders AS l ON l.group_name = g.name
      LEFT JOIN mine AS m
        ON m.lock_namespace = l.lock_namespace::oid AND m.lock_key = l.lock_key::oid
     WHERE m.lock_key IS NULL;
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'this session does not hold the advisory lock of group(s) %',
                        array_to_string(refused[1:10], ', ')
                        || CASE WHEN cardinality(refused) > 10
                                THEN format(' and %s more', cardinality(refused) - 10) ELSE '' END
              USING ERRCODE = 'LT002',
                    HINT = 'a term is issued only to the backend that holds the group''s lock: '
                           'take office after pg_advisory_lock(namespace, key) is granted';
    END IF;
    RETURN QUERY SELECT * FROM coordinator.start_terms(take_office.group_names,
                                                       take_office.instance_id, take_office.host,
                                                       take_office.pid, take_office.ttl_s);
END
$$;

-- Resign many seats of the calling backend at once: version 8's, recognising
-- the backend by the term it took office for, not by a look in pg_locks.
CREATE OR REPLACE FUNCTION coordinator.resign_seats(
    group_names text[], instance_id text, terms bigint[], reasons text[])
RETURNS TABLE (group_name text, resigned_term bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH asked AS (
        SELECT * FROM unnest(resign_seats.group_names, resign_seats.terms, resign_seats.reasons)
                   AS t(group_name, term, reason)
    ), cleared AS (
        UPDATE coordinator.leaders AS l
           SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
          FROM asked
         WHERE l.group_name = asked.group_name AND l.holder = resign_seats.instance_id
           AND l.term = asked.term AND l.backend_pid = pg_backend_pid()
           -- Repeated so that the rows are found by key, not by their holder.
           AND l.group_name = ANY(resign_seats.group_names)
        RETURNING l.group_name, l.term, asked.reason
    ), handing_over AS (
        UPDATE coordinator.switchovers AS s
           SET expires_at = clock_timestamp() + l.ttl
          FROM cleared, coordinator.leaders AS l
         WHERE s.group_name = cleared.group_name AND s.term = cleared.term
           AND l.group_name = s.group_name
           AND (cleared.reason = 'switchover' OR s.expires_at > clock_timestamp())
        RETURNING s.group_name, s.target
    ), beat AS (
        UPDATE coordinator.heartbeats AS h
           SET role = 'follower', term = NULL, backend_pid = NULL, heartbeat_at = now()
          FROM cleared
         WHERE h.group_name = cleared.group_name AND h.instance_id = resign_seats.instance_id
    )
    SELECT cleared.group_name, cleared.term
      FROM cleared
      LEFT JOIN handing_over USING (group_name),
           LATERAL coordinator.record_event(
               cleared.group_name, 'resigned', cleared.term, resign_seats.instance_id,
               CASE WHEN cleared.reason = 'switchover'
                    THEN coalesce('switchover to ' || handing_over.target, cleared.reason)
                    ELSE cleared.reason END) AS recorded
$$;

-- The session's heartbeat: version 8's, its seats looked up by key.
CREATE OR REPLACE FUNCTION coordinator.session_heartbeat(
    instance_id text, host text, pid integer, group_count integer, group_set text,
    ttl_s float8, group_names text[], terms bigint[])
RETURNS TABLE (lost_group text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH beat AS (
        INSERT INTO coordinator.sessions AS s
               (instance_id, backend_pid, host, pid, group_count, group_set, ttl)
        VALUES (session_heartbeat.instance_id, pg_backend_pid(), session_heartbeat.host,
                session_heartbeat.pid, session_heartbeat.group_count,
                session_heartbeat.group_set, make_interval(secs => session_heartbeat.ttl_s))
        ON CONFLICT (instance_id) DO UPDATE
           SET heartbeat_at = now(), backend_pid = excluded.backend_pid, host = excluded.host,
               pid = excluded.pid, group_count = excluded.group_count,
               group_set = excluded.group_set, ttl = excluded.ttl, fenced_at = NULL,
               started_at = CASE WHEN s.backend_pid = excluded.backend_pid THEN s.started_at
                                 ELSE now() END
         WHERE s.backend_pid = excluded.backend_pid
            OR NOT coordinator.session_alive(s.backend_pid, s.instance_id)
        RETURNING 1
    )
    SELECT NULL::text WHERE NOT EXISTS (SELECT 1 FROM beat)
    UNION ALL
    SELECT t.group_name
      FROM unnest(session_heartbeat.group_names, session_heartbeat.terms) AS t(group_name, term)
     WHERE EXISTS (SELECT 1 FROM beat)
       AND NOT EXISTS (
           SELECT 1 FROM coordinator.leaders AS l
            WHERE l.group_name = t.group_name AND l.holder = session_heartbeat.instance_id
              AND l.term = t.term AND l.backend_pid = pg_backend_pid()
              -- Repeated so that the rows are found by key, not by their holder.
              AND l.group_name = ANY(session_heartbeat.group_names))
$$;
