/* harness.c - see harness.h. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
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

#include "topology.h"

static const char *amqp_url, *database_url;
/* amqps:// settings from AMQP_CACERT / AMQP_CERT / AMQP_KEY, as the
 * programs read them (test_tls sets them). */
static struct mq_tls tls;

/* Workers this test started and has not reaped: killed at exit, so a failed
 * assertion never leaves a worker consuming behind the next test's back. */
static pid_t children[64];

static void track(pid_t pid, bool add)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++) {
        if (add && children[i] == 0) {
            children[i] = pid;
            return;
        }
        if (!add && children[i] == pid) {
            children[i] = 0;
            return;
        }
    }
}

void h_kill_workers(void)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++) {
        if (children[i] > 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
            children[i] = 0;
        }
    }
}
static char prefix[64];
static PGconn *db;

void h_init(void)
{
    amqp_url = getenv("AMQP_URL");
    database_url = getenv("DATABASE_URL");
    tls.cacert = getenv("AMQP_CACERT");
    tls.cert = getenv("AMQP_CERT");
    tls.key = getenv("AMQP_KEY");
    if (!amqp_url || !database_url) {
        fprintf(stderr, "integration tests need AMQP_URL and DATABASE_URL: run\n"
                        "  eval \"$(bash tests/stack.sh env)\"\n"
                        "after `bash tests/stack.sh up`, or use bash tests/run-tests.sh\n");
        exit(1);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(prefix, sizeof prefix, "t%lx%x", (unsigned long)ts.tv_sec,
             (unsigned)(getpid() & 0xffff));
    atexit(h_kill_workers);
}

/* Ids live until exit (freed then, so leak checkers stay quiet). */
static char **ids;
static size_t nids;

static void free_ids(void)
{
    for (size_t i = 0; i < nids; i++)
        free(ids[i]);
    free(ids);
}

const char *h_id(const char *name)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s-%s", prefix, name);
    char **grown = realloc(ids, (nids + 1) * sizeof *ids);
    assert_non_null(grown);
    ids = grown;
    if (nids == 0)
        atexit(free_ids);
    ids[nids] = strdup(buf);
    assert_non_null(ids[nids]);
    return ids[nids++];
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

pid_t h_worker_start(const char *const *extra_env)
{
    char log_path[256];
    snprintf(log_path, sizeof log_path, "%s/tests/worker-%s-%d.log", PAYQ_BINARY_DIR, prefix,
             (int)getpid());
    /* The log is appended to by each worker of this test; we look for new
     * "consuming" lines after the current end. */
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    assert_true(fd >= 0);
    off_t start = lseek(fd, 0, SEEK_END);
    int threads = 1;
    for (const char *const *e = extra_env; e && *e; e++)
        if (strncmp(*e, "PAYQ_THREADS=", 13) == 0)
            threads = atoi(*e + 13);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd, STDERR_FILENO);
        /* Defaults for tests; extra_env can override them. */
        putenv("PAYQ_THREADS=1");
        putenv("PAYQ_PREFETCH=10");
        putenv("PAYQ_LOG_LEVEL=debug");
        putenv("PAYQ_METRICS_PORT=0"); /* tests that scrape pick a free port */
        for (const char *const *e = extra_env; e && *e; e++)
            putenv((char *)(uintptr_t)*e);
        char bin[512];
        snprintf(bin, sizeof bin, "%s/payq-worker", PAYQ_BINARY_DIR);
        execl(bin, bin, "run", (char *)NULL);
        _exit(127);
    }
    close(fd);
    track(pid, true);
    long long deadline = now_ms() + 30000;
    while (now_ms() < deadline) {
        FILE *f = fopen(log_path, "r");
        if (f) {
            fseek(f, start, SEEK_SET);
            char line[4096];
            int ready = 0;
            while (fgets(line, sizeof line, f))
                if (strstr(line, "consuming"))
                    ready++;
            fclose(f);
            if (ready >= threads)
                return pid;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            track(pid, false);
            fail_msg("payq-worker exited during start (status %d); see %s", st, log_path);
        }
        sleep_ms(50);
    }
    kill(pid, SIGKILL);
    fail_msg("payq-worker did not start consuming within 30 s; see %s", log_path);
    return -1;
}

int h_worker_wait(pid_t pid, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    int st;
    while (now_ms() < deadline) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            track(pid, false);
            return st;
        }
        sleep_ms(20);
    }
    return -1;
}

int h_worker_stop(pid_t pid, int sig)
{
    kill(pid, sig);
    int st = h_worker_wait(pid, 30000);
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        track(pid, false);
        fail_msg("payq-worker did not stop within 30 s of signal %d", sig);
    }
    return st;
}

mq_t *h_mq(void)
{
    mq_t *mq;
    assert_int_equal(mq_connect(amqp_url, &tls, "payq test", 30, &mq), PAYQ_OK);
    assert_int_equal(mq_declare_topology(mq), PAYQ_OK);
    assert_int_equal(mq_consume_direct_reply(mq), PAYQ_OK);
    return mq;
}

void h_publish_ex(mq_t *mq, const char *rk, const char *message_id, const char *content_type,
                  const char *body, size_t len, bool reply)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (content_type) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = amqp_cstring_bytes(content_type);
    }
    if (message_id) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = amqp_cstring_bytes(message_id);
    }
    if (reply) {
        p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
        p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
    }
    uint64_t seq;
    assert_int_equal(mq_publish(mq, PAYQ_X_COMMANDS, rk, true, &p, body, len, &seq), PAYQ_OK);
    assert_int_equal(mq_wait_confirms(mq, seq, 10000), PAYQ_OK);
}

void h_publish(mq_t *mq, const char *rk, const char *message_id, const char *body)
{
    h_publish_ex(mq, rk, message_id, "application/json", body, strlen(body), true);
}

json_t *h_reply(mq_t *mq, int timeout_ms)
{
    struct mq_delivery *d = NULL;
    int rc = mq_next(mq, timeout_ms, &d);
    if (rc == PAYQ_ERR_TIMEOUT)
        return NULL;
    assert_int_equal(rc, PAYQ_OK);
    json_error_t err;
    json_t *j = json_loadb(d->message.body.bytes, d->message.body.len, 0, &err);
    if (!j)
        fail_msg("reply is not JSON: %.*s", (int)d->message.body.len,
                 (const char *)d->message.body.bytes);
    mq_delivery_free(d);
    return j;
}

json_t *h_call(mq_t *mq, const char *rk, const char *message_id, const char *body)
{
    h_publish(mq, rk, message_id, body);
    json_t *r = h_reply(mq, 20000);
    if (!r)
        fail_msg("no reply within 20 s to %s %s", rk, body);
    return r;
}

const char *h_status(json_t *r)
{
    const char *s = json_string_value(json_object_get(r, "status"));
    return s ? s : "";
}

const char *h_code(json_t *r)
{
    const char *s = json_string_value(json_object_get(r, "code"));
    return s ? s : "";
}

struct mq_delivery *h_dlq_take(const char *message_id, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        mq_t *mq;
        assert_int_equal(mq_connect(amqp_url, &tls, "payq test dlq", 30, &mq), PAYQ_OK);
        struct mq_delivery *found = NULL;
        for (;;) {
            struct mq_delivery *d = NULL;
            assert_int_equal(mq_get(mq, PAYQ_Q_DLQ, &d), PAYQ_OK);
            if (!d)
                break;
            const amqp_basic_properties_t *p = &d->message.properties;
            if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
                p->message_id.len == strlen(message_id) &&
                memcmp(p->message_id.bytes, message_id, p->message_id.len) == 0) {
                assert_int_equal(mq_ack(mq, d->channel, d->tag, false), PAYQ_OK);
                /* The copy is gone, so its archived row is resolved too. */
                const char *id = h_header(d, "x-payq-dead-letter-id");
                if (id[0]) {
                    const char *p1[1] = { id };
                    assert_string_equal(h_exec("UPDATE payq.dead_letters SET status = 'discarded',"
                                               " resolved_at = now(), resolved_by = 'test',"
                                               " resolution_note = 'taken by a test'"
                                               " WHERE id = $1::uuid", 1, p1),
                                        "");
                }
                found = d;
                break;
            }
            mq_delivery_free(d);
        }
        /* Confirm the ack reached the broker before closing: a round trip. */
        uint32_t depth;
        assert_int_equal(mq_queue_depth(mq, PAYQ_Q_DLQ, &depth), PAYQ_OK);
        mq_close(mq);
        if (found)
            return found;
        sleep_ms(100);
    }
    return NULL;
}

const char *h_header(const struct mq_delivery *d, const char *name)
{
    static char buf[2048];
    amqp_bytes_t b;
    int64_t n;
    const amqp_basic_properties_t *p = &d->message.properties;
    if (mq_header_str(p, name, &b))
        snprintf(buf, sizeof buf, "%.*s", (int)b.len, (const char *)b.bytes);
    else if (mq_header_int(p, name, &n))
        snprintf(buf, sizeof buf, "%lld", (long long)n);
    else
        buf[0] = 0;
    if (!buf[0] && (p->_flags & AMQP_BASIC_HEADERS_FLAG)) {
        for (int i = 0; i < p->headers.num_entries; i++) {
            const amqp_table_entry_t *e = &p->headers.entries[i];
            if (e->key.len == strlen(name) && memcmp(e->key.bytes, name, e->key.len) == 0 &&
                e->value.kind == AMQP_FIELD_KIND_BOOLEAN)
                snprintf(buf, sizeof buf, "%s", e->value.value.boolean ? "true" : "false");
        }
    }
    return buf;
}

PGconn *h_db(void)
{
    if (!db) {
        db = PQconnectdb(database_url);
        if (PQstatus(db) != CONNECTION_OK)
            fail_msg("cannot connect to %s: %s", "DATABASE_URL", PQerrorMessage(db));
    }
    return db;
}

static PGresult *query(const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(h_db(), sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1 || PQgetisnull(r, 0, 0)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        int rows = PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1;
        PQclear(r);
        fail_msg("query failed or returned no value (rows %d): %s\n%s", rows, sql, msg);
    }
    return r;
}

int64_t h_int(const char *sql, int n, const char *const *params)
{
    PGresult *r = query(sql, n, params);
    int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* h_text's value: grows to the longest value read, freed at exit. */
static char *text_value;
static size_t text_cap;

static void free_text(void) { free(text_value); }

const char *h_text(const char *sql, int n, const char *const *params)
{
    PGresult *r = query(sql, n, params);
    size_t len = (size_t)PQgetlength(r, 0, 0);
    if (len + 1 > text_cap) {
        char *grown = realloc(text_value, len + 1);
        assert_non_null(grown);
        if (!text_value)
            atexit(free_text);
        text_value = grown;
        text_cap = len + 1;
    }
    memcpy(text_value, PQgetvalue(r, 0, 0), len + 1);
    PQclear(r);
    return text_value;
}

const char *h_exec(const char *sql, int n, const char *const *params)
{
    static char state[6];
    PGresult *r = PQexecParams(h_db(), sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(state, sizeof state, "%s",
             (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? "" : (s ? s : "?????"));
    PQclear(r);
    return state;
}

PGresult *h_run(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s\n%s", sql, PQresultErrorMessage(r));
    return r;
}

void h_apply(PGconn *c, const char *command, const char *status, const char *fmt, ...)
{
    char body[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    const char *p[2] = { command, body };
    PGresult *r = h_run(c,
                        "SELECT payq.apply_command(NULL, NULL, $1, $2::jsonb, NULL)"
                        "         #>> '{reply,status}'",
                        2, p);
    const char *got = PQgetisnull(r, 0, 0) ? "(no reply)" : PQgetvalue(r, 0, 0);
    if (strcmp(got, status) != 0)
        fail_msg("%s %s: %s, not %s", command, body, got, status);
    PQclear(r);
}

int64_t h_balance(const char *account)
{
    const char *p[1] = { account };
    return h_int("SELECT posted FROM payq.account_balances WHERE id = $1", 1, p);
}

void h_open(mq_t *mq, const char *account, const char *currency, const char *kind)
{
    char body[256];
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"%s\",\"kind\":\"%s\"}",
             account, currency, kind);
    json_t *r = h_call(mq, "account.open", NULL, body);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
}

void h_deposit(mq_t *mq, const char *deposit_id, const char *account, int64_t amount,
               const char *currency)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":%lld,\"currency\":\"%s\"}",
             deposit_id, account, (long long)amount, currency);
    json_t *r = h_call(mq, "account.deposit", NULL, body);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
}

void h_check_invariants(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/payq-worker check", PAYQ_BINARY_DIR);
    int st = system(cmd);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("payq-worker check found violations (status %d)", st);
}
