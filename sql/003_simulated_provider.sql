-- 003_simulated_provider.sql - the built-in simulated card provider's own state.
--
-- The simulated provider stands in for an external card processor (Stripe-like)
-- so demos and tests need nothing outside. It lives in its own schema because
-- conceptually it is another system: payq's worker talks to it only through
-- the provider interface (shared/provider.h), in its own transactions,
-- never inside a saga phase. Like a real processor it is idempotent by key:
-- the same idempotency key always gets the same answer, and an operation
-- is performed once however often it is asked for.
--
-- Tokens (see README "Simulated provider"):
--   tok_visa, tok_mastercard, tok_amex   approved
--   tok_chargeDeclined                   declined: card_declined
--   tok_insufficientFunds                declined: insufficient_funds
--   tok_riskHighest                      approved, issuer risk score 99 (payq's fraud rule voids it)
--   tok_captureDeclined                  authorization approved, capture declined
--   tok_timeout<N>                       the authorization times out N times (N = 1..9), then is approved
--   tok_rateLimited                      the first authorization call is refused "busy, retry after
--                                        4 s" (like HTTP 429 with Retry-After), then approved
--   tok_flaky                            fails transiently at a configured rate, else approved
--   tok_slow                             approved after a configured delay
--   any other tok_...                    declined: card_declined (unknown token)

CREATE SCHEMA IF NOT EXISTS payq_sim;

CREATE TABLE payq_sim.operations (
    idempotency_key  text PRIMARY KEY,
    op               text NOT NULL,
    token            text,
    auth_id          text,
    amount           bigint,
    currency         char(3),
    calls            integer NOT NULL DEFAULT 1,  -- how often it was asked
    result           jsonb,                       -- NULL until performed
    created_at       timestamptz NOT NULL DEFAULT now(),
    performed_at     timestamptz
);
CREATE INDEX operations_auth ON payq_sim.operations (auth_id);

-- Performs (or answers again) one operation. Returns the answer as
-- {"key", "status": "approved"|"declined", "auth_id"?, "risk"?, "code"?,
-- "message"?}, or {"status": "timeout"} when this call simulates a timeout
-- (nothing performed). p_request: {"token"?, "auth_id"?, "amount"?, "currency"?}.
CREATE FUNCTION payq_sim.perform(p_key text, p_op text, p_request jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o payq_sim.operations;
    tok text;
    n integer;
    res jsonb;
BEGIN
    INSERT INTO payq_sim.operations (idempotency_key, op, token, auth_id, amount, currency)
    VALUES (p_key, p_op, p_request->>'token', p_request->>'auth_id',
            (p_request->>'amount')::bigint, p_request->>'currency')
    ON CONFLICT (idempotency_key) DO UPDATE SET calls = payq_sim.operations.calls + 1
    RETURNING * INTO o;
    IF o.result IS NOT NULL THEN
        RETURN o.result;
    END IF;

    -- The token of the card: given for authorize, looked up by auth_id after.
    tok := COALESCE(o.token, (SELECT token FROM payq_sim.operations
                               WHERE auth_id = o.auth_id AND op = 'authorize' LIMIT 1));
    IF p_op = 'authorize' AND tok ~ '^tok_timeout[1-9]$' THEN
        n := substr(tok, 12)::integer;
        IF o.calls <= n THEN
            RETURN jsonb_build_object('key', p_key, 'status', 'timeout');
        END IF;
    END IF;

    IF p_op = 'authorize' AND tok = 'tok_rateLimited' AND o.calls = 1 THEN
        RETURN jsonb_build_object('key', p_key, 'status', 'busy', 'retry_after_ms', 4000);
    END IF;

    res := CASE
        WHEN p_op = 'authorize' AND tok = 'tok_chargeDeclined' THEN
            jsonb_build_object('status', 'declined', 'code', 'card_declined',
                               'message', 'the card issuer declined the charge')
        WHEN p_op = 'authorize' AND tok = 'tok_insufficientFunds' THEN
            jsonb_build_object('status', 'declined', 'code', 'card_declined',
                               'message', 'the card has insufficient funds')
        WHEN p_op = 'authorize' AND tok NOT IN ('tok_visa', 'tok_mastercard', 'tok_amex',
                                                 'tok_riskHighest', 'tok_captureDeclined',
                                                 'tok_flaky', 'tok_slow', 'tok_rateLimited')
                                AND tok !~ '^tok_timeout[1-9]$' THEN
            jsonb_build_object('status', 'declined', 'code', 'card_declined',
                               'message', 'unknown card token')
        WHEN p_op = 'authorize' THEN
            jsonb_build_object('status', 'approved',
                               'auth_id', 'auth_' || substr(md5(p_key), 1, 16),
                               'risk', CASE tok WHEN 'tok_riskHighest' THEN 99 ELSE 10 END)
        WHEN p_op = 'capture' AND tok = 'tok_captureDeclined' THEN
            jsonb_build_object('status', 'declined', 'code', 'card_declined',
                               'message', 'the issuer refused the capture')
        ELSE jsonb_build_object('status', 'approved')
    END || jsonb_build_object('key', p_key);
    UPDATE payq_sim.operations
       SET result = res, performed_at = now(),
           auth_id = COALESCE(auth_id, res->>'auth_id')
     WHERE idempotency_key = p_key;
    RETURN res;
END $$;
