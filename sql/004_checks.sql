-- 004_checks.sql - rebuilding a payment from its events, and the invariant
-- checker (payq-worker check).

-- A payment's state, folded from its event history alone (the event store
-- is the audit trail: this must always equal the row in payq.payments).
-- A card payment's history starts with payment.created; a wallet payment,
-- decided in one transaction, starts with its outcome.
CREATE FUNCTION payq.payment_rebuild(p_payment_id text)
RETURNS TABLE (status text, amount bigint, authorized_amount bigint, captured_amount bigint,
               refunded_amount bigint, fee bigint, failure_code text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    e record;
BEGIN
    status := NULL; amount := 0; authorized_amount := 0; captured_amount := 0;
    refunded_amount := 0; fee := 0; failure_code := NULL;
    FOR e IN SELECT type, data FROM payq.payment_events
              WHERE payment_id = p_payment_id ORDER BY version LOOP
        CASE e.type
        WHEN 'payment.created' THEN
            status := 'pending';
            amount := (e.data->>'amount')::bigint;
        WHEN 'payment.authorized' THEN
            status := 'authorized';
            amount := (e.data->>'amount')::bigint;
            authorized_amount := amount;
        WHEN 'payment.succeeded', 'payment.captured' THEN
            status := 'succeeded';
            IF e.type = 'payment.succeeded' THEN
                amount := (e.data->>'amount')::bigint;
            END IF;
            captured_amount := (e.data->>'amount')::bigint;
            fee := (e.data->>'fee')::bigint;
            authorized_amount := (e.data->>'authorized_amount')::bigint;
        WHEN 'payment.failed' THEN
            status := 'failed';
            amount := COALESCE(NULLIF(amount, 0), (e.data->>'amount')::bigint);
            failure_code := e.data->>'code';
        WHEN 'payment.canceled' THEN
            status := 'canceled';
        WHEN 'refund.succeeded' THEN
            refunded_amount := refunded_amount + (e.data->>'amount')::bigint;
            IF refunded_amount = captured_amount THEN
                status := 'refunded';
            END IF;
        ELSE
            NULL; -- refund.failed changes nothing
        END CASE;
    END LOOP;
    RETURN NEXT;
END $$;

-- Every invariant of DESIGN.md that the database can see. One row per
-- finding; severity 'violation' means money or history is wrong, 'warning'
-- something an operator should look at (a saga in flight for long).
CREATE FUNCTION payq.check_invariants(p_stuck_after interval DEFAULT interval '10 minutes')
RETURNS TABLE (severity text, invariant text, subject text, detail text)
LANGUAGE sql STABLE AS $$
    -- 3. every posting sums to zero per currency
    SELECT 'violation', 'posting balances', e.posting_id::text,
           format('%s %s left over', sum(e.amount), e.currency)
      FROM payq.ledger_entries e GROUP BY e.posting_id, e.currency HAVING sum(e.amount) <> 0
    UNION ALL
    -- 3. money is conserved per currency, over the whole ledger
    SELECT 'violation', 'ledger sums to zero', e.currency, format('%s left over', sum(e.amount))
      FROM payq.ledger_entries e GROUP BY e.currency HAVING sum(e.amount) <> 0
    UNION ALL
    -- 4. no wallet's available balance below zero
    SELECT 'violation', 'no overdraft', b.id, format('available %s', b.available)
      FROM payq.account_balances b WHERE b.kind = 'customer' AND b.available < 0
    UNION ALL
    -- balances are exactly their ledger entries and active holds
    SELECT 'violation', 'posted = sum of entries', a.id,
           format('posted %s, entries %s', a.posted, COALESCE(s.total, 0))
      FROM payq.accounts a
      LEFT JOIN (SELECT account_id, sum(amount) AS total FROM payq.ledger_entries
                  GROUP BY account_id) s ON s.account_id = a.id
     WHERE a.kind = 'customer' AND a.posted <> COALESCE(s.total, 0)
    UNION ALL
    SELECT 'violation', 'pending = active holds', a.id,
           format('pending %s, active holds %s', a.pending, COALESCE(h.total, 0))
      FROM payq.accounts a
      LEFT JOIN (SELECT account_id, sum(amount) AS total FROM payq.holds
                  WHERE status = 'active' GROUP BY account_id) h ON h.account_id = a.id
     WHERE a.pending <> COALESCE(h.total, 0)
    UNION ALL
    -- 5. holds resolve once, and as their payment says
    SELECT 'violation', 'hold matches payment', h.payment_id,
           format('hold %s, payment %s', h.status, p.status)
      FROM payq.holds h JOIN payq.payments p USING (payment_id)
     WHERE NOT ((h.status = 'active' AND p.status = 'authorized')
             OR (h.status = 'captured' AND p.status IN ('succeeded', 'refunded'))
             OR (h.status IN ('released', 'expired') AND p.status IN ('canceled', 'failed')))
    UNION ALL
    -- a captured payment has exactly one capture posting, of its captured amount
    SELECT 'violation', 'capture posted once', p.payment_id,
           format('status %s, captured %s, capture postings %s, payer debit %s', p.status,
                  p.captured_amount, COALESCE(c.n, 0), COALESCE(c.debit, 0))
      FROM payq.payments p
      LEFT JOIN (SELECT po.ref, count(DISTINCT po.id) AS n,
                        -min(e.amount) AS debit
                   FROM payq.postings po JOIN payq.ledger_entries e ON e.posting_id = po.id
                  WHERE po.kind = 'capture' GROUP BY po.ref) c ON c.ref = p.payment_id
     WHERE (p.status IN ('succeeded', 'refunded')
            AND (COALESCE(c.n, 0) <> 1 OR c.debit <> p.captured_amount))
        OR (p.status NOT IN ('succeeded', 'refunded') AND COALESCE(c.n, 0) <> 0)
    UNION ALL
    -- 5. refunds never exceed the captured amount, and match their postings
    SELECT 'violation', 'refunds within captured', p.payment_id,
           format('captured %s, refunded %s, refunds succeeded or in flight %s',
                  p.captured_amount, p.refunded_amount, COALESCE(r.total, 0))
      FROM payq.payments p
      LEFT JOIN (SELECT payment_id, sum(amount) AS total FROM payq.refunds
                  WHERE status = 'succeeded' OR (status = 'pending' AND recovery_point = 'refund_started')
                  GROUP BY payment_id) r ON r.payment_id = p.payment_id
     WHERE p.refunded_amount > p.captured_amount OR p.refunded_amount <> COALESCE(r.total, 0)
    UNION ALL
    SELECT 'violation', 'refund posted once', r.refund_id,
           format('status %s, amount %s, postings %s', r.status, r.amount, count(po.id))
      FROM payq.refunds r
      LEFT JOIN payq.postings po ON po.kind = 'refund' AND po.ref = r.refund_id
     GROUP BY r.refund_id, r.status, r.amount
    HAVING (r.status = 'succeeded') <> (count(po.id) = 1) OR count(po.id) > 1
    UNION ALL
    SELECT 'violation', 'deposit posted once', d.deposit_id,
           format('status %s, posting %s', d.status, d.posting_id)
      FROM payq.deposits d
     WHERE (d.status = 'succeeded') <> (d.posting_id IS NOT NULL)
    UNION ALL
    -- 6. every saga ends: terminal, or in flight with a recovery point
    SELECT 'warning', 'saga in flight', p.payment_id,
           format('%s at %s since %s', p.saga_command, p.recovery_point, p.updated_at)
      FROM payq.payments p
     WHERE p.recovery_point <> 'finished' AND p.updated_at < now() - p_stuck_after
    UNION ALL
    SELECT 'warning', 'saga in flight', r.refund_id,
           format('refund at %s since %s', r.recovery_point, r.updated_at)
      FROM payq.refunds r
     WHERE r.recovery_point <> 'finished' AND r.updated_at < now() - p_stuck_after
    UNION ALL
    -- 8. one outbox event per state change
    SELECT 'violation', 'event in outbox', ev.payment_id || ' v' || ev.version,
           format('%s has no outbox row', ev.type)
      FROM payq.payment_events ev
     WHERE NOT EXISTS (SELECT 1 FROM payq.outbox o WHERE o.event_id = ev.event_id)
    UNION ALL
    -- 7. the history rebuilds the state (payments with no step in flight)
    SELECT 'violation', 'events rebuild state', p.payment_id,
           format('stored %s/%s/%s/%s/%s, rebuilt %s/%s/%s/%s/%s (status/captured/refunded/fee/authorized)',
                  p.status, p.captured_amount, p.refunded_amount, p.fee, p.authorized_amount,
                  rb.status, rb.captured_amount, rb.refunded_amount, rb.fee, rb.authorized_amount)
      FROM payq.payments p
     CROSS JOIN LATERAL payq.payment_rebuild(p.payment_id) rb
     WHERE p.recovery_point = 'finished'
       AND NOT EXISTS (SELECT 1 FROM payq.refunds r
                        WHERE r.payment_id = p.payment_id AND r.recovery_point <> 'finished')
       AND (rb.status IS DISTINCT FROM p.status OR rb.captured_amount <> p.captured_amount
            OR rb.refunded_amount <> p.refunded_amount OR rb.fee <> p.fee
            OR rb.authorized_amount <> p.authorized_amount);
$$;
