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
-- The authority rule: the role changes nothing directly. Every change of
-- state is a function owned by the schema's owner (SECURITY DEFINER), and
-- those functions decide: a term only for the backend that holds the
-- group's advisory lock, a heartbeat or a resignation only from that backend
-- and for its own term, fencing only of a leader whose heartbeat is stale on
-- the database clock, history appended and never rewritten. The role may
-- read, and call those functions; it may not create, alter or drop anything,
-- and may not INSERT, UPDATE, DELETE or TRUNCATE any table.
-- Application tables are not this file's business: grant those as the
-- application needs.

-- A login role, created unless it exists; an existing role keeps its attributes.
-- Connecting needs CONNECT on the database, which PUBLIC has unless revoked
-- (`coordinator grant --revoke-public-connect`).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'coordinator_app') THEN
        CREATE ROLE coordinator_app LOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO coordinator_app', current_database());
END
$$;

GRANT USAGE ON SCHEMA coordinator TO coordinator_app;

-- No direct writes, not even those an earlier release granted: re-running
-- this file after an upgrade takes them back.
REVOKE ALL ON ALL TABLES IN SCHEMA coordinator FROM coordinator_app;

-- What readers need: start-up checks the schema version; registration reads
-- the stored keys (collisions); fair spreading counts live members; `status`,
-- `history`, `watch` and the /leader endpoints read the rest.
GRANT SELECT ON coordinator.schema_migrations, coordinator.leaders, coordinator.heartbeats,
    coordinator.events, coordinator.leader_status, coordinator.settings,
    coordinator.sessions, coordinator.switchovers, coordinator.group_sets TO coordinator_app;

-- Every change of state, each checked by the function itself.
GRANT EXECUTE ON FUNCTION
    coordinator.register_groups(text[], integer[], integer, float8),
    coordinator.register_group_set(text, text[], integer[], integer, float8),
    coordinator.take_office(text[], text, text, integer, float8),
    coordinator.take_free_offices(text[], text, text, integer, float8),
    coordinator.campaign(text, text, text, integer, float8, integer),
    coordinator.draw_term(text),
    coordinator.rehearse_handover(text, text, integer, float8),
    coordinator.leader_heartbeat(text, integer, text[], bigint[]),
    coordinator.member_heartbeat(text[], text, text, integer),
    coordinator.resign(text, text, bigint, text),
    coordinator.resign_and_unlock(text, text, bigint, text, integer, integer),
    coordinator.record_lost(text, text, bigint, text),
    coordinator.record_lost_all(text[], text, bigint[], text[]),
    coordinator.fence_stale_leaders(text),
    coordinator.prune_events(float8),
    coordinator.prune_members(float8),
    coordinator.leave_groups(text),
    coordinator.session_heartbeat(text, text, integer, integer, text, float8, text[], bigint[]),
    coordinator.resign_seats(text[], text, bigint[], text[]),
    coordinator.close_session(text),
    coordinator.fence_stale_sessions(text),
    -- The fencing token check that fenced transactions call first.
    coordinator.assert_term(text, bigint)
TO coordinator_app;

-- Leader-only jobs: the shared timetable is read directly and written only
-- through its functions, which check the term first (migrations/0003_jobs.sql).
GRANT SELECT ON coordinator.jobs, coordinator.job_runs TO coordinator_app;
GRANT EXECUTE ON FUNCTION
    coordinator.sync_jobs(text, bigint, text[], text[], timestamptz[]),
    coordinator.claim_tick(text, bigint, text, timestamptz, text, text, text, timestamptz),
    coordinator.finish_tick(text, bigint, text, timestamptz, text, float8),
    coordinator.abandon_ticks(text, bigint, text[]),
    coordinator.prune_job_runs(float8)
TO coordinator_app;

-- Switchover (`coordinator resign`): whoever may run instances may ask a
-- leader to hand over; the function checks the group, its live leader and
-- the target. To keep hand-overs to operators, revoke it from this role
-- after running this file and grant it to theirs instead:
--
--     REVOKE EXECUTE ON FUNCTION coordinator.request_switchover(text, text) FROM coordinator_app;
--     GRANT EXECUTE ON FUNCTION coordinator.request_switchover(text, text) TO <operators>;
GRANT EXECUTE ON FUNCTION coordinator.request_switchover(text, text) TO coordinator_app;

-- Fencing a stale leader, and ending a fenced transaction of an old term that
-- holds a new leader off, terminate backends (pg_terminate_backend) with the
-- rights of the schema's owner. A superuser owner may terminate any
-- non-superuser backend; any other owner needs pg_signal_backend
-- (`coordinator grant --fence-any-role` grants it to the owner). Without it
-- the monitor logs fence_permission_denied once, a stale leader is cut off
-- only by its own trust deadline and TCP keepalives, and a new leader waits
-- for old fenced transactions to end on their own. No role can terminate a
-- superuser's backend, so do not run instances or writers as a superuser.
--
-- GRANT pg_signal_backend TO <the schema's owner>;
