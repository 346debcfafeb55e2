-- 013_lean_indexes.sql - two index entries a payment paid for and nothing used.
--
-- Every payment wrote about twenty index entries; two of them served no query:
--
-- 1. payments_status (status, updated_at): no query of payq reads payments by
--    status through it (the overview counts payments per status over the
--    whole table; the reaper finds sagas in flight with payments_in_flight).
--    Dropped.
--
-- 2. outbox_event_id_key: the outbox's UNIQUE (event_id), a B-tree over
--    random UUIDs, so each insert lands on a random leaf page, and the relay's
--    mark-published UPDATE (never a HOT update, since published_at is in the
--    partial index's predicate) inserted into it a second time. Nothing looks
--    an outbox row up by event_id. Event ids stay unique as before: each is a
--    fresh gen_random_uuid() (122 random bits) taken where the event is
--    written, a payment's events also carry it into payq.payment_events,
--    whose UNIQUE (event_id) stays, and invariant 8 (payq.check_invariants)
--    still pairs every payment event with its outbox row by event_id.
--
-- In-database measurement (150 batches of 100 wallet payments, each batch
-- also marked published the way the relay does): about 30 -> 25 ms of CPU a
-- batch (medians of runs that varied by a third on this shared machine).

DROP INDEX payq.payments_status;

ALTER TABLE payq.outbox DROP CONSTRAINT outbox_event_id_key;
