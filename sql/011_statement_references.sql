-- 011_statement_references.sql - references checked once per statement, and
-- wallet balances updated in place.
--
-- 1. A foreign key checks every inserted row with a query of its own, and
--    that query takes a KEY SHARE lock on the row it finds (a write to the
--    row's header). A batch of 100 wallet payments ran 500 of them: two per
--    ledger entry (posting, account) and one per payment event (payment);
--    and the merchant accounts that every concurrent batch credits collected
--    share locks from several transactions at once. Without the three keys
--    a batch costs the database 10% less CPU (in-database benchmark of
--    apply_batch, 100 payments a batch).
--
--    What the keys checked is now checked once per statement, with one query
--    over the statement's new rows (a transition table):
--      - a ledger entry's account exists in the entry's currency: already
--        checked by payq.ledger_entries_apply() (sql/010), more strictly than
--        the key did;
--      - a ledger entry's posting exists (trigger ledger_entries_postings);
--      - a payment event's payment exists (trigger payment_events_payments).
--    Each raises foreign_key_violation (23503), as the key did.
--
--    What the keys also gave, that a referenced row cannot disappear while
--    rows refer to it, now comes from the referenced tables: postings were
--    append-only already; accounts and payments now refuse DELETE and
--    TRUNCATE for every role. A payment system keeps both for good: a closed
--    account or a failed payment is a state, never a missing row. With no
--    delete possible there is no race for the row locks to prevent.
--
-- 2. Wallets are updated on every payment, and a full heap page cannot take
--    the new row version: the update then moves the row to another page and
--    adds an index entry for it (in a capacity run only 5% of account updates
--    were HOT). Pages of payq.accounts are now filled to half, so the new
--    version fits on its page. This applies to pages written from now on;
--    `VACUUM FULL payq.accounts` rewrites the existing ones (it locks the
--    table while it runs).

-- ------------------------------------------------------------ 1. keys

ALTER TABLE payq.ledger_entries
    DROP CONSTRAINT ledger_entries_posting_id_fkey,
    DROP CONSTRAINT ledger_entries_account_id_fkey;
ALTER TABLE payq.payment_events DROP CONSTRAINT payment_events_payment_id_fkey;

CREATE FUNCTION payq.ledger_entries_postings() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    missing bigint;
BEGIN
    SELECT array_agg(DISTINCT posting_id) INTO ids FROM added;
    IF (SELECT count(*) FROM payq.postings WHERE id = ANY(ids)) < cardinality(ids) THEN
        SELECT i INTO missing FROM unnest(ids) AS i
         WHERE NOT EXISTS (SELECT 1 FROM payq.postings p WHERE p.id = i)
         ORDER BY i LIMIT 1;
        RAISE EXCEPTION 'ledger entry for posting % does not match a posting', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_postings AFTER INSERT ON payq.ledger_entries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION payq.ledger_entries_postings();

CREATE FUNCTION payq.payment_events_payments() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids text[];
    missing text;
BEGIN
    SELECT array_agg(DISTINCT payment_id) INTO ids FROM added;
    IF (SELECT count(*) FROM payq.payments WHERE payment_id = ANY(ids)) < cardinality(ids) THEN
        SELECT i INTO missing FROM unnest(ids) AS i
         WHERE NOT EXISTS (SELECT 1 FROM payq.payments p WHERE p.payment_id = i)
         ORDER BY i LIMIT 1;
        RAISE EXCEPTION 'payment event for payment % does not match a payment', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER payment_events_payments AFTER INSERT ON payq.payment_events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION payq.payment_events_payments();

-- Statement-level, so even a DELETE that matches no row fails.
CREATE FUNCTION payq.never_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rows of % are never deleted', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER accounts_never_deleted BEFORE DELETE OR TRUNCATE ON payq.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION payq.never_deleted();
CREATE TRIGGER payments_never_deleted BEFORE DELETE OR TRUNCATE ON payq.payments
    FOR EACH STATEMENT EXECUTE FUNCTION payq.never_deleted();

-- ------------------------------------------------------ 2. fillfactor

ALTER TABLE payq.accounts SET (fillfactor = 50);
