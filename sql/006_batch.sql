-- 006_batch.sql - many commands in one transaction.
--
-- Throughput comes from amortizing commits (each one an fsync, with
-- synchronous_commit on) and round trips: the worker hands a batch of
-- validated commands to payq.apply_batch(), which runs each command's first
-- phase in its own subtransaction (a failing command is rolled back alone;
-- its neighbours commit) and returns one result per command, in order:
-- what payq.apply_command() returns, or {"error": {"sqlstate", "message"}}.
--
-- Before anything else it locks every wallet the batch names, in id order,
-- so two batches can never deadlock on wallets they both touch (a payment
-- locks its source wallet; a batch holds those locks to COMMIT). Merchant
-- and system accounts are never locked: their balances are sums of entries.
CREATE FUNCTION payq.apply_batch(p_commands jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    r jsonb;
    results jsonb := '[]';
    ids text[];
BEGIN
    SELECT array_agg(DISTINCT x ORDER BY x) INTO ids
      FROM jsonb_array_elements(p_commands) AS e(cmd),
           LATERAL (VALUES (cmd->'body'->>'account'), (cmd->'body'->>'source'),
                           (cmd->'body'->>'destination')) AS v(x)
     WHERE x IS NOT NULL AND NOT starts_with(x, 'tok_');
    PERFORM 1 FROM payq.accounts WHERE id = ANY(ids) AND kind = 'customer' ORDER BY id
        FOR UPDATE;

    FOR c IN SELECT value FROM jsonb_array_elements(p_commands) LOOP
        BEGIN
            r := payq.apply_command(NULLIF(c->>'scope', ''), c->>'message_id', c->>'command',
                                    c->'body', c->>'correlation_id');
        EXCEPTION WHEN OTHERS THEN
            r := jsonb_build_object('error', jsonb_build_object('sqlstate', SQLSTATE,
                                                                'message', SQLERRM));
        END;
        results := results || jsonb_build_array(r);
    END LOOP;
    RETURN results;
END $$;
