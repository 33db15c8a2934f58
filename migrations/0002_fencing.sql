-- pg-coordinator schema, version 2: fencing.
--
-- coordinator.assert_term(group_name, term) is the fencing token check, for
-- Python (Group.fenced) and for any other language or tool alike. Call it
-- first inside the transaction that writes as leader:
--
--     BEGIN;
--     SELECT coordinator.assert_term('billing', 7);
--     UPDATE invoices SET ...;
--     COMMIT;
--
-- It takes FOR SHARE on the group's leader row and fails unless `term` is the
-- current term and the group has a holder. A new leader's term update needs
-- that row, so it waits until the transaction commits or aborts: a write of
-- an old term can never commit after a newer term exists.
--
-- So that a paused or vanished writer cannot hold the next leader off for
-- ever, it also limits idle_in_transaction_session_timeout, for the rest of
-- this transaction only, to the group's ttl (a lower server setting is kept).
--
-- It runs with its owner's rights (SECURITY DEFINER, with a fixed
-- search_path), because FOR SHARE needs UPDATE on the table: a role that
-- writes as leader needs only USAGE on the schema and EXECUTE on this
-- function, never the right to change who leads.

CREATE FUNCTION coordinator.assert_term(group_name text, term bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current_term   bigint;
    current_holder text;
    group_ttl_ms   bigint;
    configured_ms  bigint;
BEGIN
    SELECT l.term, l.holder, greatest(1, (extract(epoch FROM l.ttl) * 1000)::bigint)
      INTO current_term, current_holder, group_ttl_ms
      FROM coordinator.leaders AS l
     WHERE l.group_name = assert_term.group_name
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'group % is not registered in coordinator.leaders',
                        quote_literal(assert_term.group_name)
              USING ERRCODE = 'undefined_object',
                    HINT = 'check the group name; a group is registered when a coordinator first joins it';
    END IF;
    IF current_holder IS NULL OR current_term IS DISTINCT FROM assert_term.term THEN
        RAISE EXCEPTION 'term % of group % is not current (the group is at term %, %)',
                        assert_term.term, quote_literal(assert_term.group_name), current_term,
                        coalesce('held by ' || quote_literal(current_holder), 'with no leader')
              USING ERRCODE = 'LT001',
                    HINT = 'a newer leader exists or the leadership ended: stop the work of this term; the transaction must roll back';
    END IF;
    SELECT s.setting::bigint INTO configured_ms
      FROM pg_catalog.pg_settings AS s
     WHERE s.name = 'idle_in_transaction_session_timeout';
    IF configured_ms = 0 OR configured_ms > group_ttl_ms THEN
        PERFORM pg_catalog.set_config(
            'idle_in_transaction_session_timeout', group_ttl_ms::text, true);
    END IF;
    RETURN current_term;
END
$$;

REVOKE ALL ON FUNCTION coordinator.assert_term(text, bigint) FROM PUBLIC;

COMMENT ON FUNCTION coordinator.assert_term(text, bigint) IS
    'Fencing token check: call first in a transaction that writes as leader of group_name '
    'under term. Fails with SQLSTATE LT001 unless term is current; holds FOR SHARE on the '
    'leader row until the transaction ends, so a newer term waits for it.';
