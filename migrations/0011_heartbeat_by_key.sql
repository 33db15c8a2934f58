-- pg-coordinator schema, version 11: a poll-mode session's heartbeat costs
-- the same per seat however many seats it has.
--
-- session_heartbeat answers which of the caller's seats it no longer holds.
-- Version 10 asked that as a NOT EXISTS, which the planner turns into a join;
-- taking the caller's leader rows for one, it chose a nested loop that
-- compared every seat with every leader row: 260 ms for a session of 2,000
-- seats (4 million comparisons), at every heartbeat of every process. Fifty
-- processes sharing 100,000 groups spent a tenth of a core on it at rest. A
-- scalar subquery is not turned into a join: each seat is one look in the
-- leader table's primary key, 5 ms for the same session.
--
-- The signature and the grants are unchanged: no `coordinator grant` is
-- needed, and earlier releases call the same function.

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
       -- A scalar subquery: one look by key per seat, whatever the statistics say.
       AND (SELECT l.term FROM coordinator.leaders AS l
             WHERE l.group_name = t.group_name AND l.holder = session_heartbeat.instance_id
               AND l.backend_pid = pg_backend_pid()) IS DISTINCT FROM t.term
$$;
