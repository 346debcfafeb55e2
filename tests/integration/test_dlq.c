/*
 * test_dlq.c - payq-dlq against the real worker, broker and database.
 *
 * Dead letters are made the real way (the worker rejects a malformed body,
 * an unknown command and an idempotency conflict) and, for replays that
 * must succeed, the way the worker makes a retries_exhausted one: a row from
 * payq.record_dead_letter() plus its copy in payq.dlq with the
 * x-payq-dead-letter-id header, for an account.open that was never applied.
 * The tool is run as a binary, and its output parsed. Every dead letter
 * here carries this run's prefix, and the test resolves all of them, so
 * their copies leave payq.dlq; other dead letters are never acked.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "mqjson.h"
#include "topology.h"

static pid_t worker;
static mq_t *mq;

/* The worker-made dead letters of test_inspect, used by the later tests. */
static char junk_id[40], conflict_id[40], unknown_id[40];

static int setup(void **state)
{
    (void)state;
    h_init();
    mq = h_mq();
    worker = h_worker_start(NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int st = h_worker_stop(worker, SIGTERM);
    mq_close(mq);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/*
 * Runs build/payq-dlq with the arguments (NULL-terminated) and `env`
 * ("NAME=value" or NULL) added to its environment. *out (may be NULL) gets
 * its stdout, which is also echoed to stderr for the test log. Returns the
 * wait status.
 */
static int run_dlq(char **out, const char *env, ...)
{
    char bin[512];
    snprintf(bin, sizeof bin, "%s/payq-dlq", PAYQ_BINARY_DIR);
    const char *argv[32];
    int n = 0;
    argv[n++] = bin;
    va_list ap;
    va_start(ap, env);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 31)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;

    fprintf(stderr, "$ %spayq-dlq", env ? env : "");
    for (int i = 1; i < n; i++)
        fprintf(stderr, " %s", argv[i]);
    fprintf(stderr, "\n");
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        if (env)
            putenv((char *)(uintptr_t)env);
        execv(bin, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    assert_non_null(buf);
    ssize_t got;
    while ((got = read(fds[0], buf + len, cap - len - 1)) > 0) {
        len += (size_t)got;
        if (cap - len < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    close(fds[0]);
    buf[len] = 0;
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    fprintf(stderr, "%s", buf);
    if (out)
        *out = buf;
    else
        free(buf);
    return st;
}

static bool exited(int st, int code)
{
    return WIFEXITED(st) && WEXITSTATUS(st) == code;
}

/* The line of `text` that contains `needle`, or NULL (static storage). */
static const char *line_with(const char *text, const char *needle)
{
    static char line[4096];
    const char *hit = strstr(text, needle);
    if (!hit)
        return NULL;
    const char *start = hit;
    while (start > text && start[-1] != '\n')
        start--;
    size_t l = strcspn(start, "\n");
    snprintf(line, sizeof line, "%.*s", (int)l, start);
    return line;
}

static const char *status_of(const char *id)
{
    const char *p[1] = { id };
    return h_text("SELECT status FROM payq.dead_letters WHERE id = $1::uuid", 1, p);
}

/* Waits for the worker's archive row of a dead letter; falls back to
 * `payq-dlq sync` (which archives copies without a row) if none comes. */
static void row_for(const char *message_id, char id[40])
{
    const char *p[1] = { message_id };
    static const char sql[] = "SELECT count(*) FROM payq.dead_letters WHERE message_id = $1";
    for (int i = 0; i < 100 && h_int(sql, 1, p) == 0; i++) {
        if (i == 50)
            assert_true(exited(run_dlq(NULL, NULL, "sync", NULL), 0));
        sleep_ms(100);
    }
    snprintf(id, 40, "%s",
             h_text("SELECT id::text FROM payq.dead_letters WHERE message_id = $1"
                    " ORDER BY created_at DESC LIMIT 1",
                    1, p));
}

/* Messages ready in payq.dlq, once the count holds still (messages that a
 * closed connection had taken are back). */
static uint32_t dlq_depth(void)
{
    uint32_t a = 0, b = 1;
    for (int i = 0; i < 50 && a != b; i++) {
        assert_int_equal(mq_queue_depth(mq, PAYQ_Q_DLQ, &a), PAYQ_OK);
        sleep_ms(150);
        assert_int_equal(mq_queue_depth(mq, PAYQ_Q_DLQ, &b), PAYQ_OK);
    }
    assert_int_equal(a, b);
    return a;
}

/* How many copies in payq.dlq carry x-payq-dead-letter-id = id. Reads the
 * queue with basic.get and acks nothing, like the tool's reconcile. */
static int dlq_copies(const char *id)
{
    (void)dlq_depth();
    mq_t *c;
    assert_int_equal(mq_connect(getenv("AMQP_URL"), NULL, "payq test dlq scan", 30, &c), PAYQ_OK);
    long total = -1, seen = 0;
    int found = 0;
    while (total < 0 || seen < total) {
        struct mq_delivery *d = NULL;
        assert_int_equal(mq_get(c, PAYQ_Q_DLQ, &d), PAYQ_OK);
        if (!d)
            break;
        if (total < 0)
            total = (long)d->remaining + 1;
        seen++;
        if (strcmp(h_header(d, "x-payq-dead-letter-id"), id) == 0)
            found++;
        mq_delivery_free(d);
    }
    mq_close(c);
    return found;
}

static void rfc3339_ago(int seconds, char *buf, size_t len)
{
    time_t t = time(NULL) - seconds;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

/*
 * A retries_exhausted dead letter, made the way the worker makes one, for
 * an account.open of `account` that was never applied: the archive row,
 * then its copy in payq.dlq. Its id goes to id.
 */
static void make_dead_letter(const char *account, const char *message_id, char id[40])
{
    char body[256], first[40], last[40];
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"EUR\",\"kind\":\"customer\"}",
             account);
    rfc3339_ago(120, first, sizeof first);
    rfc3339_ago(60, last, sizeof last);
    json_t *props = json_pack(
        "{s:s, s:s, s:i, s:{s:s, s:s, s:i, s:s, s:s, s:s, s:s}}", "content_type",
        "application/json", "message_id", message_id, "delivery_mode", 2, "headers",
        "x-payq-reason", "retries_exhausted", "x-payq-error",
        "could not connect to the database (simulated by test_dlq)", "x-payq-attempts", 8,
        "x-payq-first-failure-at", first, "x-payq-last-failure-at", last,
        "x-payq-original-exchange", "payq.commands", "x-payq-original-routing-key", "account.open");
    assert_non_null(props);
    char *pj = json_dumps(props, JSON_COMPACT);
    assert_non_null(pj);
    const char *p[5] = { message_id, account, first, pj, body };
    snprintf(id, 40, "%s",
             h_text("SELECT payq.record_dead_letter($1, NULL, 'payq.commands', 'account.open',"
                    " $2, 'retries_exhausted',"
                    " 'could not connect to the database (simulated by test_dlq)', '08006', 8,"
                    " $3::timestamptz, $4::jsonb, convert_to($5, 'UTF8'), false, 'test_dlq')::text",
                    5, p));
    free(pj);

    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t ap;
    assert_int_equal(mq_props_from_json(props, &pool, &ap), PAYQ_OK);
    json_decref(props);
    amqp_table_entry_t e[16];
    int n = ap.headers.num_entries;
    memcpy(e, ap.headers.entries, (size_t)n * sizeof *e);
    e[n].key = amqp_cstring_bytes("x-payq-dead-letter-id");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n].value.value.bytes = amqp_cstring_bytes(id);
    ap.headers.entries = e;
    ap.headers.num_entries = n + 1;
    uint64_t seq;
    assert_int_equal(
        mq_publish(mq, PAYQ_X_DLX, "account.open", true, &ap, body, strlen(body), &seq), PAYQ_OK);
    assert_int_equal(mq_wait_confirms(mq, seq, 10000), PAYQ_OK);
    empty_amqp_pool(&pool);
}

static int64_t accounts_named(const char *account)
{
    const char *p[1] = { account };
    return h_int("SELECT count(*) FROM payq.accounts WHERE id = $1", 1, p);
}

static int64_t opened_events(const char *account)
{
    const char *p[1] = { account };
    return h_int("SELECT count(*) FROM payq.outbox WHERE routing_key = 'account.opened'"
                 " AND body->>'id' = $1",
                 1, p);
}

static void wait_account(const char *account)
{
    for (int i = 0; i < 200 && accounts_named(account) == 0; i++)
        sleep_ms(100);
    assert_int_equal(accounts_named(account), 1);
}

/* Whatever was published before this has been handled by the (single
 * threaded) worker once this command's reply arrives. Other replies may
 * come first: a replayed message keeps its reply_to, which for the
 * worker-made dead letters is this connection's. */
static void barrier(const char *name)
{
    const char *acct = h_id(name);
    char body[256];
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"EUR\",\"kind\":\"customer\"}",
             acct);
    h_publish(mq, "account.open", NULL, body);
    for (;;) {
        json_t *r = h_reply(mq, 20000);
        if (!r)
            fail_msg("no reply to the barrier %s within 20 s", acct);
        const char *id = json_string_value(json_object_get(r, "id"));
        bool mine = id && strcmp(id, acct) == 0;
        if (mine)
            assert_string_equal(h_status(r), "succeeded");
        json_decref(r);
        if (mine)
            return;
    }
}

/* Real dead letters from the worker; list, show and stats read them from
 * PostgreSQL and leave the queue alone; a dry run changes nothing. */
static void test_inspect(void **state)
{
    (void)state;
    const char *mid_junk = h_id("msg-junk"), *mid_conflict = h_id("msg-conflict"),
               *mid_unknown = h_id("msg-unknown");
    char body[512];

    /* malformed_json */
    snprintf(body, sizeof body, "{\"payment_id\": \"%s\", not json", h_id("pay-junk"));
    h_publish(mq, "payment.create", mid_junk, body);
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "malformed_json");
    json_decref(r);

    /* idempotency_conflict: the same payment_id with another amount */
    const char *alice = h_id("alice"), *shop = h_id("shop"), *pay = h_id("pay-1");
    h_open(mq, alice, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep"), alice, 1000, "USD");
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":100,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             pay, alice, shop);
    r = h_call(mq, "payment.create", h_id("msg-pay-1"), body);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":101,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             pay, alice, shop);
    r = h_call(mq, "payment.create", mid_conflict, body);
    assert_string_equal(h_code(r), "idempotency_conflict");
    json_decref(r);

    /* unknown_command */
    snprintf(body, sizeof body, "{\"payment_id\":\"%s\"}", h_id("pay-teleport"));
    r = h_call(mq, "payment.teleport", mid_unknown, body);
    assert_string_equal(h_code(r), "unknown_command");
    json_decref(r);

    row_for(mid_junk, junk_id);
    row_for(mid_conflict, conflict_id);
    row_for(mid_unknown, unknown_id);
    uint32_t before = dlq_depth();

    /* list: one line each, with reason, command, message_id and status. */
    char *out;
    const char *prefix = h_id("");
    assert_true(exited(run_dlq(&out, NULL, "list", "--grep", prefix, NULL), 0));
    struct {
        const char *id, *reason, *rk, *mid;
    } want[] = {
        { junk_id, "malformed_json", "payment.create", mid_junk },
        { conflict_id, "idempotency_conflict", "payment.create", mid_conflict },
        { unknown_id, "unknown_command", "payment.teleport", mid_unknown },
    };
    for (size_t i = 0; i < 3; i++) {
        char shortid[9];
        snprintf(shortid, sizeof shortid, "%.8s", want[i].id);
        const char *line = line_with(out, shortid);
        if (!line)
            fail_msg("list does not show %s (%s)", shortid, want[i].reason);
        assert_non_null(strstr(line, want[i].reason));
        assert_non_null(strstr(line, want[i].rk));
        assert_non_null(strstr(line, want[i].mid));
        assert_non_null(strstr(line, " dead"));
    }
    /* Newest last. */
    char s1[9], s3[9];
    snprintf(s1, sizeof s1, "%.8s", junk_id);
    snprintf(s3, sizeof s3, "%.8s", unknown_id);
    assert_true(strstr(out, s1) < strstr(out, s3));
    assert_non_null(strstr(out, "3 dead letters"));
    free(out);

    /* Filters narrow it down. */
    assert_true(exited(run_dlq(&out, NULL, "list", "--grep", prefix, "--reason", "unknown_command",
                               "--since", "10m", NULL),
                       0));
    assert_null(strstr(out, s1));
    assert_non_null(strstr(out, s3));
    free(out);
    assert_true(exited(run_dlq(&out, NULL, "list", "--grep", prefix, "--until", "1h", NULL), 0));
    assert_non_null(strstr(out, "no dead letters"));
    free(out);

    /* show: the reason, the error, the body as it was sent. */
    assert_true(exited(run_dlq(&out, NULL, "show", s1, NULL), 0));
    assert_non_null(strstr(out, "malformed_json"));
    assert_non_null(strstr(out, "not json"));
    assert_non_null(strstr(out, "not valid JSON"));
    assert_non_null(strstr(out, "x-payq-reason"));
    assert_non_null(strstr(out, mid_junk));
    free(out);
    assert_true(exited(run_dlq(&out, NULL, "show", conflict_id, NULL), 0));
    assert_non_null(strstr(out, "idempotency_conflict"));
    assert_non_null(strstr(out, "\"amount\": 101")); /* pretty-printed body */
    assert_non_null(strstr(out, pay));
    assert_non_null(strstr(out, "#1")); /* the attempt from payq.failures */
    free(out);

    /* stats: one group per cause. */
    assert_true(exited(run_dlq(&out, NULL, "stats", "--grep", prefix, NULL), 0));
    assert_non_null(line_with(out, "malformed_json"));
    assert_non_null(line_with(out, "idempotency_conflict"));
    assert_non_null(line_with(out, "unknown_command"));
    assert_non_null(strstr(out, "3 dead letters in 3 groups"));
    free(out);

    /* A dry run changes nothing. */
    assert_true(exited(run_dlq(&out, NULL, "replay", "--dry-run", "--grep", prefix, NULL), 0));
    assert_non_null(strstr(out, "dry run: would replay 3, skip 0"));
    free(out);
    assert_string_equal(status_of(junk_id), "dead");
    assert_string_equal(status_of(conflict_id), "dead");
    assert_string_equal(status_of(unknown_id), "dead");

    /* None of it touched the queue. */
    assert_int_equal(dlq_depth(), before);
    assert_int_equal(dlq_copies(junk_id), 1);

    /* Usage errors are errors. */
    assert_true(exited(run_dlq(NULL, NULL, "replay", NULL), 2));
    assert_true(exited(run_dlq(NULL, NULL, "discard", s1, NULL), 2));
    assert_true(exited(run_dlq(NULL, NULL, "show", "xyz!", NULL), 2));
    assert_true(exited(run_dlq(NULL, NULL, "list", "--since", "yesterday", NULL), 2));
}

/* A fixed dead letter replays once: applied, marked, its copy gone; the
 * same again is a no-op, and even forced it has one effect. */
static void test_replay(void **state)
{
    (void)state;
    const char *acct = h_id("acct-replay"), *mid = h_id("msg-replay");
    char id[40], *out;
    make_dead_letter(acct, mid, id);
    assert_int_equal(accounts_named(acct), 0);
    assert_int_equal(dlq_copies(id), 1);

    assert_true(exited(run_dlq(&out, NULL, "replay", id, NULL), 0));
    assert_non_null(strstr(out, "replayed 1, skipped 0, failed 0"));
    free(out);
    wait_account(acct);
    barrier("barrier-1");
    assert_int_equal(accounts_named(acct), 1);
    assert_int_equal(opened_events(acct), 1);
    const char *p[1] = { id };
    assert_string_equal(h_text("SELECT status || '|' || (resolved_at IS NOT NULL) || '|'"
                               " || (resolved_by IS NOT NULL) || '|' || resolution_note"
                               " FROM payq.dead_letters WHERE id = $1::uuid",
                               1, p),
                        "replayed|true|true|replayed to payq.commands with routing key "
                        "account.open");
    const char *q[1] = { mid };
    assert_string_equal(h_text("SELECT reply->>'status' FROM payq.inbox"
                               " WHERE scope = '' AND message_id = $1",
                               1, q),
                        "succeeded");
    assert_int_equal(dlq_copies(id), 0);

    /* Again: already replayed, so skipped; nothing is published. */
    assert_true(exited(run_dlq(&out, NULL, "replay", id, NULL), 0));
    assert_non_null(strstr(out, "replayed 0, skipped 1, failed 0"));
    free(out);

    /* Forced: published again, and the worker still applies it once. */
    assert_true(exited(run_dlq(&out, NULL, "replay", "--force", id, NULL), 0));
    assert_non_null(strstr(out, "replayed 1"));
    free(out);
    barrier("barrier-2");
    assert_int_equal(accounts_named(acct), 1);
    assert_int_equal(opened_events(acct), 1);
    assert_string_equal(status_of(id), "replayed");
    assert_int_equal(dlq_copies(id), 0);
}

/* Killed right after the broker confirmed the replay: the row is still
 * dead, nothing is lost, and the second replay has no second effect. */
static void test_replay_killed(void **state)
{
    (void)state;
    const char *acct = h_id("acct-killed"), *mid = h_id("msg-killed");
    char id[40], *out;
    make_dead_letter(acct, mid, id);

    int st = run_dlq(NULL, "PAYQ_DLQ_TEST_KILL_AFTER_PUBLISH=1", "replay", id, NULL);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_string_equal(status_of(id), "dead");
    wait_account(acct); /* the confirmed publish reached the worker */
    assert_int_equal(dlq_copies(id), 1);

    assert_true(exited(run_dlq(&out, NULL, "replay", id, NULL), 0));
    assert_non_null(strstr(out, "replayed 1, skipped 0, failed 0"));
    free(out);
    barrier("barrier-3");
    assert_int_equal(accounts_named(acct), 1);
    assert_int_equal(opened_events(acct), 1);
    assert_string_equal(status_of(id), "replayed");
    assert_int_equal(dlq_copies(id), 0);
}

/* --canary 1: the first replay is rejected again, so the second one is
 * never published, and the first goes back to 'dead'. A replay that fails
 * again without a canary is reopened by reconciling. */
static void test_canary(void **state)
{
    (void)state;
    char *out;
    int st = run_dlq(&out, NULL, "replay", "--canary", "1", "--canary-timeout", "10", conflict_id,
                     unknown_id, NULL);
    assert_true(exited(st, 1));
    assert_non_null(strstr(out, "not attempted 1 (stopped by the canary)"));
    free(out);
    const char *p[1] = { conflict_id };
    /* Open again, with a note saying why: the worker reopens the row when
     * the replayed copy fails the same way ("failed again after: ..."), or
     * the canary does when it sees the rejection first. */
    assert_string_equal(h_text("SELECT status || '|' || (resolved_at IS NULL) || '|' ||"
                               " (resolution_note LIKE 'failed again after%' OR"
                               "  resolution_note LIKE 'canary replay failed: rejected again%')"
                               " FROM payq.dead_letters WHERE id = $1::uuid",
                               1, p),
                        "dead|true|true");
    const char *q[1] = { unknown_id };
    assert_string_equal(h_text("SELECT status || '|' || (resolved_at IS NULL)"
                               " || '|' || (resolution_note IS NULL)"
                               " FROM payq.dead_letters WHERE id = $1::uuid",
                               1, q),
                        "dead|true|true");
    /* The rejected replay is dead-lettered again by the worker, under the
     * same row; the row stays dead (reconciling keeps its copies). */
    barrier("barrier-4");
    assert_true(exited(run_dlq(NULL, NULL, "sync", NULL), 0));
    assert_string_equal(status_of(conflict_id), "dead");
    assert_true(dlq_copies(conflict_id) >= 1);

    /* Without a canary: the unknown command is replayed, marked, and
     * dead-lettered again; its new copy carries the replay's stamp, so
     * reconciling reopens the row instead of acking the copy. */
    assert_true(exited(run_dlq(&out, NULL, "replay", unknown_id, NULL), 0));
    assert_non_null(strstr(out, "replayed 1, skipped 0, failed 0"));
    free(out);
    barrier("barrier-5");
    assert_true(exited(run_dlq(NULL, NULL, "sync", NULL), 0));
    assert_string_equal(h_text("SELECT status || '|' || (resolution_note LIKE"
                               " 'failed again after%')"
                               " FROM payq.dead_letters WHERE id = $1::uuid",
                               1, q),
                        "dead|true");
    assert_true(dlq_copies(unknown_id) >= 1);
}

/* export: valid NDJSON with every column and the body in base64; import
 * adds what is missing (with its queue copy) and nothing twice. */
static void test_export_import(void **state)
{
    (void)state;
    char *out;
    const char *prefix = h_id("");
    assert_true(
        exited(run_dlq(&out, NULL, "export", "--grep", prefix, "--status", "all", NULL), 0));
    const char *p[1] = { prefix };
    int64_t rows = h_int("SELECT count(*) FROM payq.dead_letters"
                         " WHERE position(convert_to($1, 'UTF8') IN body) > 0"
                         "    OR strpos(error, $1) > 0 OR strpos(message_id, $1) > 0"
                         "    OR strpos(business_id, $1) > 0 OR strpos(correlation_id, $1) > 0",
                         1, p);
    int lines = 0;
    char *junk_line = NULL;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        if (!j)
            fail_msg("export line %d is not JSON: %s", lines + 1, err.text);
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *b64 = json_string_value(json_object_get(j, "body_base64"));
        assert_non_null(id);
        assert_non_null(b64);
        assert_true(json_is_object(json_object_get(j, "properties")));
        assert_non_null(json_object_get(j, "status"));
        assert_non_null(json_object_get(j, "error"));
        assert_non_null(json_object_get(j, "fingerprint"));
        assert_null(json_object_get(j, "body"));
        const char *q[2] = { id, b64 };
        assert_int_equal(h_int("SELECT count(*) FROM payq.dead_letters WHERE id = $1::uuid"
                               " AND body = decode($2, 'base64')",
                               2, q),
                         1);
        if (strcmp(id, junk_id) == 0)
            junk_line = strdup(line);
        json_decref(j);
        lines++;
    }
    free(out);
    assert_int_equal(lines, rows);
    assert_true(lines >= 5);
    assert_non_null(junk_line);

    /* The junk dead letter under a new id, as from another installation. */
    json_t *j = json_loads(junk_line, 0, NULL);
    free(junk_line);
    char new_id[40];
    snprintf(new_id, sizeof new_id, "%s", h_text("SELECT gen_random_uuid()::text", 0, NULL));
    json_object_set_new(j, "id", json_string(new_id));
    json_object_set_new(j, "message_id", json_string(h_id("msg-imported")));
    json_object_set_new(j, "status", json_string("dead"));
    char path[256];
    snprintf(path, sizeof path, "%s/tests/dlq-import-%d.ndjson", PAYQ_BINARY_DIR, (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    char *text = json_dumps(j, JSON_COMPACT);
    fprintf(f, "%s\n\n", text);
    fclose(f);
    free(text);
    json_decref(j);

    assert_true(exited(run_dlq(&out, NULL, "import", path, NULL), 0));
    assert_non_null(strstr(out, "imported 1 (1 copies published"));
    free(out);
    assert_string_equal(status_of(new_id), "dead");
    assert_int_equal(dlq_copies(new_id), 1);
    assert_true(exited(run_dlq(&out, NULL, "import", path, NULL), 0));
    assert_non_null(strstr(out, "imported 0 (0 copies published to payq.dlx), already present 1"));
    free(out);
    assert_int_equal(dlq_copies(new_id), 1);
    unlink(path);
}

/* discard: marked with the note, its copy removed; then this run's dead
 * letters are all discarded, so none of their copies stays in payq.dlq. */
static void test_discard(void **state)
{
    (void)state;
    char *out;
    char s1[9];
    snprintf(s1, sizeof s1, "%.8s", junk_id);
    assert_true(exited(run_dlq(&out, NULL, "discard", s1, "--reason", "test", NULL), 0));
    assert_non_null(strstr(out, "discarded 1, skipped 0"));
    free(out);
    const char *p[1] = { junk_id };
    assert_string_equal(h_text("SELECT status || '|' || resolution_note || '|'"
                               " || (resolved_at IS NOT NULL)"
                               " FROM payq.dead_letters WHERE id = $1::uuid",
                               1, p),
                        "discarded|test|true");
    assert_int_equal(dlq_copies(junk_id), 0);

    /* Everything left of this run. */
    const char *prefix = h_id("");
    assert_true(exited(
        run_dlq(&out, NULL, "discard", "--grep", prefix, "--reason", "test_dlq cleanup", NULL), 0));
    free(out);
    const char *q[1] = { prefix };
    assert_int_equal(h_int("SELECT count(*) FROM payq.dead_letters WHERE status = 'dead'"
                           " AND (position(convert_to($1, 'UTF8') IN body) > 0"
                           "      OR strpos(message_id, $1) > 0)",
                           1, q),
                     0);
    assert_int_equal(dlq_copies(conflict_id), 0);
    assert_int_equal(dlq_copies(unknown_id), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inspect),       cmocka_unit_test(test_replay),
        cmocka_unit_test(test_replay_killed), cmocka_unit_test(test_canary),
        cmocka_unit_test(test_export_import), cmocka_unit_test(test_discard),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
