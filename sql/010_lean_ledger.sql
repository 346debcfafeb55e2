-- 010_lean_ledger.sql - a ledger trigger whose cost stays linear in the batch.
--
-- A profile of a busy worker on a database that had run for a while showed
-- a sixth of the database's CPU sorting id lists inside the ledger's
-- statement trigger:
--
-- 1. The trigger's balance UPDATE joined the statement's per-account totals
--    to payq.accounts, and the planner ran it as a nested loop that rescanned
--    the accounts index once per account, re-sorting the list of ids
--    (`id = ANY(...)`) on every rescan: quadratic in the batch. Now the totals
--    travel as a jsonb map and the UPDATE is one index scan over the ids.
--
-- 2. The trigger plans for any size of statement the same way (index scans
--    over id lists), so a plan cached while statements were small (a deposit
--    posts two entries) stays right for a batch of a hundred payments.

CREATE OR REPLACE FUNCTION payq.ledger_entries_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
    problem text;
    ids text[];          -- the entries' accounts, distinct
    pairs bigint;        -- distinct (account, currency) pairs
    currencies jsonb;    -- account -> the currency its entries are in
    totals jsonb;        -- account -> what the statement adds to it
    found bigint;
BEGIN
    -- One pass over the new entries: the first posting that does not sum to
    -- zero in a currency (invariant 3), and what the other checks and the
    -- balance update need.
    SELECT (SELECT format('posting %s does not balance: %s %s left over',
                          b.posting_id, b.total, b.currency)
              FROM (SELECT posting_id, currency, sum(amount) AS total FROM added
                     GROUP BY posting_id, currency HAVING sum(amount) <> 0 LIMIT 1) b),
           array_agg(a.account_id), sum(a.pairs), jsonb_object_agg(a.account_id, a.currency),
           jsonb_object_agg(a.account_id, a.total)
      INTO unbalanced, ids, pairs, currencies, totals
      FROM (SELECT account_id, min(currency) AS currency, count(DISTINCT currency) AS pairs,
                   sum(amount)::bigint AS total
              FROM added GROUP BY account_id) a;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION '%', unbalanced USING ERRCODE = 'check_violation';
    END IF;

    -- Every entry's account exists, in the entry's currency: counted over
    -- one index scan of the id list.
    SELECT count(*) INTO found FROM payq.accounts a
     WHERE a.id = ANY(ids) AND a.currency = currencies->>a.id;
    IF found < pairs THEN
        -- Which one, for the message (the error path can afford a join).
        SELECT format('ledger entry for account %s in %s does not match an account',
                      e.account_id, e.currency)
          INTO problem
          FROM (SELECT DISTINCT account_id, currency FROM added) e
         WHERE NOT EXISTS (SELECT 1 FROM payq.accounts a
                            WHERE a.id = e.account_id AND a.currency = e.currency)
         ORDER BY e.account_id, e.currency
         LIMIT 1;
        RAISE EXCEPTION '%', problem USING ERRCODE = 'foreign_key_violation';
    END IF;

    -- Wallets keep running balances (the no-overdraft CHECK applies here).
    UPDATE payq.accounts a
       SET posted = a.posted + (totals->>a.id)::bigint, updated_at = now()
     WHERE a.id = ANY(ids) AND a.kind = 'customer';
    RETURN NULL;
END $$;
