-- pg-coordinator schema, version 12: a poll-mode session tries the groups'
-- locks and takes office in one statement.
--
-- A poll tried the locks of the groups it wanted in one statement and took
-- office for those granted in a second, take_office, which checks in
-- pg_locks that the caller holds each lock. Reading pg_locks copies the
-- server's whole lock table: 50 ms with 100,000 locks held, whether the poll
-- won one group or 2,000, in every process that won any. When a process of
-- fifty sharing 100,000 groups dies, the others each take a few of its
-- groups, and those copies were most of the time until all were led again.
--
-- take_free_offices(groups, ...) tries each group's lock itself, with the key
-- from the group's own leader row, and starts the terms of those granted,
-- just as campaign() does for a blocking follower: a lock granted in this
-- very statement needs no look in pg_locks. When the terms cannot start
-- together because one of them is refused (a switchover reserves the group,
-- fenced transactions hold its leader row past the session's lock_timeout,
-- its term would not fit in a bigint), each group is tried on its own, and a
-- refused one comes back without a term but with the refusal's SQLSTATE and
-- message, its lock released: the session holds the lock of exactly the
-- groups it has a term for. Session-level advisory locks outlive a
-- rolled-back statement; that is why it releases them itself. Any other
-- error releases every lock it was granted and is raised.
--
-- The caller passes only groups whose locks it does not hold: advisory locks
-- stack, and a lock tried twice would need two unlocks. A group without a
-- leader row (a server that lost recent commits) comes back without a term,
-- and nothing is locked or written for it.
--
-- Run `coordinator grant` again after migrating: the runtime role needs
-- EXECUTE on take_free_offices.

CREATE FUNCTION coordinator.take_free_offices(
    group_names text[], instance_id text, host text, pid integer, ttl_s float8)
RETURNS TABLE (group_name text, term bigint, acquired_at timestamptz, ended_backends integer[],
               refused_sqlstate text, refusal text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_rows integer;
    granted text[];
    namespaces integer[];
    keys integer[];
    one record;
BEGIN
    -- Materialized: a lock is tried only for a leader row of a group asked
    -- for, never while the planner scans rows it will not return.
    WITH asked AS MATERIALIZED (
        SELECT l.group_name, l.lock_namespace, l.lock_key
          FROM coordinator.leaders AS l
         WHERE l.group_name = ANY(take_free_offices.group_names)
    ), won AS (
        SELECT a.group_name, a.lock_namespace, a.lock_key
          FROM asked AS a
         WHERE pg_try_advisory_lock(a.lock_namespace, a.lock_key)
    )
    SELECT (SELECT count(*) FROM asked), array_agg(w.group_name),
           array_agg(w.lock_namespace), array_agg(w.lock_key)
      INTO found_rows, granted, namespaces, keys
      FROM won AS w;
    IF found_rows < cardinality(take_free_offices.group_names) THEN
        RETURN QUERY
            SELECT g.name, NULL::bigint, NULL::timestamptz, NULL::integer[], NULL::text, NULL::text
              FROM unnest(take_free_offices.group_names) AS g(name)
             WHERE (SELECT true FROM coordinator.leaders AS l
                     WHERE l.group_name = g.name) IS NULL;
    END IF;
    IF granted IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        BEGIN
            RETURN QUERY
                SELECT t.*, NULL::text, NULL::text
                  FROM coordinator.start_terms(granted, take_free_offices.instance_id,
                                               take_free_offices.host, take_free_offices.pid,
                                               take_free_offices.ttl_s) AS t;
            RETURN;
        EXCEPTION WHEN lock_not_available OR numeric_value_out_of_range
                    OR SQLSTATE 'LT003' THEN
            NULL;  -- one of them is refused: each on its own, below
        END;
        FOR one IN SELECT * FROM unnest(granted, namespaces, keys) AS u(name, namespace, key)
        LOOP
            BEGIN
                RETURN QUERY
                    SELECT t.*, NULL::text, NULL::text
                      FROM coordinator.start_terms(ARRAY[one.name], take_free_offices.instance_id,
                                                   take_free_offices.host, take_free_offices.pid,
                                                   take_free_offices.ttl_s) AS t;
            EXCEPTION WHEN lock_not_available OR numeric_value_out_of_range
                        OR SQLSTATE 'LT003' THEN
                PERFORM pg_advisory_unlock(one.namespace, one.key);
                RETURN QUERY SELECT one.name, NULL::bigint, NULL::timestamptz, NULL::integer[],
                                    SQLSTATE, SQLERRM;
            END;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(u.namespace, u.key)
           FROM unnest(namespaces, keys) AS u(namespace, key);
        RAISE;
    END;
END
$$;

REVOKE ALL ON FUNCTION coordinator.take_free_offices(text[], text, text, integer, float8)
FROM PUBLIC;

COMMENT ON FUNCTION coordinator.take_free_offices(text[], text, text, integer, float8) IS
    'Try the advisory lock of each group and take office for those granted, in one '
    'statement; a group without a leader row comes back without a term, a refused one '
    'without a term but with the refusal, its lock released. On any other error every '
    'lock granted is released first.';
