-- pg-coordinator schema, version 8: one heartbeat row per shared session.
--
-- In poll mode one session of a process holds the locks of all the groups
-- it leads, and they live and die with it. Version 7 still refreshed one
-- heartbeat row per group led and one member row per group followed, every
-- interval: with 100,000 groups and 50 processes that is millions of row
-- updates a minute, for a fact that is one per process. Here a shared
-- session keeps one row in coordinator.sessions, refreshed by one statement
-- per heartbeat interval, and that row is the liveness of every seat the
-- session holds: a leader row whose holder and backend match a session row
-- is as fresh as that row (or as its own heartbeat row, whichever is newer;
-- a blocking-mode leader has no session row and keeps its per-group beat).
--
-- Two monitors, one cheap and one complete:
--
-- * fence_stale_sessions, run by every instance in poll mode: a session
--   whose row is older than its ttl is terminated, once, whatever it holds,
--   and each of its leaderships gets a "fenced" event; the row of a session
--   whose backend is gone is deleted. It reads the sessions table (one row
--   per process), never the leader table at rest.
-- * fence_stale_leaders, per group (blocking-mode leaders, vacant rows),
--   as before but judging shared seats by their session. In poll mode only
--   the elected monitor runs it: the instance with the oldest live session.
--   Two monitors at once are harmless (fencing is guarded), so the election
--   needs no lock: it is a read of this table.

CREATE TABLE coordinator.sessions (
    instance_id     text        PRIMARY KEY,
    backend_pid     integer     NOT NULL,
    host            text,
    pid             integer,
    -- Fair spreading counts the live sessions that run the same list of
    -- groups: group_set is the md5 of its names, sorted, one per line.
    group_count     integer     NOT NULL,
    group_set       text        NOT NULL,
    ttl             interval    NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    -- Set when the monitor terminated this session's backend: it is
    -- terminated once, whoever else looks while it ends.
    fenced_at       timestamptz
) WITH (fillfactor = 50);
-- No index on heartbeat_at: every beat is then a HOT update on a page with room.

-- Is this backend still the session of that instance? The pid alone could
-- have been reused; the application name names the instance
-- (coordinator:<instance_id>, cut to 63 bytes as the server does).
CREATE FUNCTION coordinator.session_alive(backend_pid integer, instance_id text)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_stat_activity AS a
         WHERE a.pid = session_alive.backend_pid
           AND a.application_name = left('coordinator:' || session_alive.instance_id, 63))
$$;

-- The heartbeat of a shared session, for everything it does: the row of the
-- calling backend is written (created on the first beat, taken over from a
-- previous session of the same instance whose backend is gone), and the
-- seats of group_names/terms that this backend no longer holds are returned:
-- those whose leader row does not name this instance, this term and this
-- backend. Only the lost are returned: at rest the answer is empty, however
-- many seats were confirmed. The caller passes a slice of its seats each
-- beat (each one once a ttl: probing 2,000 leader rows per beat was most of
-- the cost at rest); a NULL row says the session row was not written, and
-- then every seat is lost. The locks themselves are not
-- looked up in pg_locks (a copy of the whole lock table, 100,000 entries at
-- this scale): a session-level advisory lock lasts as long as its backend and
-- only that backend can release it, and take_office checked it was held. If
-- the row belongs to another live backend of this instance, nothing is
-- written and the NULL row is returned.
CREATE FUNCTION coordinator.session_heartbeat(
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
              AND l.term = t.term AND l.backend_pid = pg_backend_pid())
$$;

-- Resign many seats of the calling backend at once (a process handing over
-- its surplus, or stopping): version 6's resign for each (a switchover's
-- resignation starts its request's last ttl and names the target), with
-- pg_locks read once. Only seats whose lock this backend holds, for this instance and
-- term, are cleared; the session's lock_timeout bounds the wait for fenced
-- transactions (lock_not_available: the caller resigns one by one).
CREATE FUNCTION coordinator.resign_seats(
    group_names text[], instance_id text, terms bigint[], reasons text[])
RETURNS TABLE (group_name text, resigned_term bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH mine AS MATERIALIZED (
        SELECT * FROM coordinator.my_locks()
    ), asked AS (
        SELECT * FROM unnest(resign_seats.group_names, resign_seats.terms, resign_seats.reasons)
                   AS t(group_name, term, reason)
    ), cleared AS (
        UPDATE coordinator.leaders AS l
           SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
          FROM asked
         WHERE l.group_name = asked.group_name AND l.holder = resign_seats.instance_id
           AND l.term = asked.term
           AND (l.lock_namespace::oid, l.lock_key::oid) IN (SELECT * FROM mine)
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

-- An instance that stops deletes its session row (and, as before, its
-- follower rows).
CREATE FUNCTION coordinator.close_session(instance_id text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM coordinator.sessions AS s
     WHERE s.instance_id = close_session.instance_id
$$;

-- The cheap monitor: every session whose row is older than its ttl on the
-- database clock, while its backend is still that instance's, is terminated
-- once (fenced_at says so to every later look); every leadership it held
-- gets a "fenced" event. A stale row whose backend is gone is deleted (its
-- groups are free; whoever takes them writes a new term, and the complete
-- monitor marks the rest vacant). Rows being written right now are skipped:
-- a session that is heartbeating is alive.
CREATE FUNCTION coordinator.fence_stale_sessions(fencer text)
RETURNS TABLE (group_name text, kind text, term bigint, instance_id text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH stale AS MATERIALIZED (
        SELECT s.instance_id, s.backend_pid, s.fenced_at,
               extract(epoch FROM now() - s.heartbeat_at)::float8 AS heartbeat_age_s,
               coordinator.session_alive(s.backend_pid, s.instance_id) AS alive
          FROM coordinator.sessions AS s
         WHERE s.heartbeat_at < now() - s.ttl
           FOR UPDATE OF s SKIP LOCKED
    ), terminated AS MATERIALIZED (
        SELECT stale.*, pg_terminate_backend(stale.backend_pid) AS ok
          FROM stale
         WHERE stale.alive AND stale.fenced_at IS NULL
    ), marked AS (
        UPDATE coordinator.sessions AS s
           SET fenced_at = now()
          FROM terminated
         WHERE s.instance_id = terminated.instance_id AND terminated.ok
    ), gone AS (
        DELETE FROM coordinator.sessions AS s
         USING stale
         WHERE s.instance_id = stale.instance_id AND s.backend_pid = stale.backend_pid
           AND NOT stale.alive
    ), history AS (
        SELECT l.group_name, 'fenced' AS kind, l.term, l.holder,
               format('session heartbeat %s s old, backend %s terminated by %s',
                      round(terminated.heartbeat_age_s::numeric, 3), terminated.backend_pid,
                      fencer) AS reason
          FROM terminated
          JOIN coordinator.leaders AS l
            ON l.holder = terminated.instance_id AND l.backend_pid = terminated.backend_pid
         WHERE terminated.ok
    )
    SELECT history.group_name, history.kind, history.term, history.holder
      FROM history, LATERAL coordinator.record_event(history.group_name, history.kind,
                                                     history.term, history.holder,
                                                     history.reason) AS recorded
$$;

-- The complete monitor of version 5, judging each seat by seat liveness.
CREATE OR REPLACE FUNCTION coordinator.fence_stale_leaders(fencer text)
RETURNS TABLE (group_name text, kind text, term bigint, instance_id text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH stale AS (
        SELECT l.group_name, l.term, l.holder, l.backend_pid,
               extract(epoch FROM now() - beat.at)::float8 AS heartbeat_age_s,
               coordinator.lock_holder(l.lock_namespace, l.lock_key) AS lock_pid
          FROM coordinator.leaders AS l
          LEFT JOIN coordinator.heartbeats AS h
                 ON h.group_name = l.group_name AND h.instance_id = l.holder AND h.term = l.term
          LEFT JOIN coordinator.sessions AS s
                 ON s.instance_id = l.holder AND s.backend_pid = l.backend_pid
         CROSS JOIN LATERAL (SELECT greatest(h.heartbeat_at, s.heartbeat_at) AS at) AS beat
         WHERE l.holder IS NOT NULL
           AND (beat.at IS NULL OR beat.at < now() - l.ttl)
           -- A row locked below is re-read in its newest version; if a next
           -- leader took office meanwhile, it joins no heartbeat row of its
           -- own here and would look stale. No leader is stale before a ttl
           -- has passed since it took office, so this spares it.
           AND l.acquired_at < now() - l.ttl
           FOR SHARE OF l SKIP LOCKED
    ), terminated AS MATERIALIZED (
        SELECT doomed.backend_pid, pg_terminate_backend(doomed.backend_pid) AS ok
          FROM (SELECT DISTINCT stale.backend_pid FROM stale
                 WHERE stale.lock_pid = stale.backend_pid) AS doomed
    ), fenced AS (
        SELECT stale.* FROM stale JOIN terminated USING (backend_pid) WHERE terminated.ok
    ), vacated AS (
        UPDATE coordinator.leaders AS l
           SET holder = NULL, holder_host = NULL, holder_pid = NULL, backend_pid = NULL
          FROM stale
         WHERE l.group_name = stale.group_name AND l.term = stale.term
           AND stale.lock_pid IS NULL
        RETURNING l.group_name, stale.term, stale.holder, stale.heartbeat_age_s
    ), history AS (
        SELECT fenced.group_name, 'fenced' AS kind, fenced.term, fenced.holder,
               format('heartbeat %s s old, backend %s terminated by %s',
                      round(fenced.heartbeat_age_s::numeric, 3), fenced.backend_pid,
                      fencer) AS reason
          FROM fenced
        UNION ALL
        SELECT vacated.group_name, 'expired', vacated.term, vacated.holder,
               format('heartbeat %s s old and no lock held',
                      round(vacated.heartbeat_age_s::numeric, 3))
          FROM vacated
    )
    SELECT history.group_name, history.kind, history.term, history.holder
      FROM history, LATERAL coordinator.record_event(history.group_name, history.kind,
                                                     history.term, history.holder,
                                                     history.reason) AS recorded
$$;

-- Who leads, for readers: version 4's view, with seat liveness.
CREATE OR REPLACE VIEW coordinator.leader_status AS
WITH locks AS MATERIALIZED (
    SELECT k.classid, k.objid, k.pid
      FROM pg_catalog.pg_locks AS k
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
       AND k.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
), holders AS MATERIALIZED (
    SELECT a.pid, a.usename::text AS usename, a.application_name,
           a.application_name LIKE 'coordinator:%'
           AND has_function_privilege(
                   a.usesysid,
                   'coordinator.take_office(text[], text, text, integer, double precision)',
                   'EXECUTE') AS is_coordinator
      FROM pg_catalog.pg_stat_activity AS a
     WHERE a.pid IN (SELECT pid FROM locks)
)
SELECT
    l.group_name,
    CASE WHEN NOT stale.is_stale THEN l.holder END        AS leader,
    l.holder,
    l.term,
    l.acquired_at,
    beat.heartbeat_at,
    extract(epoch FROM now() - beat.heartbeat_at)::float8 AS heartbeat_age_s,
    extract(epoch FROM l.ttl)::float8                      AS ttl_s,
    lock.pid                                               AS lock_pid,
    lock.pid IS NOT NULL                                   AS lock_held,
    stale.is_stale,
    squat.pid                                              AS squatter_pid,
    squat.usename                                          AS squatter_user,
    squat.application_name                                 AS squatter_application
FROM coordinator.leaders AS l
LEFT JOIN coordinator.heartbeats AS h
       ON h.group_name = l.group_name AND h.instance_id = l.holder AND h.term = l.term
LEFT JOIN coordinator.sessions AS s
       ON s.instance_id = l.holder AND s.backend_pid = l.backend_pid
LEFT JOIN locks AS lock
       ON lock.classid = l.lock_namespace::oid AND lock.objid = l.lock_key::oid
LEFT JOIN holders AS squat
       ON squat.pid = lock.pid AND lock.pid IS DISTINCT FROM l.backend_pid
      AND NOT squat.is_coordinator
CROSS JOIN LATERAL (SELECT greatest(h.heartbeat_at, s.heartbeat_at) AS heartbeat_at) AS beat
CROSS JOIN LATERAL (
    SELECT l.holder IS NOT NULL AND (
               beat.heartbeat_at IS NULL
            OR now() - beat.heartbeat_at > l.ttl
            OR lock.pid IS DISTINCT FROM l.backend_pid
           ) AS is_stale
) AS stale;

-- Sharded NOTIFY: a change that may free a group (resigned, fenced,
-- expired, lost) is also announced on the channel of its shard,
-- <schema>_shard_<lock key mod 1024>. A poll-mode process listens only to
-- the shards of the groups it campaigns for (see coordinator/_candidates.py),
-- so a mass hand-over is not parsed by every process. Every change is still
-- announced on <schema>_leadership, for watchers and earlier releases.
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
                    SELECT '_shard_' || (l.lock_key % 1024) FROM coordinator.leaders AS l
                     WHERE l.group_name = record_event.group_name
                       AND record_event.kind IN ('resigned', 'fenced', 'expired', 'lost')
                   ) AS channel;
    INSERT INTO coordinator.events (group_name, kind, term, instance_id, reason)
    VALUES (record_event.group_name, record_event.kind, record_event.term,
            record_event.instance_id, record_event.reason);
$$;

-- request_switchover as in version 6, with poll-mode members counted by
-- their session row.
CREATE OR REPLACE FUNCTION coordinator.request_switchover(group_name text, target text)
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
      FROM (SELECT h.instance_id FROM coordinator.heartbeats AS h
             WHERE h.group_name = request_switchover.group_name
               AND h.heartbeat_at > now() - office.ttl
            UNION
            -- A poll-mode member writes no row per group: a live session that
            -- runs the same list of groups as the leader's is one.
            SELECT s.instance_id FROM coordinator.sessions AS s
              JOIN coordinator.sessions AS mine
                ON mine.instance_id = office.leader AND mine.group_set = s.group_set
             WHERE s.heartbeat_at > now() - s.ttl) AS m
     WHERE m.instance_id <> office.leader
       AND (request_switchover.target IS NULL OR m.instance_id = request_switchover.target);
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

REVOKE ALL ON FUNCTION
    coordinator.session_alive(integer, text),
    coordinator.session_heartbeat(text, text, integer, integer, text, float8, text[], bigint[]),
    coordinator.resign_seats(text[], text, bigint[], text[]),
    coordinator.close_session(text),
    coordinator.fence_stale_sessions(text)
FROM PUBLIC;
