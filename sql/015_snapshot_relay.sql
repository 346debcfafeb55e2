-- 015_snapshot_relay.sql - the relay remembers what it published as a
-- database snapshot instead of marking every row.
--
-- Until now the relay marked each published outbox row (published_at): an
-- UPDATE per event that wrote a whole new row version, never HOT (the column
-- is in the partial index's predicate), with two new index entries, and left
-- a dead tuple for vacuum: about 22 us of database CPU per event.
--
-- Now the relay keeps one row, payq.relay_position: a snapshot S such that
-- every outbox row visible in S has been published (and confirmed). A round
-- takes a new snapshot T and publishes the rows visible in T but not in S,
-- in id order, then records T. Rows are never updated.
--
-- Nothing is skipped, however late a transaction commits: a row not visible
-- in S belongs to a transaction that had not committed when S was taken (S
-- lists it as in progress, or its xid is at or above S's xmax), and it is in
-- the difference of the first snapshot that sees it committed. Order per payment is kept: a later
-- event of a payment is written by a transaction that waited for the earlier
-- one's row lock, so it committed after it, and every snapshot that sees the
-- later event sees the earlier one; within one difference, id order is the
-- order events were written in.
--
-- Finding the difference without scanning from S's oldest open transaction
-- (one forgotten BEGIN in psql would stretch that range over every row
-- since) and paging through a backlog in id order without sorting it all
-- again for each page: the position also keeps
--   horizon  an xid no transaction had yet when S was taken (the xid of the
--            transaction that saves the position, which begins after S), and
--   max_id   the largest id visible in S.
-- A transaction whose xid is >= horizon got it after S was taken, so its
-- rows have ids greater than max_id (an outbox id is drawn only once its
-- transaction has an xid; see the id default below). So the rows not
-- visible in S are
--   1. those of the few transactions with an xid below horizon that S did not
--      see committed (in xip, or in [xmax, horizon)): found through the xid
--      index, whatever their id; and
--   2. those with xid >= horizon, all with id > max_id: read in primary-key
--      order from max_id, LIMIT a page, so a backlog of millions is paged
--      through without a sort.
-- A backlog bigger than one page is published against a fixed target
-- snapshot, page by page; target and through_id (the last id published of
-- it) are recorded after each page, so a new leader goes on from there.

-- The transaction that wrote the row (its top-level xid). Rows published by
-- the previous relay keep NULL: they count as published.
ALTER TABLE payq.outbox ADD COLUMN xid xid8;
ALTER TABLE payq.outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
ALTER TABLE payq.outbox ADD CONSTRAINT outbox_xid_set CHECK (xid IS NOT NULL) NOT VALID;

-- An id is drawn only after the transaction has an xid (pg_current_xact_id()
-- assigns one if it has none), whatever order the column defaults are
-- evaluated in: the horizon argument above relies on it.
ALTER TABLE payq.outbox ALTER COLUMN id SET DEFAULT
    CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('payq.outbox_id_seq'::regclass) END;

-- Rows the previous relay had not published yet belong to this transaction
-- now; the position below has it in progress, so they are published next.
UPDATE payq.outbox SET xid = pg_current_xact_id() WHERE published_at IS NULL;

DROP INDEX payq.outbox_unpublished;
ALTER TABLE payq.outbox DROP COLUMN published_at;
CREATE INDEX outbox_xid ON payq.outbox (xid) WHERE xid IS NOT NULL;
ALTER TABLE payq.outbox ALTER COLUMN xid SET STATISTICS 10; -- as its other columns (sql/014)

CREATE TABLE payq.relay_position (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    snapshot        pg_snapshot NOT NULL, -- every outbox row visible in it is published
    horizon         xid8 NOT NULL,        -- no xid >= this one was assigned when it was taken
    max_id          bigint NOT NULL,      -- the largest outbox id visible in it
    target          pg_snapshot,          -- a backlog being published page by page ...
    target_horizon  xid8,
    through_id      bigint,               -- ... up to and including this id
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((target IS NULL) = (through_id IS NULL) AND (target IS NULL) = (target_horizon IS NULL))
);

-- The first position: this transaction's snapshot, with this transaction
-- itself and every xid from the lower of its own and the snapshot's xmax up
-- to its own counted as in progress (more than were, which can only publish
-- a row again, never skip one). The outbox is locked until this commits, so
-- every row written later has an id above max_id.
INSERT INTO payq.relay_position (snapshot, horizon, max_id)
SELECT format('%s:%s:%s', least(pg_snapshot_xmin(q.s)::text::bigint, q.me), q.xmax,
              (SELECT string_agg(x::text, ',' ORDER BY x)
                 FROM (SELECT pg_snapshot_xip(q.s)::text::bigint AS x
                       UNION SELECT generate_series(least(q.me, pg_snapshot_xmax(q.s)::text::bigint),
                                                    q.xmax - 1)) u))::pg_snapshot,
       q.xmax::text::xid8,
       COALESCE((SELECT max(id) FROM payq.outbox), 0)
  FROM (SELECT s, me, greatest(pg_snapshot_xmax(s)::text::bigint, me + 1) AS xmax
          FROM (SELECT pg_current_snapshot() AS s, pg_current_xact_id()::text::bigint AS me) r) q;

-- The outbox rows visible in p_target (NULL: the caller's snapshot) and not
-- in p_snapshot, with id > p_through, in id order, at most p_limit (NULL:
-- all). The relay's page. EXECUTE plans each call with its values, so the
-- planner sees the real ranges (and a plain SQL function, inlined into the
-- relay's statement, cost several times as much to plan).
CREATE FUNCTION payq.outbox_after(p_snapshot pg_snapshot, p_horizon xid8, p_max_id bigint,
                                  p_target pg_snapshot, p_through bigint, p_limit integer)
RETURNS SETOF payq.outbox
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE
        -- 1. transactions with an xid below the horizon that p_snapshot did
        --    not see committed, by xid, whatever their ids
        '(SELECT * FROM payq.outbox'
        '  WHERE (xid = ANY ($1) OR (xid >= $2 AND xid < $3)) AND id > $5'
        '    AND pg_visible_in_snapshot(xid, $6)'
        '  ORDER BY id LIMIT $7)'
        ' UNION ALL '
        -- 2. later transactions: all their ids are above p_max_id
        '(SELECT * FROM payq.outbox'
        '  WHERE xid >= $3 AND id > greatest($4, $5)'
        '    AND pg_visible_in_snapshot(xid, $6)'
        '  ORDER BY id LIMIT $7)'
        ' ORDER BY id LIMIT $7'
    USING ARRAY(SELECT pg_snapshot_xip(p_snapshot)), pg_snapshot_xmax(p_snapshot), p_horizon,
          p_max_id, p_through, COALESCE(p_target, pg_current_snapshot()), p_limit;
END $$;

-- Whether the outbox row (xid, id) has been published.
CREATE FUNCTION payq.outbox_published(p_xid xid8, p_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_xid IS NULL OR pg_visible_in_snapshot(p_xid, p.snapshot)
           OR (p.target IS NOT NULL AND pg_visible_in_snapshot(p_xid, p.target)
               AND p_id <= p.through_id)
      FROM payq.relay_position p;
$$;

-- The committed outbox rows not published yet, oldest first.
CREATE FUNCTION payq.outbox_unpublished() RETURNS SETOF payq.outbox
LANGUAGE sql STABLE AS $$
    SELECT o.*
      FROM payq.relay_position p,
           LATERAL payq.outbox_after(p.snapshot, p.horizon, p.max_id, NULL, 0, NULL) o
     WHERE NOT (p.target IS NOT NULL AND pg_visible_in_snapshot(o.xid, p.target)
                AND o.id <= p.through_id)
     ORDER BY o.id;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'payq_worker') THEN
        GRANT SELECT, UPDATE ON payq.relay_position TO payq_worker;
    END IF;
END $$;
