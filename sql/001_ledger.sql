-- 001_ledger.sql - accounts and the double-entry ledger.
--
-- Money is bigint minor units. A posting is a set of ledger entries whose
-- amounts sum to zero per currency; a deferred constraint trigger checks it at
-- COMMIT, so no transaction can leave money created or destroyed. Account
-- balances are maintained by a trigger on ledger_entries and by nothing else:
-- a direct UPDATE of a balance is refused. Ledger rows are append-only.

CREATE TABLE payq.accounts (
    id          text PRIMARY KEY,
    currency    char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    kind        text NOT NULL CHECK (kind IN ('customer', 'merchant', 'external', 'platform')),
    -- Running balances for customer wallets only: they are what a payment
    -- must check (no overdraft) and lock. Merchant and system accounts
    -- (external funding, card clearing, platform fees) only receive money in
    -- payments; a running balance there would serialize every payment to the
    -- same merchant (or to the platform) on one row lock, so their balance is
    -- the sum of their entries (view payq.account_balances).
    posted      bigint NOT NULL DEFAULT 0,
    pending     bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Invariant 4: a wallet's available balance never goes below zero.
    CONSTRAINT wallet_no_overdraft CHECK (kind <> 'customer' OR posted - pending >= 0)
);

COMMENT ON TABLE payq.accounts IS
    'Customer wallets, merchant accounts and the system accounts @external:CUR / @platform:CUR';

CREATE TABLE payq.postings (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,      -- deposit, payment, capture, refund, release, ...
    ref         text NOT NULL,      -- the business id that caused it
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, ref)              -- one posting per business step: a second is a bug
);

CREATE TABLE payq.ledger_entries (
    id          bigserial PRIMARY KEY,
    posting_id  bigint NOT NULL REFERENCES payq.postings (id),
    account_id  text NOT NULL REFERENCES payq.accounts (id),
    currency    char(3) NOT NULL,
    amount      bigint NOT NULL CHECK (amount <> 0),   -- credit > 0, debit < 0
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_posting ON payq.ledger_entries (posting_id);
CREATE INDEX ledger_entries_account ON payq.ledger_entries (account_id, id);

-- Applies an entry to its account's running balance (or checks a system
-- account exists in that currency).
CREATE FUNCTION payq.ledger_entry_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE payq.accounts
       SET posted = posted + NEW.amount, updated_at = now()
     WHERE id = NEW.account_id AND currency = NEW.currency AND kind = 'customer';
    IF NOT FOUND THEN
        PERFORM 1 FROM payq.accounts
         WHERE id = NEW.account_id AND currency = NEW.currency AND kind <> 'customer';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'ledger entry for account % in % does not match an account',
                NEW.account_id, NEW.currency USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entry_apply AFTER INSERT ON payq.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION payq.ledger_entry_apply();

-- Invariant 3: at COMMIT, every posting touched sums to zero in each currency.
CREATE FUNCTION payq.posting_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT currency, sum(amount) AS total INTO bad
      FROM payq.ledger_entries
     WHERE posting_id = NEW.posting_id
     GROUP BY currency
    HAVING sum(amount) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'posting % does not balance: % % left over',
            NEW.posting_id, bad.total, bad.currency USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER posting_balanced AFTER INSERT ON payq.ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION payq.posting_balanced();

-- Balances move only through ledger entries (posted) and holds (pending):
-- their triggers run the UPDATE one trigger level down; a direct UPDATE
-- fires this guard at level 1.
CREATE FUNCTION payq.accounts_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.posted <> OLD.posted OR NEW.pending <> OLD.pending) AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'account balances change only through ledger postings and holds'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id <> OLD.id OR NEW.currency <> OLD.currency OR NEW.kind <> OLD.kind THEN
        RAISE EXCEPTION 'an account''s id, currency and kind never change'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER accounts_guard BEFORE UPDATE ON payq.accounts
    FOR EACH ROW EXECUTE FUNCTION payq.accounts_guard();

-- Append-only tables refuse UPDATE, DELETE and TRUNCATE for every role,
-- owner included (invariant 7).
CREATE FUNCTION payq.append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

-- Statement-level, so even an UPDATE or DELETE that matches no row fails.
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payq.postings
    FOR EACH STATEMENT EXECUTE FUNCTION payq.append_only();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
    ON payq.ledger_entries FOR EACH STATEMENT EXECUTE FUNCTION payq.append_only();

-- Holds: money reserved on a wallet by an authorization (capture: false),
-- counted in the account's pending balance while active. A hold is resolved
-- exactly once: captured, released (cancel) or expired (invariant 5).
CREATE TABLE payq.holds (
    payment_id   text PRIMARY KEY,
    account_id   text NOT NULL REFERENCES payq.accounts (id),
    amount       bigint NOT NULL CHECK (amount > 0),
    status       text NOT NULL DEFAULT 'active'
                 CHECK (status IN ('active', 'captured', 'released', 'expired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL DEFAULT now() + interval '7 days',
    resolved_at  timestamptz
);
CREATE INDEX holds_active_expiry ON payq.holds (expires_at) WHERE status = 'active';

CREATE FUNCTION payq.holds_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'active' THEN
            RAISE EXCEPTION 'a hold starts active' USING ERRCODE = 'check_violation';
        END IF;
        UPDATE payq.accounts SET pending = pending + NEW.amount, updated_at = now()
         WHERE id = NEW.account_id;
    ELSIF OLD.status = 'active' AND NEW.status <> 'active' THEN
        UPDATE payq.accounts SET pending = pending - OLD.amount, updated_at = now()
         WHERE id = OLD.account_id;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION payq.holds_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'holds are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status <> 'active' THEN
        RAISE EXCEPTION 'hold % was already %', OLD.payment_id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.amount <> OLD.amount OR NEW.account_id <> OLD.account_id THEN
        RAISE EXCEPTION 'a hold''s amount and account never change'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.resolved_at := CASE WHEN NEW.status <> 'active' THEN now() END;
    RETURN NEW;
END $$;

CREATE TRIGGER holds_guard BEFORE UPDATE OR DELETE ON payq.holds
    FOR EACH ROW EXECUTE FUNCTION payq.holds_guard();
CREATE TRIGGER holds_apply AFTER INSERT OR UPDATE ON payq.holds
    FOR EACH ROW EXECUTE FUNCTION payq.holds_apply();

-- Every account's balances: posted (settled), pending (held) and available.
CREATE VIEW payq.account_balances AS
SELECT a.id, a.currency, a.kind,
       CASE WHEN a.kind = 'customer' THEN a.posted
            ELSE COALESCE((SELECT sum(e.amount) FROM payq.ledger_entries e
                            WHERE e.account_id = a.id), 0)::bigint
       END AS posted,
       a.pending,
       CASE WHEN a.kind = 'customer' THEN a.posted - a.pending
            ELSE COALESCE((SELECT sum(e.amount) FROM payq.ledger_entries e
                            WHERE e.account_id = a.id), 0)::bigint - a.pending
       END AS available,
       a.created_at, a.updated_at
  FROM payq.accounts a;

-- The system accounts of a currency, created on first use: @external (money
-- deposited from outside), @card (the card network's clearing account) and
-- @platform (fees earned).
CREATE FUNCTION payq.ensure_system_accounts(p_currency text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Every payment calls this: a primary-key lookup when they exist.
    PERFORM 1 FROM payq.accounts WHERE id = '@platform:' || p_currency;
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO payq.accounts (id, currency, kind)
    VALUES ('@external:' || p_currency, p_currency, 'external'),
           ('@card:' || p_currency, p_currency, 'external'),
           ('@platform:' || p_currency, p_currency, 'platform')
    ON CONFLICT (id) DO NOTHING;
END $$;

-- Creates a posting from parallel arrays of accounts and amounts. The
-- deferred trigger rejects it at COMMIT unless it balances.
CREATE FUNCTION payq.post(p_kind text, p_ref text, p_currency text,
                          p_accounts text[], p_amounts bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    pid bigint;
BEGIN
    INSERT INTO payq.postings (kind, ref) VALUES (p_kind, p_ref) RETURNING id INTO pid;
    INSERT INTO payq.ledger_entries (posting_id, account_id, currency, amount)
    SELECT pid, a, p_currency, m
      FROM unnest(p_accounts, p_amounts) AS t(a, m)
     WHERE m <> 0;
    RETURN pid;
END $$;
