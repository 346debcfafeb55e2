-- 002_commands.sql - idempotency, payments, events, outbox, and command application.
--
-- The worker validates a command in C (CONTRACT.md rules), then calls
-- payq.apply_command() once, in one transaction, and acks the delivery only
-- after COMMIT. Two layers of idempotency make a redelivery, a duplicate
-- publish or a replay harmless:
--   * payq.inbox: (publisher scope, message_id) -> request hash and reply;
--   * business keys (deposit_id, payment_id, ...) that never expire, each row
--     keeping the hash of its parameters and the reply it produced.
-- Both are claimed with INSERT ... ON CONFLICT DO NOTHING in the same
-- transaction as the effect: a concurrent duplicate waits on the unique index
-- until the first commits, then finds the stored reply.

-- Message-level idempotency keys.
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
    payment_id       text PRIMARY KEY,
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    source           text NOT NULL,
    destination      text NOT NULL,
    capture          boolean NOT NULL,
    description      text,
    metadata         jsonb,
    request_hash     bytea NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'authorized', 'succeeded',
                                                     'failed', 'canceled', 'refunded')),
    failure_code     text,
    fee              bigint NOT NULL DEFAULT 0 CHECK (fee >= 0),
    captured_amount  bigint NOT NULL DEFAULT 0 CHECK (captured_amount >= 0),
    refunded_amount  bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    -- The last saga step that committed; a redelivered command resumes after it.
    recovery_point   text NOT NULL DEFAULT 'started',
    version          integer NOT NULL DEFAULT 0,
    correlation_id   text,
    reply            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT captured_within_amount CHECK (captured_amount <= amount),
    CONSTRAINT refunds_within_captured CHECK (refunded_amount <= captured_amount),
    CONSTRAINT fee_within_amount CHECK (fee <= amount)
);
CREATE INDEX payments_status ON payq.payments (status, updated_at);

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
CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE ON payq.payment_events
    FOR EACH ROW EXECUTE FUNCTION payq.append_only();
CREATE TRIGGER payment_events_no_truncate BEFORE TRUNCATE ON payq.payment_events
    FOR EACH STATEMENT EXECUTE FUNCTION payq.append_only();

-- Transactional outbox: events to publish to payq.events, written in the
-- same transaction as the state change they describe.
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

-- Appends an event to the outbox (and, for payments, to the event store).
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
END $$;

CREATE FUNCTION payq.reply(p_command text, p_id text, p_status text, p_code text DEFAULT NULL,
                           p_message text DEFAULT NULL, p_extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('command', p_command, 'id', p_id,
                                                'status', p_status, 'code', p_code,
                                                'message', p_message)) || p_extra;
$$;

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
        RETURN payq.reply('account.open', b->>'account', 'succeeded', p_extra => fields);
    END IF;
    SELECT * INTO acc FROM payq.accounts WHERE id = b->>'account';
    IF acc.currency = b->>'currency' AND acc.kind = b->>'kind' THEN
        RETURN payq.reply('account.open', b->>'account', 'succeeded', p_extra => fields);
    END IF;
    RETURN payq.reply('account.open', b->>'account', 'rejected', 'idempotency_conflict',
                      format('account %s is already open as a %s account in %s',
                             acc.id, acc.kind, acc.currency));
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
            RETURN payq.reply('account.deposit', d.deposit_id, 'rejected', 'idempotency_conflict',
                              'deposit_id was already used with different parameters');
        END IF;
        RETURN d.reply;
    END IF;

    fields := jsonb_build_object('account', d.account_id, 'amount', amt, 'currency', cur);
    SELECT * INTO acc FROM payq.accounts WHERE id = d.account_id AND kind IN ('customer', 'merchant');
    IF NOT FOUND THEN
        r := payq.reply('account.deposit', d.deposit_id, 'failed', 'account_not_found',
                        format('no customer or merchant account %s', d.account_id), fields);
        UPDATE payq.deposits SET status = 'failed', failure_code = 'account_not_found', reply = r
         WHERE deposit_id = d.deposit_id;
        RETURN r;
    ELSIF acc.currency <> cur THEN
        r := payq.reply('account.deposit', d.deposit_id, 'failed', 'currency_mismatch',
                        format('account %s holds %s, not %s', acc.id, acc.currency, cur), fields);
        UPDATE payq.deposits SET status = 'failed', failure_code = 'currency_mismatch', reply = r
         WHERE deposit_id = d.deposit_id;
        RETURN r;
    END IF;

    PERFORM payq.ensure_system_accounts(cur);
    r := payq.reply('account.deposit', d.deposit_id, 'succeeded', p_extra => fields);
    UPDATE payq.deposits
       SET status = 'succeeded', reply = r,
           posting_id = payq.post('deposit', d.deposit_id, cur,
                                  ARRAY['@external:' || cur, d.account_id], ARRAY[-amt, amt])
     WHERE deposit_id = d.deposit_id;
    PERFORM payq.emit('account.deposited', d.deposit_id, p_corr, fields);
    RETURN r;
END $$;

-- Fails a payment: records the code, appends payment.failed, returns the reply.
CREATE FUNCTION payq.payment_fail(p payq.payments, p_code text, p_message text, p_corr text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    fields jsonb := jsonb_build_object('amount', p.amount, 'currency', p.currency,
                                       'source', p.source, 'destination', p.destination,
                                       'code', p_code, 'message', p_message);
    r jsonb := payq.reply('payment.create', p.payment_id, 'failed', p_code, p_message,
                          jsonb_build_object('amount', p.amount, 'currency', p.currency));
BEGIN
    UPDATE payq.payments
       SET status = 'failed', failure_code = p_code, recovery_point = 'finished', reply = r
     WHERE payment_id = p.payment_id;
    PERFORM payq.emit('payment.failed', p.payment_id, p_corr, fields, p.payment_id);
    RETURN r;
END $$;

-- payment.create, wallet source, capture: true. One atomic phase: check both
-- accounts, lock them in id order (no deadlock between A->B and B->A), check
-- the available balance, post payer -amount / merchant +(amount-fee) /
-- platform +fee, and record the outcome.
CREATE FUNCTION payq.cmd_payment_create(b jsonb, p_hash bytea, p_corr text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p payq.payments;
    src payq.accounts;
    dst payq.accounts;
    amt bigint := (b->>'amount')::bigint;
    cur text := b->>'currency';
    v_fee bigint;
    r jsonb;
BEGIN
    INSERT INTO payq.payments (payment_id, amount, currency, source, destination, capture,
                               description, metadata, request_hash, status, correlation_id)
    VALUES (b->>'payment_id', amt, cur, b->>'source', b->>'destination',
            (b->>'capture')::boolean, b->>'description', b->'metadata', p_hash, 'pending', p_corr)
    ON CONFLICT (payment_id) DO NOTHING
    RETURNING * INTO p;
    IF NOT FOUND THEN
        SELECT * INTO p FROM payq.payments WHERE payment_id = b->>'payment_id';
        IF p.request_hash <> p_hash THEN
            RETURN payq.reply('payment.create', p.payment_id, 'rejected', 'idempotency_conflict',
                              'payment_id was already used with different parameters');
        END IF;
        RETURN p.reply;
    END IF;
    PERFORM payq.emit('payment.created', p.payment_id, p_corr,
                      jsonb_build_object('amount', amt, 'currency', cur, 'source', p.source,
                                         'destination', p.destination, 'capture', p.capture),
                      p.payment_id);

    -- Lock both accounts in a global order.
    PERFORM 1 FROM payq.accounts WHERE id IN (p.source, p.destination) ORDER BY id FOR UPDATE;
    SELECT * INTO src FROM payq.accounts WHERE id = p.source AND kind = 'customer';
    IF NOT FOUND THEN
        RETURN payq.payment_fail(p, 'account_not_found',
                                 format('no customer account %s', p.source), p_corr);
    END IF;
    SELECT * INTO dst FROM payq.accounts WHERE id = p.destination AND kind = 'merchant';
    IF NOT FOUND THEN
        RETURN payq.payment_fail(p, 'account_not_found',
                                 format('no merchant account %s', p.destination), p_corr);
    END IF;
    IF src.currency <> cur OR dst.currency <> cur THEN
        RETURN payq.payment_fail(p, 'currency_mismatch',
                                 format('payment in %s, source holds %s, destination holds %s',
                                        cur, src.currency, dst.currency), p_corr);
    END IF;
    IF src.posted - src.pending < amt THEN
        RETURN payq.payment_fail(p, 'insufficient_funds',
                                 format('available balance of %s is lower than the amount',
                                        src.id), p_corr);
    END IF;

    v_fee := payq.fee_for(dst.id, cur, amt);
    PERFORM payq.ensure_system_accounts(cur);
    PERFORM payq.post('payment', p.payment_id, cur,
                      ARRAY[src.id, dst.id, '@platform:' || cur],
                      ARRAY[-amt, amt - v_fee, v_fee]);
    r := payq.reply('payment.create', p.payment_id, 'succeeded', p_extra =>
                    jsonb_build_object('amount', amt, 'currency', cur, 'fee', v_fee));
    UPDATE payq.payments
       SET status = 'succeeded', fee = v_fee, captured_amount = amt,
           recovery_point = 'finished', reply = r
     WHERE payment_id = p.payment_id;
    PERFORM payq.emit('payment.succeeded', p.payment_id, p_corr,
                      jsonb_build_object('amount', amt, 'currency', cur, 'fee', v_fee,
                                         'source', p.source, 'destination', p.destination),
                      p.payment_id);
    RETURN r;
END $$;

-- The one entry point the worker calls per command, inside its transaction.
-- p_command and p_body were validated by the worker (CONTRACT.md rules).
-- Returns the reply. Status 'rejected' means the worker dead-letters the
-- message (code in the reply); anything else is an outcome to ack.
CREATE FUNCTION payq.apply_command(p_scope text, p_message_id text, p_command text,
                                   p_body jsonb, p_correlation_id text) RETURNS jsonb
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
                RETURN payq.reply(p_command, NULL, 'rejected', 'idempotency_conflict',
                                  'message_id was already used for a different command');
            END IF;
            RETURN prior.reply;
        END IF;
    END IF;

    r := CASE p_command
        WHEN 'account.open' THEN payq.cmd_account_open(p_body, p_correlation_id)
        WHEN 'account.deposit' THEN payq.cmd_account_deposit(p_body, h, p_correlation_id)
        WHEN 'payment.create' THEN payq.cmd_payment_create(p_body, h, p_correlation_id)
        ELSE NULL
    END;
    IF r IS NULL THEN
        RAISE EXCEPTION 'command % is not implemented by this schema version', p_command
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF p_message_id IS NOT NULL THEN
        UPDATE payq.inbox SET reply = r
         WHERE scope = COALESCE(p_scope, '') AND message_id = p_message_id;
    END IF;
    RETURN r;
END $$;

-- What an operator reads first: each payment with its outcome.
CREATE VIEW payq.payment_outcomes AS
SELECT payment_id, status, failure_code, amount, currency, fee, captured_amount,
       refunded_amount, source, destination, created_at, updated_at
  FROM payq.payments;
