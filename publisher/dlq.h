/*
 * dlq.h - the parts of payq-dlq, the dead-letter tool (one .c per concern):
 *
 *   dlq.c         options, --help, command dispatch, connections
 *   dlq_select.c  filters (--reason, --since, ...), id prefixes, row selection
 *   dlq_inspect.c list, show, stats, export: PostgreSQL only, never the queue
 *   dlq_replay.c  replay (rate, canary, progress) and discard
 *   dlq_sync.c    reconciling payq.dlq with the archive; import
 *   dlq_text.c    tables, ages, time syntax
 *
 * A dead letter lives in two places: the message in payq.dlq and its row in
 * payq.dead_letters (sql/005_dead_letters.sql), linked by the message's
 * header x-payq-dead-letter-id. The row is the truth: inspecting reads only
 * rows, replay and discard change rows, and reconciling then acks the queue
 * copies of resolved rows.
 */
#ifndef PAYQ_DLQ_H
#define PAYQ_DLQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <libpq-fe.h>

#include "db.h"
#include "mq.h"
#include "status.h"

/* Exit codes. */
enum {
    DLQ_EXIT_OK = 0,
    DLQ_EXIT_FAIL = 1,
    DLQ_EXIT_USAGE = 2
};

/* The header linking a queue copy to its row. */
#define DLQ_ID_HEADER "x-payq-dead-letter-id"

/* Testing only: SIGKILL payq-dlq right after a replayed message was
 * confirmed by the broker, before its row is marked (see dlq_replay.c). */
#define DLQ_TEST_KILL_ENV "PAYQ_DLQ_TEST_KILL_AFTER_PUBLISH"

struct dlq_config {
    const char *amqp_url;
    struct mq_tls amqp_tls; /* amqps:// CA file and client certificate */
    const char *database_url;
    const char *queue;
    const char *reason; /* filter (list, stats, replay, export) or discard's note */
    const char *code;   /* filter on the reason code, in every command */
    const char *routing_key;
    const char *since;
    const char *until;
    const char *grep;
    const char *status;
    const char *log_level;
    long limit;
    long rate;
    long canary;
    long canary_timeout;
    long statement_timeout_ms;
    int all;
    int dry_run;
    int force;
};

/* Which rows a command works on. Every field NULL / empty / 0 = no filter. */
struct dlq_filter {
    const char *status; /* "dead", "replayed", "discarded"; NULL = all */
    const char *reason;
    char rk_like[512];  /* LIKE pattern of the routing key */
    char since_rel[32]; /* interval text, "90 minutes" */
    char since_abs[64]; /* timestamptz text */
    char until_rel[32];
    char until_abs[64];
    const char *grep;
    char *ids; /* "{uuid,uuid}" (malloc'd) when ids were named */
    size_t nids;
    long limit;
};

/* The tool's context: the configuration and its connections. */
struct dlq {
    const struct dlq_config *cfg;
    db_t *db;
    mq_t *mq;       /* connected on demand by dlq_need_mq */
    char user[128]; /* resolved_by: $USER or "operator" */
    bool progress;  /* stderr is a terminal */
};

/* True once SIGINT or SIGTERM arrived: replay and import stop after the
 * message in hand (a second signal exits at once). */
bool dlq_interrupted(void);

/* Connects to RabbitMQ if not yet done; prints the cause and a hint and
 * returns an error when it cannot. */
int dlq_need_mq(struct dlq *t) PAYQ_MUSTCHECK;

/* ---- dlq_select.c ---------------------------------------------------- */

/* Columns of every row query, in this order (dlq_select). */
enum dlq_col {
    COL_ID,
    COL_SHORT,
    COL_AGE,
    COL_REASON,
    COL_RK,
    COL_BUSINESS,
    COL_MSGID,
    COL_ATTEMPTS,
    COL_STATUS,
    COL_EXCHANGE,
    COL_MSGKEY,
    COL_CORR,
    COL_ERROR,
    COL_SQLSTATE,
    COL_FPR,
    COL_WORKER,
    COL_FIRST,
    COL_LAST,
    COL_PROPS,
    COL_BODY_LEN,
    COL_REDACTED,
    COL_RESOLVED_AT,
    COL_RESOLVED_BY,
    COL_NOTE,
    COL_CREATED,
    COL_SCOPE,
    COL_CURSOR,
    COL_TOTAL
};

/* Fills f from the options (status, --reason/--code, --routing-key,
 * --since, --until, --grep, --limit). `reason` is the reason filter to use
 * (discard takes its note from --reason). Returns false after printing a
 * usage error. */
bool dlq_filter_init(struct dlq_filter *f, const struct dlq_config *cfg, const char *reason);
void dlq_filter_free(struct dlq_filter *f);
/* True when some selection option was given (not counting --status). */
bool dlq_filter_selects(const struct dlq_filter *f);

/*
 * Resolves full ids or unique prefixes (from `list`) into f->ids. Prints
 * what is wrong and returns DLQ_EXIT_USAGE for a malformed id,
 * DLQ_EXIT_FAIL for an unknown or ambiguous one or a database error.
 */
int dlq_resolve_ids(struct dlq *t, char **args, int n, struct dlq_filter *f);

/* Rows matching f, oldest first (newest first when newest_first, so that
 * --limit keeps the newest). *out is PQclear'ed by the caller. The body is
 * not among the columns (COL_BODY_LEN is its size): see dlq_body. */
int dlq_select(struct dlq *t, const struct dlq_filter *f, bool newest_first,
               PGresult **out) PAYQ_MUSTCHECK;

/* At most `page` rows matching f (f->limit is ignored), oldest first, after
 * the row whose COL_CURSOR and COL_ID are after_ts / after_id (NULL: from
 * the first). COL_TOTAL counts the matching rows from the cursor on. */
int dlq_select_page(struct dlq *t, const struct dlq_filter *f, const char *after_ts,
                    const char *after_id, long page, PGresult **out) PAYQ_MUSTCHECK;

/* The body of dead letter `id`: *out is malloc'd (the caller frees it).
 * PAYQ_ERR_INVALID when the row is gone. */
int dlq_body(struct dlq *t, const char *id, unsigned char **out, size_t *len) PAYQ_MUSTCHECK;

/* The shared WHERE clause over payq.dead_letters d, and its 10 parameters
 * ($10 is --limit, for the caller's LIMIT); values point into f and buf. */
#define DLQ_NPARAMS 10
void dlq_filter_params(const struct dlq_filter *f, char *limit_buf, size_t len,
                       const char *params[DLQ_NPARAMS]);
#define DLQ_WHERE                                                                      \
    " FROM payq.dead_letters d"                                                        \
    " WHERE ($1::text IS NULL OR d.status = $1::text)"                                 \
    "   AND ($2::text IS NULL OR d.reason = $2::text)"                                 \
    "   AND ($3::text IS NULL OR d.routing_key LIKE $3::text)"                         \
    "   AND ($4::interval IS NULL OR d.created_at >= now() - $4::interval)"            \
    "   AND ($5::timestamptz IS NULL OR d.created_at >= $5::timestamptz)"              \
    "   AND ($6::interval IS NULL OR d.created_at <= now() - $6::interval)"            \
    "   AND ($7::timestamptz IS NULL OR d.created_at <= $7::timestamptz)"              \
    "   AND ($8::text IS NULL OR position(convert_to($8::text, 'UTF8') IN d.body) > 0" \
    "        OR strpos(d.error, $8::text) > 0"                                         \
    "        OR strpos(COALESCE(d.message_id, ''), $8::text) > 0"                      \
    "        OR strpos(COALESCE(d.business_id, ''), $8::text) > 0"                     \
    "        OR strpos(COALESCE(d.correlation_id, ''), $8::text) > 0)"                 \
    "   AND ($9::uuid[] IS NULL OR d.id = ANY($9::uuid[]))"

/* NULL for SQL NULL, else the value. */
const char *dlq_val(const PGresult *r, int row, int col);
/* The value or `def` when NULL or empty. */
const char *dlq_or(const PGresult *r, int row, int col, const char *def);

/* Prints the database's error for `what` and returns DLQ_EXIT_FAIL. */
int dlq_db_error(struct dlq *t, const char *what);

/* PQexecParams with text parameters (lengths/formats may be NULL, for binary
 * ones), text results. PAYQ_OK with *out set (the caller PQclear's it) for a
 * command or rows; otherwise PAYQ_ERR_DB, the error kept in t->db
 * (db_error) and nothing to clear. */
int dlq_query(struct dlq *t, const char *sql, int n, const char *const *params, const int *lengths,
              const int *formats, PGresult **out) PAYQ_MUSTCHECK;

/* ---- dlq_inspect.c --------------------------------------------------- */

int dlq_list(struct dlq *t, const struct dlq_filter *f);
int dlq_show(struct dlq *t, char *id);
int dlq_stats(struct dlq *t, const struct dlq_filter *f);
int dlq_export(struct dlq *t, const struct dlq_filter *f);

/* ---- dlq_replay.c ---------------------------------------------------- */

int dlq_replay(struct dlq *t, const struct dlq_filter *f);
int dlq_discard(struct dlq *t, const struct dlq_filter *f, const char *note);

/* ---- dlq_sync.c ------------------------------------------------------ */

struct dlq_sync_stats {
    long seen;          /* queue messages looked at */
    long acked;         /* their row is replayed or discarded: removed from the queue */
    long kept;          /* their row is dead: left in the queue */
    long archived;      /* had no row (no header, or an unknown id): archived, kept */
    long reopened;      /* came back after their row was resolved: row reopened, kept */
    long errors;        /* could not be handled: kept */
    unsigned remaining; /* messages in the queue at the end */
    bool connected;     /* the broker was reached */
};

/*
 * Reads the messages that are in the queue now (never more: the count is
 * taken at the first basic.get), acks those whose row is resolved, archives
 * those without a row, and leaves every other one unacked, so it returns
 * to the queue when the connection closes.
 */
int dlq_reconcile(struct dlq *t, struct dlq_sync_stats *st) PAYQ_MUSTCHECK;
/* One line about what reconciling did, on stdout. */
void dlq_print_sync(const struct dlq *t, const struct dlq_sync_stats *st);
int dlq_sync(struct dlq *t);
int dlq_import(struct dlq *t, const char *path);

/* ---- dlq_text.c ------------------------------------------------------ */

/* "42s", "3m", "2h", "4d". */
void dlq_age(long long seconds, char *buf, size_t len);

/*
 * Parses --since/--until: RFC 3339 ("2026-11-27T16:00:00Z", a date alone,
 * or a space instead of T) into abs, or a relative age ("30m", "2h", "7d",
 * "45s", "2w") into rel as an interval. Returns false when it is neither.
 */
bool dlq_parse_when(const char *s, char *rel, size_t rel_len, char *abs, size_t abs_len);
/* True for RFC 3339 date-times as above. */
bool dlq_is_rfc3339(const char *s);

/* A table printed with aligned columns; cells are sanitized (control
 * characters become '?') and cut to the column's maximum width with "…". */
struct dlq_table;
struct dlq_table *dlq_table_new(int ncol, const char *const *heads, const int *maxw);
int dlq_table_add(struct dlq_table *tb, const char *const *cells) PAYQ_MUSTCHECK;
void dlq_table_print(const struct dlq_table *tb, FILE *out);
void dlq_table_free(struct dlq_table *tb);

/* Writes bytes for a terminal: printable ASCII and valid UTF-8 as is,
 * newlines and tabs kept, anything else as \xNN. */
void dlq_print_bytes(FILE *out, const void *bytes, size_t len);

#endif
