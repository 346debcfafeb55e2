/*
 * verify.c - the run's totals from PostgreSQL (see verify.h).
 *
 * One statement reads them all, so they come from one snapshot. Ids are
 * matched with starts_with(), not LIKE: '_' is a legal id character and a
 * LIKE wildcard.
 */
#include "verify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static const char q_existing[] =
    "SELECT count(*) FROM payq.accounts WHERE starts_with(id, $1 || '-')";

static const char q_ledger[] =
    "WITH acc AS (\n"
    "  SELECT kind, posted, pending FROM payq.account_balances\n"
    "   WHERE starts_with(id, $1 || '-') AND kind IN ('customer', 'merchant')),\n"
    "dep AS (\n"
    "  SELECT count(*) AS n, COALESCE(sum(amount), 0) AS s FROM payq.deposits\n"
    "   WHERE starts_with(deposit_id, $1 || '-') AND status = 'succeeded'),\n"
    "pay AS (\n"
    "  SELECT count(*) AS n, count(*) FILTER (WHERE status = 'succeeded') AS ok,\n"
    "         COALESCE(sum(captured_amount) FILTER (WHERE status = 'succeeded'), 0) AS cap,\n"
    "         COALESCE(sum(fee) FILTER (WHERE status = 'succeeded'), 0) AS fee\n"
    "    FROM payq.payments WHERE starts_with(payment_id, $1 || '-')),\n"
    "plat AS (\n"
    "  SELECT COALESCE(sum(e.amount), 0) AS s\n"
    "    FROM payq.postings p JOIN payq.ledger_entries e ON e.posting_id = p.id\n"
    "   WHERE p.kind = 'capture' AND starts_with(p.ref, $1 || '-')\n"
    "     AND e.account_id = '@platform:' || $2)\n"
    "SELECT (SELECT count(*) FROM acc WHERE kind = 'customer'),\n"
    "       (SELECT count(*) FROM acc WHERE kind = 'merchant'),\n"
    "       (SELECT COALESCE(sum(posted), 0) FROM acc WHERE kind = 'customer'),\n"
    "       (SELECT COALESCE(sum(posted), 0) FROM acc WHERE kind = 'merchant'),\n"
    "       (SELECT COALESCE(sum(pending), 0) FROM acc),\n"
    "       (SELECT count(*) FROM acc\n"
    "         WHERE kind = 'customer' AND (posted < 0 OR posted - pending < 0)),\n"
    "       dep.n, dep.s, pay.n, pay.ok, pay.cap, pay.fee, plat.s\n"
    "  FROM dep, pay, plat";

static int to_i64(PGresult *res, int col, int64_t *out)
{
    if (PQgetisnull(res, 0, col))
        return PAYQ_ERR_INVALID;
    const char *s = PQgetvalue(res, 0, col);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return PAYQ_ERR_OVERFLOW; /* a numeric sum beyond bigint */
    *out = v;
    return PAYQ_OK;
}

int verify_existing(db_t *db, const char *prefix, int64_t *n)
{
    const char *params[1] = { prefix };
    PGresult *res = PQexecParams(db_conn(db), q_existing, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return db_fail(db, res);
    int rc = to_i64(res, 0, n);
    PQclear(res);
    return rc;
}

int verify_read(db_t *db, const char *prefix, const char *currency, struct verify_ledger *out)
{
    const char *params[2] = { prefix, currency };
    PGresult *res = PQexecParams(db_conn(db), q_ledger, 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 13)
        return db_fail(db, res);
    struct verify_ledger v;
    int64_t *cols[13] = { &v.wallets,  &v.merchants, &v.wallet_posted, &v.merchant_posted,
                          &v.pending,  &v.overdrawn, &v.deposits,      &v.deposited,
                          &v.payments, &v.succeeded, &v.captured,      &v.fees,
                          &v.platform };
    int rc = PAYQ_OK;
    for (int i = 0; i < 13 && rc == PAYQ_OK; i++)
        rc = to_i64(res, i, cols[i]);
    PQclear(res);
    if (rc == PAYQ_OK)
        *out = v;
    return rc;
}
