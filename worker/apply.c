/*
 * apply.c - validate a delivery, apply it in PostgreSQL, decide its outcome.
 */
#include "apply.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cmd.h"
#include "log.h"

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

/* Testing only: dies at a named point, to prove what a crash there leaves. */
static void fault_point(const struct apply_opts *opts, const char *point)
{
    if (opts && opts->fault && strcmp(opts->fault, point) == 0) {
        log_warn("fault injection: SIGKILL at %s", point);
        raise(SIGKILL);
    }
}

/* One call of payq.apply_command(); its transaction is the statement's. */
static int call_apply(db_t *db, const char *scope, const char *message_id, const cmd_t *cmd,
                      const char *body, const char *correlation_id, char **reply)
{
    const char *params[5] = { scope, message_id, cmd_type_name(cmd->type), body,
                              correlation_id };
    PGresult *res = PQexecParams(db_conn(db),
                                 "SELECT payq.apply_command($1, $2, $3, $4::jsonb, $5)::text", 5,
                                 NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return db_fail(db, PQresultStatus(res) == PGRES_TUPLES_OK ? NULL : res);
    *reply = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return *reply ? PAYQ_OK : PAYQ_ERR_NOMEM;
}

/* Reads status and code from a reply produced by the database. */
static void reply_status(const char *reply, char *status, size_t slen, char *code, size_t clen)
{
    json_t *r = json_loads(reply, 0, NULL);
    const char *s = r ? json_string_value(json_object_get(r, "status")) : NULL;
    const char *c = r ? json_string_value(json_object_get(r, "code")) : NULL;
    snprintf(status, slen, "%s", s ? s : "");
    snprintf(code, clen, "%s", c ? c : "");
    json_decref(r);
}

static void apply_in_db(db_t *db, const struct mq_delivery *d, const cmd_t *cmd,
                        const struct apply_opts *opts, struct outcome *o)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char scope[256] = "", message_id[CMD_MESSAGE_ID_MAX + 1] = "", corr[256] = "";
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG)
        printable(p->user_id, scope, sizeof scope);
    else {
        /* A retried or replayed copy carries its publisher in a header,
         * because only the original publisher may set user_id. */
        amqp_bytes_t u;
        if (mq_header_str(p, "x-payq-user-id", &u))
            printable(u, scope, sizeof scope);
    }
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        printable(p->message_id, message_id, sizeof message_id);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        printable(p->correlation_id, corr, sizeof corr);

    char *body = json_dumps(cmd->body, JSON_COMPACT);
    if (!body) {
        o->kind = OUTCOME_RETRY;
        snprintf(o->error, sizeof o->error, "out of memory");
        return;
    }
    int rc = PAYQ_ERR_DB;
    for (int i = 0; i <= RETRY_NOW_MAX; i++) {
        char *reply = NULL;
        rc = call_apply(db, scope, message_id[0] ? message_id : NULL, cmd, body,
                        corr[0] ? corr : NULL, &reply);
        if (rc == PAYQ_OK) {
            o->reply = reply;
            break;
        }
        if (!db_retry_now(db_sqlstate(db)))
            break;
        log_debug("serialization failure or deadlock, trying again (%d)", i + 1);
    }
    free(body);
    if (rc != PAYQ_OK) {
        snprintf(o->sqlstate, sizeof o->sqlstate, "%s", db_sqlstate(db));
        snprintf(o->error, sizeof o->error, "database error %s: %s", db_sqlstate(db),
                 db_error(db));
        /* A broken connection: hold the delivery and reconnect. Any other
         * error (a timeout, or a permanent one such as a bug in a
         * migration) goes through the delay tiers, so a fix can still
         * apply it and an exhausted budget leaves it in the DLQ. */
        o->kind = db_ok(db) ? OUTCOME_RETRY : OUTCOME_DB_LOST;
        return;
    }
    fault_point(opts, "after_commit");

    char status[32], code[32];
    reply_status(o->reply, status, sizeof status, code, sizeof code);
    if (strcmp(status, "rejected") == 0) {
        o->kind = OUTCOME_DEAD_LETTER;
        snprintf(o->reason, sizeof o->reason, "%s", code);
        json_t *r = json_loads(o->reply, 0, NULL);
        const char *msg = r ? json_string_value(json_object_get(r, "message")) : NULL;
        snprintf(o->error, sizeof o->error, "%s", msg ? msg : code);
        json_decref(r);
    } else {
        o->kind = OUTCOME_DONE;
        snprintf(o->error, sizeof o->error, "%s%s%s", status, code[0] ? " " : "", code);
    }
}

void apply_delivery(db_t *db, const struct mq_delivery *d, const struct apply_opts *opts,
                    struct outcome *o)
{
    memset(o, 0, sizeof *o);
    const amqp_basic_properties_t *p = &d->message.properties;
    amqp_bytes_t rk = mq_bytes(d->routing_key);
    cmd_type_t type = cmd_type_from_name(rk.bytes, rk.len);
    printable(rk, o->command, sizeof o->command);

    if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
        !cmd_message_id_valid(p->message_id.bytes, p->message_id.len)) {
        dead_letter(o, "schema_invalid", "message_id must be 1 to 255 printable ASCII characters");
        return;
    }

    cmd_t cmd;
    struct cmd_error err;
    const amqp_bytes_t *ct = (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) ? &p->content_type : NULL;
    const amqp_bytes_t *tp = (p->_flags & AMQP_BASIC_TYPE_FLAG) ? &p->type : NULL;
    int rc = cmd_parse(rk.bytes, rk.len, ct ? ct->bytes : NULL, ct ? ct->len : 0,
                       tp ? tp->bytes : NULL, tp ? tp->len : 0, d->message.body.bytes,
                       d->message.body.len, &cmd, &err);
    if (rc == PAYQ_ERR_NOMEM) {
        /* Says nothing about the message: try again later. */
        o->kind = OUTCOME_RETRY;
        snprintf(o->error, sizeof o->error, "out of memory while parsing");
        return;
    }
    if (rc != PAYQ_OK) {
        if (type == CMD_UNKNOWN)
            o->command[0] = 0; /* never echo an unknown routing key as a command name */
        o->redact = err.code == CMD_REJECT_RAW_CARD_NUMBER;
        dead_letter(o, cmd_reject_code(err.code), err.message);
        return;
    }
    snprintf(o->id, sizeof o->id, "%s", cmd_business_id(&cmd));
    apply_in_db(db, d, &cmd, opts, o);
    cmd_free(&cmd);
}
