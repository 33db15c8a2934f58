-- pg-coordinator schema, version 9: a fleet with many groups starts and
-- recovers in bulk.
--
-- * Registration by group set. Every instance registers its groups at
--   start. Version 8 checked that by joining all of them to the leader table
--   (0.5 s of server time for 100,000 names), and a fleet started together
--   on a fresh database registered them all at once: fifty instances each
--   inserting and checking 100,000 rows, one after another on the same
--   unique keys, for minutes. Now a registered list of groups is recorded
--   as one row in coordinator.group_sets (the md5 of its names, sorted, one
--   per line, as in coordinator.sessions), so a starting instance reads one
--   row; and registrations take turns (a transaction-level advisory lock),
--   so while one instance registers a list, the others wait and then find it.
-- * Fewer NOTIFY channels. A change that may free a group is announced on
--   <schema>_handover_<lock key mod 64> instead of <schema>_shard_<lock key
--   mod 1024>. A listening backend checks every notification of the server
--   against its channels one by one, and a poll-mode session listened to the
--   shards of all its groups: 900-odd channels for 2,000 groups, 3.4 us of
--   server time per notification and session. Earlier releases, still
--   listening to the shard channels during a rolling upgrade, hear no
--   hand-over and find free groups at their next poll.
-- * record_lost_all: the lost leaderships of a session, recorded in one
--   statement that copies the lock table once. record_lost looked the lock
--   up per group, and at 100,000 locks each look copies the whole table:
--   44 s for one process's 2,000 groups. It stays, for earlier releases, as
--   record_lost_all of one group.

CREATE TABLE coordinator.group_sets (
    group_set       text        NOT NULL,
    lock_namespace  integer     NOT NULL,
    group_count     integer     NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_set, lock_namespace)
);

-- Register a list of groups, unless it is registered already (false then).
-- The lock is key -1 of the namespace: group keys are never negative. The
-- caller checks the stored keys for collisions in the same transaction and
-- rolls it back, group set row and all, when one is found.
CREATE FUNCTION coordinator.register_group_set(
    group_set text, group_names text[], lock_keys integer[], lock_namespace integer, ttl_s float8)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(register_group_set.lock_namespace, -1);
    IF EXISTS (SELECT 1 FROM coordinator.group_sets AS s
                WHERE s.group_set = register_group_set.group_set
                  AND s.lock_namespace = register_group_set.lock_namespace) THEN
        RETURN false;
    END IF;
    PERFORM coordinator.register_groups(group_names, lock_keys, lock_namespace, ttl_s);
    INSERT INTO coordinator.group_sets (group_set, lock_namespace, group_count)
    VALUES (register_group_set.group_set, register_group_set.lock_namespace,
            cardinality(group_names));
    RETURN true;
END
$$;

-- record_lost for many leaderships at once, with the same rule: refused
-- (nothing written) for a term whose recorded backend still holds the lock.
CREATE FUNCTION coordinator.record_lost_all(
    group_names text[], instance_id text, terms bigint[], reasons text[])
RETURNS TABLE (group_name text, lost_term bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH lost AS (
        SELECT * FROM unnest(group_names, terms, reasons) AS t(group_name, term, reason)
    ), held AS MATERIALIZED (
        SELECT k.classid, k.objid, k.pid
          FROM pg_locks AS k
         WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
           AND k.database = (SELECT d.oid FROM pg_database AS d
                              WHERE d.datname = current_database())
    ), ended AS (
        -- Hash joins: the lock table is read once, whatever the number of groups.
        SELECT lost.group_name, lost.term, lost.reason
          FROM lost
          LEFT JOIN coordinator.leaders AS l
            ON l.group_name = lost.group_name
           AND l.holder = record_lost_all.instance_id AND l.term = lost.term
          LEFT JOIN held AS k
            ON k.classid = l.lock_namespace::oid AND k.objid = l.lock_key::oid
           AND k.pid = l.backend_pid
         WHERE k.pid IS NULL
    ), beat AS (
        UPDATE coordinator.heartbeats AS h
           SET role = 'follower', term = NULL, backend_pid = NULL
          FROM ended
         WHERE h.group_name = ended.group_name AND h.instance_id = record_lost_all.instance_id
           AND h.term = ended.term
    )
    SELECT ended.group_name, ended.term
      FROM ended, LATERAL coordinator.record_event(ended.group_name, 'lost', ended.term,
                                                   record_lost_all.instance_id,
                                                   ended.reason) AS recorded
$$;

-- The one-group form, for earlier releases, is now the same rule.
CREATE OR REPLACE FUNCTION coordinator.record_lost(
    group_name text, instance_id text, term bigint, reason text)
RETURNS TABLE (lost_term bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT recorded.lost_term
      FROM coordinator.record_lost_all(ARRAY[record_lost.group_name], record_lost.instance_id,
                                       ARRAY[record_lost.term], ARRAY[record_lost.reason])
           AS recorded
$$;

CREATE OR REPLACE FUNCTION coordinator.record_event(
    group_name text, kind text, term bigint, instance_id text, reason text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- Not the last statement, so every row (every channel) is notified.
    SELECT pg_notify(here.schema || channel.suffix,
                     json_build_object('group', record_event.group_name,
                                       'kind', record_event.kind, 'term', record_event.term,
                                       'instance_id', record_event.instance_id,
                                       'reason', record_event.reason)::text)
      FROM (SELECT c.relnamespace::regnamespace::text AS schema FROM pg_class AS c
             WHERE c.oid = 'coordinator.leaders'::regclass) AS here,
           LATERAL (SELECT '_leadership' AS suffix
                    UNION ALL
                    SELECT '_handover_' || (l.lock_key % 64) FROM coordinator.leaders AS l
                     WHERE l.group_name = record_event.group_name
                       AND record_event.kind IN ('resigned', 'fenced', 'expired', 'lost')
                   ) AS channel;
    INSERT INTO coordinator.events (group_name, kind, term, instance_id, reason)
    VALUES (record_event.group_name, record_event.kind, record_event.term,
            record_event.instance_id, record_event.reason);
$$;

REVOKE ALL ON FUNCTION
    coordinator.register_group_set(text, text[], integer[], integer, float8),
    coordinator.record_lost_all(text[], text, bigint[], text[])
FROM PUBLIC;
