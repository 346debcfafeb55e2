-- 005_dead_letters.sql - the record of every failed attempt, and the archive
-- of dead letters with their full diagnostics.
--
-- A dead letter lives in two places: the message in the queue payq.dlq
-- (small headers, visible in the management UI) and a row here with
-- everything an operator needs to understand it. The queue copy carries the
-- row's id in its header x-payq-dead-letter-id. payq-dlq lists, searches and
-- groups the rows (so inspecting never touches the queue), and replays from
-- them.

-- Every failed attempt of a command: transient failures that were retried,
-- and the final one that dead-lettered it.
CREATE TABLE payq.failures (
    id            bigserial PRIMARY KEY,
    message_key   text NOT NULL,     -- 'id:' || message_id, or 'body:' || md5(body) without one
    routing_key   text NOT NULL,
    business_id   text,              -- payment_id, refund_id, ... when the body could be read
    attempt       integer NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('transient', 'rejected', 'exhausted', 'poison')),
    reason        text,              -- a CONTRACT.md code for the final failure
    error         text NOT NULL,     -- full text (the DLQ header keeps at most 1 KiB)
    sqlstate      text,
    fingerprint   text NOT NULL,     -- groups failures with the same cause
    worker        text NOT NULL,     -- host, pid and thread
    retry_tier    text,              -- the delay tier a transient failure went to
    occurred_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failures_message ON payq.failures (message_key, occurred_at);

CREATE TABLE payq.dead_letters (
    id                uuid PRIMARY KEY,   -- deterministic: a redelivered failure maps to the same row
    message_key       text NOT NULL,
    message_id        text,
    correlation_id    text,
    exchange          text NOT NULL,      -- where it was first published
    routing_key       text NOT NULL,      -- the command type it was published with
    business_id       text,
    reason            text NOT NULL,      -- x-payq-reason
    error             text NOT NULL,      -- full text
    sqlstate          text,
    fingerprint       text NOT NULL,
    attempts          integer NOT NULL,
    first_failure_at  timestamptz NOT NULL,
    last_failure_at   timestamptz NOT NULL,
    properties        jsonb NOT NULL,     -- AMQP properties and headers of the DLQ copy
    body              bytea NOT NULL,     -- as in the DLQ copy (card numbers masked)
    redacted          boolean NOT NULL DEFAULT false,
    worker            text NOT NULL,
    status            text NOT NULL DEFAULT 'dead'
                      CHECK (status IN ('dead', 'replayed', 'discarded')),
    resolved_at       timestamptz,
    resolved_by       text,
    resolution_note   text,               -- why it was discarded, or what was replayed
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_status_time ON payq.dead_letters (status, created_at);
CREATE INDEX dead_letters_reason ON payq.dead_letters (reason, fingerprint);

-- A stable digest of a failure's cause: the reason plus the error text with
-- ids, numbers and quoted values blanked, so "payment p-1 ..." and
-- "payment p-2 ..." group together.
CREATE FUNCTION payq.failure_fingerprint(p_reason text, p_error text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT substr(md5(COALESCE(p_reason, '') || '|' ||
                      regexp_replace(regexp_replace(COALESCE(p_error, ''),
                                                    '"[^"]*"|''[^'']*''', '?', 'g'),
                                     '[A-Za-z0-9_.:-]*[0-9][A-Za-z0-9_.:-]*', '#', 'g')), 1, 16);
$$;

-- Records a transient failure that goes to a delay tier.
-- The key of a message in these tables: its message_id, or its body's digest.
CREATE FUNCTION payq.message_key(p_message_id text, p_body bytea) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_message_id IS NOT NULL THEN 'id:' || p_message_id
                ELSE 'body:' || md5(p_body) END;
$$;

CREATE FUNCTION payq.record_failure(p_message_id text, p_body bytea, p_routing_key text,
                                    p_business_id text, p_attempt integer, p_error text,
                                    p_sqlstate text, p_worker text, p_tier text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO payq.failures (message_key, routing_key, business_id, attempt, kind, error,
                               sqlstate, fingerprint, worker, retry_tier)
    VALUES (payq.message_key(p_message_id, p_body), p_routing_key, p_business_id, p_attempt,
            'transient', p_error, NULLIF(p_sqlstate, ''),
            payq.failure_fingerprint(NULL, p_error), p_worker, p_tier);
$$;

-- Records the final failure and the dead letter; returns the dead letter's
-- id for the x-payq-dead-letter-id header. The id is derived from the
-- message and its attempt, so a worker that dies after this and before its
-- ack records the same dead letter again, not a second one; and a replayed
-- message that fails the same way again reopens its dead letter.
CREATE FUNCTION payq.record_dead_letter(p_message_id text,
                                        p_correlation_id text, p_exchange text,
                                        p_routing_key text, p_business_id text, p_reason text,
                                        p_error text, p_sqlstate text, p_attempts integer,
                                        p_first_failure_at timestamptz,
                                        p_properties jsonb, p_body bytea, p_redacted boolean,
                                        p_worker text) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_key text := payq.message_key(p_message_id, p_body);
    dl_id uuid := md5(v_key || '|' || p_attempts || '|' || p_reason)::uuid;
    fp text := payq.failure_fingerprint(p_reason, p_error);
BEGIN
    INSERT INTO payq.dead_letters (id, message_key, message_id, correlation_id, exchange,
                                   routing_key, business_id, reason, error, sqlstate,
                                   fingerprint, attempts, first_failure_at, last_failure_at,
                                   properties, body, redacted, worker)
    VALUES (dl_id, v_key, p_message_id, p_correlation_id, p_exchange, p_routing_key,
            p_business_id, p_reason, p_error, NULLIF(p_sqlstate, ''), fp, p_attempts,
            COALESCE(p_first_failure_at, now()), now(), p_properties, p_body, p_redacted,
            p_worker)
    ON CONFLICT (id) DO UPDATE
        -- The same failure again after a replay or a discard: the dead
        -- letter is open again, with the new diagnostics.
        SET status = 'dead', resolved_at = NULL, resolved_by = NULL,
            resolution_note = 'failed again after: ' ||
                              COALESCE(payq.dead_letters.resolution_note, payq.dead_letters.status),
            error = EXCLUDED.error, sqlstate = EXCLUDED.sqlstate,
            last_failure_at = now(), properties = EXCLUDED.properties, worker = EXCLUDED.worker
        WHERE payq.dead_letters.status <> 'dead';
    IF FOUND THEN
        INSERT INTO payq.failures (message_key, routing_key, business_id, attempt, kind, reason,
                                   error, sqlstate, fingerprint, worker)
        VALUES (v_key, p_routing_key, p_business_id, p_attempts,
                CASE p_reason WHEN 'retries_exhausted' THEN 'exhausted'
                              WHEN 'poison' THEN 'poison' ELSE 'rejected' END,
                p_reason, p_error, NULLIF(p_sqlstate, ''), fp, p_worker);
    END IF;
    RETURN dl_id;
END $$;
