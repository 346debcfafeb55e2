-- 012_busy_wallets.sql - a batch does not wait for wallets another batch holds.
--
-- payq.apply_batch() locks every wallet its commands name before it applies
-- them, and holds the locks to COMMIT. Two worker threads whose batches share
-- a wallet therefore ran one after the other: with 100 payments a batch over
-- 10,000 wallets nearly every pair of batches shares one, and
-- pg_stat_statements put a fifth of apply_batch's time in that lock
-- statement (10 ms of 53 ms a call, at capacity with two threads).
--
-- payq.apply_batch(commands, true) takes the wallets no other transaction
-- holds (FOR UPDATE SKIP LOCKED) and answers {"busy": true} for each command
-- that names one it could not take: that command is not applied at all (no
-- row, no reply), and the worker hands it to its next batch. There it is
-- marked "wait": true, and a command so marked has its wallets locked the
-- blocking way, first and in id order (the others' after, without waiting),
-- so a command is passed over at most once and a hot wallet cannot starve.
-- Blocking locks are all taken before any other, in one order, so batches
-- cannot deadlock on wallets any more than before.
--
-- payq.apply_batch(commands) keeps its meaning (every command waits), for
-- workers that do not know "busy".

CREATE FUNCTION payq.apply_batch(p_commands jsonb, p_skip_busy boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    r jsonb;
    i integer := 0;
    todo jsonb := p_commands;
    fast jsonb;
    results jsonb[] := '{}';
    wait_ids text[];     -- wallets to wait for
    rest_ids text[];     -- wallets to take if free
    got text[];
    busy text[];
BEGIN
    SELECT array_agg(DISTINCT v.x ORDER BY v.x)
               FILTER (WHERE NOT p_skip_busy OR COALESCE((e.cmd->>'wait')::boolean, false)),
           array_agg(DISTINCT v.x ORDER BY v.x)
      INTO wait_ids, rest_ids
      FROM jsonb_array_elements(p_commands) AS e(cmd),
           LATERAL (VALUES (cmd->'body'->>'account'), (cmd->'body'->>'source'),
                           (cmd->'body'->>'destination')) AS v(x)
     WHERE v.x IS NOT NULL AND NOT starts_with(v.x, 'tok_');
    wait_ids := COALESCE(wait_ids, '{}');
    rest_ids := ARRAY(SELECT unnest(rest_ids) EXCEPT SELECT unnest(wait_ids));

    PERFORM 1 FROM payq.accounts WHERE id = ANY(wait_ids) AND kind = 'customer' ORDER BY id
        FOR UPDATE;

    IF cardinality(rest_ids) > 0 THEN
        got := ARRAY(SELECT id FROM payq.accounts
                      WHERE id = ANY(rest_ids) AND kind = 'customer' ORDER BY id
                        FOR UPDATE SKIP LOCKED);
        busy := ARRAY(SELECT id FROM payq.accounts
                       WHERE id = ANY(rest_ids) AND kind = 'customer' AND id <> ALL(got));
        IF cardinality(busy) > 0 THEN
            -- Every command naming a busy wallet becomes a placeholder that
            -- nothing below applies; positions stay as they were.
            SELECT jsonb_agg(CASE WHEN ARRAY[e.cmd->'body'->>'account', e.cmd->'body'->>'source',
                                             e.cmd->'body'->>'destination'] && busy
                                  THEN '{"busy": true}'::jsonb ELSE e.cmd END
                             ORDER BY e.ord)
              INTO todo
              FROM jsonb_array_elements(p_commands) WITH ORDINALITY AS e(cmd, ord);
        END IF;
    END IF;

    fast := payq.apply_wallet_payments(todo);

    FOR c IN SELECT value FROM jsonb_array_elements(todo) LOOP
        i := i + 1;
        IF c ? 'busy' THEN
            r := c;
        ELSE
            r := fast->(i::text);
        END IF;
        IF r IS NULL THEN
            BEGIN
                r := payq.apply_command(NULLIF(c->>'scope', ''), c->>'message_id',
                                        c->>'command', c->'body', c->>'correlation_id');
            EXCEPTION WHEN OTHERS THEN
                r := jsonb_build_object('error', jsonb_build_object('sqlstate', SQLSTATE,
                                                                    'message', SQLERRM));
            END;
        END IF;
        results := array_append(results, r);
    END LOOP;
    RETURN to_jsonb(results);
END $$;

CREATE OR REPLACE FUNCTION payq.apply_batch(p_commands jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT payq.apply_batch(p_commands, false) $$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'payq_worker') THEN
        GRANT EXECUTE ON FUNCTION payq.apply_batch(jsonb, boolean) TO payq_worker;
    END IF;
END $$;
