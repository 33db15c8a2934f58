-- pg-coordinator: a role with only what `coordinator run` and the library need.
--
-- Run it as the owner of the coordinator's schema (the role that ran
-- `coordinator migrate`) or a superuser, after migrating, and again after an
-- upgrade that brings new migrations:
--
--     psql "$OWNER_DSN" -v ON_ERROR_STOP=1 -f least_privilege.sql
--
-- Here the role is called coordinator_app and the schema coordinator.
-- `coordinator grant --role NAME --schema NAME` runs this file with other
-- names (`--print` shows the SQL instead of running it).
--
-- The role may not create, alter or drop anything, may not rewrite history
-- (no UPDATE on events), may not delete groups, and may not touch
-- schema_migrations beyond reading the version. Application tables are not
-- this file's business: grant those as the application needs.

-- A login role, created unless it exists; an existing role keeps its attributes.
-- Connecting needs CONNECT on the database, which PUBLIC has unless revoked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'coordinator_app') THEN
        CREATE ROLE coordinator_app LOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO coordinator_app', current_database());
END
$$;

GRANT USAGE ON SCHEMA coordinator TO coordinator_app;

-- Start-up checks the schema version.
GRANT SELECT ON coordinator.schema_migrations TO coordinator_app;

-- Groups are registered (INSERT) on first use. Taking office, resigning and
-- clearing a stale leader update the row; the monitor and fenced transactions
-- lock it FOR SHARE, which also needs UPDATE. Rows are never deleted.
GRANT SELECT, INSERT, UPDATE ON coordinator.leaders TO coordinator_app;

-- Heartbeats of leaders and followers (INSERT ... ON CONFLICT DO UPDATE);
-- an instance that stops deletes its own follower rows.
GRANT SELECT, INSERT, UPDATE, DELETE ON coordinator.heartbeats TO coordinator_app;

-- History is appended, read, and pruned past its retention.
GRANT SELECT, INSERT, DELETE ON coordinator.events TO coordinator_app;

-- Who leads: `coordinator status`, the /leader endpoints, dashboards.
GRANT SELECT ON coordinator.leader_status TO coordinator_app;

-- The fencing token check that fenced transactions call first.
GRANT EXECUTE ON FUNCTION coordinator.assert_term(text, bigint) TO coordinator_app;

-- Leader-only jobs: the shared timetable is read directly and written only
-- through its functions, which check the term first; runs are pruned with
-- the events (migrations/0003_jobs.sql).
GRANT SELECT ON coordinator.jobs TO coordinator_app;
GRANT SELECT, DELETE ON coordinator.job_runs TO coordinator_app;
GRANT EXECUTE ON FUNCTION
    coordinator.sync_jobs(text, bigint, text[], text[], timestamptz[]),
    coordinator.claim_tick(text, bigint, text, timestamptz, text, text, text, timestamptz),
    coordinator.finish_tick(text, bigint, text, timestamptz, text, float8),
    coordinator.abandon_ticks(text, bigint, text[])
    TO coordinator_app;

-- Fencing a stale leader terminates its backend (pg_terminate_backend). No
-- privilege is needed for that while every instance logs in as this same
-- role. When instances of one group log in as different roles, each needs
-- pg_signal_backend (`coordinator grant --fence-any-role`); without it the
-- monitor logs fence_permission_denied once and a stale leader is cut off
-- only by its own trust deadline and TCP keepalives. No role can terminate
-- a superuser's backend, so do not run instances as a superuser.
--
-- GRANT pg_signal_backend TO coordinator_app;
