#!/bin/sh
# One run of a job that must happen on one host only, fenced by the leader's term:
# assert_term fails (and psql rolls everything back) once a newer leader exists.
set -eu
psql "$APP_DSN" -v ON_ERROR_STOP=1 -q <<SQL
BEGIN;
SELECT $COORDINATOR_SCHEMA.assert_term('$COORDINATOR_GROUP', $COORDINATOR_TERM);
INSERT INTO nightly_runs (term, instance_id) VALUES ($COORDINATOR_TERM, '$COORDINATOR_INSTANCE_ID');
COMMIT;
SQL
