-- pg-coordinator schema, version 15: a group's next term is drawn durably
-- ahead of time, by its waiting followers, so that taking office needs no
-- WAL flush.
--
-- Until now every term was made durable by the commit that issued it
-- (start_terms forces synchronous_commit on): a crash of the server could
-- otherwise lose the term and issue it again, to someone else. That flush is
-- on the hand-over's path, between the grant of the lock and the new
-- leader's code: about 1 ms of a graceful hand-over's 3.5 ms here.
--
-- Now the number is made durable ahead of time, and taking office only uses
-- it. A blocking follower calls draw_term(group) before it waits for the
-- group's lock. Unless the group already has a number drawn that is above
-- its term, that draws the next one from the group's durable counter
-- (term_counters, committed synchronously) and notes it in drawn_terms.
-- When a backend takes office and every group it asks for has such a
-- number, start_terms issues those numbers and commits asynchronously;
-- otherwise it commits synchronously, as before, and issues the number
-- drawn if one was drawn above the term meanwhile (the draw of the leader
-- that just handed over often is), else greatest(term + 1, the timeline's
-- first term, counter + 1). The followers of a group share its one drawn
-- number, so terms still count 1, 2, 3 ... from one hand-over to the next.
--
-- Why a term is still never issued twice:
--
-- * Every number issued asynchronously was drawn from the counter by a
--   durable commit first, and every number issued synchronously is durable
--   itself (and above the counter). After a crash the counter is at least
--   every number that may have been issued and lost.
-- * A drawn number is used only while it is above the group's term, read
--   under the leader row's lock: once used, or once a higher term exists,
--   it is spent.
-- * drawn_terms is UNLOGGED: any crash of the server, and any crash
--   recovery, empties it, so no drawn number outlives a crash in which it
--   could have been issued and lost; after one, the next number is drawn
--   above the counter. A standby has none (unlogged tables are not
--   replicated), and a promoted standby starts a new timeline anyway.
--
-- What an asynchronous term changes: a crash within a few hundred
-- milliseconds of taking office (three wal_writer_delay, unless a later
-- commit flushed it first) may lose the term's row and its event. The
-- leader has already been told, and then loses its session with the crash;
-- its number is never issued again. Every fenced transaction of that term
-- that commits durably flushes the term before it (WAL is flushed in
-- order), so what a term did durably never outlives the record of the term.
--
-- draw_term(group) returns the group's number drawn ahead: the one noted,
-- while it is above the group's term (then it writes nothing, and the call
-- costs no flush), else a new one; NULL for a group without a leader row or
-- whose next term would not fit in a bigint. It is asked by blocking
-- followers only; poll mode takes office as before. rehearse_handover draws
-- too, so that a new lock session has planned that path as well before it
-- is needed.
--
-- Rolling upgrade from version 14: earlier releases never draw; the terms
-- they issue are durable and skip past the numbers drawn. Run
-- `coordinator grant` again after migrating: the runtime role needs
-- EXECUTE on draw_term.

-- The highest number drawn ahead for each group.
CREATE TABLE coordinator.term_counters (
    group_name text   PRIMARY KEY REFERENCES coordinator.leaders ON DELETE CASCADE,
    last_drawn bigint NOT NULL
);

-- Each group's number drawn since the server last started: emptied by any crash.
CREATE UNLOGGED TABLE coordinator.drawn_terms (
    group_name text   PRIMARY KEY,
    term       bigint NOT NULL
);

-- The calling transaction commits durably (synchronous_commit at least
-- 'on'), whatever the session, the role, the database or the server says.
-- No SET clause: the setting must outlast this call, to the commit.
CREATE FUNCTION coordinator.commit_durably()
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
    END IF;
END
$$;

-- The group's number drawn ahead, while it is above the group's term.
CREATE FUNCTION coordinator.term_drawn_ahead(for_group text)
RETURNS bigint
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.term FROM coordinator.drawn_terms AS d
      JOIN coordinator.leaders AS l ON l.group_name = d.group_name
     WHERE d.group_name = term_drawn_ahead.for_group AND d.term > l.term
$$;

CREATE FUNCTION coordinator.draw_term(for_group text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    drawn bigint := coordinator.term_drawn_ahead(draw_term.for_group);
BEGIN
    IF drawn IS NOT NULL OR NOT EXISTS (SELECT 1 FROM coordinator.leaders AS l
                                         WHERE l.group_name = draw_term.for_group) THEN
        RETURN drawn;
    END IF;
    -- The draw must survive a crash: never commit it asynchronously.
    PERFORM coordinator.commit_durably();
    -- Followers that draw at once take turns on the counter's row, and a
    -- later one takes the number the first drew: terms count on without gaps.
    INSERT INTO coordinator.term_counters (group_name, last_drawn)
    VALUES (draw_term.for_group, 0)
    ON CONFLICT (group_name) DO NOTHING;
    PERFORM 1 FROM coordinator.term_counters AS c
     WHERE c.group_name = draw_term.for_group FOR UPDATE;
    drawn := coordinator.term_drawn_ahead(draw_term.for_group);
    IF drawn IS NOT NULL THEN
        RETURN drawn;
    END IF;
    BEGIN
        UPDATE coordinator.term_counters AS c
           SET last_drawn = greatest(c.last_drawn, l.term,
                                     coordinator.timeline_first_term() - 1) + 1
          FROM coordinator.leaders AS l
         WHERE c.group_name = draw_term.for_group AND l.group_name = c.group_name
        RETURNING c.last_drawn INTO drawn;
    EXCEPTION WHEN numeric_value_out_of_range THEN
        -- The group's terms are exhausted: taking office says so.
        RETURN NULL;
    END;
    INSERT INTO coordinator.drawn_terms (group_name, term)
    VALUES (draw_term.for_group, drawn)
    ON CONFLICT (group_name) DO UPDATE SET term = excluded.term;
    RETURN drawn;
END
$$;

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
    ahead boolean;
    counted boolean;
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
    -- Groups that were never drawn for (poll mode) skip the look for a
    -- number drawn. With the leader rows held, their terms are the latest: a
    -- number drawn above every one of them is durable already, and nobody's yet.
    counted := EXISTS (SELECT 1 FROM coordinator.term_counters AS c
                        WHERE c.group_name = ANY(start_terms.group_names));
    ahead := counted
             AND (SELECT count(*) FROM coordinator.leaders AS l
                    JOIN coordinator.drawn_terms AS d ON d.group_name = l.group_name
                   WHERE l.group_name = ANY(start_terms.group_names) AND d.term > l.term)
                 = cardinality(start_terms.group_names);
    -- A term handed out must survive a crash: one that was not drawn ahead is
    -- never committed asynchronously.
    IF ahead THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    ELSE
        PERFORM coordinator.commit_durably();
    END IF;
    -- Times are clock_timestamp(): the row lock may have been waited for, and
    -- the first heartbeat must not be born old.
    RETURN QUERY
    WITH office AS (
        UPDATE coordinator.leaders AS l
           -- Decided again in this statement's snapshot, where a number drawn
           -- and the counter it was drawn from are seen together: a draw that
           -- committed since ahead was read is used (durably), not skipped.
           SET term = CASE WHEN counted
                           THEN coalesce((SELECT d.term FROM coordinator.drawn_terms AS d
                                           WHERE d.group_name = l.group_name AND d.term > l.term),
                                         greatest(l.term + 1, first_term,
                                                  coalesce((SELECT c.last_drawn
                                                              FROM coordinator.term_counters AS c
                                                             WHERE c.group_name = l.group_name),
                                                           0) + 1))
                           ELSE greatest(l.term + 1, first_term)
                      END,
               holder = start_terms.instance_id,
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

CREATE OR REPLACE FUNCTION coordinator.rehearse_handover(
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
        PERFORM coordinator.draw_term(rehearsal_group);
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

REVOKE ALL ON FUNCTION coordinator.commit_durably(), coordinator.term_drawn_ahead(text),
    coordinator.draw_term(text)
FROM PUBLIC;

COMMENT ON FUNCTION coordinator.draw_term(text) IS
    'Make sure the group has its next term drawn durably, ahead of taking office, and return it '
    '(NULL: no such group, or its terms are exhausted); taking office with it needs no WAL flush.';
