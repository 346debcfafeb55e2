/*
 * overview.c - payq-worker status: one look at the broker and the database.
 *
 * Everything is first gathered into one jansson object, then printed either
 * as that object (--json) or as tables, so the two outputs cannot disagree.
 *
 * Queues: a passive queue.declare answers with the ready count and the
 * consumer count, exactly and at once. mq.h's mq_t hides its connection and
 * reports only the ready count, so this file opens its own small rabbitmq-c
 * connection (same URL and TLS rules as mq_connect, through
 * mq_socket_open; of a list of cluster nodes, the first that answers). A
 * missing queue makes the broker close the channel: we answer close-ok and
 * go on with a new channel. Unacked counts exist only in the
 * management API, read with curl when it answers; its figures lag by the
 * broker's statistics interval (5 s by default), so "-" when it does not.
 *
 * Database: one REPEATABLE READ READ ONLY transaction, so every figure comes
 * from the same snapshot and now() is one instant.
 */
#include "overview.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <jansson.h>

#include "config.h"
#include "log.h"
#include "money.h"
#include "mq.h"
#include "mqurl.h"
#include "topology.h"

/* ---- broker ------------------------------------------------------------ */

struct broker {
    amqp_connection_state_t conn;
    amqp_channel_t channel; /* open channel, 0 = none */
    amqp_channel_t next;    /* the number the next channel.open uses */
    char error[512];
};

static void broker_close(struct broker *b)
{
    if (!b->conn)
        return;
    if (b->channel)
        (void)amqp_channel_close(b->conn, b->channel, AMQP_REPLY_SUCCESS);
    (void)amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(b->conn);
    b->conn = NULL;
}

/* Describes a failed RPC in b->error; answers a channel close with close-ok
 * (the connection stays usable) and returns the broker's reply code, or 0. */
static int broker_fail(struct broker *b, amqp_rpc_reply_t r, const char *what)
{
    int code = 0;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        snprintf(b->error, sizeof b->error, "%s: %s", what, amqp_error_string2(r.library_error));
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
               r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *c = r.reply.decoded;
        code = c->reply_code;
        snprintf(b->error, sizeof b->error, "%s: %u %.*s", what, c->reply_code,
                 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        amqp_channel_close_ok_t ok;
        (void)amqp_send_method(b->conn, b->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        b->channel = 0;
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
               r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *c = r.reply.decoded;
        snprintf(b->error, sizeof b->error, "%s: connection closed: %u %.*s", what, c->reply_code,
                 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        amqp_connection_close_ok_t ok;
        (void)amqp_send_method(b->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    } else {
        snprintf(b->error, sizeof b->error, "%s: unexpected reply", what);
    }
    return code;
}

/* Connects and logs in; ci must come from amqp_parse_url (or the defaults). */
static int broker_open(struct broker *b, const struct amqp_connection_info *ci,
                       const struct mq_tls *tls)
{
    if (!(b->conn = amqp_new_connection()))
        return PAYQ_ERR_NOMEM;
    int rc = mq_socket_open(b->conn, ci, tls, 5, b->error, sizeof b->error);
    if (rc != PAYQ_OK)
        return rc;
    struct timeval tv = { 5, 0 };
    (void)amqp_set_rpc_timeout(b->conn, &tv);
    amqp_table_entry_t props[1];
    props[0].key = amqp_cstring_bytes("connection_name");
    props[0].value.kind = AMQP_FIELD_KIND_UTF8;
    props[0].value.value.bytes = amqp_cstring_bytes("payq-worker status");
    amqp_table_t client_props = { 1, props };
    amqp_rpc_reply_t r = amqp_login_with_properties(b->conn, ci->vhost, 0, 131072, 0, &client_props,
                                                    AMQP_SASL_METHOD_PLAIN, ci->user, ci->password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        broker_fail(b, r, "login");
        return PAYQ_ERR_AMQP;
    }
    b->next = 1;
    return PAYQ_OK;
}

/* Passive queue.declare: *exists false (and PAYQ_OK) for a missing queue. */
static int broker_queue(struct broker *b, const char *name, bool *exists, uint32_t *ready,
                        uint32_t *consumers)
{
    if (!b->channel) {
        amqp_channel_t ch = b->next++;
        amqp_channel_open(b->conn, ch);
        amqp_rpc_reply_t r = amqp_get_rpc_reply(b->conn);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            broker_fail(b, r, "channel.open");
            return PAYQ_ERR_AMQP;
        }
        b->channel = ch;
    }
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(b->conn, b->channel, amqp_cstring_bytes(name),
                                                     1, 0, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(b->conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL && ok) {
        *exists = true;
        *ready = ok->message_count;
        *consumers = ok->consumer_count;
        amqp_maybe_release_buffers(b->conn);
        return PAYQ_OK;
    }
    if (broker_fail(b, r, "queue.declare (passive)") == AMQP_NOT_FOUND) {
        *exists = false;
        return PAYQ_OK;
    }
    return PAYQ_ERR_AMQP;
}

/* ---- management API ---------------------------------------------------- */

/* Appends s to a curl config value between double quotes (\" and \\). */
static bool curl_quote(char *buf, size_t len, size_t *pos, const char *s)
{
    for (; *s; s++) {
        if ((*s == '"' || *s == '\\') && *pos + 1 < len)
            buf[(*pos)++] = '\\';
        if (*s == '\n' || *s == '\r' || *pos + 1 >= len)
            return false;
        buf[(*pos)++] = *s;
    }
    buf[*pos] = 0;
    return true;
}

/* The queues of the vhost from GET /api/queues/<vhost>, or NULL when the API
 * does not answer (not enabled, wrong credentials, curl missing). The
 * credentials go to curl in a private config file, never on its command
 * line, where ps would show them. Caller json_decref's. */
static json_t *mgmt_queues(const char *mgmt_url, const struct amqp_connection_info *ci)
{
    char vhost[3 * 128 + 1];
    size_t v = 0;
    for (const unsigned char *p = (const unsigned char *)ci->vhost; *p; p++) {
        if (v + 4 > sizeof vhost)
            return NULL;
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~')
            vhost[v++] = (char)*p;
        else
            v += (size_t)snprintf(vhost + v, sizeof vhost - v, "%%%02X", *p);
    }
    vhost[v] = 0;
    size_t ulen = strlen(mgmt_url);
    while (ulen > 0 && mgmt_url[ulen - 1] == '/')
        ulen--;

    char conf[2048], url[1024];
    size_t pos = 0;
    int n = snprintf(url, sizeof url, "%.*s/api/queues/%s?columns=name,messages_unacknowledged",
                     (int)ulen, mgmt_url, vhost);
    if (n < 0 || (size_t)n >= sizeof url)
        return NULL;
    n = snprintf(conf, sizeof conf, "user = \"");
    pos = (size_t)n;
    if (!curl_quote(conf, sizeof conf, &pos, ci->user) ||
        !curl_quote(conf, sizeof conf, &pos, ":") ||
        !curl_quote(conf, sizeof conf, &pos, ci->password))
        return NULL;
    n = snprintf(conf + pos, sizeof conf - pos, "\"\nurl = \"");
    if (n < 0 || (size_t)n >= sizeof conf - pos)
        return NULL;
    pos += (size_t)n;
    if (!curl_quote(conf, sizeof conf, &pos, url))
        return NULL;
    n = snprintf(conf + pos, sizeof conf - pos, "\"\n");
    if (n < 0 || (size_t)n >= sizeof conf - pos)
        return NULL;
    pos += (size_t)n;

    const char *tmp = getenv("TMPDIR");
    char path[512];
    n = snprintf(path, sizeof path, "%s/payq-status-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof path)
        return NULL;
    int fd = mkstemp(path); /* mode 0600 */
    if (fd < 0)
        return NULL;
    if (strchr(path, '\'')) { /* it goes into a shell command between quotes */
        close(fd);
        unlink(path);
        return NULL;
    }
    bool written = write(fd, conf, pos) == (ssize_t)pos;
    close(fd);
    json_t *queues = NULL;
    if (written) {
        char cmd[600];
        n = snprintf(cmd, sizeof cmd, "curl -fsS --max-time 3 -K '%s' 2>/dev/null", path);
        FILE *f = n > 0 && (size_t)n < sizeof cmd ? popen(cmd, "r") : NULL;
        if (f) {
            queues = json_loadf(f, 0, NULL);
            pclose(f);
        }
    }
    unlink(path);
    if (queues && !json_is_array(queues)) {
        json_decref(queues);
        queues = NULL;
    }
    return queues;
}

/* messages_unacknowledged of one queue from mgmt_queues' answer; -1 = unknown. */
static json_int_t mgmt_unacked(json_t *queues, const char *name)
{
    size_t i;
    json_t *q;
    json_array_foreach(queues, i, q)
    {
        const char *qn = json_string_value(json_object_get(q, "name"));
        json_t *u = json_object_get(q, "messages_unacknowledged");
        if (qn && strcmp(qn, name) == 0 && json_is_integer(u))
            return json_integer_value(u);
    }
    return -1;
}

/* ---- gathering --------------------------------------------------------- */

/* Fills st with "queues" (an array) or returns an error with the reason in err. */
static int gather_queues(const struct status_config *cfg, json_t *st, char *err, size_t errlen)
{
    struct broker b = { 0 };
    struct amqp_connection_info ci;
    char *copy = NULL, url[1024];
    json_t *mgmt = NULL;
    int rc = PAYQ_ERR_AMQP;
    /* AMQP_URL may name several nodes of a cluster: the first that answers. */
    size_t naddr = mq_url_count(cfg->amqp_url);
    for (size_t k = 0; k < naddr && rc != PAYQ_OK; k++) {
        if ((rc = mq_url_at(cfg->amqp_url, k, url, sizeof url, err, errlen)) != PAYQ_OK) {
            if (rc == PAYQ_ERR_RANGE)
                snprintf(err, errlen, "an AMQP_URL address is too long");
            rc = PAYQ_ERR_CONFIG;
            goto fail;
        }
        free(copy);
        if (!(copy = strdup(url))) {
            rc = PAYQ_ERR_NOMEM;
            goto fail;
        }
        amqp_default_connection_info(&ci);
        if (*copy && amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
            snprintf(err, errlen,
                     "cannot parse the AMQP URL (expected amqp://user:password@host:port/vhost)");
            rc = PAYQ_ERR_CONFIG;
            goto fail;
        }
        broker_close(&b);
        memset(&b, 0, sizeof b);
        if ((rc = broker_open(&b, &ci, cfg->amqp_tls)) != PAYQ_OK)
            snprintf(err, errlen, "%s%s%s:%d: %s", naddr > 1 ? "no broker answered; last " : "",
                     naddr > 1 ? "tried " : "", ci.host, ci.port,
                     b.error[0] ? b.error : payq_strerror(rc));
        if (rc == PAYQ_ERR_CONFIG) /* a TLS file that does not load: so for every node */
            goto fail;
    }
    if (rc != PAYQ_OK)
        goto fail;
    if (cfg->mgmt_url && *cfg->mgmt_url)
        mgmt = mgmt_queues(cfg->mgmt_url, &ci);

    json_t *list = json_array();
    if (json_object_set_new(st, "queues", list) != 0) {
        rc = PAYQ_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < topo_ntiers + 2; i++) {
        const char *name = i == 0             ? PAYQ_Q_COMMANDS
                           : i <= topo_ntiers ? topo_tiers[i - 1].queue
                                              : PAYQ_Q_DLQ;
        bool exists = false;
        uint32_t ready = 0, consumers = 0;
        if ((rc = broker_queue(&b, name, &exists, &ready, &consumers)) != PAYQ_OK) {
            snprintf(err, errlen, "%s", b.error);
            goto fail;
        }
        json_t *q = exists ? json_pack("{s:s, s:b, s:I, s:I}", "name", name, "exists", 1, "ready",
                                       (json_int_t)ready, "consumers", (json_int_t)consumers)
                           : json_pack("{s:s, s:b, s:n, s:n}", "name", name, "exists", 0, "ready",
                                       "consumers");
        json_int_t unacked = exists && mgmt ? mgmt_unacked(mgmt, name) : -1;
        /* _new functions take the reference even when they fail. */
        if (json_array_append_new(list, q) != 0 ||
            json_object_set_new(q, "unacked", unacked >= 0 ? json_integer(unacked) : json_null()) !=
                0) {
            rc = PAYQ_ERR_NOMEM;
            goto fail;
        }
    }
    rc = json_object_set_new(st, "management_api", json_boolean(mgmt != NULL)) == 0
             ? PAYQ_OK
             : PAYQ_ERR_NOMEM;
fail:
    if (rc == PAYQ_ERR_NOMEM && !*err)
        snprintf(err, errlen, "out of memory");
    json_decref(mgmt);
    broker_close(&b);
    free(copy);
    return rc;
}

/* A nullable bigint column as a JSON integer (or null). */
static json_t *col_int(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    errno = 0;
    long long v = strtoll(PQgetvalue(res, row, col), NULL, 10);
    if (errno == ERANGE) /* a sum beyond int64: keep the digits */
        return json_string(PQgetvalue(res, row, col));
    return json_integer((json_int_t)v);
}

static json_t *col_str(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_string(PQgetvalue(res, row, col));
}

static PGresult *select_rows(db_t *db, const char *sql)
{
    PGresult *res = PQexec(db_conn(db), sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        (void)db_fail(db, res);
        return NULL;
    }
    return res;
}

/* The queries read tables only (no parameters, nothing from the user). */
static const char SQL_PAYMENTS[] =
    "SELECT status, currency, count(*), sum(amount)"
    "  FROM payq.payments GROUP BY status, currency"
    " ORDER BY array_position(ARRAY['pending', 'authorized', 'succeeded', 'failed',"
    "                                'canceled', 'refunded'], status), currency";

/* Age of a saga = time since its last committed phase (updated_at), which is
 * what payq.check_invariants calls stuck once it is too old. */
static const char SQL_SAGAS[] =
    "SELECT (SELECT count(*) FROM payq.payments WHERE recovery_point <> 'finished'),"
    "       (SELECT count(*) FROM payq.refunds WHERE recovery_point <> 'finished'),"
    "       floor(extract(epoch FROM now() - least("
    "           (SELECT min(updated_at) FROM payq.payments WHERE recovery_point <> 'finished'),"
    "           (SELECT min(updated_at) FROM payq.refunds WHERE recovery_point <> 'finished')"
    "       )))::bigint";

/* payq.inbox has one row per message_id, written when the command is first
 * applied: redeliveries and duplicates do not count, nor do commands
 * published without a message_id. */
static const char SQL_THROUGHPUT[] =
    "SELECT count(*) FILTER (WHERE created_at > now() - interval '1 minute'),"
    "       count(*),"
    "       count(*) FILTER (WHERE reply IS NULL)"
    "  FROM payq.inbox WHERE created_at > now() - interval '5 minutes'";

static const char SQL_OUTBOX[] =
    "SELECT count(*), floor(extract(epoch FROM now() - min(created_at)))::bigint"
    "  FROM payq.outbox_unpublished()";

static const char SQL_DEAD_TOTAL[] = "SELECT count(*) FROM payq.dead_letters WHERE status = 'dead'";

static const char SQL_DEAD_TOP[] =
    "SELECT reason, count(*),"
    "       to_char(max(last_failure_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
    "       floor(extract(epoch FROM now() - max(last_failure_at)))::bigint"
    "  FROM payq.dead_letters WHERE status = 'dead'"
    " GROUP BY reason ORDER BY count(*) DESC, reason LIMIT 5";

/* Adds a new object or array under key (or to the array `parent` when key
 * is NULL) and returns it, or NULL when out of memory. The _new functions of
 * jansson take the reference even when they fail, so nothing leaks. */
static json_t *add(json_t *parent, const char *key, json_t *child)
{
    int failed =
        key ? json_object_set_new(parent, key, child) : json_array_append_new(parent, child);
    return failed ? NULL : child;
}

/* Fills st with payments, sagas_in_flight, throughput, outbox and dead_letters. */
static int gather_db(db_t *db, json_t *st)
{
    PGresult *res = NULL;
    json_t *o, *list;
    if (db_exec(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") != PAYQ_OK)
        return PAYQ_ERR_DB;
    int rc = PAYQ_ERR_DB;

    if (!(res = select_rows(db, SQL_PAYMENTS)))
        goto fail;
    if (!(list = add(st, "payments", json_array())))
        goto nomem;
    for (int i = 0; i < PQntuples(res); i++)
        if (!(o = add(list, NULL, json_object())) ||
            json_object_set_new(o, "status", col_str(res, i, 0)) ||
            json_object_set_new(o, "currency", col_str(res, i, 1)) ||
            json_object_set_new(o, "count", col_int(res, i, 2)) ||
            json_object_set_new(o, "amount", col_int(res, i, 3)))
            goto nomem;
    PQclear(res);

    if (!(res = select_rows(db, SQL_SAGAS)))
        goto fail;
    if (!(o = add(st, "sagas_in_flight", json_object())) ||
        json_object_set_new(o, "payments", col_int(res, 0, 0)) ||
        json_object_set_new(o, "refunds", col_int(res, 0, 1)) ||
        json_object_set_new(o, "oldest_age_s", col_int(res, 0, 2)))
        goto nomem;
    PQclear(res);

    if (!(res = select_rows(db, SQL_THROUGHPUT)))
        goto fail;
    if (!(o = add(st, "throughput", json_object())) ||
        json_object_set_new(o, "source", json_string("payq.inbox")) ||
        json_object_set_new(o, "commands_1m", col_int(res, 0, 0)) ||
        json_object_set_new(o, "commands_5m", col_int(res, 0, 1)) ||
        json_object_set_new(o, "unfinished_5m", col_int(res, 0, 2)))
        goto nomem;
    PQclear(res);

    if (!(res = select_rows(db, SQL_OUTBOX)))
        goto fail;
    if (!(o = add(st, "outbox", json_object())) ||
        json_object_set_new(o, "unpublished", col_int(res, 0, 0)) ||
        json_object_set_new(o, "oldest_age_s", col_int(res, 0, 1)))
        goto nomem;
    PQclear(res);

    if (!(res = select_rows(db, SQL_DEAD_TOTAL)))
        goto fail;
    json_t *dead = add(st, "dead_letters", json_object());
    if (!dead || json_object_set_new(dead, "total", col_int(res, 0, 0)))
        goto nomem;
    PQclear(res);
    if (!(res = select_rows(db, SQL_DEAD_TOP)))
        goto fail;
    if (!(list = add(dead, "top_reasons", json_array())))
        goto nomem;
    for (int i = 0; i < PQntuples(res); i++)
        if (!(o = add(list, NULL, json_object())) ||
            json_object_set_new(o, "reason", col_str(res, i, 0)) ||
            json_object_set_new(o, "count", col_int(res, i, 1)) ||
            json_object_set_new(o, "last_seen", col_str(res, i, 2)) ||
            json_object_set_new(o, "last_seen_age_s", col_int(res, i, 3)))
            goto nomem;
    PQclear(res);
    return db_exec(db, "COMMIT");

nomem:
    rc = PAYQ_ERR_NOMEM;
    PQclear(res);
fail:                                         /* select_rows cleared its result */
    PQclear(PQexec(db_conn(db), "ROLLBACK")); /* keeps db_error: the first failure */
    return rc;
}

/* ---- printing ---------------------------------------------------------- */

static long long num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* "-", "42s", "3m05s", "2h07m", "3d04h". */
static const char *age(json_t *v, char *buf, size_t len)
{
    if (!json_is_integer(v))
        return "-";
    long long s = json_integer_value(v);
    if (s < 0)
        s = 0;
    if (s < 60)
        snprintf(buf, len, "%llds", s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
    return buf;
}

static void rule(FILE *out, int width)
{
    for (int i = 0; i < width; i++)
        fputc('-', out);
    fputc('\n', out);
}

static void print_queues(FILE *out, json_t *st)
{
    json_t *queues = json_object_get(st, "queues");
    fprintf(out, "Queues\n");
    if (!json_is_array(queues)) {
        fprintf(out, "  broker unreachable: %s\n",
                json_string_value(json_object_get(st, "broker_error")));
        return;
    }
    fprintf(out, "%-20s %10s %10s %10s\n", "QUEUE", "READY", "UNACKED", "CONSUMERS");
    rule(out, 53);
    size_t i;
    json_t *q;
    json_array_foreach(queues, i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        if (!json_is_true(json_object_get(q, "exists"))) {
            fprintf(out, "%-20s %10s   (missing: not declared on this broker)\n", name, "-");
            continue;
        }
        char unacked[24] = "-";
        json_t *u = json_object_get(q, "unacked");
        if (json_is_integer(u))
            snprintf(unacked, sizeof unacked, "%lld", (long long)json_integer_value(u));
        fprintf(out, "%-20s %10lld %10s %10lld\n", name, num(q, "ready"), unacked,
                num(q, "consumers"));
    }
    if (!json_is_true(json_object_get(st, "management_api")))
        fprintf(out, "(unacked: the management API did not answer)\n");
}

static void print_db(FILE *out, json_t *st)
{
    char a[48], b[48];
    json_t *payments = json_object_get(st, "payments");
    if (!json_is_array(payments)) {
        fprintf(out, "\nDatabase unreachable: %s\n",
                json_string_value(json_object_get(st, "database_error")));
        return;
    }
    fprintf(out, "\nPayments\n%-12s %-8s %10s %22s\n", "STATUS", "CURRENCY", "COUNT", "AMOUNT");
    rule(out, 55);
    size_t i;
    json_t *p;
    json_array_foreach(payments, i, p)
    {
        const char *cur = json_string_value(json_object_get(p, "currency"));
        json_t *amt = json_object_get(p, "amount");
        if (!json_is_integer(amt) ||
            money_format(json_integer_value(amt), cur, a, sizeof a) != PAYQ_OK)
            snprintf(a, sizeof a, "%s %s", json_is_string(amt) ? json_string_value(amt) : "?", cur);
        fprintf(out, "%-12s %-8s %10lld %22s\n", json_string_value(json_object_get(p, "status")),
                cur, num(p, "count"), a);
    }
    if (json_array_size(payments) == 0)
        fprintf(out, "(none)\n");

    json_t *sg = json_object_get(st, "sagas_in_flight");
    fprintf(out, "\nSagas in flight: %lld payment(s), %lld refund(s); oldest idle %s\n",
            num(sg, "payments"), num(sg, "refunds"),
            age(json_object_get(sg, "oldest_age_s"), a, sizeof a));

    json_t *tp = json_object_get(st, "throughput");
    fprintf(out,
            "Throughput: %lld command(s) in the last minute, %lld in the last 5 minutes\n"
            "            (new message_ids in payq.inbox; %lld of them not finished yet)\n",
            num(tp, "commands_1m"), num(tp, "commands_5m"), num(tp, "unfinished_5m"));

    json_t *ob = json_object_get(st, "outbox");
    fprintf(out, "Outbox: %lld event(s) not yet published; oldest %s\n", num(ob, "unpublished"),
            age(json_object_get(ob, "oldest_age_s"), a, sizeof a));

    json_t *dead = json_object_get(st, "dead_letters");
    fprintf(out, "\nDead letters: %lld dead (payq-dlq list shows them)\n", num(dead, "total"));
    json_t *top = json_object_get(dead, "top_reasons");
    if (json_array_size(top) == 0)
        return;
    fprintf(out, "%-28s %8s  %-20s %s\n", "REASON", "COUNT", "LAST SEEN", "AGO");
    rule(out, 68);
    json_array_foreach(top, i, p)
        fprintf(out, "%-28s %8lld  %-20s %s\n", json_string_value(json_object_get(p, "reason")),
                num(p, "count"), json_string_value(json_object_get(p, "last_seen")),
                age(json_object_get(p, "last_seen_age_s"), b, sizeof b));
}

/* ---- the command ------------------------------------------------------- */

int status_print(const struct status_config *cfg, FILE *out)
{
    json_t *st = json_object();
    if (!st)
        return PAYQ_ERR_NOMEM;
    int rc = PAYQ_OK;
    char red[512], err[768] = ""; /* err: "host:port: " and the broker's error */

    /* Placeholders first: with JSON_PRESERVE_ORDER they open the object. */
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    if (json_object_set_new(st, "time", json_string(now)) ||
        json_object_set_new(st, "broker_ok", json_false()) ||
        json_object_set_new(st, "database_ok", json_false())) {
        rc = PAYQ_ERR_NOMEM;
        goto done;
    }

    cfg_redact_url(cfg->amqp_url ? cfg->amqp_url : "", red, sizeof red);
    int mq_rc = gather_queues(cfg, st, err, sizeof err);
    if (mq_rc == PAYQ_ERR_NOMEM) {
        rc = mq_rc;
        goto done;
    }
    if (mq_rc != PAYQ_OK) {
        json_object_set_new(st, "queues", json_null());
        /* A TLS error names the certificate problem and its fix itself. */
        log_error("cannot read the queues of RabbitMQ at %s: %s%s", red, err,
                  strstr(err, "TLS") ? ""
                                     : "; is RabbitMQ running? (bash tests/stack.sh up "
                                       "starts a local one)");
        if (json_object_set_new(st, "broker_error", json_string(err)) != 0) {
            rc = PAYQ_ERR_NOMEM;
            goto done;
        }
    }

    db_t *db = NULL;
    const char *dburl = cfg->database_url && *cfg->database_url ? cfg->database_url : NULL;
    cfg_redact_url(dburl ? dburl : "(PG* environment)", red, sizeof red);
    int db_rc = db_connect(dburl, "payq-worker status", cfg->statement_timeout_ms, &db);
    if (db_rc == PAYQ_OK)
        db_rc = gather_db(db, st);
    if (db_rc == PAYQ_ERR_NOMEM) {
        db_close(db);
        rc = db_rc;
        goto done;
    }
    if (db_rc != PAYQ_OK) {
        snprintf(err, sizeof err, "%s",
                 db ? db_error(db) : "cannot connect to PostgreSQL (the log says why)");
        log_error("cannot read the database at %s: %s; is PostgreSQL running? "
                  "(bash tests/stack.sh up starts a local one)",
                  red, err);
        for (const char *const *k =
                 (const char *const[]){ "payments", "sagas_in_flight", "throughput", "outbox",
                                        "dead_letters", NULL };
             *k; k++)
            json_object_set_new(st, *k, json_null());
        if (json_object_set_new(st, "database_error", json_string(err)) != 0) {
            db_close(db);
            rc = PAYQ_ERR_NOMEM;
            goto done;
        }
    }
    db_close(db);

    json_object_set_new(st, "broker_ok", json_boolean(mq_rc == PAYQ_OK));
    json_object_set_new(st, "database_ok", json_boolean(db_rc == PAYQ_OK));
    if (cfg->json) {
        if (json_dumpf(st, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0)
            fputc('\n', out);
    } else {
        print_queues(out, st);
        print_db(out, st);
    }
    fflush(out);
    rc = mq_rc != PAYQ_OK ? PAYQ_ERR_AMQP : db_rc != PAYQ_OK ? PAYQ_ERR_DB : PAYQ_OK;
done:
    json_decref(st);
    return rc;
}
