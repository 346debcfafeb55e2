/*
 * report.c - balances and payment outcomes as tables, with amounts in major
 * units of their currency (money_format), for people at a terminal.
 */
#include "report.h"

#include <stdlib.h>
#include <string.h>

#include "money.h"

static void amount(const char *minor, const char *currency, char *out, size_t len)
{
    if (!minor || !*minor) {
        snprintf(out, len, "-");
        return;
    }
    if (money_format(strtoll(minor, NULL, 10), currency, out, len) != PAYQ_OK)
        snprintf(out, len, "%s %s", minor, currency);
}

static PGresult *query(db_t *db, const char *sql, const char *prefix, long limit)
{
    char lim[32];
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *params[2] = { prefix, lim };
    PGresult *res = PQexecParams(db_conn(db), sql, 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        db_fail(db, res);
        return NULL;
    }
    return res;
}

static void rule(FILE *out, int width)
{
    for (int i = 0; i < width; i++)
        fputc('-', out);
    fputc('\n', out);
}

int report_print(db_t *db, FILE *out, const char *prefix, long limit)
{
    PGresult *res = query(db,
                          "SELECT id, kind, currency, posted, pending, available"
                          "  FROM payq.account_balances"
                          " WHERE starts_with(id, $1)"
                          "    OR (kind IN ('external', 'platform') AND currency IN"
                          "        (SELECT currency FROM payq.accounts WHERE starts_with(id, $1)"
                          "            AND kind IN ('customer', 'merchant')))"
                          " ORDER BY kind = 'external', kind = 'platform', kind, id LIMIT $2",
                          prefix, limit);
    if (!res)
        return PAYQ_ERR_DB;
    fprintf(out, "Accounts\n");
    fprintf(out, "%-24s %-9s %18s %18s %18s\n", "ACCOUNT", "KIND", "POSTED", "PENDING",
            "AVAILABLE");
    rule(out, 91);
    for (int i = 0; i < PQntuples(res); i++) {
        char posted[48], pending[48], available[48];
        const char *cur = PQgetvalue(res, i, 2);
        amount(PQgetvalue(res, i, 3), cur, posted, sizeof posted);
        amount(PQgetvalue(res, i, 4), cur, pending, sizeof pending);
        amount(PQgetvalue(res, i, 5), cur, available, sizeof available);
        fprintf(out, "%-24s %-9s %18s %18s %18s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                posted, pending, available);
    }
    PQclear(res);

    res = query(db,
                "SELECT payment_id, status, COALESCE(failure_code, ''), amount, captured_amount,"
                "       refunded_amount, fee, currency, source"
                "  FROM payq.payments"
                " WHERE starts_with(payment_id, $1)"
                " ORDER BY created_at, payment_id LIMIT $2",
                prefix, limit);
    if (!res)
        return PAYQ_ERR_DB;
    fprintf(out, "\nPayments\n");
    fprintf(out, "%-24s %-10s %-18s %13s %13s %13s %11s  %s\n", "PAYMENT", "STATUS", "CODE",
            "AMOUNT", "CAPTURED", "REFUNDED", "FEE", "SOURCE");
    rule(out, 120);
    for (int i = 0; i < PQntuples(res); i++) {
        char amt[48], cap[48], ref[48], fee[48];
        const char *cur = PQgetvalue(res, i, 7);
        amount(PQgetvalue(res, i, 3), cur, amt, sizeof amt);
        amount(PQgetvalue(res, i, 4), cur, cap, sizeof cap);
        amount(PQgetvalue(res, i, 5), cur, ref, sizeof ref);
        amount(PQgetvalue(res, i, 6), cur, fee, sizeof fee);
        fprintf(out, "%-24s %-10s %-18s %13s %13s %13s %11s  %s\n", PQgetvalue(res, i, 0),
                PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), amt, cap, ref, fee,
                PQgetvalue(res, i, 8));
    }
    PQclear(res);
    return PAYQ_OK;
}

int report_check(db_t *db, FILE *out, int *violations)
{
    PGresult *res = PQexec(db_conn(db), "SELECT severity, invariant, subject, detail"
                                        "  FROM payq.check_invariants()"
                                        " ORDER BY severity DESC, invariant, subject");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return db_fail(db, res);
    int bad = 0, n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        if (strcmp(PQgetvalue(res, i, 0), "violation") == 0)
            bad++;
        fprintf(out, "%-9s  %-24s %-30s %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
    }
    PQclear(res);
    res = PQexec(db_conn(db), "SELECT (SELECT count(*) FROM payq.payments),"
                              " (SELECT count(*) FROM payq.postings),"
                              " (SELECT count(*) FROM payq.payment_events)");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return db_fail(db, res);
    fprintf(out, "%s: %d violation(s), %d warning(s); checked %s payments, %s postings, "
                 "%s payment events\n",
            bad ? "FAILED" : "OK", bad, n - bad, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
            PQgetvalue(res, 0, 2));
    PQclear(res);
    *violations = bad;
    return PAYQ_OK;
}
