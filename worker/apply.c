/*
 * apply.c - validate a delivery, apply it in PostgreSQL, decide its outcome.
 */
#include "apply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cmd.h"
#include "log.h"
#include "metrics.h"

/* In-process retries of a serialization failure or deadlock before the
 * command goes to a delay tier. */
#define RETRY_NOW_MAX 3

void outcome_clear(struct outcome *o)
{
    free(o->reply);
    memset(o, 0, sizeof *o);
}

/* A printable copy of an AMQP string for replies and logs (at most cap-1 bytes). */
static void printable(amqp_bytes_t b, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < b.len && n + 1 < cap; i++) {
        unsigned char c = ((const unsigned char *)b.bytes)[i];
        out[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[n] = 0;
}

static char *reject_reply(const char *command, const char *id, const char *code, const char *msg)
{
    json_t *r = json_object();
    if (command && *command)
        json_object_set_new(r, "command", json_string(command));
    if (id && *id)
        json_object_set_new(r, "id", json_string(id));
    json_object_set_new(r, "status", json_string("rejected"));
    json_object_set_new(r, "code", json_string(code));
    json_object_set_new(r, "message", json_string(msg));
    char *s = json_dumps(r, JSON_COMPACT);
    json_decref(r);
    return s;
}

static void dead_letter(struct outcome *o, const char *code, const char *msg)
{
    o->kind = OUTCOME_DEAD_LETTER;
    snprintf(o->reason, sizeof o->reason, "%s", code);
    snprintf(o->error, sizeof o->error, "%s", msg);
    free(o->reply);
    o->reply = reject_reply(o->command, o->id, code, msg);
}

/* Saga phases one command may run (each its own transaction); a card
 * payment with capture needs three. */
#define PHASES_MAX 8

/* One phase: one call of payq.apply_command(), its own transaction. */
static int call_apply(db_t *db, const char *scope, const char *message_id, const cmd_t *cmd,
                      const char *body, const char *correlation_id, const char *answer,
                      json_t **result)
{
    const char *params[6] = { scope, message_id, cmd_type_name(cmd->type), body,
                              correlation_id, answer };
    double t0 = metrics_now();
    PGresult *res = PQexecParams(db_conn(db),
                                 "SELECT payq.apply_command($1, $2, $3, $4::jsonb, $5,"
                                 " $6::jsonb)::text",
                                 6, NULL, params, NULL, NULL, 0);
    metrics_db_tx(metrics_now() - t0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return db_fail(db, PQresultStatus(res) == PGRES_TUPLES_OK ? NULL : res);
    *result = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    return *result ? PAYQ_OK : PAYQ_ERR_NOMEM;
}

/* Runs one phase, retrying serialization failures and deadlocks in
 * process; on failure fills the outcome (retry or reconnect). */
static int phase(db_t *db, const char *scope, const char *message_id, const cmd_t *cmd,
                 const char *body, const char *corr, const char *answer, json_t **result,
                 struct outcome *o)
{
    int rc = PAYQ_ERR_DB;
    for (int i = 0; i <= RETRY_NOW_MAX; i++) {
        rc = call_apply(db, scope, message_id, cmd, body, corr, answer, result);
        if (rc == PAYQ_OK)
            return PAYQ_OK;
        if (rc != PAYQ_ERR_DB || !db_retry_now(db_sqlstate(db)))
            break;
        log_debug("serialization failure or deadlock, trying again (%d)", i + 1);
    }
    if (rc == PAYQ_ERR_DB) {
        snprintf(o->sqlstate, sizeof o->sqlstate, "%s", db_sqlstate(db));
        snprintf(o->error, sizeof o->error, "database error %s: %s", db_sqlstate(db),
                 db_error(db));
    } else {
        snprintf(o->error, sizeof o->error, "%s", payq_strerror(rc));
    }
    /* A broken connection: hold the delivery and reconnect. Any other error
     * (a timeout, a payment busy with another step, or a permanent one such
     * as a bug in a migration) goes through the delay tiers, so a fix can
     * still apply it and an exhausted budget leaves it in the DLQ. */
    o->kind = (rc == PAYQ_ERR_DB && !db_ok(db)) ? OUTCOME_DB_LOST : OUTCOME_RETRY;
    /* A busy payment (55006) or a lost race (40001, 40P01) says nothing
     * about the database's health; timeouts and resource errors do. */
    o->dependency = rc == PAYQ_ERR_DB && db_transient(db_sqlstate(db)) &&
                    strcmp(db_sqlstate(db), "55006") != 0 && !db_retry_now(db_sqlstate(db));
    return rc;
}

/* The command is finished: the reply decides the outcome. */
static void finish(json_t *reply, struct outcome *o)
{
    const char *status = json_string_value(json_object_get(reply, "status"));
    const char *code = json_string_value(json_object_get(reply, "code"));
    const char *msg = json_string_value(json_object_get(reply, "message"));
    o->reply = json_dumps(reply, JSON_COMPACT);
    if (status && strcmp(status, "rejected") == 0) {
        o->kind = OUTCOME_DEAD_LETTER;
        snprintf(o->reason, sizeof o->reason, "%s", code ? code : "rejected");
        snprintf(o->error, sizeof o->error, "%s", msg ? msg : o->reason);
    } else {
        o->kind = OUTCOME_DONE;
        snprintf(o->error, sizeof o->error, "%s%s%s", status ? status : "?", code ? " " : "",
                 code ? code : "");
    }
}

/* Approximate encoded size of a field value; -1 when nested too deep. */
static long field_bytes(const amqp_field_value_t *v, int depth)
{
    if (depth > 8)
        return -1;
    long n = 0, sub;
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return (long)v->value.bytes.len + 5;
    case AMQP_FIELD_KIND_TABLE:
        for (int i = 0; i < v->value.table.num_entries; i++) {
            if ((sub = field_bytes(&v->value.table.entries[i].value, depth + 1)) < 0)
                return -1;
            n += (long)v->value.table.entries[i].key.len + 1 + sub;
        }
        return n + 4;
    case AMQP_FIELD_KIND_ARRAY:
        for (int i = 0; i < v->value.array.num_entries; i++) {
            if ((sub = field_bytes(&v->value.array.entries[i], depth + 1)) < 0)
                return -1;
            n += sub;
        }
        return n + 4;
    default:
        return 9;
    }
}

/* Checks the headers against the limits; fills msg when one is broken. */
static bool headers_ok(const amqp_basic_properties_t *p, char *msg, size_t len)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return true;
    const amqp_table_t *t = &p->headers;
    if (t->num_entries > HEADERS_MAX) {
        snprintf(msg, len, "%d headers; at most %d are accepted", t->num_entries, HEADERS_MAX);
        return false;
    }
    long total = 0;
    for (int i = 0; i < t->num_entries; i++) {
        if (t->entries[i].key.len > HEADER_KEY_MAX) {
            snprintf(msg, len, "a header name of %zu bytes; at most %d are accepted",
                     t->entries[i].key.len, HEADER_KEY_MAX);
            return false;
        }
        long b = field_bytes(&t->entries[i].value, 0);
        if (b < 0) {
            snprintf(msg, len, "a header nested more than 8 levels deep");
            return false;
        }
        total += (long)t->entries[i].key.len + 1 + b;
    }
    if (total > HEADERS_BYTES_MAX) {
        snprintf(msg, len, "headers of about %ld bytes; at most %d are accepted", total,
                 HEADERS_BYTES_MAX);
        return false;
    }
    return true;
}

/* A delivery validated and ready for the database. */
struct prepared {
    cmd_t cmd;
    char scope[256];
    char message_id[CMD_MESSAGE_ID_MAX + 1];
    char corr[256];
    char *body; /* the validated body, compact JSON */
};

static void prepared_free(struct prepared *pc)
{
    cmd_free(&pc->cmd);
    free(pc->body);
    pc->body = NULL;
}

/*
 * Validates a delivery. Returns true when it must go to the database (*pc
 * filled; release with prepared_free); false when its outcome is already
 * decided (*o filled: a dead letter, or a retry).
 */
static bool prepare(const struct mq_delivery *d, const struct apply_opts *opts,
                    struct outcome *o, struct prepared *pc)
{
    memset(o, 0, sizeof *o);
    memset(pc, 0, sizeof *pc);
    const amqp_basic_properties_t *p = &d->message.properties;
    amqp_bytes_t rk = mq_bytes(d->routing_key);
    cmd_type_t type = cmd_type_from_name(rk.bytes, rk.len);
    printable(rk, o->command, sizeof o->command);

    if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
        !cmd_message_id_valid(p->message_id.bytes, p->message_id.len)) {
        dead_letter(o, "schema_invalid", "message_id must be 1 to 255 printable ASCII characters");
        return false;
    }

    char why[160];
    if (!headers_ok(p, why, sizeof why)) {
        o->drop_headers = true;
        dead_letter(o, "schema_invalid", why);
        return false;
    }

    struct cmd_error err;
    const amqp_bytes_t *ct = (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) ? &p->content_type : NULL;
    const amqp_bytes_t *tp = (p->_flags & AMQP_BASIC_TYPE_FLAG) ? &p->type : NULL;
    fault_hit_body(opts->fault, d->message.body.bytes, d->message.body.len);
    int rc = cmd_parse(rk.bytes, rk.len, ct ? ct->bytes : NULL, ct ? ct->len : 0,
                       tp ? tp->bytes : NULL, tp ? tp->len : 0, d->message.body.bytes,
                       d->message.body.len, &pc->cmd, &err);
    if (rc == PAYQ_ERR_NOMEM) {
        /* Says nothing about the message: try again later. */
        o->kind = OUTCOME_RETRY;
        snprintf(o->error, sizeof o->error, "out of memory while parsing");
        return false;
    }
    if (rc != PAYQ_OK) {
        if (type == CMD_UNKNOWN)
            o->command[0] = 0; /* never echo an unknown routing key as a command name */
        o->redact = err.code == CMD_REJECT_RAW_CARD_NUMBER;
        dead_letter(o, cmd_reject_code(err.code), err.message);
        return false;
    }
    snprintf(o->id, sizeof o->id, "%s", cmd_business_id(&pc->cmd));

    if (p->_flags & AMQP_BASIC_USER_ID_FLAG) {
        printable(p->user_id, pc->scope, sizeof pc->scope);
    } else {
        /* A retried or replayed copy carries its publisher in a header,
         * because only the original publisher may set user_id. */
        amqp_bytes_t u;
        if (mq_header_str(p, "x-payq-user-id", &u))
            printable(u, pc->scope, sizeof pc->scope);
    }
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        printable(p->message_id, pc->message_id, sizeof pc->message_id);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        printable(p->correlation_id, pc->corr, sizeof pc->corr);
    pc->body = json_dumps(pc->cmd.body, JSON_COMPACT);
    if (!pc->body) {
        cmd_free(&pc->cmd);
        o->kind = OUTCOME_RETRY;
        snprintf(o->error, sizeof o->error, "out of memory");
        return false;
    }
    return true;
}

/*
 * Runs the command's saga phases: each phase either finishes the command or
 * asks for a provider call, whose answer goes into the next phase. `first`
 * (may be NULL; consumed) is the result of a first phase already run (by a
 * batch): the loop starts from it instead of calling the database.
 */
static void run_phases(db_t *db, const struct prepared *pc, const struct apply_opts *opts,
                       json_t *first, struct outcome *o)
{
    const char *mid = pc->message_id[0] ? pc->message_id : NULL;
    const char *corr = pc->corr[0] ? pc->corr : NULL;
    char *answer = NULL;
    for (int n = 0;; n++) {
        json_t *result = NULL;
        if (n == PHASES_MAX) {
            o->kind = OUTCOME_RETRY;
            snprintf(o->error, sizeof o->error, "saga did not finish in %d phases", PHASES_MAX);
            break;
        }
        if (first) {
            result = first;
            first = NULL;
        } else if (phase(db, pc->scope, mid, &pc->cmd, pc->body, corr, answer, &result, o) !=
                   PAYQ_OK) {
            break;
        } else {
            fault_hit(opts->fault, "after_commit");
        }
        json_t *reply = json_object_get(result, "reply");
        json_t *call = json_object_get(result, "call");
        if (reply) {
            finish(reply, o);
            json_decref(result);
            break;
        }
        if (!call || !opts->provider) {
            o->kind = OUTCOME_RETRY;
            snprintf(o->error, sizeof o->error, "unexpected result from payq.apply_command");
            json_decref(result);
            break;
        }
        fault_hit(opts->fault, "before_provider_call");
        char why[256];
        bool answered = provider_step(opts->provider, call, &answer, why, sizeof why,
                                      &o->retry_after_ms);
        json_decref(result);
        fault_hit(opts->fault, "after_provider_call");
        if (!answered) {
            o->kind = OUTCOME_RETRY;
            o->dependency = true;
            snprintf(o->error, sizeof o->error, "payment provider: %s", why);
            break;
        }
    }
    free(answer);
    json_decref(first);
}

void apply_delivery(db_t *db, const struct mq_delivery *d, const struct apply_opts *opts,
                    struct outcome *o)
{
    struct prepared pc;
    if (!prepare(d, opts, o, &pc))
        return;
    run_phases(db, &pc, opts, NULL, o);
    prepared_free(&pc);
}

/* One call of payq.apply_batch(): the first phase of every command, in one
 * transaction. *results gets a JSON array, one entry per command. */
static int call_batch(db_t *db, struct prepared *pcs, const size_t *idx, const bool *wait,
                      size_t n, json_t **results)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        const struct prepared *pc = &pcs[idx[i]];
        json_t *c = json_object();
        json_object_set_new(c, "scope", json_string(pc->scope));
        if (pc->message_id[0])
            json_object_set_new(c, "message_id", json_string(pc->message_id));
        json_object_set_new(c, "command", json_string(cmd_type_name(pc->cmd.type)));
        json_object_set(c, "body", pc->cmd.body);
        if (pc->corr[0])
            json_object_set_new(c, "correlation_id", json_string(pc->corr));
        if (wait && wait[idx[i]])
            json_object_set_new(c, "wait", json_true());
        json_array_append_new(arr, c);
    }
    char *text = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    if (!text)
        return PAYQ_ERR_NOMEM;
    const char *params[1] = { text };
    double t0 = metrics_now();
    PGresult *res = PQexecParams(db_conn(db), "SELECT payq.apply_batch($1::jsonb, true)::text", 1,
                                 NULL, params, NULL, NULL, 0);
    metrics_db_tx(metrics_now() - t0);
    free(text);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return db_fail(db, PQresultStatus(res) == PGRES_TUPLES_OK ? NULL : res);
    *results = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    if (!*results)
        return PAYQ_ERR_NOMEM;
    if (json_array_size(*results) != n) {
        json_decref(*results);
        return PAYQ_ERR_INVALID;
    }
    return PAYQ_OK;
}

void apply_batch(db_t *db, struct mq_delivery *const *ds, const bool *wait, size_t n,
                 const struct apply_opts *opts, struct outcome *outs)
{
    struct prepared *pcs = calloc(n, sizeof *pcs);
    size_t *idx = calloc(n, sizeof *idx), m = 0;
    bool *ready = calloc(n, sizeof *ready);
    if (!pcs || !idx || !ready) {
        for (size_t i = 0; i < n; i++) {
            memset(&outs[i], 0, sizeof outs[i]);
            outs[i].kind = OUTCOME_RETRY;
            snprintf(outs[i].error, sizeof outs[i].error, "out of memory");
        }
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((ready[i] = prepare(ds[i], opts, &outs[i], &pcs[i])))
            idx[m++] = i;

    json_t *results = NULL;
    int rc = m > 0 ? call_batch(db, pcs, idx, wait, m, &results) : PAYQ_OK;
    if (rc != PAYQ_OK && db_ok(db))
        log_warn("a batch of %zu failed as a whole (%s: %s); applying its commands one by one",
                 m, rc == PAYQ_ERR_DB ? db_sqlstate(db) : payq_strerror(rc),
                 rc == PAYQ_ERR_DB ? db_error(db) : "");
    if (m > 0 && rc == PAYQ_OK)
        fault_hit(opts->fault, "after_commit");
    for (size_t k = 0; k < m; k++) {
        size_t i = idx[k];
        if (rc != PAYQ_OK) {
            /* The batch as a whole failed (connection, timeout): each command
             * on its own, so one bad neighbour costs no one else anything. */
            run_phases(db, &pcs[i], opts, NULL, &outs[i]);
            continue;
        }
        json_t *r = json_array_get(results, k);
        if (json_is_true(json_object_get(r, "busy"))) {
            /* Nothing was applied; the caller hands it to its next batch. */
            outs[i].kind = OUTCOME_BUSY;
            continue;
        }
        json_t *err = json_object_get(r, "error");
        if (err) {
            /* This command's subtransaction failed (its neighbours are
             * committed): run it alone, which retries a lost race in place
             * and classifies anything else. */
            log_debug("batch entry failed (%s), applying it alone",
                      json_string_value(json_object_get(err, "sqlstate")));
            run_phases(db, &pcs[i], opts, NULL, &outs[i]);
        } else {
            run_phases(db, &pcs[i], opts, json_incref(r), &outs[i]);
        }
    }
    json_decref(results);
out:
    for (size_t i = 0; pcs && ready && i < n; i++)
        if (ready[i])
            prepared_free(&pcs[i]);
    free(pcs);
    free(idx);
    free(ready);
}
