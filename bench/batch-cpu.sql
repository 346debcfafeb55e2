-- bench/batch-cpu.sql - the database's CPU per payment in the set-based path
-- (payq.apply_wallet_payments, sql/009 and sql/016), measured inside the
-- database: no broker, no worker, no network, no commit. What a change to the
-- payment statement, a trigger or an index costs shows here long before it
-- shows through the machine's noise in an end-to-end run.
--
--   psql -d payq -v batches=40 -v size=50 -f bench/batch-cpu.sql
--   psql -d payq -v apply=sql/016_events_once.sql -f bench/batch-cpu.sql
--
-- Run it as a superuser (it reads its own backend's CPU time from
-- /proc/self/stat with pg_read_file) on a migrated database (with or without
-- payments: it makes its own wallets and merchants). It vacuums the schema's
-- tables first; then everything happens in one transaction that is rolled
-- back: it leaves nothing behind. It prints the CPU time and the wall time
-- per payment. To compare two versions of the schema, run it on a database migrated to the older one, alternately as it is and
-- with the newer one's migration applied inside the transaction
-- (-v apply=sql/NNN_name.sql): one database, so nothing but the schema
-- differs. On this project's shared machine runs of one version vary by a
-- fifth and more: compare medians of ten or so.
\set ON_ERROR_STOP on
\set QUIET on
\if :{?batches}
\else
\set batches 40
\endif
\if :{?size}
\else
\set size 50
\endif
SELECT set_config('bench.batches', :'batches', false),
       set_config('bench.size', :'size', false),
       set_config('bench.prefix', 'cpu' || floor(random() * 1e9)::bigint || '-', false) \g /dev/null

-- Earlier runs (rolled back) leave dead rows and index entries behind, which
-- the next run would step over: runs alternated between 0.18 and 0.29 ms
-- per payment without this. A worker's database has none of them.
SELECT format('VACUUM %s', string_agg(c.oid::regclass::text, ', '))
  FROM pg_class c WHERE c.relnamespace = 'payq'::regnamespace AND c.relkind = 'r' \gexec

BEGIN;
SET LOCAL client_min_messages = warning;
\if :{?apply}
-- A migration to try, applied inside the transaction (so rolled back too).
\i :apply
\endif
-- 1,000 funded wallets and 5 merchants, made the way commands make them.
SELECT count(*) AS wallets FROM (
    SELECT payq.apply_command(NULL, NULL, 'account.open',
               jsonb_build_object('account', current_setting('bench.prefix') || 'w' || g,
                                  'currency', 'USD', 'kind', 'customer'), NULL),
           payq.apply_command(NULL, NULL, 'account.deposit',
               jsonb_build_object('deposit_id', current_setting('bench.prefix') || 'd' || g,
                                  'account', current_setting('bench.prefix') || 'w' || g,
                                  'amount', 100000000, 'currency', 'USD'), NULL)
      FROM generate_series(1, 1000) g) made \gset
SELECT count(*) AS merchants FROM (
    SELECT payq.apply_command(NULL, NULL, 'account.open',
               jsonb_build_object('account', current_setting('bench.prefix') || 'm' || g,
                                  'currency', 'USD', 'kind', 'merchant'), NULL)
      FROM generate_series(1, 5) g) made \gset

-- The batches, built before the clock starts: each payment its own wallet
-- within a batch (as the worker's batches mostly are), merchants in turn.
CREATE TEMP TABLE batch_cpu_input ON COMMIT DROP AS
SELECT k, (SELECT jsonb_agg(jsonb_build_object(
               'scope', 'batch-cpu',
               'message_id', current_setting('bench.prefix') || k || '-' || g,
               'command', 'payment.create',
               'body', jsonb_build_object(
                   'payment_id', current_setting('bench.prefix') || 'p' || k || '-' || g,
                   'amount', 100, 'currency', 'USD',
                   'source', current_setting('bench.prefix') || 'w'
                             || ((k * current_setting('bench.size')::int + g) % 1000 + 1),
                   'destination', current_setting('bench.prefix') || 'm' || (g % 5 + 1),
                   'capture', true)))
             FROM generate_series(1, current_setting('bench.size')::int) g) AS commands
  FROM generate_series(1, current_setting('bench.batches')::int) k;

DO $$
DECLARE
    stat text[];
    cpu0 bigint;
    cpu1 bigint;
    t0 timestamptz;
    wall interval := '0';
    r record;
    done bigint := 0;
    n bigint := current_setting('bench.batches')::bigint * current_setting('bench.size')::bigint;
BEGIN
    -- utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks of 10 ms
    stat := regexp_split_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ');
    cpu0 := stat[12]::bigint + stat[13]::bigint;
    FOR r IN SELECT commands FROM batch_cpu_input ORDER BY k LOOP
        t0 := clock_timestamp();
        done := done + (SELECT count(*) FROM jsonb_object_keys(
                            payq.apply_wallet_payments(r.commands)));
        wall := wall + (clock_timestamp() - t0);
    END LOOP;
    stat := regexp_split_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ');
    cpu1 := stat[12]::bigint + stat[13]::bigint;
    IF done <> n THEN
        RAISE EXCEPTION 'the set-based path finished % of % payments', done, n;
    END IF;
    RAISE WARNING 'batch-cpu: % batches of %: CPU % ms, wall % ms per payment',
        current_setting('bench.batches'), current_setting('bench.size'),
        round((cpu1 - cpu0) * 10.0 / n, 4), round(extract(epoch FROM wall) * 1000 / n, 4);
END $$;
ROLLBACK;
