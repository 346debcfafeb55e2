/*
 * dlq_inspect.c - list, show, stats and export.
 *
 * These read PostgreSQL only. Reading payq.dlq itself (basic.get) would
 * take messages out of the queue while the tool runs, reorder them when
 * they return, and raise their delivery count; the archive row holds
 * everything the queue copy does, and more.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "dlq.h"

/* How many rows `list` shows without --limit. */
#define LIST_DEFAULT_LIMIT 200

static const char *status_words(const struct dlq_filter *f)
{
    return f->status ? f->status : "any status";
}

int dlq_list(struct dlq *t, const struct dlq_filter *in)
{
    struct dlq_filter f = *in;
    if (f.limit <= 0)
        f.limit = LIST_DEFAULT_LIMIT;
    PGresult *r;
    if (dlq_select(t, &f, true, &r) != PAYQ_OK)
        return dlq_db_error(t, "listing dead letters");
    int n = PQntuples(r);
    if (n == 0) {
        printf("no dead letters (%s%s)\n", status_words(&f),
               dlq_filter_selects(&f) ? ", with these filters" : "");
        PQclear(r);
        return DLQ_EXIT_OK;
    }
    static const char *const heads[] = { "ID",          "AGE",        "REASON",   "COMMAND",
                                         "BUSINESS ID", "MESSAGE ID", "ATTEMPTS", "STATUS" };
    static const int maxw[] = { 8, 5, 22, 20, 32, 40, 8, 9 };
    struct dlq_table *tb = dlq_table_new(8, heads, maxw);
    int rc = tb ? DLQ_EXIT_OK : DLQ_EXIT_FAIL;
    /* Selected newest first so that --limit keeps the newest; shown
     * newest last, like a log. */
    for (int i = n - 1; tb && i >= 0; i--) {
        char age[16];
        dlq_age(atoll(PQgetvalue(r, i, COL_AGE)), age, sizeof age);
        const char *cells[8] = { dlq_val(r, i, COL_SHORT),    age,
                                 dlq_val(r, i, COL_REASON),   dlq_val(r, i, COL_RK),
                                 dlq_val(r, i, COL_BUSINESS), dlq_val(r, i, COL_MSGID),
                                 dlq_val(r, i, COL_ATTEMPTS), dlq_val(r, i, COL_STATUS) };
        if (dlq_table_add(tb, cells) != PAYQ_OK)
            rc = DLQ_EXIT_FAIL;
    }
    if (rc == DLQ_EXIT_OK) {
        dlq_table_print(tb, stdout);
        long long total = atoll(PQgetvalue(r, 0, COL_TOTAL));
        if (total > n)
            printf("showing the newest %d of %lld dead letters (%s); --limit N shows more\n", n,
                   total, status_words(&f));
        else
            printf("%d dead letter%s (%s)\n", n, n == 1 ? "" : "s", status_words(&f));
    } else {
        fprintf(stderr, "payq-dlq: out of memory\n");
    }
    dlq_table_free(tb);
    PQclear(r);
    return rc;
}

/* Prints a JSON text pretty, indented by two spaces; anything else (or
 * JSON with duplicate keys, which a pretty print would hide) as it is. */
static void print_json_text(const char *text, size_t len)
{
    json_error_t err;
    json_t *j = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY) : NULL;
    if (s) {
        for (const char *line = s; *line;) {
            size_t l = strcspn(line, "\n");
            printf("  %.*s\n", (int)l, line);
            line += l + (line[l] == '\n');
        }
    } else {
        fputs("  ", stdout);
        dlq_print_bytes(stdout, text, len);
        if (!j)
            printf("\n  (not valid JSON: %s at line %d, column %d)\n", err.text, err.line,
                   err.column);
        else
            printf("\n");
    }
    free(s);
    json_decref(j);
}

/* The failed attempts of a message, from payq.failures. */
static int show_attempts(struct dlq *t, const char *message_key)
{
    static const char sql[] =
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
        " attempt, kind, COALESCE(reason, ''), COALESCE(retry_tier, ''), COALESCE(sqlstate, ''),"
        " error, worker FROM payq.failures WHERE message_key = $1 ORDER BY occurred_at, id";
    const char *p[1] = { message_key };
    PGresult *r;
    if (dlq_query(t, sql, 1, p, NULL, NULL, &r) != PAYQ_OK)
        return dlq_db_error(t, "reading payq.failures");
    int n = PQntuples(r);
    printf("\nattempts (%d in payq.failures for %s):\n", n, message_key);
    if (n == 0)
        printf("  (none recorded)\n");
    for (int i = 0; i < n; i++) {
        printf("  #%s  %s  %s", PQgetvalue(r, i, 1), PQgetvalue(r, i, 0), PQgetvalue(r, i, 2));
        if (*PQgetvalue(r, i, 3))
            printf(" %s", PQgetvalue(r, i, 3));
        if (*PQgetvalue(r, i, 4))
            printf(", retried in tier %s", PQgetvalue(r, i, 4));
        if (*PQgetvalue(r, i, 5))
            printf(", SQLSTATE %s", PQgetvalue(r, i, 5));
        printf(", worker %s\n      ", PQgetvalue(r, i, 7));
        dlq_print_bytes(stdout, PQgetvalue(r, i, 6), (size_t)PQgetlength(r, i, 6));
        printf("\n");
    }
    PQclear(r);
    return DLQ_EXIT_OK;
}

int dlq_show(struct dlq *t, char *id)
{
    struct dlq_filter f;
    memset(&f, 0, sizeof f);
    int rc = dlq_resolve_ids(t, &id, 1, &f);
    if (rc != DLQ_EXIT_OK)
        return rc;
    PGresult *r;
    if (dlq_select(t, &f, false, &r) != PAYQ_OK) {
        dlq_filter_free(&f);
        return dlq_db_error(t, "reading the dead letter");
    }
    dlq_filter_free(&f);
    if (PQntuples(r) != 1) { /* resolved a moment ago: deleted since */
        fprintf(stderr, "payq-dlq: dead letter %s is gone\n", id);
        PQclear(r);
        return DLQ_EXIT_FAIL;
    }
    char age[16];
    dlq_age(atoll(PQgetvalue(r, 0, COL_AGE)), age, sizeof age);
    printf("dead letter %s\n", PQgetvalue(r, 0, COL_ID));
    printf("  status          %s", PQgetvalue(r, 0, COL_STATUS));
    if (dlq_val(r, 0, COL_RESOLVED_AT))
        printf(" at %s by %s: %s", PQgetvalue(r, 0, COL_RESOLVED_AT),
               dlq_or(r, 0, COL_RESOLVED_BY, "?"), dlq_or(r, 0, COL_NOTE, "-"));
    else if (dlq_val(r, 0, COL_NOTE))
        printf(" (%s)", PQgetvalue(r, 0, COL_NOTE));
    printf("\n");
    printf("  reason          %s\n", PQgetvalue(r, 0, COL_REASON));
    printf("  command         %s (published to %s)\n", PQgetvalue(r, 0, COL_RK),
           PQgetvalue(r, 0, COL_EXCHANGE));
    printf("  business id     %s\n", dlq_or(r, 0, COL_BUSINESS, "-"));
    printf("  message_id      %s\n", dlq_or(r, 0, COL_MSGID, "-"));
    printf("  correlation_id  %s\n", dlq_or(r, 0, COL_CORR, "-"));
    printf("  publisher       %s\n", dlq_or(r, 0, COL_SCOPE, "- (no user_id)"));
    printf("  attempts        %s\n", PQgetvalue(r, 0, COL_ATTEMPTS));
    printf("  first failure   %s\n", PQgetvalue(r, 0, COL_FIRST));
    printf("  last failure    %s\n", PQgetvalue(r, 0, COL_LAST));
    printf("  archived        %s (%s ago)\n", PQgetvalue(r, 0, COL_CREATED), age);
    printf("  worker          %s\n", PQgetvalue(r, 0, COL_WORKER));
    printf("  sqlstate        %s\n", dlq_or(r, 0, COL_SQLSTATE, "-"));
    printf("  fingerprint     %s\n", PQgetvalue(r, 0, COL_FPR));
    printf("  message key     %s\n", PQgetvalue(r, 0, COL_MSGKEY));
    if (strcmp(PQgetvalue(r, 0, COL_REDACTED), "t") == 0)
        printf("  redacted        yes: a card number in the body was masked, so it cannot be "
               "replayed\n");
    printf("\nerror:\n  ");
    dlq_print_bytes(stdout, PQgetvalue(r, 0, COL_ERROR), (size_t)PQgetlength(r, 0, COL_ERROR));
    printf("\n\nproperties and headers:\n");
    print_json_text(PQgetvalue(r, 0, COL_PROPS), (size_t)PQgetlength(r, 0, COL_PROPS));

    rc = show_attempts(t, PQgetvalue(r, 0, COL_MSGKEY));

    size_t len = 0;
    unsigned char *body = NULL;
    if (dlq_body(t, PQgetvalue(r, 0, COL_ID), &body, &len) != PAYQ_OK) {
        PQclear(r);
        return dlq_db_error(t, "reading the body");
    }
    printf("\nbody (%zu bytes):\n", len);
    print_json_text((const char *)body, len);
    free(body);
    PQclear(r);
    return rc;
}

int dlq_stats(struct dlq *t, const struct dlq_filter *f)
{
    static const char sql[] = "SELECT d.reason, d.fingerprint, count(*),"
                              " floor(extract(epoch FROM now() - min(d.created_at)))::bigint,"
                              " floor(extract(epoch FROM now() - max(d.created_at)))::bigint,"
                              " string_agg(DISTINCT d.routing_key, ','),"
                              " (array_agg(d.error ORDER BY d.created_at DESC))[1]" DLQ_WHERE
                              " GROUP BY d.reason, d.fingerprint"
                              " ORDER BY count(*) DESC, d.reason, d.fingerprint LIMIT $10::bigint";
    char limit[32];
    const char *params[DLQ_NPARAMS];
    dlq_filter_params(f, limit, sizeof limit, params);
    PGresult *r;
    if (dlq_query(t, sql, DLQ_NPARAMS, params, NULL, NULL, &r) != PAYQ_OK)
        return dlq_db_error(t, "grouping dead letters");
    int n = PQntuples(r);
    if (n == 0) {
        printf("no dead letters (%s%s)\n", status_words(f),
               dlq_filter_selects(f) ? ", with these filters" : "");
        PQclear(r);
        return DLQ_EXIT_OK;
    }
    static const char *const heads[] = { "REASON",    "FINGERPRINT", "COUNT",        "FIRST SEEN",
                                         "LAST SEEN", "COMMANDS",    "EXAMPLE ERROR" };
    static const int maxw[] = { 22, 16, 8, 10, 10, 32, 64 };
    struct dlq_table *tb = dlq_table_new(7, heads, maxw);
    int rc = tb ? DLQ_EXIT_OK : DLQ_EXIT_FAIL;
    long long total = 0;
    for (int i = 0; tb && i < n; i++) {
        char first[16], last[16];
        dlq_age(atoll(PQgetvalue(r, i, 3)), first, sizeof first);
        dlq_age(atoll(PQgetvalue(r, i, 4)), last, sizeof last);
        strcat(first, " ago");
        strcat(last, " ago");
        total += atoll(PQgetvalue(r, i, 2));
        const char *cells[7] = {
            PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), first, last,
            PQgetvalue(r, i, 5), PQgetvalue(r, i, 6)
        };
        if (dlq_table_add(tb, cells) != PAYQ_OK)
            rc = DLQ_EXIT_FAIL;
    }
    if (rc == DLQ_EXIT_OK) {
        dlq_table_print(tb, stdout);
        printf("%lld dead letter%s in %d group%s (%s)\n", total, total == 1 ? "" : "s", n,
               n == 1 ? "" : "s", status_words(f));
    } else {
        fprintf(stderr, "payq-dlq: out of memory\n");
    }
    dlq_table_free(tb);
    PQclear(r);
    return rc;
}

int dlq_export(struct dlq *t, const struct dlq_filter *f)
{
    /* Every column as it is stored (properties as JSON), the body as
     * base64 without line breaks: one JSON object per line. */
    static const char sql[] = "SELECT ((to_jsonb(d) - 'body') || jsonb_build_object('body_base64',"
                              " translate(encode(d.body, 'base64'), E'\\n', '')))::text" DLQ_WHERE
                              " ORDER BY d.created_at, d.id LIMIT $10::bigint";
    char limit[32];
    const char *params[DLQ_NPARAMS];
    dlq_filter_params(f, limit, sizeof limit, params);
    /* A big export streams row by row for as long as it takes. */
    if (db_exec(t->db, "SET statement_timeout = 0") != PAYQ_OK)
        return dlq_db_error(t, "export");
    PGconn *c = db_conn(t->db);
    if (!PQsendQueryParams(c, sql, DLQ_NPARAMS, NULL, params, NULL, NULL, 0) ||
        !PQsetSingleRowMode(c)) {
        (void)db_fail(t->db, NULL);
        return dlq_db_error(t, "export");
    }
    long rows = 0;
    int rc = DLQ_EXIT_OK;
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE) {
            fwrite(PQgetvalue(r, 0, 0), 1, (size_t)PQgetlength(r, 0, 0), stdout);
            fputc('\n', stdout);
            rows++;
            PQclear(r);
        } else if (st == PGRES_TUPLES_OK) {
            PQclear(r);
        } else {
            (void)db_fail(t->db, r);
            rc = dlq_db_error(t, "export");
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "payq-dlq: writing the export failed\n");
        rc = DLQ_EXIT_FAIL;
    }
    fprintf(stderr, "payq-dlq: exported %ld dead letter%s (%s)\n", rows, rows == 1 ? "" : "s",
            status_words(f));
    return rc;
}
