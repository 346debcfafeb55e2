-- 009_fast_path.sql - set-based ledger triggers, and a set-based path for
-- the commonest command: a wallet payment with capture.
--
-- 1. Ledger triggers per statement. Each ledger entry used to fire two row
--    triggers: one that updated (or looked up) its account, and a deferred
--    one that summed its posting at COMMIT. Now one statement-level trigger
--    sees every entry the statement inserted (a transition table) and, in
--    three set-based statements, checks that each posting's new entries sum
--    to zero per currency, that every entry's account exists in that
--    currency, and adds the entries to the wallets' running balances. The
--    balance rule becomes stricter than before (every INSERT must balance,
--    not just the transaction), which payq.post() always did: a posting's
--    entries are inserted by one statement.
--
-- 2. payq.apply_batch() gives the wallet payments with capture of a batch
--    (payment.create, source a wallet, capture true) to one set-based
--    statement instead of one payq.apply_command() call each: about ten
--    statements per batch instead of about thirty per payment. It decides
--    exactly what payq.payment_step() would decide (same checks in the same
--    order, same replies, payment rows, events and ledger postings; the test
--    test_fast_path compares both paths field by field), and leaves to the
--    per-command path everything it cannot decide alone:
--      - any other command, card payments, authorizations (capture false);
--      - a payment_id or message id that occurs twice in the batch, or that
--        is already known (a duplicate: the per-command path answers it from
--        the stored reply);
--      - currencies whose fraud rule has velocity limits (they count the
--        source's other payments), or whose system accounts do not exist yet;
--      - payments of a wallet beyond the first that would not fit in its
--        available balance (taking them in batch order): the per-command path
--        then decides them one by one against the balance left.
--    The set-based payments are applied first and the others after them, in
--    batch order: a valid serial order, since commands in one batch were
--    never ordered with respect to each other (they were consumed
--    concurrently with other workers' batches anyway).

-- ------------------------------------------------------------ 1. ledger

DROP TRIGGER ledger_entry_apply ON payq.ledger_entries;
DROP TRIGGER posting_balanced ON payq.ledger_entries;
DROP FUNCTION payq.ledger_entry_apply();
DROP FUNCTION payq.posting_balanced();

CREATE FUNCTION payq.ledger_entries_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
    unknown text;
BEGIN
    -- Invariant 3: every posting's entries sum to zero in each currency;
    -- and every entry's account exists in the entry's currency. One query
    -- for both: a trigger that runs once per statement pays for each query
    -- it plans.
    SELECT (SELECT format('posting %s does not balance: %s %s left over',
                          b.posting_id, b.total, b.currency)
              FROM (SELECT posting_id, currency, sum(amount) AS total FROM added
                     GROUP BY posting_id, currency HAVING sum(amount) <> 0 LIMIT 1) b),
           (SELECT format('ledger entry for account %s in %s does not match an account',
                          e.account_id, e.currency)
              FROM (SELECT DISTINCT account_id, currency FROM added) e
             WHERE NOT EXISTS (SELECT 1 FROM payq.accounts a
                                WHERE a.id = e.account_id AND a.currency = e.currency)
             LIMIT 1)
      INTO unbalanced, unknown;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION '%', unbalanced USING ERRCODE = 'check_violation';
    END IF;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION '%', unknown USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- Wallets keep running balances (the no-overdraft CHECK applies here).
    -- The id list keeps the lookup on the primary key whatever the planner
    -- guesses about the transition table's size.
    UPDATE payq.accounts a
       SET posted = a.posted + s.total, updated_at = now()
      FROM (SELECT account_id, sum(amount)::bigint AS total FROM added GROUP BY account_id) s
     WHERE a.id = s.account_id AND a.id = ANY(ARRAY(SELECT account_id FROM added))
       AND a.kind = 'customer';
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_apply AFTER INSERT ON payq.ledger_entries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION payq.ledger_entries_apply();

-- ------------------------------------------------------- 2. fast path

-- These SQL helpers build jsonb (a STABLE function) but were declared
-- IMMUTABLE, which keeps PostgreSQL from inlining them into their callers:
-- each call ran as a query of its own. STABLE is what they are.
ALTER FUNCTION payq.reply(text, text, text, text, text, jsonb) STABLE;
ALTER FUNCTION payq.done(jsonb) STABLE;
ALTER FUNCTION payq.payment_fields(payq.payments) STABLE;
ALTER FUNCTION payq.no_payment(text, text) STABLE;

-- Applies the wallet payments with capture among p_commands (the array
-- payq.apply_batch() takes) in one statement. Returns an object mapping the
-- 1-based position of each command it finished to its result
-- ({"reply": ...}); the positions it leaves out are for the per-command path.
CREATE FUNCTION payq.apply_wallet_payments(p_commands jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    outcome jsonb;
    torn integer;
BEGIN
    WITH cmd AS (
        SELECT e.ord::integer AS ord, COALESCE(e.c->>'scope', '') AS scope,
               e.c->>'message_id' AS message_id, e.c->>'correlation_id' AS corr,
               e.c->'body' AS b, e.c->'body'->>'payment_id' AS payment_id,
               (e.c->'body'->>'amount')::bigint AS amount, e.c->'body'->>'currency' AS currency,
               e.c->'body'->>'source' AS source, e.c->'body'->>'destination' AS destination,
               sha256(convert_to('payment.create ' || (e.c->'body')::text, 'UTF8')) AS h,
               count(*) OVER (PARTITION BY e.c->'body'->>'payment_id') AS same_payment,
               count(*) OVER (PARTITION BY COALESCE(e.c->>'scope', ''), e.c->>'message_id')
                   AS same_message
          FROM jsonb_array_elements(p_commands) WITH ORDINALITY AS e(c, ord)
         WHERE e.c->>'command' = 'payment.create'
           AND NOT starts_with(e.c->'body'->>'source', 'tok_')
           AND (e.c->'body'->>'capture')::boolean
    ),
    -- New payments only: no twin in the batch, nothing stored under either key.
    fresh AS (
        SELECT c.* FROM cmd c
         WHERE c.same_payment = 1
           AND (c.message_id IS NULL OR c.same_message = 1)
           AND NOT EXISTS (SELECT 1 FROM payq.payments p WHERE p.payment_id = c.payment_id)
           AND (c.message_id IS NULL OR
                NOT EXISTS (SELECT 1 FROM payq.inbox i
                             WHERE i.scope = c.scope AND i.message_id = c.message_id))
    ),
    -- The checks of payq.payment_step(), in its order; the first hit decides.
    checked AS (
        SELECT f.*, s.posted - s.pending AS available, r.velocity_max_count,
               r.velocity_max_amount,
               CASE
                 WHEN m.id IS NULL AND m2.id IS NOT NULL THEN 'currency_mismatch'
                 WHEN m.id IS NULL THEN 'account_not_found'
                 WHEN s.id IS NULL OR s.kind <> 'customer' THEN 'account_not_found'
                 WHEN s.currency <> f.currency THEN 'currency_mismatch'
                 WHEN bl.source IS NOT NULL THEN 'fraud_suspected'
                 WHEN r.max_amount IS NOT NULL AND f.amount > r.max_amount THEN 'fraud_suspected'
               END AS code,
               CASE
                 WHEN m.id IS NULL AND m2.id IS NOT NULL
                   THEN format('merchant %s does not hold %s', f.destination, f.currency)
                 WHEN m.id IS NULL THEN format('no merchant account %s', f.destination)
                 WHEN s.id IS NULL OR s.kind <> 'customer'
                   THEN format('no customer account %s', f.source)
                 WHEN s.currency <> f.currency
                   THEN format('wallet %s does not hold %s', f.source, f.currency)
                 WHEN bl.source IS NOT NULL THEN 'the source is on the blocklist'
                 WHEN r.max_amount IS NOT NULL AND f.amount > r.max_amount
                   THEN format('amount above the limit of %s minor units', r.max_amount)
               END AS message,
               EXISTS (SELECT 1 FROM payq.accounts pl
                        WHERE pl.id = '@platform:' || f.currency) AS has_system
          FROM fresh f
          LEFT JOIN payq.accounts m
                 ON m.id = f.destination AND m.kind = 'merchant' AND m.currency = f.currency
          LEFT JOIN payq.accounts m2 ON m2.id = f.destination AND m2.kind = 'merchant'
          LEFT JOIN payq.accounts s ON s.id = f.source
          LEFT JOIN payq.fraud_blocklist bl ON bl.source = f.source
          LEFT JOIN LATERAL (SELECT * FROM payq.fraud_rules fr
                              WHERE fr.currency = f.currency OR fr.currency IS NULL
                              ORDER BY fr.currency NULLS LAST LIMIT 1) r ON true
    ),
    -- What each wallet's payments add up to, in batch order.
    ranked AS (
        SELECT k.*,
               CASE WHEN k.code IS NULL
                    THEN sum(k.amount) FILTER (WHERE k.code IS NULL)
                             OVER (PARTITION BY k.source ORDER BY k.ord)
               END AS running,
               count(*) FILTER (WHERE k.code IS NULL)
                   OVER (PARTITION BY k.source ORDER BY k.ord) AS nth
          FROM checked k
         WHERE k.velocity_max_count IS NULL AND k.velocity_max_amount IS NULL
           AND (k.code IS NOT NULL OR k.has_system)
    ),
    decided AS (
        SELECT q.*, gen_random_uuid() AS event_id,
               to_char(clock_timestamp() AT TIME ZONE 'UTC',
                       'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS occurred_at
          FROM (SELECT k.ord, k.scope, k.message_id, k.corr, k.b, k.payment_id, k.amount,
                       k.currency, k.source, k.destination, k.h,
                       COALESCE(k.code, CASE WHEN k.running > k.available
                                             THEN 'insufficient_funds' END) AS code,
                       COALESCE(k.message, CASE WHEN k.running > k.available
                           THEN format('available balance of %s is lower than the amount',
                                       k.source) END) AS message,
                       CASE WHEN k.code IS NULL AND k.running <= k.available
                            THEN payq.fee_for(k.destination, k.currency, k.amount) END AS fee
                  FROM ranked k
                 -- A wallet's first payment that does not fit fails here;
                 -- the ones after it go to the per-command path.
                 WHERE k.code IS NOT NULL OR k.running <= k.available OR k.nth = 1) q
    ),
    final AS (
        SELECT d.*,
               CASE WHEN d.code IS NULL
                    THEN payq.reply('payment.create', d.payment_id, 'succeeded', p_extra =>
                                    jsonb_build_object('amount', d.amount, 'currency', d.currency,
                                                       'fee', d.fee))
                    ELSE payq.reply('payment.create', d.payment_id, 'failed', d.code, d.message,
                                    jsonb_build_object('amount', d.amount, 'currency', d.currency))
               END AS reply,
               jsonb_build_object('event_id', d.event_id,
                                  'type', CASE WHEN d.code IS NULL THEN 'payment.succeeded'
                                               ELSE 'payment.failed' END,
                                  'occurred_at', d.occurred_at, 'id', d.payment_id)
               || CASE WHEN d.corr IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('correlation_id', d.corr) END
               || jsonb_build_object('amount', d.amount, 'currency', d.currency,
                                     'source', d.source, 'destination', d.destination)
               || CASE WHEN d.code IS NULL
                       THEN jsonb_build_object('fee', d.fee, 'authorized_amount', d.amount)
                       ELSE jsonb_build_object('code', d.code, 'message', d.message) END
               AS event
          FROM decided d
    ),
    inbox_rows AS (
        INSERT INTO payq.inbox (scope, message_id, command, request_hash, reply)
        SELECT f.scope, f.message_id, 'payment.create', f.h, f.reply
          FROM final f WHERE f.message_id IS NOT NULL
         ORDER BY f.scope, f.message_id
        ON CONFLICT (scope, message_id) DO NOTHING
        RETURNING scope, message_id
    ),
    payment_rows AS (
        INSERT INTO payq.payments (payment_id, amount, currency, source, source_kind,
                                   destination, capture, description, metadata, request_hash,
                                   status, failure_code, failure_message, authorized_amount,
                                   captured_amount, fee, recovery_point, version,
                                   correlation_id, reply)
        SELECT f.payment_id, f.amount, f.currency, f.source, 'wallet', f.destination, true,
               f.b->>'description', f.b->'metadata', f.h,
               CASE WHEN f.code IS NULL THEN 'succeeded' ELSE 'failed' END, f.code, f.message,
               CASE WHEN f.code IS NULL THEN f.amount ELSE 0 END,
               CASE WHEN f.code IS NULL THEN f.amount ELSE 0 END,
               COALESCE(f.fee, 0), 'finished', 1, f.corr, f.reply
          FROM final f
         ORDER BY f.payment_id
        ON CONFLICT (payment_id) DO NOTHING
        RETURNING payment_id, status
    ),
    posting_rows AS (
        INSERT INTO payq.postings (kind, ref)
        SELECT 'capture', p.payment_id FROM payment_rows p WHERE p.status = 'succeeded'
        RETURNING id, ref
    ),
    entry_rows AS (
        INSERT INTO payq.ledger_entries (posting_id, account_id, currency, amount)
        SELECT po.id, v.account, f.currency, v.amount
          FROM posting_rows po
          JOIN final f ON f.payment_id = po.ref
          CROSS JOIN LATERAL (VALUES (f.source, -f.amount),
                                     (f.destination, f.amount - f.fee),
                                     ('@platform:' || f.currency, f.fee)) AS v(account, amount)
         WHERE v.amount <> 0
    ),
    event_rows AS (
        INSERT INTO payq.payment_events (payment_id, version, event_id, type, data)
        SELECT p.payment_id, 1, f.event_id, f.event->>'type', f.event
          FROM payment_rows p JOIN final f ON f.payment_id = p.payment_id
    ),
    outbox_rows AS (
        INSERT INTO payq.outbox (event_id, routing_key, body, correlation_id)
        SELECT f.event_id, f.event->>'type', f.event, f.corr
          FROM payment_rows p JOIN final f ON f.payment_id = p.payment_id
         ORDER BY f.ord
    )
    SELECT jsonb_object_agg(f.ord::text, jsonb_build_object(
               'reply', f.reply,
               'inbox', f.message_id IS NULL OR i.message_id IS NOT NULL,
               'payment', p.payment_id IS NOT NULL))
      INTO outcome
      FROM final f
      LEFT JOIN inbox_rows i ON i.scope = f.scope AND i.message_id = f.message_id
      LEFT JOIN payment_rows p ON p.payment_id = f.payment_id;

    IF outcome IS NULL THEN
        RETURN '{}';
    END IF;
    -- A key claimed by a concurrent transaction after the existence checks
    -- above: the insert that lost left nothing behind only if both keys
    -- lost. One key won and the other lost means a conflicting duplicate
    -- raced this batch: undo it all (a transient error: the worker applies
    -- the batch's commands one by one).
    SELECT count(*) INTO torn FROM jsonb_each(outcome) AS o(k, v)
     WHERE (v->>'inbox')::boolean <> (v->>'payment')::boolean;
    IF torn > 0 THEN
        RAISE EXCEPTION 'a duplicate of a batched payment was applied concurrently'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_each(outcome) AS o(k, v) WHERE (v->>'payment')::boolean) THEN
        PERFORM pg_notify('payq_outbox', '');
    END IF;
    RETURN (SELECT COALESCE(jsonb_object_agg(k, jsonb_build_object('reply', v->'reply')), '{}')
              FROM jsonb_each(outcome) AS o(k, v) WHERE (v->>'payment')::boolean);
END $$;

CREATE OR REPLACE FUNCTION payq.apply_batch(p_commands jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    r jsonb;
    i integer := 0;
    fast jsonb;
    results jsonb[] := '{}';
    ids text[];
BEGIN
    SELECT array_agg(DISTINCT x ORDER BY x) INTO ids
      FROM jsonb_array_elements(p_commands) AS e(cmd),
           LATERAL (VALUES (cmd->'body'->>'account'), (cmd->'body'->>'source'),
                           (cmd->'body'->>'destination')) AS v(x)
     WHERE x IS NOT NULL AND NOT starts_with(x, 'tok_');
    PERFORM 1 FROM payq.accounts WHERE id = ANY(ids) AND kind = 'customer' ORDER BY id
        FOR UPDATE;

    fast := payq.apply_wallet_payments(p_commands);

    FOR c IN SELECT value FROM jsonb_array_elements(p_commands) LOOP
        i := i + 1;
        r := fast->(i::text);
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

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'payq_worker') THEN
        GRANT EXECUTE ON FUNCTION payq.apply_wallet_payments(jsonb) TO payq_worker;
    END IF;
END $$;
