-- 002_commands.sql - idempotency, payments as sagas, refunds, fraud rules,
-- events, outbox, and the entry point the worker calls.
--
-- The worker validates a command in C (CONTRACT.md rules), then calls
-- payq.apply_command(). Each call is one transaction: one atomic phase of the
-- command's saga. A phase either finishes the command (the result carries the
-- reply) or stops in front of an external call to the payment provider (the
-- result carries the call to make). The worker makes the call and calls
-- apply_command again with the provider's answer; the next phase records it
-- and goes on. The intent of every provider call is recorded (table
-- provider_calls) before the call is made, with a deterministic idempotency
-- key, so a crash before the answer is recorded is resolved by asking the
-- provider again with the same key, never by charging twice.
--
-- Phases are cut only where an external call sits between two steps: a
-- wallet payment has no external call and runs validate, fraud check,
-- reserve, post and capture in one transaction (the recovery point moves
-- from 'started' to 'finished' at once). A card payment has three phases:
--   started            validate, fraud check, record the authorize intent
--   authorize_started  record the answer; declined -> failed; risky ->
--                      compensate (void); else record the capture intent
--   capture_started    record the answer; post the ledger -> succeeded
--   void_started       (compensation or cancel) record the void -> failed / canceled
-- A redelivered or replayed command resumes at its recovery point.
--
-- Two layers of idempotency make a redelivery, a duplicate publish or a
-- replay harmless: payq.inbox (publisher scope, message_id) and the business
-- keys (deposit_id, payment_id for create/capture/cancel, refund_id), each
-- keeping the hash of its parameters and the reply it produced. Both are
-- claimed with INSERT ... ON CONFLICT DO NOTHING in the same transaction as
-- the effect: a concurrent duplicate waits on the unique index until the
-- first commits, then finds the stored reply or resumes the saga.

-- Message-level idempotency keys. reply IS NULL while the command's saga is
-- in progress (such rows are never pruned).
CREATE TABLE payq.inbox (
    scope         text NOT NULL,            -- the publisher (AMQP user_id), '' when unset
    message_id    text NOT NULL,
    command       text NOT NULL,
    request_hash  bytea NOT NULL,
    reply         jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, message_id)
);
CREATE INDEX inbox_created_at ON payq.inbox (created_at);

-- Forgets message-level keys older than p_keep whose command finished (at
-- most p_batch per call, so no long lock). Business keys are never pruned.
CREATE FUNCTION payq.prune_inbox(p_keep interval, p_batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE sql AS $$
    WITH old AS (
        SELECT scope, message_id FROM payq.inbox
         WHERE created_at < now() - p_keep AND reply IS NOT NULL
         ORDER BY created_at LIMIT p_batch
    ), gone AS (
        DELETE FROM payq.inbox i USING old
         WHERE i.scope = old.scope AND i.message_id = old.message_id
        RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;

CREATE TABLE payq.deposits (
    deposit_id    text PRIMARY KEY,
    account_id    text NOT NULL,
    amount        bigint NOT NULL CHECK (amount > 0),
    currency      char(3) NOT NULL,
    request_hash  bytea NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code  text,
    posting_id    bigint REFERENCES payq.postings (id),
    reply         jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payq.payments (
    payment_id        text PRIMARY KEY,
    amount            bigint NOT NULL CHECK (amount > 0),
    currency          char(3) NOT NULL,
    source            text NOT NULL,
    source_kind       text NOT NULL CHECK (source_kind IN ('wallet', 'card')),
    destination       text NOT NULL,
    capture           boolean NOT NULL,
    description       text,
    metadata          jsonb,
    request_hash      bytea NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'authorized', 'succeeded',
                                                      'failed', 'canceled', 'refunded')),
    failure_code      text,
    failure_message   text,
    authorized_amount bigint NOT NULL DEFAULT 0 CHECK (authorized_amount >= 0),
    captured_amount   bigint NOT NULL DEFAULT 0 CHECK (captured_amount >= 0),
    -- refunds that succeeded or are in flight at the provider
    refunded_amount   bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    fee               bigint NOT NULL DEFAULT 0 CHECK (fee >= 0),
    provider_auth_id  text,
    risk_score        integer,
    -- The saga: which command's steps are running, and the last phase that
    -- committed. 'finished' = no step in flight.
    saga_command      text NOT NULL DEFAULT 'payment.create',
    recovery_point    text NOT NULL DEFAULT 'started'
                      CHECK (recovery_point IN ('started', 'authorize_started',
                                                'capture_started', 'void_started', 'finished')),
    capture_request   bytea,     -- hash of the payment.capture command, once seen
    capture_amount    bigint,
    capture_reply     jsonb,
    cancel_request    bytea,     -- hash of the payment.cancel command, once seen
    cancel_reply      jsonb,
    version           integer NOT NULL DEFAULT 0,
    correlation_id    text,
    reply             jsonb,     -- payment.create's reply, once finished
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT authorized_within_amount CHECK (authorized_amount <= amount),
    CONSTRAINT captured_within_amount CHECK (captured_amount <= amount),
    CONSTRAINT refunds_within_captured CHECK (refunded_amount <= captured_amount),
    CONSTRAINT fee_within_captured CHECK (fee <= greatest(captured_amount, 0))
);
CREATE INDEX payments_status ON payq.payments (status, updated_at);
CREATE INDEX payments_in_flight ON payq.payments (updated_at) WHERE recovery_point <> 'finished';
CREATE INDEX payments_source_time ON payq.payments (source, created_at);

CREATE TABLE payq.refunds (
    refund_id       text PRIMARY KEY,
    payment_id      text NOT NULL,
    amount          bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    reason          text,
    request_hash    bytea NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code    text,
    recovery_point  text NOT NULL DEFAULT 'started'
                    CHECK (recovery_point IN ('started', 'refund_started', 'finished')),
    correlation_id  text,
    reply           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON payq.refunds (payment_id);

-- Every call to the payment provider, recorded before it is made. The key is
-- derived from (business id, step), so asking again after a crash is safe.
CREATE TABLE payq.provider_calls (
    idempotency_key  text PRIMARY KEY,
    payment_id       text NOT NULL,
    op               text NOT NULL CHECK (op IN ('authorize', 'capture', 'void', 'refund')),
    request          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'started'
                     CHECK (status IN ('started', 'approved', 'declined')),
    result           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    answered_at      timestamptz
);
CREATE INDEX provider_calls_payment ON payq.provider_calls (payment_id);

-- The event store: every state change of a payment, in order (version).
CREATE TABLE payq.payment_events (
    payment_id   text NOT NULL REFERENCES payq.payments (payment_id),
    version      integer NOT NULL,
    event_id     uuid NOT NULL UNIQUE,
    type         text NOT NULL,
    data         jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, version)
);
CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
    ON payq.payment_events FOR EACH STATEMENT EXECUTE FUNCTION payq.append_only();

-- Transactional outbox: events to publish to payq.events, written in the
-- same transaction as the state change they describe; the relay publishes
-- them in id order (which, for one payment, is the order of its events).
CREATE TABLE payq.outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    routing_key     text NOT NULL,
    body            jsonb NOT NULL,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished ON payq.outbox (id) WHERE published_at IS NULL;

-- Platform fee per merchant (NULL merchant = the default): basis points plus
-- a fixed amount in minor units, per currency.
CREATE TABLE payq.fee_rules (
    merchant     text,
    currency     char(3) NOT NULL,
    bps          integer NOT NULL CHECK (bps BETWEEN 0 AND 10000),
    fixed        bigint NOT NULL DEFAULT 0 CHECK (fixed >= 0),
    UNIQUE NULLS NOT DISTINCT (merchant, currency)
);

-- Fraud rules per currency (NULL currency = the default for all others).
-- Any NULL limit is off. A hit fails the payment with fraud_suspected.
CREATE TABLE payq.fraud_rules (
    currency             char(3) UNIQUE NULLS NOT DISTINCT,
    max_amount           bigint CHECK (max_amount > 0),       -- per payment
    velocity_window      interval NOT NULL DEFAULT interval '1 minute',
    velocity_max_count   integer CHECK (velocity_max_count > 0),   -- payments per source in the window
    velocity_max_amount  bigint CHECK (velocity_max_amount > 0),   -- their sum
    max_risk_score       integer CHECK (max_risk_score BETWEEN 0 AND 100) -- card issuer's risk score
);
INSERT INTO payq.fraud_rules (currency, max_risk_score) VALUES (NULL, 75);

CREATE TABLE payq.fraud_blocklist (
    source      text PRIMARY KEY,             -- a wallet account id or a card token
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Fee for an amount: round-half-up(amount * bps / 10000) + fixed, never more
-- than the amount. numeric keeps amount * bps (up to 10^19) exact.
CREATE FUNCTION payq.fee_for(p_merchant text, p_currency text, p_amount bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((
        SELECT least(p_amount, div(p_amount::numeric * r.bps + 5000, 10000)::bigint + r.fixed)
          FROM payq.fee_rules r
         WHERE r.currency = p_currency AND (r.merchant = p_merchant OR r.merchant IS NULL)
         ORDER BY r.merchant NULLS LAST
         LIMIT 1), 0);
$$;

-- Appends an event to the outbox (and, for payments, to the event store
-- with the next version), and wakes the relay.
CREATE FUNCTION payq.emit(p_type text, p_id text, p_correlation_id text, p_fields jsonb,
                          p_payment_id text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    eid uuid := gen_random_uuid();
    body jsonb;
    v integer;
BEGIN
    body := jsonb_build_object('event_id', eid, 'type', p_type,
                               'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                                      'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                               'id', p_id)
            || CASE WHEN p_correlation_id IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('correlation_id', p_correlation_id) END
            || p_fields;
    IF p_payment_id IS NOT NULL THEN
        UPDATE payq.payments SET version = version + 1, updated_at = now()
         WHERE payment_id = p_payment_id RETURNING version INTO v;
        INSERT INTO payq.payment_events (payment_id, version, event_id, type, data)
        VALUES (p_payment_id, v, eid, p_type, body);
    END IF;
    INSERT INTO payq.outbox (event_id, routing_key, body, correlation_id)
    VALUES (eid, p_type, body, p_correlation_id);
    PERFORM pg_notify('payq_outbox', '');
END $$;

CREATE FUNCTION payq.reply(p_command text, p_id text, p_status text, p_code text DEFAULT NULL,
                           p_message text DEFAULT NULL, p_extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('command', p_command, 'id', p_id,
                                                'status', p_status, 'code', p_code,
                                                'message', p_message)) || p_extra;
$$;

-- The result of a phase: finished, with the reply ...
CREATE FUNCTION payq.done(p_reply jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$ SELECT jsonb_build_object('reply', p_reply) $$;

-- ... or stopped in front of a provider call, whose intent is recorded here.
CREATE FUNCTION payq.call_provider(p_key text, p_payment_id text, p_op text, p_request jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO payq.provider_calls (idempotency_key, payment_id, op, request)
    VALUES (p_key, p_payment_id, p_op, p_request)
    ON CONFLICT (idempotency_key) DO NOTHING;
    RETURN jsonb_build_object('call', p_request || jsonb_build_object('op', p_op, 'key', p_key));
END $$;

-- The provider's answer to the call with key p_key, if the worker brought
-- it in this call (p_answer), recorded once; NULL when there is none yet.
CREATE FUNCTION payq.provider_answer(p_key text, p_answer jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c payq.provider_calls;
BEGIN
    SELECT * INTO c FROM payq.provider_calls WHERE idempotency_key = p_key FOR UPDATE;
    IF c.status <> 'started' THEN
        RETURN c.result;
    END IF;
    IF p_answer IS NULL OR p_answer->>'key' IS DISTINCT FROM p_key THEN
        RETURN NULL;
    END IF;
    UPDATE payq.provider_calls
       SET status = p_answer->>'status', result = p_answer, answered_at = now()
     WHERE idempotency_key = p_key;
    RETURN p_answer;
END $$;

-- A transient refusal: the command is retried later (SQLSTATE 55006 is
-- classified transient by the worker).
CREATE FUNCTION payq.busy(p_message text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', p_message USING ERRCODE = 'object_in_use';
END $$;

-- account.open {account, currency, kind}
CREATE FUNCTION payq.cmd_account_open(b jsonb, p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    acc payq.accounts;
    fields jsonb := jsonb_build_object('account', b->>'account', 'currency', b->>'currency',
                                       'kind', b->>'kind');
BEGIN
    PERFORM payq.ensure_system_accounts(b->>'currency');
    INSERT INTO payq.accounts (id, currency, kind)
    VALUES (b->>'account', b->>'currency', b->>'kind')
    ON CONFLICT (id) DO NOTHING
    RETURNING * INTO acc;
    IF FOUND THEN
        PERFORM payq.emit('account.opened', b->>'account', p_corr, fields);
        RETURN payq.done(payq.reply('account.open', b->>'account', 'succeeded', p_extra => fields));
    END IF;
    SELECT * INTO acc FROM payq.accounts WHERE id = b->>'account';
    IF acc.currency = b->>'currency' AND acc.kind = b->>'kind' THEN
        RETURN payq.done(payq.reply('account.open', b->>'account', 'succeeded', p_extra => fields));
    END IF;
    RETURN payq.done(payq.reply('account.open', b->>'account', 'rejected', 'idempotency_conflict',
                                format('account %s is already open as a %s account in %s',
                                       acc.id, acc.kind, acc.currency)));
END $$;

-- account.deposit {deposit_id, account, amount, currency}
CREATE FUNCTION payq.cmd_account_deposit(b jsonb, p_hash bytea, p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    d payq.deposits;
    acc payq.accounts;
    amt bigint := (b->>'amount')::bigint;
    cur text := b->>'currency';
    r jsonb;
    fields jsonb;
BEGIN
    INSERT INTO payq.deposits (deposit_id, account_id, amount, currency, request_hash, status)
    VALUES (b->>'deposit_id', b->>'account', amt, cur, p_hash, 'pending')
    ON CONFLICT (deposit_id) DO NOTHING
    RETURNING * INTO d;
    IF NOT FOUND THEN
        SELECT * INTO d FROM payq.deposits WHERE deposit_id = b->>'deposit_id';
        IF d.request_hash <> p_hash THEN
            RETURN payq.done(payq.reply('account.deposit', d.deposit_id, 'rejected',
                                        'idempotency_conflict',
                                        'deposit_id was already used with different parameters'));
        END IF;
        RETURN payq.done(d.reply);
    END IF;

    fields := jsonb_build_object('account', d.account_id, 'amount', amt, 'currency', cur);
    SELECT * INTO acc FROM payq.accounts WHERE id = d.account_id AND kind IN ('customer', 'merchant');
    IF NOT FOUND THEN
        r := payq.reply('account.deposit', d.deposit_id, 'failed', 'account_not_found',
                        format('no customer or merchant account %s', d.account_id), fields);
        UPDATE payq.deposits SET status = 'failed', failure_code = 'account_not_found', reply = r
         WHERE deposit_id = d.deposit_id;
        RETURN payq.done(r);
    ELSIF acc.currency <> cur THEN
        r := payq.reply('account.deposit', d.deposit_id, 'failed', 'currency_mismatch',
                        format('account %s holds %s, not %s', acc.id, acc.currency, cur), fields);
        UPDATE payq.deposits SET status = 'failed', failure_code = 'currency_mismatch', reply = r
         WHERE deposit_id = d.deposit_id;
        RETURN payq.done(r);
    END IF;

    PERFORM payq.ensure_system_accounts(cur);
    r := payq.reply('account.deposit', d.deposit_id, 'succeeded', p_extra => fields);
    UPDATE payq.deposits
       SET status = 'succeeded', reply = r,
           posting_id = payq.post('deposit', d.deposit_id, cur,
                                  ARRAY['@external:' || cur, d.account_id], ARRAY[-amt, amt])
     WHERE deposit_id = d.deposit_id;
    PERFORM payq.emit('account.deposited', d.deposit_id, p_corr, fields);
    RETURN payq.done(r);
END $$;

-- The fields every payment event and reply carries.
CREATE FUNCTION payq.payment_fields(p payq.payments) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('amount', p.amount, 'currency', p.currency, 'source', p.source,
                              'destination', p.destination);
$$;

-- Ends payment.create's saga as failed: appends payment.failed, stores and
-- returns the reply.
CREATE FUNCTION payq.payment_fail(p payq.payments, p_code text, p_message text, p_corr text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := payq.reply('payment.create', p.payment_id, 'failed', p_code, p_message,
                          jsonb_build_object('amount', p.amount, 'currency', p.currency));
BEGIN
    UPDATE payq.payments
       SET status = 'failed', failure_code = p_code, failure_message = p_message,
           recovery_point = 'finished', reply = r
     WHERE payment_id = p.payment_id;
    PERFORM payq.emit('payment.failed', p.payment_id, p_corr,
                      payq.payment_fields(p) || jsonb_build_object('code', p_code,
                                                                   'message', p_message),
                      p.payment_id);
    RETURN payq.done(r);
END $$;

-- Fraud checks before any money moves: blocklist, amount limit, velocity of
-- the source. Returns a message when a rule is hit, else NULL.
CREATE FUNCTION payq.fraud_check(p payq.payments) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    rule payq.fraud_rules;
    n bigint;
    total numeric;
BEGIN
    IF EXISTS (SELECT 1 FROM payq.fraud_blocklist WHERE source = p.source) THEN
        RETURN 'the source is on the blocklist';
    END IF;
    SELECT * INTO rule FROM payq.fraud_rules
     WHERE currency = p.currency OR currency IS NULL
     ORDER BY currency NULLS LAST LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF rule.max_amount IS NOT NULL AND p.amount > rule.max_amount THEN
        RETURN format('amount above the limit of %s minor units', rule.max_amount);
    END IF;
    IF rule.velocity_max_count IS NOT NULL OR rule.velocity_max_amount IS NOT NULL THEN
        -- Counts this payment too, and every attempt in the window.
        SELECT count(*), COALESCE(sum(amount), 0) INTO n, total
          FROM payq.payments
         WHERE source = p.source AND currency = p.currency
           AND created_at > now() - rule.velocity_window;
        IF rule.velocity_max_count IS NOT NULL AND n > rule.velocity_max_count THEN
            RETURN format('more than %s payments from this source within %s',
                          rule.velocity_max_count, rule.velocity_window);
        END IF;
        IF rule.velocity_max_amount IS NOT NULL AND total > rule.velocity_max_amount THEN
            RETURN format('more than %s minor units from this source within %s',
                          rule.velocity_max_amount, rule.velocity_window);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION payq.max_risk_score(p_currency text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT max_risk_score FROM payq.fraud_rules
     WHERE currency = p_currency OR currency IS NULL
     ORDER BY currency NULLS LAST LIMIT 1;
$$;

-- Posts a capture: payer (wallet or the card clearing account) -amount,
-- merchant +(amount - fee), platform +fee. Returns the fee.
CREATE FUNCTION payq.post_capture(p payq.payments, p_amount bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    fee bigint := payq.fee_for(p.destination, p.currency, p_amount);
    payer text := CASE p.source_kind WHEN 'wallet' THEN p.source ELSE '@card:' || p.currency END;
BEGIN
    PERFORM payq.ensure_system_accounts(p.currency);
    PERFORM payq.post('capture', p.payment_id, p.currency,
                      ARRAY[payer, p.destination, '@platform:' || p.currency],
                      ARRAY[-p_amount, p_amount - fee, fee]);
    RETURN fee;
END $$;

-- Marks a payment captured for p_amount: status succeeded, and the event
-- (payment.succeeded for a create with capture, payment.captured for a
-- payment.capture). Returns the reply.
CREATE FUNCTION payq.payment_captured(p payq.payments, p_amount bigint, p_fee bigint,
                                      p_command text, p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    fields jsonb := payq.payment_fields(p) ||
                    jsonb_build_object('amount', p_amount, 'fee', p_fee,
                                       'authorized_amount', greatest(p.authorized_amount, p_amount));
    r jsonb := payq.reply(p_command, p.payment_id, 'succeeded', p_extra =>
                          jsonb_build_object('amount', p_amount, 'currency', p.currency,
                                             'fee', p_fee));
BEGIN
    UPDATE payq.payments
       SET status = 'succeeded', captured_amount = p_amount, fee = p_fee,
           authorized_amount = greatest(authorized_amount, p_amount),
           recovery_point = 'finished',
           reply = CASE WHEN p_command = 'payment.create' THEN r ELSE reply END,
           capture_reply = CASE WHEN p_command = 'payment.capture' THEN r ELSE capture_reply END
     WHERE payment_id = p.payment_id;
    PERFORM payq.emit(CASE p_command WHEN 'payment.create' THEN 'payment.succeeded'
                                     ELSE 'payment.captured' END,
                      p.payment_id, p_corr, fields, p.payment_id);
    RETURN r;
END $$;

-- Marks a payment authorized (a hold on the wallet, or at the card issuer).
CREATE FUNCTION payq.payment_authorized(p payq.payments, p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := payq.reply('payment.create', p.payment_id, 'authorized', p_extra =>
                          jsonb_build_object('amount', p.amount, 'currency', p.currency));
BEGIN
    UPDATE payq.payments
       SET status = 'authorized', authorized_amount = p.amount, recovery_point = 'finished',
           reply = r
     WHERE payment_id = p.payment_id;
    PERFORM payq.emit('payment.authorized', p.payment_id, p_corr, payq.payment_fields(p),
                      p.payment_id);
    RETURN r;
END $$;

-- The saga engine of a payment: runs the phase its recovery point names.
-- p_answer is the provider's answer to the call the previous phase asked
-- for, if the worker brings one.
CREATE FUNCTION payq.payment_step(p_id text, p_answer jsonb, p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
    a jsonb;
    msg text;
    r jsonb;
    v_fee bigint;
    amt bigint;
BEGIN
    SELECT * INTO p FROM payq.payments WHERE payment_id = p_id FOR UPDATE;

    IF p.recovery_point = 'started' THEN
        -- validate
        PERFORM 1 FROM payq.accounts
         WHERE id = p.destination AND kind = 'merchant' AND currency = p.currency;
        IF NOT FOUND THEN
            IF EXISTS (SELECT 1 FROM payq.accounts WHERE id = p.destination AND kind = 'merchant') THEN
                RETURN payq.payment_fail(p, 'currency_mismatch',
                                         format('merchant %s does not hold %s', p.destination,
                                                p.currency), p_corr);
            END IF;
            RETURN payq.payment_fail(p, 'account_not_found',
                                     format('no merchant account %s', p.destination), p_corr);
        END IF;
        IF p.source_kind = 'wallet' THEN
            PERFORM 1 FROM payq.accounts WHERE id = p.source AND kind = 'customer';
            IF NOT FOUND THEN
                RETURN payq.payment_fail(p, 'account_not_found',
                                         format('no customer account %s', p.source), p_corr);
            END IF;
            PERFORM 1 FROM payq.accounts WHERE id = p.source AND currency = p.currency;
            IF NOT FOUND THEN
                RETURN payq.payment_fail(p, 'currency_mismatch',
                                         format('wallet %s does not hold %s', p.source,
                                                p.currency), p_corr);
            END IF;
        END IF;
        -- fraud check
        msg := payq.fraud_check(p);
        IF msg IS NOT NULL THEN
            RETURN payq.payment_fail(p, 'fraud_suspected', msg, p_corr);
        END IF;

        IF p.source_kind = 'card' THEN
            UPDATE payq.payments SET recovery_point = 'authorize_started' WHERE payment_id = p_id;
            RETURN payq.call_provider(p_id || ':authorize', p_id, 'authorize',
                                      jsonb_build_object('token', p.source, 'amount', p.amount,
                                                         'currency', p.currency));
        END IF;

        -- reserve: lock the wallet, then check its available balance. Only
        -- the wallet is locked: the merchant's balance is the sum of its
        -- entries, so payments to one merchant never wait for each other.
        PERFORM 1 FROM payq.accounts WHERE id = p.source FOR UPDATE;
        PERFORM 1 FROM payq.accounts WHERE id = p.source AND posted - pending >= p.amount;
        IF NOT FOUND THEN
            RETURN payq.payment_fail(p, 'insufficient_funds',
                                     format('available balance of %s is lower than the amount',
                                            p.source), p_corr);
        END IF;
        IF NOT p.capture THEN
            INSERT INTO payq.holds (payment_id, account_id, amount)
            VALUES (p_id, p.source, p.amount);
            RETURN payq.done(payq.payment_authorized(p, p_corr));
        END IF;
        -- capture at once: reserve and capture in the same transaction, with
        -- the accounts locked, need no hold; the posting debits the wallet.
        v_fee := payq.post_capture(p, p.amount);
        RETURN payq.done(payq.payment_captured(p, p.amount, v_fee, 'payment.create', p_corr));
    END IF;

    IF p.recovery_point = 'authorize_started' THEN
        a := payq.provider_answer(p_id || ':authorize', p_answer);
        IF a IS NULL THEN
            RETURN payq.call_provider(p_id || ':authorize', p_id, 'authorize',
                                      jsonb_build_object('token', p.source, 'amount', p.amount,
                                                         'currency', p.currency));
        END IF;
        IF a->>'status' = 'declined' THEN
            RETURN payq.payment_fail(p, COALESCE(a->>'code', 'card_declined'),
                                     COALESCE(a->>'message', 'the card was declined'), p_corr);
        END IF;
        UPDATE payq.payments
           SET provider_auth_id = a->>'auth_id', risk_score = (a->>'risk')::integer
         WHERE payment_id = p_id RETURNING * INTO p;
        IF p.risk_score > payq.max_risk_score(p.currency) THEN
            -- Compensation: the issuer approved, payq refuses; void the
            -- authorization before failing the payment.
            UPDATE payq.payments
               SET recovery_point = 'void_started', failure_code = 'fraud_suspected',
                   failure_message = format('issuer risk score %s is above the limit of %s',
                                            p.risk_score, payq.max_risk_score(p.currency))
             WHERE payment_id = p_id;
            RETURN payq.call_provider(p_id || ':void', p_id, 'void',
                                      jsonb_build_object('auth_id', p.provider_auth_id));
        END IF;
        IF NOT p.capture THEN
            UPDATE payq.payments SET recovery_point = 'finished' WHERE payment_id = p_id
            RETURNING * INTO p;
            RETURN payq.done(payq.payment_authorized(p, p_corr));
        END IF;
        UPDATE payq.payments SET recovery_point = 'capture_started', capture_amount = p.amount
         WHERE payment_id = p_id;
        RETURN payq.call_provider(p_id || ':capture', p_id, 'capture',
                                  jsonb_build_object('auth_id', p.provider_auth_id,
                                                     'amount', p.amount, 'currency', p.currency));
    END IF;

    IF p.recovery_point = 'capture_started' THEN
        a := payq.provider_answer(p_id || ':capture', p_answer);
        IF a IS NULL THEN
            RETURN payq.call_provider(p_id || ':capture', p_id, 'capture',
                                      jsonb_build_object('auth_id', p.provider_auth_id,
                                                         'amount', p.capture_amount,
                                                         'currency', p.currency));
        END IF;
        IF a->>'status' = 'declined' THEN
            -- Compensation: release the authorization.
            UPDATE payq.payments
               SET recovery_point = 'void_started',
                   failure_code = COALESCE(a->>'code', 'card_declined'),
                   failure_message = COALESCE(a->>'message', 'the capture was declined')
             WHERE payment_id = p_id;
            RETURN payq.call_provider(p_id || ':void', p_id, 'void',
                                      jsonb_build_object('auth_id', p.provider_auth_id));
        END IF;
        amt := p.capture_amount;
        v_fee := payq.post_capture(p, amt);
        RETURN payq.done(payq.payment_captured(p, amt, v_fee, p.saga_command, p_corr));
    END IF;

    IF p.recovery_point = 'void_started' THEN
        a := payq.provider_answer(p_id || ':void', p_answer);
        IF a IS NULL THEN
            RETURN payq.call_provider(p_id || ':void', p_id, 'void',
                                      jsonb_build_object('auth_id', p.provider_auth_id));
        END IF;
        IF p.saga_command = 'payment.cancel' THEN
            r := payq.reply('payment.cancel', p_id, 'succeeded', p_extra =>
                            jsonb_build_object('amount', p.authorized_amount,
                                               'currency', p.currency));
            UPDATE payq.payments
               SET status = 'canceled', recovery_point = 'finished', cancel_reply = r
             WHERE payment_id = p_id;
            PERFORM payq.emit('payment.canceled', p_id, p_corr, payq.payment_fields(p), p_id);
            RETURN payq.done(r);
        END IF;
        IF p.saga_command = 'payment.capture' THEN
            -- The capture was refused at the provider: the authorization is
            -- void now, so the payment ends failed.
            r := payq.reply('payment.capture', p_id, 'failed', p.failure_code,
                            p.failure_message);
            UPDATE payq.payments
               SET status = 'failed', recovery_point = 'finished', capture_reply = r
             WHERE payment_id = p_id;
            PERFORM payq.emit('payment.failed', p_id, p_corr,
                              payq.payment_fields(p) ||
                              jsonb_build_object('code', p.failure_code,
                                                 'message', p.failure_message), p_id);
            RETURN payq.done(r);
        END IF;
        RETURN payq.payment_fail(p, p.failure_code, p.failure_message, p_corr);
    END IF;

    -- finished: the reply of the command whose saga this was.
    RETURN payq.done(CASE p.saga_command WHEN 'payment.capture' THEN p.capture_reply
                                         WHEN 'payment.cancel' THEN p.cancel_reply
                                         ELSE p.reply END);
END $$;

-- payment.create {payment_id, amount, currency, source, destination, capture, description?, metadata?}
CREATE FUNCTION payq.cmd_payment_create(b jsonb, p_hash bytea, p_corr text, p_answer jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
BEGIN
    INSERT INTO payq.payments (payment_id, amount, currency, source, source_kind, destination,
                               capture, description, metadata, request_hash, status,
                               correlation_id)
    VALUES (b->>'payment_id', (b->>'amount')::bigint, b->>'currency', b->>'source',
            CASE WHEN starts_with(b->>'source', 'tok_') THEN 'card' ELSE 'wallet' END,
            b->>'destination', (b->>'capture')::boolean, b->>'description', b->'metadata',
            p_hash, 'pending', p_corr)
    ON CONFLICT (payment_id) DO NOTHING
    RETURNING * INTO p;
    IF FOUND THEN
        -- A card payment leaves its first phase in flight (pending, waiting
        -- for the provider): that state is visible, so it has an event. A
        -- wallet payment goes from nothing to its outcome in one
        -- transaction: its outcome event is its first.
        IF p.source_kind = 'card' THEN
            PERFORM payq.emit('payment.created', p.payment_id, p_corr,
                              payq.payment_fields(p) || jsonb_build_object('capture', p.capture),
                              p.payment_id);
        END IF;
        RETURN payq.payment_step(p.payment_id, NULL, p_corr);
    END IF;
    SELECT * INTO p FROM payq.payments WHERE payment_id = b->>'payment_id' FOR UPDATE;
    IF p.request_hash <> p_hash THEN
        RETURN payq.done(payq.reply('payment.create', p.payment_id, 'rejected',
                                    'idempotency_conflict',
                                    'payment_id was already used with different parameters'));
    END IF;
    IF p.reply IS NOT NULL THEN
        RETURN payq.done(p.reply);
    END IF;
    -- A redelivery, replay or duplicate of a create whose saga is in flight:
    -- resume at its recovery point.
    RETURN payq.payment_step(p.payment_id, p_answer, p_corr);
END $$;

CREATE FUNCTION payq.no_payment(p_command text, p_id text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT payq.done(payq.reply(p_command, p_id, 'failed', 'payment_not_found',
                                format('no payment %s', p_id)));
$$;

-- payment.capture {payment_id, amount?}
CREATE FUNCTION payq.cmd_payment_capture(b jsonb, p_hash bytea, p_corr text, p_answer jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
    amt bigint;
    v_fee bigint;
    r jsonb;
BEGIN
    SELECT * INTO p FROM payq.payments WHERE payment_id = b->>'payment_id' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN payq.no_payment('payment.capture', b->>'payment_id');
    END IF;
    IF p.capture_request IS NOT NULL THEN
        IF p.capture_request <> p_hash THEN
            RETURN payq.done(payq.reply('payment.capture', p.payment_id, 'rejected',
                                        'idempotency_conflict',
                                        'this payment was already captured with other parameters'));
        END IF;
        IF p.capture_reply IS NOT NULL THEN
            RETURN payq.done(p.capture_reply);
        END IF;
        RETURN payq.payment_step(p.payment_id, p_answer, p_corr);
    END IF;
    IF p.recovery_point <> 'finished' THEN
        RETURN payq.busy(format('payment %s has a %s step in flight; try again later',
                                p.payment_id, p.saga_command));
    END IF;
    amt := COALESCE((b->>'amount')::bigint, p.authorized_amount);
    IF p.status <> 'authorized' OR amt > p.authorized_amount THEN
        r := payq.reply('payment.capture', p.payment_id, 'failed', 'invalid_state',
                        CASE WHEN p.status <> 'authorized'
                             THEN format('payment %s is %s, not authorized', p.payment_id, p.status)
                             ELSE format('capture of %s exceeds the authorized %s', amt,
                                         p.authorized_amount) END);
        -- Recorded, so a duplicate of this capture gets the same answer.
        UPDATE payq.payments SET capture_request = p_hash, capture_reply = r
         WHERE payment_id = p.payment_id;
        RETURN payq.done(r);
    END IF;
    UPDATE payq.payments
       SET capture_request = p_hash, capture_amount = amt, saga_command = 'payment.capture'
     WHERE payment_id = p.payment_id RETURNING * INTO p;
    IF p.source_kind = 'wallet' THEN
        -- The whole hold is resolved; only amt is taken, the rest is released.
        UPDATE payq.holds SET status = 'captured' WHERE payment_id = p.payment_id;
        v_fee := payq.post_capture(p, amt);
        RETURN payq.done(payq.payment_captured(p, amt, v_fee, 'payment.capture', p_corr));
    END IF;
    UPDATE payq.payments SET recovery_point = 'capture_started' WHERE payment_id = p.payment_id;
    RETURN payq.call_provider(p.payment_id || ':capture', p.payment_id, 'capture',
                              jsonb_build_object('auth_id', p.provider_auth_id, 'amount', amt,
                                                 'currency', p.currency));
END $$;

-- payment.cancel {payment_id}
CREATE FUNCTION payq.cmd_payment_cancel(b jsonb, p_hash bytea, p_corr text, p_answer jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
    r jsonb;
BEGIN
    SELECT * INTO p FROM payq.payments WHERE payment_id = b->>'payment_id' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN payq.no_payment('payment.cancel', b->>'payment_id');
    END IF;
    IF p.cancel_request IS NOT NULL THEN
        IF p.cancel_reply IS NOT NULL THEN
            RETURN payq.done(p.cancel_reply);
        END IF;
        RETURN payq.payment_step(p.payment_id, p_answer, p_corr);
    END IF;
    IF p.recovery_point <> 'finished' THEN
        RETURN payq.busy(format('payment %s has a %s step in flight; try again later',
                                p.payment_id, p.saga_command));
    END IF;
    IF p.status <> 'authorized' THEN
        r := payq.reply('payment.cancel', p.payment_id, 'failed', 'invalid_state',
                        format('payment %s is %s; only an authorized payment can be canceled',
                               p.payment_id, p.status));
        UPDATE payq.payments SET cancel_request = p_hash, cancel_reply = r
         WHERE payment_id = p.payment_id;
        RETURN payq.done(r);
    END IF;
    UPDATE payq.payments SET cancel_request = p_hash, saga_command = 'payment.cancel'
     WHERE payment_id = p.payment_id;
    IF p.source_kind = 'wallet' THEN
        UPDATE payq.holds SET status = 'released' WHERE payment_id = p.payment_id;
        r := payq.reply('payment.cancel', p.payment_id, 'succeeded', p_extra =>
                        jsonb_build_object('amount', p.authorized_amount, 'currency', p.currency));
        UPDATE payq.payments SET status = 'canceled', cancel_reply = r
         WHERE payment_id = p.payment_id;
        PERFORM payq.emit('payment.canceled', p.payment_id, p_corr, payq.payment_fields(p),
                          p.payment_id);
        RETURN payq.done(r);
    END IF;
    UPDATE payq.payments SET recovery_point = 'void_started' WHERE payment_id = p.payment_id;
    RETURN payq.call_provider(p.payment_id || ':void', p.payment_id, 'void',
                              jsonb_build_object('auth_id', p.provider_auth_id));
END $$;

-- Ends a refund: records the outcome, the event (in the payment's history)
-- and the reply.
CREATE FUNCTION payq.refund_finish(rf payq.refunds, p_status text, p_code text, p_message text,
                                   p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := payq.reply('payment.refund', rf.refund_id, p_status, p_code, p_message,
                          jsonb_build_object('payment_id', rf.payment_id, 'amount', rf.amount) ||
                          COALESCE((SELECT jsonb_build_object('currency', currency)
                                      FROM payq.payments WHERE payment_id = rf.payment_id),
                                   '{}'));
    has_payment boolean := EXISTS (SELECT 1 FROM payq.payments WHERE payment_id = rf.payment_id);
BEGIN
    UPDATE payq.refunds
       SET status = p_status, failure_code = p_code, recovery_point = 'finished', reply = r,
           updated_at = now()
     WHERE refund_id = rf.refund_id;
    PERFORM payq.emit(CASE p_status WHEN 'succeeded' THEN 'refund.succeeded'
                                    ELSE 'refund.failed' END,
                      rf.refund_id, p_corr,
                      jsonb_build_object('payment_id', rf.payment_id, 'amount', rf.amount,
                                         'reason', rf.reason, 'code', p_code),
                      CASE WHEN has_payment THEN rf.payment_id END);
    RETURN payq.done(r);
END $$;

-- Moves a refund's money: merchant -amount, back to the wallet or the card
-- clearing account; marks the payment refunded once fully refunded.
CREATE FUNCTION payq.refund_post(rf payq.refunds) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
BEGIN
    SELECT * INTO p FROM payq.payments WHERE payment_id = rf.payment_id FOR UPDATE;
    PERFORM payq.post('refund', rf.refund_id, p.currency,
                      ARRAY[p.destination, CASE p.source_kind WHEN 'wallet' THEN p.source
                                                              ELSE '@card:' || p.currency END],
                      ARRAY[-rf.amount, rf.amount]);
    UPDATE payq.payments
       SET status = CASE WHEN refunded_amount = captured_amount THEN 'refunded' ELSE status END
     WHERE payment_id = p.payment_id;
END $$;

-- payment.refund {refund_id, payment_id, amount?, reason?}
CREATE FUNCTION payq.cmd_payment_refund(b jsonb, p_hash bytea, p_corr text, p_answer jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    rf payq.refunds;
    p payq.payments;
    a jsonb;
    amt bigint;
BEGIN
    INSERT INTO payq.refunds (refund_id, payment_id, reason, request_hash, status, correlation_id)
    VALUES (b->>'refund_id', b->>'payment_id', b->>'reason', p_hash, 'pending', p_corr)
    ON CONFLICT (refund_id) DO NOTHING
    RETURNING * INTO rf;
    IF NOT FOUND THEN
        SELECT * INTO rf FROM payq.refunds WHERE refund_id = b->>'refund_id' FOR UPDATE;
        IF rf.request_hash <> p_hash THEN
            RETURN payq.done(payq.reply('payment.refund', rf.refund_id, 'rejected',
                                        'idempotency_conflict',
                                        'refund_id was already used with different parameters'));
        END IF;
        IF rf.reply IS NOT NULL THEN
            RETURN payq.done(rf.reply);
        END IF;
    END IF;

    IF rf.recovery_point = 'started' THEN
        SELECT * INTO p FROM payq.payments WHERE payment_id = rf.payment_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN payq.refund_finish(rf, 'failed', 'payment_not_found',
                                      format('no payment %s', rf.payment_id), p_corr);
        END IF;
        IF p.status NOT IN ('succeeded', 'refunded') THEN
            RETURN payq.refund_finish(rf, 'failed', 'invalid_state',
                                      format('payment %s is %s; only a captured payment can be refunded',
                                             p.payment_id, p.status), p_corr);
        END IF;
        amt := COALESCE((b->>'amount')::bigint, p.captured_amount - p.refunded_amount);
        IF amt <= 0 OR p.refunded_amount + amt > p.captured_amount THEN
            UPDATE payq.refunds SET amount = greatest(amt, 0) WHERE refund_id = rf.refund_id
            RETURNING * INTO rf;
            RETURN payq.refund_finish(rf, 'failed', 'amount_exceeds_captured',
                                      format('%s would be refunded of %s captured',
                                             p.refunded_amount + amt, p.captured_amount), p_corr);
        END IF;
        -- Reserve the amount on the payment at once, so concurrent refunds
        -- can never add up to more than was captured.
        UPDATE payq.payments SET refunded_amount = refunded_amount + amt
         WHERE payment_id = p.payment_id;
        UPDATE payq.refunds SET amount = amt WHERE refund_id = rf.refund_id RETURNING * INTO rf;
        IF p.source_kind = 'wallet' THEN
            PERFORM payq.refund_post(rf);
            RETURN payq.refund_finish(rf, 'succeeded', NULL, NULL, p_corr);
        END IF;
        UPDATE payq.refunds SET recovery_point = 'refund_started' WHERE refund_id = rf.refund_id;
        RETURN payq.call_provider(rf.refund_id || ':refund', rf.payment_id, 'refund',
                                  jsonb_build_object('auth_id', p.provider_auth_id,
                                                     'amount', amt, 'currency', p.currency));
    END IF;

    -- refund_started: the provider's answer
    a := payq.provider_answer(rf.refund_id || ':refund', p_answer);
    IF a IS NULL THEN
        SELECT * INTO p FROM payq.payments WHERE payment_id = rf.payment_id;
        RETURN payq.call_provider(rf.refund_id || ':refund', rf.payment_id, 'refund',
                                  jsonb_build_object('auth_id', p.provider_auth_id,
                                                     'amount', rf.amount, 'currency', p.currency));
    END IF;
    IF a->>'status' = 'declined' THEN
        -- Compensation: give the reserved amount back to the payment.
        UPDATE payq.payments SET refunded_amount = refunded_amount - rf.amount
         WHERE payment_id = rf.payment_id;
        RETURN payq.refund_finish(rf, 'failed', COALESCE(a->>'code', 'card_declined'),
                                  COALESCE(a->>'message', 'the refund was declined'), p_corr);
    END IF;
    PERFORM payq.refund_post(rf);
    RETURN payq.refund_finish(rf, 'succeeded', NULL, NULL, p_corr);
END $$;

-- The one entry point the worker calls, once per phase; each call is its own
-- transaction. p_command and p_body were validated by the worker
-- (CONTRACT.md rules); p_answer is the provider's answer to the call the
-- previous phase asked for (NULL the first time).
-- Returns {"reply": {...}} when the command is finished (status 'rejected'
-- means the worker dead-letters the message), or {"call": {...}} when the
-- worker must call the provider and come back with the answer.
CREATE FUNCTION payq.apply_command(p_scope text, p_message_id text, p_command text,
                                   p_body jsonb, p_correlation_id text,
                                   p_answer jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    -- jsonb's text form is canonical (key order, spacing), so equal
    -- commands hash equally whatever their JSON formatting.
    h bytea := sha256(convert_to(p_command || ' ' || p_body::text, 'UTF8'));
    prior payq.inbox;
    r jsonb;
BEGIN
    IF p_message_id IS NOT NULL THEN
        INSERT INTO payq.inbox (scope, message_id, command, request_hash)
        VALUES (COALESCE(p_scope, ''), p_message_id, p_command, h)
        ON CONFLICT (scope, message_id) DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO prior FROM payq.inbox
             WHERE scope = COALESCE(p_scope, '') AND message_id = p_message_id;
            IF prior.request_hash <> h THEN
                RETURN payq.done(payq.reply(p_command, NULL, 'rejected', 'idempotency_conflict',
                                            'message_id was already used for a different command'));
            END IF;
            IF prior.reply IS NOT NULL THEN
                RETURN payq.done(prior.reply);
            END IF;
            -- Same command, saga in flight: go on below.
        END IF;
    END IF;

    r := CASE p_command
        WHEN 'account.open' THEN payq.cmd_account_open(p_body, p_correlation_id)
        WHEN 'account.deposit' THEN payq.cmd_account_deposit(p_body, h, p_correlation_id)
        WHEN 'payment.create' THEN payq.cmd_payment_create(p_body, h, p_correlation_id, p_answer)
        WHEN 'payment.capture' THEN payq.cmd_payment_capture(p_body, h, p_correlation_id, p_answer)
        WHEN 'payment.cancel' THEN payq.cmd_payment_cancel(p_body, h, p_correlation_id, p_answer)
        WHEN 'payment.refund' THEN payq.cmd_payment_refund(p_body, h, p_correlation_id, p_answer)
    END;
    IF r IS NULL THEN
        RAISE EXCEPTION 'command % is not implemented by this schema version', p_command
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF p_message_id IS NOT NULL AND r ? 'reply' THEN
        UPDATE payq.inbox SET reply = r->'reply'
         WHERE scope = COALESCE(p_scope, '') AND message_id = p_message_id;
    END IF;
    RETURN r;
END $$;

-- What an operator reads first: each payment with its outcome.
CREATE VIEW payq.payment_outcomes AS
SELECT payment_id, status, failure_code, amount, currency, fee, authorized_amount,
       captured_amount, refunded_amount, source, destination, recovery_point, created_at,
       updated_at
  FROM payq.payments;
