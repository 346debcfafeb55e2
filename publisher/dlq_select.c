/*
 * dlq_select.c - which dead letters a command works on.
 *
 * Every command selects rows of payq.dead_letters with one parameterized
 * WHERE clause: each filter is a parameter that is NULL when unused, so the
 * SQL text is fixed and no option value ever becomes SQL.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "dlq.h"

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* In the order of enum dlq_col. */
/* clang-format off */
#define COLUMNS                                                                          \
    "SELECT d.id::text, left(d.id::text, 8),"                                            \
    " floor(extract(epoch FROM now() - d.created_at))::bigint, d.reason, d.routing_key," \
    " d.business_id, d.message_id, d.attempts, d.status, d.exchange, d.message_key,"     \
    " d.correlation_id, d.error, d.sqlstate, d.fingerprint, d.worker, "                  \
    TS("d.first_failure_at") ", " TS("d.last_failure_at") ","                            \
    " d.properties::text, octet_length(d.body), d.redacted, "                            \
    TS("d.resolved_at") ", d.resolved_by, d.resolution_note, " TS("d.created_at") ","    \
    " COALESCE(d.properties->'headers'->>'x-payq-user-id', d.properties->>'user_id', ''),"\
    " d.created_at::text, count(*) OVER ()"
/* clang-format on */

const char *dlq_val(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

const char *dlq_or(const PGresult *r, int row, int col, const char *def)
{
    const char *v = dlq_val(r, row, col);
    return v && *v ? v : def;
}

int dlq_db_error(struct dlq *t, const char *what)
{
    fprintf(stderr, "payq-dlq: %s failed: %s\n", what, db_error(t->db));
    if (strcmp(db_sqlstate(t->db), "42P01") == 0 || strcmp(db_sqlstate(t->db), "42883") == 0)
        fprintf(stderr, "payq-dlq: the database schema is older than this tool: run "
                        "`payq-worker migrate` (it applies sql/005_dead_letters.sql)\n");
    return DLQ_EXIT_FAIL;
}

int dlq_query(struct dlq *t, const char *sql, int n, const char *const *params, const int *lengths,
              const int *formats, PGresult **out)
{
    PGresult *r = PQexecParams(db_conn(t->db), sql, n, NULL, params, lengths, formats, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        return db_fail(t->db, r);
    *out = r;
    return PAYQ_OK;
}

/* "payment.*" -> "payment.%": '*' is the only wildcard; LIKE's own
 * specials are escaped. */
static bool glob_to_like(const char *glob, char *out, size_t len)
{
    size_t o = 0;
    for (const char *p = glob; *p; p++) {
        if (o + 3 > len)
            return false;
        if (*p == '*') {
            out[o++] = '%';
        } else {
            if (*p == '%' || *p == '_' || *p == '\\')
                out[o++] = '\\';
            out[o++] = *p;
        }
    }
    out[o] = 0;
    return true;
}

bool dlq_filter_init(struct dlq_filter *f, const struct dlq_config *cfg, const char *reason)
{
    memset(f, 0, sizeof *f);
    const char *st = cfg->status ? cfg->status : "dead";
    if (strcmp(st, "all") == 0) {
        f->status = NULL;
    } else if (strcmp(st, "dead") == 0 || strcmp(st, "replayed") == 0 ||
               strcmp(st, "discarded") == 0) {
        f->status = st;
    } else {
        fprintf(stderr,
                "payq-dlq: --status must be dead, replayed, discarded or all (got "
                "\"%s\")\n",
                st);
        return false;
    }
    f->reason = reason && *reason ? reason : NULL;
    if (cfg->routing_key && *cfg->routing_key &&
        !glob_to_like(cfg->routing_key, f->rk_like, sizeof f->rk_like)) {
        fprintf(stderr, "payq-dlq: --routing-key is too long\n");
        return false;
    }
    if (cfg->since && !dlq_parse_when(cfg->since, f->since_rel, sizeof f->since_rel, f->since_abs,
                                      sizeof f->since_abs)) {
        fprintf(stderr,
                "payq-dlq: --since: expected an RFC 3339 time (2026-11-27T16:00:00Z) "
                "or an age such as 30m, 2h, 7d; got \"%s\"\n",
                cfg->since);
        return false;
    }
    if (cfg->until && !dlq_parse_when(cfg->until, f->until_rel, sizeof f->until_rel, f->until_abs,
                                      sizeof f->until_abs)) {
        fprintf(stderr,
                "payq-dlq: --until: expected an RFC 3339 time (2026-11-27T16:00:00Z) "
                "or an age such as 30m, 2h, 7d; got \"%s\"\n",
                cfg->until);
        return false;
    }
    f->grep = cfg->grep && *cfg->grep ? cfg->grep : NULL;
    f->limit = cfg->limit;
    return true;
}

void dlq_filter_free(struct dlq_filter *f)
{
    free(f->ids);
    f->ids = NULL;
}

bool dlq_filter_selects(const struct dlq_filter *f)
{
    return f->reason || f->rk_like[0] || f->since_rel[0] || f->since_abs[0] || f->until_rel[0] ||
           f->until_abs[0] || f->grep || f->ids;
}

void dlq_filter_params(const struct dlq_filter *f, char *limit_buf, size_t len,
                       const char *params[DLQ_NPARAMS])
{
    params[0] = f->status;
    params[1] = f->reason;
    params[2] = f->rk_like[0] ? f->rk_like : NULL;
    params[3] = f->since_rel[0] ? f->since_rel : NULL;
    params[4] = f->since_abs[0] ? f->since_abs : NULL;
    params[5] = f->until_rel[0] ? f->until_rel : NULL;
    params[6] = f->until_abs[0] ? f->until_abs : NULL;
    params[7] = f->grep;
    params[8] = f->ids;
    params[9] = NULL;
    if (f->limit > 0) {
        snprintf(limit_buf, len, "%ld", f->limit);
        params[9] = limit_buf;
    }
}

int dlq_select(struct dlq *t, const struct dlq_filter *f, bool newest_first, PGresult **out)
{
    static const char oldest[] = COLUMNS DLQ_WHERE " ORDER BY d.created_at, d.id LIMIT $10::bigint";
    static const char newest[] =
        COLUMNS DLQ_WHERE " ORDER BY d.created_at DESC, d.id DESC LIMIT $10::bigint";
    char limit[32];
    const char *params[DLQ_NPARAMS];
    dlq_filter_params(f, limit, sizeof limit, params);
    return dlq_query(t, newest_first ? newest : oldest, DLQ_NPARAMS, params, NULL, NULL, out);
}

int dlq_select_page(struct dlq *t, const struct dlq_filter *f, const char *after_ts,
                    const char *after_id, long page, PGresult **out)
{
    /* Keyset pagination: (created_at, id) is unique and indexed enough,
     * and a page never shifts when rows before the cursor change. */
    static const char sql[] = COLUMNS DLQ_WHERE
        "   AND ($11::timestamptz IS NULL OR (d.created_at, d.id) > ($11::timestamptz, $12::uuid))"
        " ORDER BY d.created_at, d.id LIMIT $10::bigint";
    char limit[32];
    const char *params[DLQ_NPARAMS + 2];
    dlq_filter_params(f, limit, sizeof limit, params);
    snprintf(limit, sizeof limit, "%ld", page);
    params[9] = limit;
    params[10] = after_ts;
    params[11] = after_id;
    return dlq_query(t, sql, DLQ_NPARAMS + 2, params, NULL, NULL, out);
}

int dlq_body(struct dlq *t, const char *id, unsigned char **out, size_t *len)
{
    const char *p[1] = { id };
    /* Binary result: the bytes themselves, not their hex text. */
    PGresult *r = PQexecParams(db_conn(t->db),
                               "SELECT body FROM payq.dead_letters"
                               " WHERE id = $1::uuid",
                               1, NULL, p, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        return db_fail(t->db, r);
    if (PQntuples(r) != 1) {
        PQclear(r);
        return PAYQ_ERR_INVALID;
    }
    size_t n = (size_t)PQgetlength(r, 0, 0);
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        PQclear(r);
        return PAYQ_ERR_NOMEM;
    }
    memcpy(b, PQgetvalue(r, 0, 0), n);
    PQclear(r);
    *out = b;
    *len = n;
    return PAYQ_OK;
}

/* An id as typed: a uuid or a prefix of at least 4 hex digits. Lowercased
 * in place. */
static bool id_ok(char *s)
{
    size_t hex = 0, len = strlen(s);
    if (len > 36)
        return false;
    for (char *p = s; *p; p++) {
        *p = (char)tolower((unsigned char)*p);
        if (isxdigit((unsigned char)*p))
            hex++;
        else if (*p != '-')
            return false;
    }
    return hex >= 4;
}

int dlq_resolve_ids(struct dlq *t, char **args, int n, struct dlq_filter *f)
{
    size_t cap = (size_t)n * 37 + 3, pos = 0;
    char *ids = malloc(cap);
    if (!ids) {
        fprintf(stderr, "payq-dlq: out of memory\n");
        return DLQ_EXIT_FAIL;
    }
    ids[pos++] = '{';
    size_t count = 0;
    for (int i = 0; i < n; i++) {
        if (!id_ok(args[i])) {
            fprintf(stderr,
                    "payq-dlq: \"%s\" is not a dead-letter id: give the id from "
                    "`payq-dlq list` (at least 4 hex digits, or the full uuid)\n",
                    args[i]);
            free(ids);
            return DLQ_EXIT_USAGE;
        }
        const char *p[1] = { args[i] };
        PGresult *r = NULL;
        if (dlq_query(t,
                      "SELECT id::text FROM payq.dead_letters"
                      " WHERE id::text LIKE $1::text || '%' ORDER BY id LIMIT 3",
                      1, p, NULL, NULL, &r) != PAYQ_OK) {
            free(ids);
            return dlq_db_error(t, "looking up the id");
        }
        int rows = PQntuples(r);
        if (rows != 1) {
            if (rows == 0)
                fprintf(stderr,
                        "payq-dlq: no dead letter has an id starting with %s "
                        "(`payq-dlq list --status all` shows every id)\n",
                        args[i]);
            else
                fprintf(stderr, "payq-dlq: %s is ambiguous (%s, %s%s): give more of the id\n",
                        args[i], PQgetvalue(r, 0, 0), PQgetvalue(r, 1, 0), rows > 2 ? ", ..." : "");
            PQclear(r);
            free(ids);
            return DLQ_EXIT_FAIL;
        }
        const char *id = PQgetvalue(r, 0, 0);
        /* The same dead letter named twice is selected once. */
        bool dup = false;
        for (size_t k = 1; k + 36 <= pos && !dup; k += 37)
            dup = memcmp(ids + k, id, 36) == 0;
        if (!dup) {
            if (count++)
                ids[pos++] = ',';
            memcpy(ids + pos, id, 36);
            pos += 36;
        }
        PQclear(r);
    }
    ids[pos++] = '}';
    ids[pos] = 0;
    free(f->ids);
    f->ids = ids;
    f->nids = count;
    return DLQ_EXIT_OK;
}
