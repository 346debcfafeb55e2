-- 008_worker_role.sql - least privilege in PostgreSQL.
--
-- The role that owns the schema (it runs these migrations) is not the role
-- the workers should run as. If a role payq_worker exists (create it with
-- LOGIN and a password; tests/stack.sh does), it gets exactly what a worker,
-- the relay, the reaper and the DLQ tool need: it reads and writes the state
-- tables, may only INSERT into the ledger and the event store (which refuse
-- UPDATE and DELETE for everyone anyway), and cannot create, alter or drop
-- anything. Without such a role this migration does nothing, and workers run
-- as the owner. A later migration that adds a table grants it here too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'payq_worker') THEN
        RAISE NOTICE 'no role payq_worker: workers run as the schema owner';
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA payq, payq_sim TO payq_worker;
    GRANT SELECT, INSERT, UPDATE ON
        payq.accounts, payq.holds, payq.deposits, payq.payments, payq.refunds,
        payq.provider_calls, payq.outbox, payq.dead_letters, payq.failures,
        payq.fee_rules, payq.fraud_rules, payq.fraud_blocklist, payq_sim.operations
        TO payq_worker;
    GRANT SELECT, INSERT, UPDATE, DELETE ON payq.inbox TO payq_worker; -- pruning
    GRANT SELECT, INSERT ON payq.postings, payq.ledger_entries, payq.payment_events
        TO payq_worker;
    GRANT SELECT ON payq.schema_migrations, payq.account_balances, payq.payment_outcomes
        TO payq_worker;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA payq TO payq_worker;
END $$;
