/*
 * test_relay.c - the transactional outbox, end to end: commands applied by
 * the real worker produce events on payq.events, with the contract's
 * properties, in order per payment, the relay's position past each outbox
 * row; a
 * worker started after rows were written publishes them (catch-up, not only
 * on NOTIFY); and with two workers exactly one relay leads, the other takes
 * over when the leader dies.
 *
 * The events are read from a queue of the test's own (exclusive,
 * auto-delete, bound to payq.events with "#") on a plain rabbitmq-c
 * connection, since shared/mq has no queue declaration. Only events whose
 * body "id" carries this run's prefix count: the relay also publishes
 * whatever earlier runs left in the outbox.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <amqp_tcp_socket.h>

#include "../../worker/relay.h" /* RELAY_LOCK_KEY */
#include "harness.h"
#include "topology.h"

/* The relay's advisory lock in pg_locks l: a bigint key shows as its high
 * half in classid, its low half in objid, objsubid 1. $1 is the key. */
#define RELAY_LOCK_WHERE                                        \
    " l.locktype = 'advisory' AND l.granted AND l.objsubid = 1" \
    " AND l.classid::bigint = ($1::bigint >> 32) AND l.objid::bigint = ($1::bigint & 4294967295)"

static const char *lock_key(void)
{
    static char k[24];
    snprintf(k, sizeof k, "%lld", RELAY_LOCK_KEY);
    return k;
}

static pid_t worker; /* the worker the current test talks about */
static mq_t *mq;
static char prefix[128];

/* ------------------------------------------------------------ events */

struct event {
    char routing_key[128];
    char message_id[128];
    char type[128];
    char content_type[64];
    char correlation_id[128];
    bool has_correlation_id;
    uint8_t delivery_mode;
    uint64_t timestamp;
    bool has_timestamp;
    json_t *body;
    const char *id, *event_id, *body_type, *body_correlation_id; /* in body */
    const char *payment_id; /* the payment whose history it belongs to (refunds too) */
};

#define MAX_EVENTS 1024
static struct event events[MAX_EVENTS];
static int nevents;
static amqp_connection_state_t econn;

static void copy_bytes(char *dst, size_t len, amqp_bytes_t b)
{
    snprintf(dst, len, "%.*s", (int)b.len, b.bytes ? (const char *)b.bytes : "");
}

static void events_open(void)
{
    char *url = strdup(getenv("AMQP_URL"));
    struct amqp_connection_info ci;
    assert_non_null(url);
    assert_int_equal(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    econn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(econn);
    assert_non_null(sock);
    assert_int_equal(amqp_socket_open(sock, ci.host, ci.port), AMQP_STATUS_OK);
    amqp_rpc_reply_t r =
        amqp_login(econn, ci.vhost, 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    free(url);
    amqp_channel_open(econn, 1);
    assert_int_equal(amqp_get_rpc_reply(econn).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_queue_declare_ok_t *q =
        amqp_queue_declare(econn, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    assert_int_equal(amqp_get_rpc_reply(econn).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_bytes_t queue = amqp_bytes_malloc_dup(q->queue);
    amqp_queue_bind(econn, 1, queue, amqp_cstring_bytes(PAYQ_X_EVENTS), amqp_cstring_bytes("#"),
                    amqp_empty_table);
    assert_int_equal(amqp_get_rpc_reply(econn).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_basic_consume(econn, 1, queue, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
    assert_int_equal(amqp_get_rpc_reply(econn).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_bytes_free(queue);
}

static void events_close(void)
{
    if (!econn)
        return;
    (void)amqp_channel_close(econn, 1, AMQP_REPLY_SUCCESS);
    (void)amqp_connection_close(econn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(econn);
    econn = NULL;
    for (int i = 0; i < nevents; i++)
        json_decref(events[i].body);
    nevents = 0;
}

/* Reads events for up to ms; keeps those of this run, in arrival order. */
static void events_pump(int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    for (;;) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(econn);
        amqp_rpc_reply_t r = amqp_consume_message(econn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            return;
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            fail_msg("reading payq.events failed (reply type %d, %s)", r.reply_type,
                     amqp_error_string2(r.library_error));
        tv.tv_sec = 0; /* then drain what is already there */
        tv.tv_usec = 1000;
        json_error_t err;
        json_t *body = json_loadb(env.message.body.bytes, env.message.body.len, 0, &err);
        if (!body)
            fail_msg("event body is not JSON: %.*s", (int)env.message.body.len,
                     (const char *)env.message.body.bytes);
        const char *id = json_string_value(json_object_get(body, "id"));
        if (!id || strncmp(id, prefix, strlen(prefix)) != 0) {
            json_decref(body);
            amqp_destroy_envelope(&env);
            continue;
        }
        assert_true(nevents < MAX_EVENTS);
        struct event *e = &events[nevents++];
        memset(e, 0, sizeof *e);
        const amqp_basic_properties_t *p = &env.message.properties;
        copy_bytes(e->routing_key, sizeof e->routing_key, env.routing_key);
        if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
            copy_bytes(e->message_id, sizeof e->message_id, p->message_id);
        if (p->_flags & AMQP_BASIC_TYPE_FLAG)
            copy_bytes(e->type, sizeof e->type, p->type);
        if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
            copy_bytes(e->content_type, sizeof e->content_type, p->content_type);
        if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) {
            e->has_correlation_id = true;
            copy_bytes(e->correlation_id, sizeof e->correlation_id, p->correlation_id);
        }
        if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
            e->delivery_mode = p->delivery_mode;
        if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
            e->has_timestamp = true;
            e->timestamp = p->timestamp;
        }
        e->body = body;
        e->id = id;
        e->payment_id = json_string_value(json_object_get(body, "payment_id"));
        if (!e->payment_id)
            e->payment_id = id;
        e->event_id = json_string_value(json_object_get(body, "event_id"));
        e->body_type = json_string_value(json_object_get(body, "type"));
        e->body_correlation_id = json_string_value(json_object_get(body, "correlation_id"));
        amqp_destroy_envelope(&env);
    }
}

static struct event *events_find(const char *type, const char *id)
{
    for (int i = 0; i < nevents; i++)
        if (strcmp(events[i].routing_key, type) == 0 && strcmp(events[i].id, id) == 0)
            return &events[i];
    return NULL;
}

/* The first event of `type` about `id`, waiting up to ms; fails the test if
 * none comes. */
static struct event *events_wait(const char *type, const char *id, int ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct event *e = events_find(type, id);
        if (e)
            return e;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > ms)
            fail_msg("no %s event about %s on %s within %d ms", type, id, PAYQ_X_EVENTS, ms);
        events_pump(100);
    }
}

/* Event ids about `id` in arrival order, first occurrences only (a
 * republished duplicate is allowed: at least once), comma-separated. */
/* The event ids of one payment's history (its refunds included), in the
 * order they arrived, duplicates dropped. */
static const char *arrival_order(const char *id)
{
    static char buf[4096];
    size_t pos = 0;
    buf[0] = 0;
    for (int i = 0; i < nevents; i++) {
        if (strcmp(events[i].payment_id, id) != 0 || !events[i].event_id)
            continue;
        bool seen = false;
        for (int j = 0; j < i; j++)
            if (strcmp(events[j].payment_id, id) == 0 && events[j].event_id &&
                strcmp(events[j].event_id, events[i].event_id) == 0)
                seen = true;
        if (!seen)
            pos += (size_t)snprintf(buf + pos, sizeof buf - pos, "%s%s", pos ? "," : "",
                                    events[i].event_id);
    }
    return buf;
}

/* The contract's properties of every event. */
static void check_event(const struct event *e, const char *type, const char *id,
                        const char *correlation_id)
{
    assert_string_equal(e->routing_key, type);
    assert_string_equal(e->type, type);
    assert_non_null(e->body_type);
    assert_string_equal(e->body_type, type);
    assert_string_equal(e->id, id);
    assert_non_null(e->event_id);
    assert_string_equal(e->message_id, e->event_id);
    assert_string_equal(e->content_type, "application/json");
    assert_int_equal(e->delivery_mode, AMQP_DELIVERY_PERSISTENT);
    assert_true(e->has_timestamp);
    long long skew = (long long)e->timestamp - (long long)time(NULL);
    assert_true(skew > -300 && skew < 5);
    if (correlation_id) {
        assert_true(e->has_correlation_id);
        assert_string_equal(e->correlation_id, correlation_id);
        assert_non_null(e->body_correlation_id);
        assert_string_equal(e->body_correlation_id, correlation_id);
    } else {
        assert_false(e->has_correlation_id);
    }
    /* The row it came from says the same. */
    const char *p[1] = { e->event_id };
    char want[300];
    snprintf(want, sizeof want, "%s %s", type, id);
    assert_string_equal(h_text("SELECT routing_key || ' ' || (body->>'id')"
                               " FROM payq.outbox WHERE event_id = $1::uuid",
                               1, p),
                        want);
}

/* ------------------------------------------------------------ commands */

/* Publishes a command with a correlation_id and waits for its reply. */
static json_t *call_correlated(const char *rk, const char *correlation_id, const char *body)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
               AMQP_BASIC_CORRELATION_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    char mid[160];
    snprintf(mid, sizeof mid, "msg-%s", correlation_id);
    p.message_id = amqp_cstring_bytes(mid);
    p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
    p.correlation_id = amqp_cstring_bytes(correlation_id);
    uint64_t seq;
    assert_int_equal(mq_publish(mq, PAYQ_X_COMMANDS, rk, true, &p, body, strlen(body), &seq),
                     PAYQ_OK);
    assert_int_equal(mq_wait_confirms(mq, seq, 10000), PAYQ_OK);
    json_t *r = h_reply(mq, 20000);
    if (!r)
        fail_msg("no reply within 20 s to %s %s", rk, body);
    return r;
}

static json_t *pay(const char *payment_id, long long amount, const char *src, const char *dst,
                   const char *correlation_id)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":%lld,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             payment_id, amount, src, dst);
    return call_correlated("payment.create", correlation_id, body);
}

/* ------------------------------------------------------------ database */

static int64_t unpublished(const char *id_prefix)
{
    const char *p[1] = { id_prefix };
    return h_int("SELECT count(*) FROM payq.outbox_unpublished()"
                 " WHERE starts_with(body->>'id', $1)",
                 1, p);
}

/* Waits until no outbox row about ids starting with id_prefix is
 * unpublished; returns how many still are after ms. */
static int64_t wait_published(const char *id_prefix, int ms)
{
    int64_t n = 0;
    for (int waited = 0; waited <= ms; waited += 100) {
        if ((n = unpublished(id_prefix)) == 0)
            return 0;
        events_pump(100);
    }
    return n;
}

/* The pid in the application_name of the session holding the relay lock,
 * or 0 when nobody holds it. */
static long relay_leader(void)
{
    const char *p[1] = { lock_key() };
    return (long)h_int("SELECT COALESCE(max(substring(a.application_name"
                       "   FROM 'payq-worker relay pid ([0-9]+)')::bigint), 0)"
                       "  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                       " WHERE" RELAY_LOCK_WHERE,
                       1, p);
}

/* Sessions holding the relay lock (whoever they are). */
static int64_t relay_locks(void)
{
    const char *p[1] = { lock_key() };
    return h_int("SELECT count(*) FROM pg_locks l WHERE" RELAY_LOCK_WHERE, 1, p);
}

static int64_t relay_sessions(pid_t pid)
{
    char name[64];
    snprintf(name, sizeof name, "payq-worker relay pid %d", (int)pid);
    const char *p[1] = { name };
    return h_int("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", 1, p);
}

static void emit(const char *id, const char *correlation_id)
{
    const char *p[2] = { id, correlation_id };
    assert_string_equal(h_exec("SELECT payq.emit('test.event', $1, $2, '{}'::jsonb)", 2, p), "");
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ workers */

/* Every worker still running, so a failed test leaves none behind to
 * publish into the next run. */
static pid_t running[8];

static pid_t start_worker(const char *const *env)
{
    pid_t pid = h_worker_start(env);
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i] == 0) {
            running[i] = pid;
            return pid;
        }
    fail_msg("too many workers");
    return -1;
}

static int stop_worker(pid_t pid, int sig)
{
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i] == pid)
            running[i] = 0;
    return h_worker_stop(pid, sig);
}

/* ------------------------------------------------------------ tests */

static int setup(void **state)
{
    (void)state;
    h_init();
    snprintf(prefix, sizeof prefix, "%s", h_id(""));
    mq = h_mq(); /* declares the topology, so payq.events exists to bind to */
    events_open();
    worker = start_worker(NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    bool clean = true;
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++) {
        if (running[i] == 0)
            continue;
        int st = stop_worker(running[i], SIGTERM);
        clean = clean && WIFEXITED(st) && WEXITSTATUS(st) == 0; /* a clean drain exits 0 */
    }
    events_close();
    mq_close(mq);
    return clean ? 0 : -1;
}

/* Commands through the worker: every event arrives with the contract's
 * properties, a payment's events in version order, every row behind the
 * relay's position. */
static void test_events_from_commands(void **state)
{
    (void)state;
    const char *alice = h_id("alice"), *shop = h_id("shop");
    h_open(mq, alice, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    const char *dep = h_id("dep"), *dep_corr = h_id("corr-dep");
    char body[256];
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":5000,\"currency\":\"USD\"}", dep,
             alice);
    json_t *r = call_correlated("account.deposit", dep_corr, body);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);

    const char *ok = h_id("pay-ok"), *ok_corr = h_id("corr-pay-ok");
    r = pay(ok, 2500, alice, shop, ok_corr);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    /* A second event in ok's history, for the order check below. */
    char refund[512];
    snprintf(refund, sizeof refund,
             "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"amount\":500}",
             h_id("refund-ok"), ok);
    r = call_correlated("payment.refund", h_id("corr-refund-ok"), refund);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    const char *poor = h_id("pay-poor"), *poor_corr = h_id("corr-pay-poor");
    r = pay(poor, 1000000, alice, shop, poor_corr);
    assert_string_equal(h_code(r), "insufficient_funds");
    json_decref(r);

    check_event(events_wait("account.opened", alice, 10000), "account.opened", alice, NULL);
    check_event(events_wait("account.opened", shop, 10000), "account.opened", shop, NULL);
    check_event(events_wait("account.deposited", dep, 10000), "account.deposited", dep, dep_corr);
    check_event(events_wait("payment.succeeded", ok, 10000), "payment.succeeded", ok, ok_corr);
    check_event(events_wait("payment.failed", poor, 10000), "payment.failed", poor, poor_corr);
    assert_null(events_find("payment.failed", ok));
    assert_null(events_find("payment.succeeded", poor));

    /* Per payment, in the order of the event store. */
    const char *payments[2] = { ok, poor };
    for (int i = 0; i < 2; i++) {
        const char *p[1] = { payments[i] };
        /* ok: payment.succeeded, refund.succeeded; poor: payment.failed */
        assert_int_equal(h_int("SELECT count(*) FROM payq.payment_events WHERE payment_id = $1",
                               1, p),
                         i == 0 ? 2 : 1);
        char want[1024];
        snprintf(want, sizeof want, "%s",
                 h_text("SELECT string_agg(event_id::text, ',' ORDER BY version)"
                        " FROM payq.payment_events WHERE payment_id = $1",
                        1, p));
        events_pump(200); /* anything still in flight */
        assert_string_equal(arrival_order(payments[i]), want);
    }

    /* Every row of this test is behind the relay's position, and every one
     * of them arrived. */
    assert_int_equal(wait_published(prefix, 5000), 0);
    const char *p[1] = { prefix };
    int64_t rows =
        h_int("SELECT count(*) FROM payq.outbox WHERE starts_with(body->>'id', $1)", 1, p);
    assert_true(rows >= 6); /* 2 opened, 1 deposited, 2 for ok, 1 for poor, maybe more */
    int distinct = 0;
    for (int i = 0; i < nevents; i++) {
        bool dup = false;
        for (int j = 0; j < i && !dup; j++)
            dup = events[i].event_id && events[j].event_id &&
                  strcmp(events[i].event_id, events[j].event_id) == 0;
        distinct += !dup;
    }
    assert_int_equal(distinct, rows);

    /* And it was this test's worker that published them. */
    long leader = relay_leader();
    if (leader != (long)worker)
        fail_msg("the relay leader is pid %ld, not this test's worker (%ld): stop other "
                 "payq-workers using this database",
                 leader, (long)worker);
}

/* Rows written while no worker runs are published by the next one at
 * start (their NOTIFY went to nobody), in id order, across several pages;
 * a transaction that commits after them is published too. */
static void test_catch_up_after_restart(void **state)
{
    (void)state;
    int st = stop_worker(worker, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    const char *cu = h_id("cu-");
    /* A transaction that writes its event before the others and commits
     * only after the relay published them (its id is smaller than theirs):
     * published then, not skipped. */
    PGconn *late_db = PQconnectdb(getenv("DATABASE_URL"));
    assert_int_equal(PQstatus(late_db), CONNECTION_OK);
    const char *late = h_id("late-cu");
    const char *lp[1] = { late };
    PQclear(PQexec(late_db, "BEGIN"));
    PGresult *lr = PQexecParams(late_db, "SELECT payq.emit('test.event', $1, NULL, '{}'::jsonb)",
                                1, NULL, lp, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(lr), PGRES_TUPLES_OK);
    PQclear(lr);

    char ids[5][128];
    for (int i = 0; i < 5; i++) {
        snprintf(ids[i], sizeof ids[i], "%s%d", cu, i);
        emit(ids[i], i == 2 ? h_id("corr-cu") : NULL);
    }
    /* Nobody publishes them now: no other relay runs against this
     * database (else this test would prove nothing). */
    events_pump(1500);
    if (unpublished(cu) != 5)
        fail_msg("outbox rows were published while no worker of this test ran: another relay "
                 "(pid %ld) uses this database; stop it and run again",
                 relay_leader());
    for (int i = 0; i < 5; i++)
        assert_null(events_find("test.event", ids[i]));

    const char *env[] = { "PAYQ_RELAY_BATCH=2", NULL };
    worker = start_worker(env);
    for (int i = 0; i < 5; i++)
        check_event(events_wait("test.event", ids[i], 10000), "test.event", ids[i],
                    i == 2 ? h_id("corr-cu") : NULL);
    assert_int_equal(wait_published(cu, 5000), 0);
    /* Paged through in batches of 2, the backlog is done: no target left. */
    assert_int_equal(h_int("SELECT count(*) FROM payq.relay_position WHERE target IS NULL", 0,
                           NULL),
                     1);
    events_pump(500);
    assert_null(events_find("test.event", late));
    lr = PQexec(late_db, "COMMIT");
    assert_int_equal(PQresultStatus(lr), PGRES_COMMAND_OK);
    PQclear(lr);
    PQfinish(late_db);
    check_event(events_wait("test.event", late, 10000), "test.event", late, NULL);
    assert_true(h_int("SELECT id FROM payq.outbox WHERE body->>'id' = $1", 1, lp) <
                h_int("SELECT max(id) FROM payq.outbox WHERE starts_with(body->>'id', $1)", 1,
                      (const char *const[]){ cu }));

    /* In outbox id order. */
    int last = -1;
    for (int i = 0; i < nevents; i++) {
        if (strncmp(events[i].id, cu, strlen(cu)) != 0)
            continue;
        int k = atoi(events[i].id + strlen(cu));
        assert_true(k >= last); /* a duplicate repeats, never goes back */
        last = k;
    }
}

/* Two workers: one relay leads, the other stands by and takes over when the
 * leader is killed. */
static void test_one_leader_and_takeover(void **state)
{
    (void)state;
    pid_t second = start_worker(NULL);
    /* Both relays have a session; exactly one holds the lock: the first. */
    for (int i = 0; i < 100 && (relay_sessions(worker) < 1 || relay_sessions(second) < 1 ||
                                relay_leader() == 0);
         i++)
        sleep_ms(100);
    assert_int_equal(relay_sessions(worker), 1);
    assert_int_equal(relay_sessions(second), 1);
    assert_int_equal(relay_locks(), 1);
    assert_int_equal(relay_leader(), (long)worker);

    /* Only the leader publishes: with both relays woken by every NOTIFY, a
     * second publisher would send most of these twice. */
    char ids[10][128];
    for (int i = 0; i < 10; i++) {
        snprintf(ids[i], sizeof ids[i], "%s%d", h_id("both-"), i);
        emit(ids[i], NULL);
    }
    for (int i = 0; i < 10; i++)
        events_wait("test.event", ids[i], 10000);
    assert_int_equal(wait_published(h_id("both-"), 5000), 0);
    events_pump(500);
    for (int i = 0; i < 10; i++) {
        int copies = 0;
        for (int j = 0; j < nevents; j++)
            copies += strcmp(events[j].id, ids[i]) == 0;
        assert_int_equal(copies, 1);
    }

    /* The leader dies without a goodbye; its session ends, the standby
     * takes the lock (within its 2 s retry) and publishes what comes next. */
    int st = stop_worker(worker, SIGKILL);
    assert_true(WIFSIGNALED(st));
    worker = second;
    const char *after = h_id("after-kill");
    emit(after, NULL);
    check_event(events_wait("test.event", after, 10000), "test.event", after, NULL);
    assert_int_equal(wait_published(after, 5000), 0);
    assert_int_equal(relay_leader(), (long)second);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_from_commands),
        cmocka_unit_test(test_catch_up_after_restart),
        cmocka_unit_test(test_one_leader_and_takeover),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
