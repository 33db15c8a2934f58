-- pg-coordinator schema, version 1.
--
-- The schema name is written as "coordinator" here; the built-in runner
-- (`coordinator migrate --schema NAME`) substitutes another name when asked.
-- Any other migration tool can apply this file as it is.

CREATE SCHEMA IF NOT EXISTS coordinator;

-- One row per group. It changes only when leadership changes (taking office,
-- resigning, expiry), never on a heartbeat: fenced transactions hold
-- FOR SHARE on this row, and liveness must not wait for them.
CREATE TABLE coordinator.leaders (
    group_name      text        PRIMARY KEY
                                CHECK (group_name <> '' AND octet_length(group_name) <= 200),
    lock_namespace  integer     NOT NULL,
    lock_key        integer     NOT NULL,
    term            bigint      NOT NULL DEFAULT 0 CHECK (term >= 0),
    holder          text,
    holder_host     text,
    holder_pid      integer,
    backend_pid     integer,
    acquired_at     timestamptz,
    ttl             interval    NOT NULL DEFAULT interval '15 seconds',
    -- Two group names whose keys collide must never share a lock silently.
    CONSTRAINT leaders_lock_key_unique UNIQUE (lock_namespace, lock_key)
);

-- One row per instance and group: the liveness of every member.
-- The leader's row, matched on holder and term, is what the monitor judges.
CREATE TABLE coordinator.heartbeats (
    group_name      text        NOT NULL REFERENCES coordinator.leaders (group_name) ON DELETE CASCADE,
    instance_id     text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('leader', 'follower')),
    term            bigint,
    host            text,
    pid             integer,
    backend_pid     integer,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, instance_id)
);
CREATE INDEX heartbeats_heartbeat_at_idx ON coordinator.heartbeats (heartbeat_at);

-- Append-only history of leadership, pruned by age.
CREATE TABLE coordinator.events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    group_name      text        NOT NULL,
    kind            text        NOT NULL
                                CHECK (kind IN ('elected', 'resigned', 'lost', 'fenced', 'expired')),
    term            bigint,
    instance_id     text,
    reason          text
);
CREATE INDEX events_group_at_idx ON coordinator.events (group_name, at);
CREATE INDEX events_at_idx ON coordinator.events (at);

-- The truth for readers. `leader` is set only while the recorded holder's
-- backend still holds the advisory lock and its heartbeat is younger than the
-- ttl, judged on the database clock.
CREATE VIEW coordinator.leader_status AS
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
    stale.is_stale
FROM coordinator.leaders AS l
LEFT JOIN coordinator.heartbeats AS h
       ON h.group_name = l.group_name AND h.instance_id = l.holder AND h.term = l.term
LEFT JOIN LATERAL (
    SELECT k.pid
    FROM pg_catalog.pg_locks AS k
    WHERE k.locktype = 'advisory'
      AND k.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
      AND k.classid = l.lock_namespace::oid
      AND k.objid = l.lock_key::oid
      AND k.objsubid = 2
      AND k.granted
    LIMIT 1
) AS lock ON true
CROSS JOIN LATERAL (
    SELECT l.holder IS NOT NULL AND (
               h.heartbeat_at IS NULL
            OR now() - h.heartbeat_at > l.ttl
            OR lock.pid IS DISTINCT FROM l.backend_pid
           ) AS is_stale
) AS stale;
