/*
 * test_security.c - least privilege in RabbitMQ: the users of
 * rabbitmq/definitions.json can do their job and nothing more, and the
 * broker refuses a spoofed user_id.
 *
 * The local stack (tests/stack.sh) gives each of these users its own name
 * as password.
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

#include "harness.h"
#include "topology.h"

/* amqp://USER:USER@<host:port of AMQP_URL> */
static const char *url_for(const char *user)
{
    static char buf[512];
    const char *base = getenv("AMQP_URL");
    const char *at = base ? strrchr(base, '@') : NULL;
    snprintf(buf, sizeof buf, "amqp://%s:%s@%s", user, user, at ? at + 1 : "127.0.0.1:5673");
    return buf;
}

static mq_t *connect_as(const char *user)
{
    mq_t *mq;
    if (mq_connect(url_for(user), NULL, "payq security test", 30, &mq) != PAYQ_OK)
        fail_msg("cannot connect as %s: %s", user, mq_connect_error());
    return mq;
}

/* Publishes and waits for the confirm; returns the status (PAYQ_ERR_CLOSED
 * when the broker closed the channel). */
static int publish(mq_t *mq, const char *exchange, const char *rk, const char *user_id,
                   const char *body)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (user_id) {
        p._flags |= AMQP_BASIC_USER_ID_FLAG;
        p.user_id = amqp_cstring_bytes(user_id);
    }
    uint64_t seq;
    int rc = mq_publish(mq, exchange, rk, false, &p, body, strlen(body), &seq);
    if (rc == PAYQ_OK)
        rc = mq_wait_confirms(mq, seq, 10000);
    return rc;
}

static void test_publisher(void **state)
{
    (void)state;
    h_init();
    char body[256];
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"customer\"}",
             h_id("sec-acct"));

    /* may publish commands, and consume its own direct replies */
    mq_t *mq = connect_as("payq-publisher");
    assert_int_equal(mq_consume_direct_reply(mq), PAYQ_OK);
    assert_int_equal(publish(mq, PAYQ_X_COMMANDS, "account.open", NULL, body), PAYQ_OK);
    /* ... with its own user_id; another one is refused by the broker */
    assert_int_equal(publish(mq, PAYQ_X_COMMANDS, "account.open", "payq-publisher", body),
                     PAYQ_OK);
    assert_int_equal(publish(mq, PAYQ_X_COMMANDS, "account.open", "payq-operator", body),
                     PAYQ_ERR_CLOSED);
    assert_non_null(strstr(mq_error(mq), "PRECONDITION_FAILED"));
    mq_close(mq);

    /* may not publish events */
    mq = connect_as("payq-publisher");
    assert_int_equal(publish(mq, PAYQ_X_EVENTS, "payment.succeeded", NULL, "{}"),
                     PAYQ_ERR_CLOSED);
    assert_non_null(strstr(mq_error(mq), "ACCESS_REFUSED"));
    mq_close(mq);

    /* may not consume the work queue, nor read the dead letters */
    mq = connect_as("payq-publisher");
    assert_int_equal(mq_consume(mq, PAYQ_Q_COMMANDS, 1), PAYQ_ERR_CLOSED);
    assert_non_null(strstr(mq_error(mq), "ACCESS_REFUSED"));
    mq_close(mq);
    mq = connect_as("payq-publisher");
    struct mq_delivery *d = NULL;
    assert_int_equal(mq_get(mq, PAYQ_Q_DLQ, &d), PAYQ_ERR_CLOSED);
    mq_close(mq);
}

/* The worker's user is enough to run the worker: topology, consume, reply,
 * dead-letter, retry, events. */
static void test_worker_user(void **state)
{
    (void)state;
    mq_t *mq = h_mq();
    char env_url[600];
    snprintf(env_url, sizeof env_url, "AMQP_URL=%s", url_for("payq-worker"));
    const char *env[] = { env_url, NULL };
    pid_t w = h_worker_start(env);
    const char *acc = h_id("sec-worker-acct");
    h_open(mq, acc, "EUR", "customer");
    h_deposit(mq, h_id("sec-dep"), acc, 250, "EUR");
    assert_int_equal(h_balance(acc), 250);
    /* a dead letter too */
    const char *mid = h_id("sec-junk");
    h_publish(mq, "account.open", mid, "{not json");
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "malformed_json");
    json_decref(r);
    struct mq_delivery *d = h_dlq_take(mid, 20000);
    assert_non_null(d);
    mq_delivery_free(d);
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mq_close(mq);
}

/* The operator reads the dead letters; the monitor reads the management
 * API and may not even open an AMQP connection. */
static void test_operator_and_monitor(void **state)
{
    (void)state;
    mq_t *mq = connect_as("payq-operator");
    struct mq_delivery *d = NULL;
    assert_int_equal(mq_get(mq, PAYQ_Q_DLQ, &d), PAYQ_OK);
    mq_delivery_free(d); /* unacked: back to the queue on close */
    mq_close(mq);
    mq = connect_as("payq-operator");
    assert_int_equal(mq_consume(mq, PAYQ_Q_COMMANDS, 1), PAYQ_ERR_CLOSED);
    mq_close(mq);

    /* no access to the vhost at all: AMQP refuses the login */
    assert_int_not_equal(mq_connect(url_for("payq-monitor"), NULL, "payq security test", 30, &mq),
                         PAYQ_OK);
    assert_non_null(strstr(mq_connect_error(), "refused"));
    const char *mgmt = getenv("PAYQ_MGMT_URL");
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "curl -fsS -o /dev/null -u payq-monitor:payq-monitor '%s/api/queues'",
             mgmt ? mgmt : "http://127.0.0.1:15673");
    assert_int_equal(system(cmd), 0);
}

/* Creates (or deletes, when password is NULL) a RabbitMQ user with the
 * worker's permissions through the management API. */
static void mgmt_user(const char *user, const char *password)
{
    const char *mgmt = getenv("PAYQ_MGMT_URL");
    char cmd[1024];
    if (password) {
        snprintf(cmd, sizeof cmd,
                 "curl -fsS -o /dev/null -u payq:payq -X PUT -H 'content-type: application/json'"
                 " -d '{\"password\":\"%s\",\"tags\":\"\"}' '%s/api/users/%s' &&"
                 " curl -fsS -o /dev/null -u payq:payq -X PUT -H 'content-type: application/json'"
                 " -d '{\"configure\":\"^payq\\\\.\",\"write\":\"^(payq\\\\.|amq\\\\.default$)\","
                 "\"read\":\"^payq\\\\.\"}' '%s/api/permissions/%%2f/%s'",
                 password, mgmt ? mgmt : "http://127.0.0.1:15673", user,
                 mgmt ? mgmt : "http://127.0.0.1:15673", user);
    } else {
        snprintf(cmd, sizeof cmd, "curl -fsS -o /dev/null -u payq:payq -X DELETE '%s/api/users/%s'",
                 mgmt ? mgmt : "http://127.0.0.1:15673", user);
    }
    assert_int_equal(system(cmd), 0);
}

/* Secrets and card numbers never reach a log line or a table: a worker run
 * with a distinctive password in its broker URL (and the database's in its
 * own), fed a card number where a token belongs, logs neither; the
 * database holds no trace of the card number. */
static void test_no_secret_or_card_in_logs(void **state)
{
    (void)state;
    char user[64], password[64], url[256], env_url[300];
    snprintf(user, sizeof user, "payq-secret-%d", (int)getpid());
    snprintf(password, sizeof password, "Zq7-%lx-%d-never-logged", (unsigned long)time(NULL),
             (int)getpid());
    mgmt_user(user, password);
    const char *base = getenv("AMQP_URL");
    const char *at = base ? strrchr(base, '@') : NULL;
    snprintf(url, sizeof url, "amqp://%s:%s@%s", user, password, at ? at + 1 : "127.0.0.1:5673");
    snprintf(env_url, sizeof env_url, "AMQP_URL=%s", url);

    mq_t *mq = h_mq();
    const char *env[] = { env_url, NULL };
    pid_t w = h_worker_start(env);
    const char *card = "4111111111111111";
    const char *pid = h_id("sec-card-pay"), *mid = h_id("sec-card-msg");
    char body[512];
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":100,\"currency\":\"USD\","
             "\"source\":\"%s\",\"destination\":\"shop\",\"capture\":true,"
             "\"description\":\"card %s\"}",
             pid, card, card);
    h_publish(mq, "payment.create", mid, body);
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "raw_card_number");
    json_decref(r);
    struct mq_delivery *d = h_dlq_take(mid, 20000);
    assert_non_null(d);
    assert_null(memmem(d->message.body.bytes, d->message.body.len, card, strlen(card)));
    mq_delivery_free(d);
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mgmt_user(user, NULL);

    /* The database URL's credentials as they would appear unredacted. */
    char db_cred[256] = "";
    const char *db = getenv("DATABASE_URL");
    const char *scheme = db ? strstr(db, "://") : NULL;
    const char *db_at = db ? strrchr(db, '@') : NULL;
    if (scheme && db_at && db_at > scheme + 3)
        snprintf(db_cred, sizeof db_cred, "%.*s@", (int)(db_at - scheme - 3), scheme + 3);

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cat %s/tests/worker-*-%d.log", PAYQ_BINARY_DIR, (int)getpid());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[8192];
    int lines = 0, redacted = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        assert_null(strstr(line, card));
        if (strstr(line, password))
            fail_msg("a log line shows the broker password: %s", line);
        if (db_cred[0] && strchr(db_cred, ':') && strstr(line, db_cred))
            fail_msg("a log line shows the database credentials: %s", line);
        redacted += strstr(line, ":***@") != NULL;
    }
    pclose(f);
    assert_true(lines > 0);
    assert_true(redacted > 0); /* the URL was logged, with its password masked */

    /* Nowhere in the database either (the payment was never created). */
    const char *p[1] = { card };
    assert_int_equal(h_int("SELECT (SELECT count(*) FROM payq.payments WHERE source = $1)"
                           " + (SELECT count(*) FROM payq.dead_letters"
                           "     WHERE position(convert_to($1, 'UTF8') IN body) > 0)"
                           " + (SELECT count(*) FROM payq.failures WHERE error LIKE '%' || $1 || '%')",
                           1, p),
                     0);
    mq_close(mq);
}

/* DATABASE_URL with the least-privilege runtime role payq_worker. */
static const char *worker_db_url(void)
{
    static char buf[512];
    const char *db = getenv("DATABASE_URL");
    const char *at = db ? strrchr(db, '@') : NULL;
    snprintf(buf, sizeof buf, "postgresql://payq_worker:payq_worker@%s",
             at ? at + 1 : "127.0.0.1:5433/payq");
    return buf;
}

/* The worker runs everything as payq_worker (a wallet payment, a card
 * payment through the provider, a dead letter), and that role can neither
 * change the schema nor rewrite history. */
static void test_postgres_worker_role(void **state)
{
    (void)state;
    PGconn *c = PQconnectdb(worker_db_url());
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect as payq_worker: %s", PQerrorMessage(c));
    static const char *const refused[] = {
        "CREATE TABLE payq.intruder (a int)",
        "ALTER TABLE payq.payments ADD COLUMN intruder int",
        "DROP TABLE payq.outbox",
        "UPDATE payq.ledger_entries SET amount = amount WHERE false",
        "DELETE FROM payq.payment_events_archive WHERE false",
        "UPDATE payq.outbox SET body = body WHERE false",
        "DELETE FROM payq.outbox WHERE false",
        "INSERT INTO payq.payment_events_archive DEFAULT VALUES",
        "DELETE FROM payq.payments WHERE false",
        "TRUNCATE payq.inbox",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        PGresult *r = PQexec(c, refused[i]);
        const char *sqlstate = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (!sqlstate || strcmp(sqlstate, "42501") != 0)
            fail_msg("payq_worker was not refused: %s (%s)", refused[i],
                     sqlstate ? sqlstate : "ok");
        PQclear(r);
    }
    /* Nor through the event store's view, which is not updatable (55000). */
    PGresult *view = PQexec(c, "DELETE FROM payq.payment_events WHERE false");
    const char *view_state = PQresultErrorField(view, PG_DIAG_SQLSTATE);
    if (!view_state || strcmp(view_state, "55000") != 0)
        fail_msg("payq_worker deleting from payq.payment_events: %s, not 55000",
                 view_state ? view_state : "ok");
    PQclear(view);
    PQfinish(c);

    char env_db[600];
    snprintf(env_db, sizeof env_db, "DATABASE_URL=%s", worker_db_url());
    const char *env[] = { env_db, "PAYQ_NO_MIGRATE=1", NULL };
    mq_t *mq = h_mq();
    pid_t w = h_worker_start(env);
    const char *cust = h_id("pgr-cust"), *shop = h_id("pgr-shop");
    h_open(mq, cust, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("pgr-dep"), cust, 900, "USD");
    char body[512];
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":400,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}", h_id("pgr-pay1"), cust, shop);
    json_t *r = h_call(mq, "payment.create", NULL, body);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":300,\"currency\":\"USD\",\"source\":\"tok_visa\","
             "\"destination\":\"%s\",\"capture\":true}", h_id("pgr-pay2"), shop);
    r = h_call(mq, "payment.create", NULL, body);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    const char *mid = h_id("pgr-junk");
    h_publish(mq, "account.open", mid, "{not json");
    r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "malformed_json");
    json_decref(r);
    struct mq_delivery *d = h_dlq_take(mid, 20000);
    assert_non_null(d);
    assert_true(strlen(h_header(d, "x-payq-dead-letter-id")) == 36); /* archived */
    mq_delivery_free(d);
    assert_int_equal(h_balance(cust), 500);
    assert_int_equal(h_balance(shop), 700);
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mq_close(mq);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publisher),
        cmocka_unit_test(test_worker_user),
        cmocka_unit_test(test_operator_and_monitor),
        cmocka_unit_test(test_no_secret_or_card_in_logs),
        cmocka_unit_test(test_postgres_worker_role),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
