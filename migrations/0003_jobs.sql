-- pg-coordinator schema, version 3: the shared timetable of leader-only jobs.
--
-- Per group and job id, the trigger (as text, to notice a change), the
-- latest fire time claimed and the next one due. Whoever leads the group
-- continues this timetable: a new leader runs the next tick when it is due,
-- not one interval after its own start.
--
-- Every tick is claimed before it runs: one row in job_runs per
-- (group, job, scheduled fire time), written only under the current term
-- (the functions below call assert_term first, so a claim of an old term
-- never commits after a newer term exists). A tick is claimed once. The one
-- exception is a tick of a job in mode 'fenced' whose run never committed
-- (outcome still 'running' or 'interrupted' under an older term): the next
-- leader may claim it again, once per term, and its attempt counts up.
--
-- The functions run with their owner's rights (SECURITY DEFINER, fixed
-- search_path): the runtime role needs EXECUTE on them and SELECT on the
-- tables, never the right to write the timetable directly.

CREATE TABLE coordinator.jobs (
    group_name      text        NOT NULL REFERENCES coordinator.leaders (group_name) ON DELETE CASCADE,
    job_id          text        NOT NULL CHECK (job_id <> '' AND octet_length(job_id) <= 200),
    trigger         text        NOT NULL,
    last_fire_at    timestamptz,
    next_fire_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (group_name, job_id)
);

CREATE TABLE coordinator.job_runs (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name      text        NOT NULL,
    job_id          text        NOT NULL,
    scheduled_at    timestamptz NOT NULL,
    term            bigint      NOT NULL,
    instance_id     text        NOT NULL,
    -- 'fenced': the run's fenced transaction marks it done (exactly once for
    -- database effects); 'plain': at most once per tick.
    mode            text        NOT NULL CHECK (mode IN ('fenced', 'plain')),
    outcome         text        NOT NULL CHECK (outcome IN (
                        'running', 'done', 'failed', 'cancelled', 'stale',
                        'interrupted', 'skipped', 'abandoned')),
    attempt         integer     NOT NULL DEFAULT 1,
    claimed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    duration_s      float8,
    CONSTRAINT job_runs_tick_unique UNIQUE (group_name, job_id, scheduled_at)
);
CREATE INDEX job_runs_claimed_at_idx ON coordinator.job_runs (claimed_at);
CREATE INDEX job_runs_open_idx ON coordinator.job_runs (group_name)
    WHERE outcome IN ('running', 'interrupted');

-- A new leader's first step: make the timetable list exactly these jobs.
-- Rows of other job ids are removed (with their pending runs); a job whose
-- trigger text changed gets the next fire time computed for the new trigger.
CREATE FUNCTION coordinator.sync_jobs(
    group_name text, term bigint, job_ids text[], triggers text[], next_fire_ats timestamptz[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM coordinator.assert_term(sync_jobs.group_name, sync_jobs.term);
    DELETE FROM coordinator.jobs AS j
     WHERE j.group_name = sync_jobs.group_name AND j.job_id <> ALL (sync_jobs.job_ids);
    INSERT INTO coordinator.jobs AS j (group_name, job_id, trigger, next_fire_at)
    SELECT sync_jobs.group_name, t.job_id, t.trigger, t.next_fire_at
      FROM unnest(sync_jobs.job_ids, sync_jobs.triggers, sync_jobs.next_fire_ats)
           AS t(job_id, trigger, next_fire_at)
    ON CONFLICT ON CONSTRAINT jobs_pkey DO UPDATE
       SET trigger = excluded.trigger, next_fire_at = excluded.next_fire_at,
           updated_at = clock_timestamp()
     WHERE j.trigger IS DISTINCT FROM excluded.trigger
        OR j.next_fire_at IS DISTINCT FROM excluded.next_fire_at;
END
$$;

-- Claim one tick under the current term. Returns the attempt number, or
-- NULL when the tick is already claimed. outcome 'skipped' records a tick
-- missed beyond its grace time without running it. next_fire_at is the
-- trigger's fire time after this tick; it moves only forwards.
CREATE FUNCTION coordinator.claim_tick(
    group_name text, term bigint, job_id text, scheduled_at timestamptz,
    instance_id text, mode text, outcome text, next_fire_at timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    claimed integer;
BEGIN
    PERFORM coordinator.assert_term(claim_tick.group_name, claim_tick.term);
    INSERT INTO coordinator.job_runs AS r
           (group_name, job_id, scheduled_at, term, instance_id, mode, outcome)
    VALUES (claim_tick.group_name, claim_tick.job_id, claim_tick.scheduled_at, claim_tick.term,
            claim_tick.instance_id, claim_tick.mode, claim_tick.outcome)
    ON CONFLICT ON CONSTRAINT job_runs_tick_unique DO UPDATE
       SET term = excluded.term, instance_id = excluded.instance_id, mode = excluded.mode,
           outcome = excluded.outcome, attempt = r.attempt + 1,
           claimed_at = clock_timestamp(), finished_at = NULL, duration_s = NULL
     WHERE r.mode = 'fenced' AND r.outcome IN ('running', 'interrupted')
       AND r.term < excluded.term
    RETURNING r.attempt INTO claimed;
    IF claimed IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE coordinator.jobs AS j
       SET last_fire_at = greatest(j.last_fire_at, claim_tick.scheduled_at),
           next_fire_at = CASE
               WHEN claim_tick.scheduled_at >= coalesce(j.last_fire_at, '-infinity')
               THEN claim_tick.next_fire_at ELSE j.next_fire_at END,
           updated_at = clock_timestamp()
     WHERE j.group_name = claim_tick.group_name AND j.job_id = claim_tick.job_id;
    RETURN claimed;
END
$$;

-- Record how a claimed run ended. Only the term that holds the claim may,
-- and only once; returns whether it did. Inside a fenced transaction this
-- is what makes the run's effects and "done" commit together.
CREATE FUNCTION coordinator.finish_tick(
    group_name text, term bigint, job_id text, scheduled_at timestamptz,
    outcome text, duration_s float8)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH finished AS (
        UPDATE coordinator.job_runs AS r
           SET outcome = finish_tick.outcome, finished_at = clock_timestamp(),
               duration_s = finish_tick.duration_s
         WHERE r.group_name = finish_tick.group_name AND r.job_id = finish_tick.job_id
           AND r.scheduled_at = finish_tick.scheduled_at AND r.term = finish_tick.term
           AND r.outcome = 'running'
           AND finish_tick.outcome IN ('done', 'failed', 'cancelled', 'stale', 'interrupted')
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM finished)
$$;

-- A new leader's second step: every run still open under an older term is
-- abandoned (its outcome is not known), except the fenced ticks of the jobs
-- in keep_job_ids, which the new leader runs again (claim_tick above).
CREATE FUNCTION coordinator.abandon_ticks(group_name text, term bigint, keep_job_ids text[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    abandoned integer;
BEGIN
    PERFORM coordinator.assert_term(abandon_ticks.group_name, abandon_ticks.term);
    UPDATE coordinator.job_runs AS r
       SET outcome = 'abandoned', finished_at = clock_timestamp()
     WHERE r.group_name = abandon_ticks.group_name AND r.term < abandon_ticks.term
       AND r.outcome IN ('running', 'interrupted')
       AND NOT (r.mode = 'fenced' AND r.job_id = ANY (abandon_ticks.keep_job_ids));
    GET DIAGNOSTICS abandoned = ROW_COUNT;
    RETURN abandoned;
END
$$;

-- Runs are history: pruned with the events' retention.
CREATE FUNCTION coordinator.prune_job_runs(retention_s float8)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH pruned AS (
        DELETE FROM coordinator.job_runs
         WHERE claimed_at < now() - make_interval(secs => prune_job_runs.retention_s)
        RETURNING 1
    )
    SELECT count(*)::integer FROM pruned
$$;

REVOKE ALL ON FUNCTION coordinator.sync_jobs(text, bigint, text[], text[], timestamptz[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION coordinator.claim_tick(text, bigint, text, timestamptz, text, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION coordinator.finish_tick(text, bigint, text, timestamptz, text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION coordinator.abandon_ticks(text, bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION coordinator.prune_job_runs(float8) FROM PUBLIC;
