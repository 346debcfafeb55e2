-- 014_lean_statistics.sql - cheaper ANALYZE of the tables every payment appends to.
--
-- Autovacuum analyzes a table each time it grew by a tenth, sampling 300 rows
-- per unit of the largest statistics target among its columns: 30,000 rows at
-- the default target of 100, whatever the table's size. On the four tables a
-- payment appends its widest rows to, that took 2.0 s of CPU per pass (about
-- 0.7 s payments, 0.6 s outbox, 0.4 s each inbox and payment_events; with
-- ~160,000 payments stored), most of it sorting the sample column by column,
-- and jsonb values are dear to compare. On two cores shared with the broker
-- and the workers, the pass over these tables (every minute while they are
-- small and grow fast) raised the per-second p99 at a fixed 1,000 payments/s
-- from ~30 to 53-80 ms for the 5-6 s it took.
--
-- Nothing plans better for those statistics:
--   - payload columns (jsonb bodies and replies, request hashes, free text)
--     are never compared in a WHERE or a join: target 0, not analyzed at all;
--   - the other columns are read through their indexes (a payment by id, a
--     source's recent payments, the inbox by key and by age, the outbox by
--     id, a payment's events) or joined on (event ids: the invariant checker
--     pairs events with outbox rows, where a guess could cost a nested loop
--     over the outbox): target 10, a sample of 3,000 rows, still enough for
--     the most common values and a histogram of ten buckets.
-- The ledger (postings, ledger_entries) keeps the default: its rows are narrow
-- and cheap to analyze, and account statements read it by account, where the
-- most common values (merchants, the platform) matter.
--
-- Measured by ANALYZE of the four tables on the benchmark's database (~160,000
-- payments): 2,030 ms -> 400-510 ms. At 1,000 payments/s the autovacuum pass
-- over the growing tables now takes 2-3 s instead of 5-6 s; the p99 of whole
-- 60 s runs did not move measurably (six runs each way: medians 52 and 58 ms,
-- within the noise), since the disk's fsync stalls decide it (README,
-- Performance).

ALTER TABLE payq.payments
    ALTER COLUMN payment_id SET STATISTICS 10,
    ALTER COLUMN amount SET STATISTICS 10,
    ALTER COLUMN currency SET STATISTICS 10,
    ALTER COLUMN source SET STATISTICS 10,
    ALTER COLUMN source_kind SET STATISTICS 10,
    ALTER COLUMN destination SET STATISTICS 10,
    ALTER COLUMN capture SET STATISTICS 10,
    ALTER COLUMN description SET STATISTICS 0,
    ALTER COLUMN metadata SET STATISTICS 0,
    ALTER COLUMN request_hash SET STATISTICS 0,
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN failure_code SET STATISTICS 10,
    ALTER COLUMN failure_message SET STATISTICS 0,
    ALTER COLUMN authorized_amount SET STATISTICS 10,
    ALTER COLUMN captured_amount SET STATISTICS 10,
    ALTER COLUMN refunded_amount SET STATISTICS 10,
    ALTER COLUMN fee SET STATISTICS 10,
    ALTER COLUMN provider_auth_id SET STATISTICS 0,
    ALTER COLUMN risk_score SET STATISTICS 10,
    ALTER COLUMN saga_command SET STATISTICS 10,
    ALTER COLUMN recovery_point SET STATISTICS 10,
    ALTER COLUMN capture_request SET STATISTICS 0,
    ALTER COLUMN capture_amount SET STATISTICS 10,
    ALTER COLUMN capture_reply SET STATISTICS 0,
    ALTER COLUMN cancel_request SET STATISTICS 0,
    ALTER COLUMN cancel_reply SET STATISTICS 0,
    ALTER COLUMN version SET STATISTICS 10,
    ALTER COLUMN correlation_id SET STATISTICS 0,
    ALTER COLUMN reply SET STATISTICS 0,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN updated_at SET STATISTICS 10;

ALTER TABLE payq.inbox
    ALTER COLUMN scope SET STATISTICS 10,
    ALTER COLUMN message_id SET STATISTICS 10,
    ALTER COLUMN command SET STATISTICS 10,
    ALTER COLUMN request_hash SET STATISTICS 0,
    ALTER COLUMN reply SET STATISTICS 0,
    ALTER COLUMN created_at SET STATISTICS 10;

ALTER TABLE payq.outbox
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN event_id SET STATISTICS 10,
    ALTER COLUMN routing_key SET STATISTICS 10,
    ALTER COLUMN body SET STATISTICS 0,
    ALTER COLUMN correlation_id SET STATISTICS 0,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN published_at SET STATISTICS 10;

ALTER TABLE payq.payment_events
    ALTER COLUMN payment_id SET STATISTICS 10,
    ALTER COLUMN version SET STATISTICS 10,
    ALTER COLUMN event_id SET STATISTICS 10,
    ALTER COLUMN type SET STATISTICS 10,
    ALTER COLUMN data SET STATISTICS 0,
    ALTER COLUMN occurred_at SET STATISTICS 10;
