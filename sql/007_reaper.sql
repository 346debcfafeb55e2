-- 007_reaper.sql - what the worker's reaper does about work left behind.
--
-- Every saga ends (DESIGN.md invariant 6): a payment is terminal, or in
-- flight with a recovery point, and the reaper resumes those in flight for
-- too long (their command was dead-lettered mid-saga, say) from that
-- recovery point, and expires wallet holds that were never captured.

-- Expires wallet authorizations whose hold is past its deadline: the hold
-- is released (the funds are available again), the payment is canceled and
-- its history says why. At most p_limit per call; skips rows another worker
-- holds. Returns how many expired.
CREATE FUNCTION payq.expire_holds(p_limit integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    h record;
    p payq.payments;
    n integer := 0;
BEGIN
    FOR h IN SELECT payment_id FROM payq.holds
              WHERE status = 'active' AND expires_at < now()
              ORDER BY expires_at LIMIT p_limit
              FOR UPDATE SKIP LOCKED LOOP
        SELECT * INTO p FROM payq.payments WHERE payment_id = h.payment_id FOR UPDATE;
        IF p.status <> 'authorized' OR p.recovery_point <> 'finished' THEN
            CONTINUE;
        END IF;
        UPDATE payq.holds SET status = 'expired' WHERE payment_id = h.payment_id;
        UPDATE payq.payments SET status = 'canceled' WHERE payment_id = h.payment_id;
        PERFORM payq.emit('payment.canceled', p.payment_id, p.correlation_id,
                          payq.payment_fields(p) || '{"reason": "authorization expired"}',
                          p.payment_id);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Payments whose saga has been in flight longer than p_after, oldest first.
CREATE FUNCTION payq.stuck_payments(p_after interval, p_limit integer DEFAULT 20)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT payment_id FROM payq.payments
     WHERE recovery_point <> 'finished' AND updated_at < now() - p_after
     ORDER BY updated_at LIMIT p_limit;
$$;

-- One phase of a payment's saga without its command (the reaper): the same
-- engine as payq.apply_command, from the recovery point.
CREATE FUNCTION payq.resume_payment(p_payment_id text, p_answer jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
BEGIN
    SELECT * INTO p FROM payq.payments WHERE payment_id = p_payment_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR p.recovery_point = 'finished' THEN
        RETURN jsonb_build_object('reply', NULL);
    END IF;
    -- updated_at moves, so two reapers never work the same payment at once
    UPDATE payq.payments SET updated_at = now() WHERE payment_id = p_payment_id;
    RETURN payq.payment_step(p_payment_id, p_answer, p.correlation_id);
END $$;
