/*
 * test_fast_path.c - the set-based path for wallet payments decides exactly
 * what the per-command saga would.
 *
 * The same scenario runs in two universes with ids of the same length
 * ("fastU" and "slowU"): in one as a single batch through payq.apply_batch()
 * (wallet payments with capture go through payq.apply_wallet_payments()), in
 * the other command by command through payq.apply_command(). Every reply,
 * payment row, event, ledger posting, balance and inbox row must be the same
 * once the universe tag is swapped. The scenario covers every decision the
 * set-based path makes itself (success with a fee, insufficient funds,
 * unknown or mismatched accounts, blocklist, amount limit, several payments
 * of one wallet in one batch) and every case it must hand over (twins in
 * the batch, a wallet's payments beyond its balance, card payments,
 * authorizations, velocity rules, known keys).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define TAG_FAST "fastU"
#define TAG_SLOW "slowU"

/* An id of this run in a universe: "<run prefix>-<tag>-<name>". */
static const char *uid(const char *tag, const char *name)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s-%s", tag, name);
    return h_id(buf);
}

static void sql_ok(const char *sql, int n, const char *const *params)
{
    const char *st = h_exec(sql, n, params);
    if (*st)
        fail_msg("%s failed with SQLSTATE %s", sql, st);
}

/* One command of the scenario; "$w1"-style names become universe ids. */
struct step {
    const char *command;
    const char *message;  /* message id name, NULL for none */
    const char *body;     /* JSON with @name@ placeholders for ids */
    bool fast;            /* payq.apply_wallet_payments() must decide it */
};

static const struct step scenario[] = {
    /* 1-4: one wallet (2,000) pays four times; the first two fit, the third
     * does not (per-command path: fails), the fourth fits what is left. */
    { "payment.create", "m1",
      "{\"payment_id\":\"@p1@\",\"amount\":1000,\"currency\":\"USD\",\"source\":\"@w1@\","
      "\"destination\":\"@shop@\",\"capture\":true,\"description\":\"first\","
      "\"metadata\":{\"order\":\"o-1\"}}", true },
    { "payment.create", "m2",
      "{\"payment_id\":\"@p2@\",\"amount\":500,\"currency\":\"USD\",\"source\":\"@w1@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    { "payment.create", "m3",
      "{\"payment_id\":\"@p3@\",\"amount\":600,\"currency\":\"USD\",\"source\":\"@w1@\","
      "\"destination\":\"@shop@\",\"capture\":true}", false },
    { "payment.create", "m4",
      "{\"payment_id\":\"@p4@\",\"amount\":400,\"currency\":\"USD\",\"source\":\"@w1@\","
      "\"destination\":\"@shop@\",\"capture\":true}", false },
    /* 5: a wallet's only payment that does not fit: insufficient funds. */
    { "payment.create", "m5",
      "{\"payment_id\":\"@p5@\",\"amount\":200,\"currency\":\"USD\",\"source\":\"@w2@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    /* 6-9: unknown merchant, merchant in another currency, unknown wallet,
     * wallet in another currency. */
    { "payment.create", "m6",
      "{\"payment_id\":\"@p6@\",\"amount\":10,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@nobody@\",\"capture\":true}", true },
    { "payment.create", "m7",
      "{\"payment_id\":\"@p7@\",\"amount\":10,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@eurshop@\",\"capture\":true}", true },
    { "payment.create", "m8",
      "{\"payment_id\":\"@p8@\",\"amount\":10,\"currency\":\"USD\",\"source\":\"@ghost@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    { "payment.create", "m9",
      "{\"payment_id\":\"@p9@\",\"amount\":10,\"currency\":\"USD\",\"source\":\"@eurwallet@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    /* 10: blocklisted wallet; 11: above the SEK amount limit; 12: a
     * merchant as the source. */
    { "payment.create", "m10",
      "{\"payment_id\":\"@p10@\",\"amount\":10,\"currency\":\"USD\",\"source\":\"@banned@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    { "payment.create", "m11",
      "{\"payment_id\":\"@p11@\",\"amount\":6000,\"currency\":\"SEK\",\"source\":\"@sekwallet@\","
      "\"destination\":\"@sekshop@\",\"capture\":true}", true },
    { "payment.create", "m12",
      "{\"payment_id\":\"@p12@\",\"amount\":10,\"currency\":\"USD\",\"source\":\"@shop@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    /* 13: the same message twice in the batch (per-command path). */
    { "payment.create", "m13",
      "{\"payment_id\":\"@p13@\",\"amount\":30,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@shop@\",\"capture\":true}", false },
    { "payment.create", "m13",
      "{\"payment_id\":\"@p13@\",\"amount\":30,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@shop@\",\"capture\":true}", false },
    /* 15: the same payment under a new message id, in the batch twice. */
    { "payment.create", "m15",
      "{\"payment_id\":\"@p13@\",\"amount\":30,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@shop@\",\"capture\":true}", false },
    /* 16: a card payment; 17: an authorization; 18: velocity rules. */
    { "payment.create", "m16",
      "{\"payment_id\":\"@p16@\",\"amount\":70,\"currency\":\"USD\",\"source\":\"tok_visa\","
      "\"destination\":\"@shop@\",\"capture\":true}", false },
    { "payment.create", "m17",
      "{\"payment_id\":\"@p17@\",\"amount\":70,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@shop@\",\"capture\":false}", false },
    { "payment.create", "m18",
      "{\"payment_id\":\"@p18@\",\"amount\":70,\"currency\":\"NOK\",\"source\":\"@nokwallet@\","
      "\"destination\":\"@nokshop@\",\"capture\":true}", false },
    /* 19: no message id at all; 20: a deposit in the same batch. */
    { "payment.create", NULL,
      "{\"payment_id\":\"@p19@\",\"amount\":80,\"currency\":\"USD\",\"source\":\"@w3@\","
      "\"destination\":\"@shop@\",\"capture\":true}", true },
    { "account.deposit", "m20",
      "{\"deposit_id\":\"@d20@\",\"account\":\"@w2@\",\"amount\":5,\"currency\":\"USD\"}",
      false },
};
#define STEPS (sizeof scenario / sizeof scenario[0])

/* The body of a step with its @name@ placeholders replaced by universe ids. */
static json_t *body_of(const char *tag, const char *tmpl)
{
    char out[2048];
    size_t n = 0;
    for (const char *p = tmpl; *p && n + 1 < sizeof out;) {
        if (*p == '@') {
            const char *end = strchr(p + 1, '@');
            assert_non_null(end);
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(end - p - 1), p + 1);
            const char *id = uid(tag, name);
            size_t len = strlen(id);
            assert_true(n + len < sizeof out);
            memcpy(out + n, id, len);
            n += len;
            p = end + 1;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = 0;
    json_error_t err;
    json_t *b = json_loads(out, 0, &err);
    if (!b)
        fail_msg("bad scenario body %s: %s", out, err.text);
    return b;
}

static json_t *command_of(const char *tag, const struct step *s)
{
    json_t *c = json_object();
    json_object_set_new(c, "scope", json_string("fast-path-test"));
    if (s->message)
        json_object_set_new(c, "message_id", json_string(uid(tag, s->message)));
    json_object_set_new(c, "command", json_string(s->command));
    json_object_set_new(c, "body", body_of(tag, s->body));
    json_object_set_new(c, "correlation_id", json_string(uid(tag, "corr")));
    return c;
}

/* Accounts, money and rules of one universe. */
static void setup_universe(const char *tag)
{
    const char *accounts[][3] = {
        { "w1", "USD", "customer" },      { "w2", "USD", "customer" },
        { "w3", "USD", "customer" },      { "banned", "USD", "customer" },
        { "eurwallet", "EUR", "customer" }, { "sekwallet", "SEK", "customer" },
        { "nokwallet", "NOK", "customer" }, { "shop", "USD", "merchant" },
        { "eurshop", "EUR", "merchant" }, { "sekshop", "SEK", "merchant" },
        { "nokshop", "NOK", "merchant" },
    };
    for (size_t i = 0; i < sizeof accounts / sizeof accounts[0]; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"%s\",\"kind\":\"%s\"}",
                 uid(tag, accounts[i][0]), accounts[i][1], accounts[i][2]);
        const char *p[1] = { body };
        sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.open', $1::jsonb, NULL)", 1, p);
    }
    const char *funds[][3] = { { "w1", "2000", "USD" },        { "w2", "100", "USD" },
                               { "w3", "10000", "USD" },       { "banned", "10000", "USD" },
                               { "eurwallet", "10000", "EUR" }, { "sekwallet", "10000", "SEK" },
                               { "nokwallet", "10000", "NOK" } };
    for (size_t i = 0; i < sizeof funds / sizeof funds[0]; i++) {
        char body[256], dep[64];
        snprintf(dep, sizeof dep, "fund-%s", funds[i][0]);
        snprintf(body, sizeof body,
                 "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":%s,\"currency\":\"%s\"}",
                 uid(tag, dep), uid(tag, funds[i][0]), funds[i][1], funds[i][2]);
        const char *p[1] = { body };
        sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.deposit', $1::jsonb, NULL)", 1,
               p);
    }
    const char *fee[1] = { uid(tag, "shop") };
    sql_ok("INSERT INTO payq.fee_rules (merchant, currency, bps, fixed)"
           " VALUES ($1, 'USD', 290, 30)",
           1, fee);
    const char *ban[1] = { uid(tag, "banned") };
    sql_ok("INSERT INTO payq.fraud_blocklist (source, reason) VALUES ($1, 'test')", 1, ban);
}

/* What a universe holds, as one text with the universe tag swapped out. */
static char *state_of(const char *tag)
{
    char like[160];
    snprintf(like, sizeof like, "%s%%", uid(tag, ""));
    const char *p[2] = { like, tag };
    const char *text = h_text(
        "SELECT replace(concat_ws(E'\\n',"
        " (SELECT string_agg(concat_ws(' ', payment_id, amount, currency, source, source_kind,"
        "    destination, capture, description, metadata, status, failure_code,"
        "    failure_message, authorized_amount, captured_amount, refunded_amount, fee,"
        "    recovery_point, version, saga_command, correlation_id, reply), E'\\n'"
        "    ORDER BY payment_id) FROM payq.payments WHERE payment_id LIKE $1),"
        " (SELECT string_agg(concat_ws(' ', payment_id, version, type,"
        "    data - 'event_id' - 'occurred_at'), E'\\n' ORDER BY payment_id, version)"
        "    FROM payq.payment_events WHERE payment_id LIKE $1),"
        " (SELECT string_agg(concat_ws(' ', po.kind, po.ref, e.account_id, e.currency,"
        "    e.amount), E'\\n' ORDER BY po.ref, po.kind, e.id)"
        "    FROM payq.postings po JOIN payq.ledger_entries e ON e.posting_id = po.id"
        "   WHERE po.ref LIKE $1),"
        " (SELECT string_agg(concat_ws(' ', id, posted, pending, available), E'\\n'"
        "    ORDER BY id) FROM payq.account_balances WHERE id LIKE $1),"
        " (SELECT string_agg(concat_ws(' ', message_id, command, reply), E'\\n'"
        "    ORDER BY message_id) FROM payq.inbox WHERE message_id LIKE $1),"
        " (SELECT string_agg(concat_ws(' ', routing_key, correlation_id,"
        "    body - 'event_id' - 'occurred_at'), E'\\n'"
        "    ORDER BY body->>'id', routing_key) FROM payq.outbox WHERE body->>'id' LIKE $1)"
        "), $2, 'TAG')",
        2, p);
    char *copy = strdup(text);
    assert_non_null(copy);
    return copy;
}

static char *swapped(const char *text, const char *tag)
{
    /* Replies carry ids: swap the tag so both universes compare equal. */
    char *out = strdup(text);
    assert_non_null(out);
    for (char *p = strstr(out, tag); p; p = strstr(p + 1, tag))
        memcpy(p, "TAG", 3), memmove(p + 3, p + strlen(tag), strlen(p + strlen(tag)) + 1);
    return out;
}

static void test_same_outcome_as_per_command_path(void **state)
{
    (void)state;
    /* Rules shared by both universes (by currency): an amount limit in
     * SEK, velocity limits in NOK. */
    sql_ok("INSERT INTO payq.fraud_rules (currency, max_amount) VALUES ('SEK', 5000)"
           " ON CONFLICT (currency) DO NOTHING",
           0, NULL);
    sql_ok("INSERT INTO payq.fraud_rules (currency, velocity_max_count) VALUES ('NOK', 1000)"
           " ON CONFLICT (currency) DO NOTHING",
           0, NULL);
    setup_universe(TAG_FAST);
    setup_universe(TAG_SLOW);

    /* The set-based path on its own decides exactly the steps marked fast. */
    json_t *batch = json_array();
    for (size_t i = 0; i < STEPS; i++)
        json_array_append_new(batch, command_of(TAG_FAST, &scenario[i]));
    char *batch_text = json_dumps(batch, JSON_COMPACT);
    const char *bp[1] = { batch_text };
    json_t *fast = json_loads(h_text("SELECT payq.apply_wallet_payments($1::jsonb)::text", 1, bp),
                              0, NULL);
    assert_non_null(fast);
    for (size_t i = 0; i < STEPS; i++) {
        char key[16];
        snprintf(key, sizeof key, "%zu", i + 1);
        bool decided = json_object_get(fast, key) != NULL;
        if (decided != scenario[i].fast)
            fail_msg("step %zu (%s): set-based path %s, expected %s", i + 1, scenario[i].body,
                     decided ? "decided it" : "left it", scenario[i].fast ? "decided" : "left");
    }
    /* The whole batch: the decided ones answer from their stored replies,
     * the others run through the per-command path. */
    json_t *results = json_loads(h_text("SELECT payq.apply_batch($1::jsonb)::text", 1, bp), 0,
                                 NULL);
    assert_non_null(results);
    assert_int_equal(json_array_size(results), STEPS);

    /* The other universe, command by command. */
    json_t *serial = json_array();
    for (size_t i = 0; i < STEPS; i++) {
        json_t *c = command_of(TAG_SLOW, &scenario[i]);
        char *body = json_dumps(json_object_get(c, "body"), JSON_COMPACT);
        const char *p[5] = { json_string_value(json_object_get(c, "scope")),
                             json_string_value(json_object_get(c, "message_id")),
                             scenario[i].command, body,
                             json_string_value(json_object_get(c, "correlation_id")) };
        json_array_append_new(serial, json_loads(h_text("SELECT payq.apply_command($1, $2, $3,"
                                                        " $4::jsonb, $5)::text",
                                                        5, p),
                                                 0, NULL));
        free(body);
        json_decref(c);
    }

    for (size_t i = 0; i < STEPS; i++) {
        char *a = json_dumps(json_array_get(results, i), JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_dumps(json_array_get(serial, i), JSON_COMPACT | JSON_SORT_KEYS);
        char *fa = swapped(a, TAG_FAST), *fb = swapped(b, TAG_SLOW);
        if (strcmp(fa, fb) != 0)
            fail_msg("step %zu: batch %s\n  per command %s", i + 1, fa, fb);
        free(a), free(b), free(fa), free(fb);
    }
    /* Spot checks that the scenario means what it says. */
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(results, 2), "reply"), "code")),
                        "insufficient_funds");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(results, 3), "reply"), "status")),
                        "succeeded");
    assert_int_equal(h_balance(uid(TAG_FAST, "w1")), 2000 - 1000 - 500 - 400);

    char *sf = state_of(TAG_FAST), *ss = state_of(TAG_SLOW);
    if (strcmp(sf, ss) != 0)
        fail_msg("the universes differ:\n--- batch\n%s\n--- per command\n%s", sf, ss);
    assert_true(strlen(sf) > 1000);
    free(sf), free(ss);

    /* The same batch again: every answer repeats, nothing moves. */
    int64_t entries = h_int("SELECT count(*) FROM payq.ledger_entries", 0, NULL);
    json_t *again = json_loads(h_text("SELECT payq.apply_batch($1::jsonb)::text", 1, bp), 0, NULL);
    assert_non_null(again);
    for (size_t i = 0; i < STEPS; i++) {
        if (!scenario[i].fast)
            continue;
        assert_true(json_equal(json_array_get(again, i), json_array_get(results, i)));
    }
    assert_int_equal(h_int("SELECT count(*) FROM payq.ledger_entries", 0, NULL), entries);

    json_decref(again);
    json_decref(serial);
    json_decref(results);
    json_decref(fast);
    free(batch_text);
    json_decref(batch);
    h_check_invariants();
}

/* A batch of many wallet payments: one set-based statement moves exactly
 * the sum of the amounts, every wallet ends where its payments say. */
static void test_large_batch_conserves_money(void **state)
{
    (void)state;
    const char *shop = h_id("big-shop");
    char body[256];
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"merchant\"}",
             shop);
    const char *p[1] = { body };
    sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.open', $1::jsonb, NULL)", 1, p);
    enum { WALLETS = 40, PAYMENTS = 200 };
    for (int w = 0; w < WALLETS; w++) {
        char name[32];
        snprintf(name, sizeof name, "big-w%d", w);
        snprintf(body, sizeof body,
                 "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"customer\"}", h_id(name));
        sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.open', $1::jsonb, NULL)", 1, p);
        char dep[32];
        snprintf(dep, sizeof dep, "big-d%d", w);
        snprintf(body, sizeof body,
                 "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":1000,\"currency\":\"USD\"}",
                 h_id(dep), h_id(name));
        sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.deposit', $1::jsonb, NULL)", 1, p);
    }
    json_t *batch = json_array();
    int64_t spent[WALLETS] = { 0 };
    for (int i = 0; i < PAYMENTS; i++) {
        int w = (i * 7) % WALLETS;
        int64_t amount = 50 + i % 13;
        char wname[32], pid[32], mid[32];
        snprintf(wname, sizeof wname, "big-w%d", w);
        snprintf(pid, sizeof pid, "big-p%d", i);
        snprintf(mid, sizeof mid, "big-m%d", i);
        json_t *c = json_pack("{s:s, s:s, s:s, s:{s:s, s:I, s:s, s:s, s:s, s:b}}", "scope",
                              "fast-path-test", "message_id", h_id(mid), "command",
                              "payment.create", "body", "payment_id", h_id(pid), "amount",
                              (json_int_t)amount, "currency", "USD", "source", h_id(wname),
                              "destination", shop, "capture", 1);
        assert_non_null(c);
        json_array_append_new(batch, c);
        /* Five payments of at most 62 per wallet: all fit in 1000. */
        spent[w] += amount;
    }
    char *text = json_dumps(batch, JSON_COMPACT);
    const char *bp[1] = { text };
    json_t *results = json_loads(h_text("SELECT payq.apply_batch($1::jsonb)::text", 1, bp), 0,
                                 NULL);
    assert_int_equal(json_array_size(results), PAYMENTS);
    int64_t total = 0;
    for (int i = 0; i < PAYMENTS; i++) {
        json_t *r = json_object_get(json_array_get(results, i), "reply");
        assert_string_equal(json_string_value(json_object_get(r, "status")), "succeeded");
    }
    for (int w = 0; w < WALLETS; w++) {
        char name[32];
        snprintf(name, sizeof name, "big-w%d", w);
        assert_int_equal(h_balance(h_id(name)), 1000 - spent[w]);
        total += spent[w];
    }
    assert_int_equal(h_balance(shop), total);
    json_decref(results);
    free(text);
    json_decref(batch);
    h_check_invariants();
}

/* Locks wallet `id` from the connection `other` (as another worker's batch
 * would) until that connection commits or rolls back. */
static void hold_wallet(PGconn *other, const char *id)
{
    const char *p[1] = { id };
    PQclear(PQexec(other, "BEGIN"));
    PGresult *r = PQexecParams(other, "SELECT 1 FROM payq.accounts WHERE id = $1 FOR UPDATE", 1,
                               NULL, p, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
}

/* A wallet payment with capture, as the worker hands it to apply_batch. */
static json_t *wallet_payment(const char *name, const char *source, const char *shop,
                              int amount)
{
    char mid[64];
    snprintf(mid, sizeof mid, "%s-m", name);
    json_t *c = json_pack("{s:s, s:s, s:s, s:{s:s, s:i, s:s, s:s, s:s, s:b}}", "scope",
                          "fast-path-test", "message_id", h_id(mid), "command", "payment.create",
                          "body", "payment_id", h_id(name), "amount", amount, "currency", "USD",
                          "source", source, "destination", shop, "capture", 1);
    assert_non_null(c);
    return c;
}

/* Runs `sql` ($1 = the batch) and returns what it returned, parsed; or, with
 * expect_state set, checks that it failed with that SQLSTATE. */
static json_t *run_batch(const char *sql, json_t *batch, const char *expect_state)
{
    char *text = json_dumps(batch, JSON_COMPACT);
    const char *p[1] = { text };
    json_t *res = NULL;
    if (expect_state)
        assert_string_equal(h_exec(sql, 1, p), expect_state);
    else
        res = json_loads(h_text(sql, 1, p), 0, NULL);
    free(text);
    return res;
}

static const char *status_of(json_t *results, size_t i)
{
    json_t *reply = json_object_get(json_array_get(results, i), "reply");
    return json_string_value(json_object_get(reply, "status"));
}

/* A second connection holds one wallet. payq.apply_batch(commands, true)
 * answers {"busy": true} for the payment of that wallet and writes nothing
 * for it, and applies its neighbour; the same payment marked "wait" is
 * applied once the wallet is free, and blocks (here: until a lock timeout)
 * while it is held; the one-argument form waits for every wallet. */
static void test_busy_wallet_is_passed_over(void **state)
{
    (void)state;
    const char *shop = h_id("busy-shop"), *held = h_id("busy-held"), *free_w = h_id("busy-free");
    const char *accounts[][2] = { { shop, "merchant" }, { held, "customer" }, { free_w, "customer" } };
    char body[256];
    const char *p[1] = { body };
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"%s\"}",
                 accounts[i][0], accounts[i][1]);
        sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.open', $1::jsonb, NULL)", 1, p);
        if (i == 0)
            continue;
        snprintf(body, sizeof body,
                 "{\"deposit_id\":\"%s-d\",\"account\":\"%s\",\"amount\":1000,\"currency\":\"USD\"}",
                 accounts[i][0], accounts[i][0]);
        sql_ok("SELECT payq.apply_command(NULL, NULL, 'account.deposit', $1::jsonb, NULL)", 1, p);
    }
    static const char skip_sql[] = "SELECT payq.apply_batch($1::jsonb, true)::text";
    PGconn *other = PQconnectdb(getenv("DATABASE_URL"));
    assert_int_equal(PQstatus(other), CONNECTION_OK);

    hold_wallet(other, held);
    json_t *batch = json_pack("[o, o]", wallet_payment("busy-p1", held, shop, 100),
                              wallet_payment("busy-p2", free_w, shop, 200));
    /* Waiting for the held wallet would be the bug: fail instead of hanging. */
    assert_string_equal(h_exec("SET lock_timeout = '2s'", 0, NULL), "");
    json_t *res = run_batch(skip_sql, batch, NULL);
    assert_int_equal(json_array_size(res), 2);
    assert_true(json_is_true(json_object_get(json_array_get(res, 0), "busy")));
    assert_string_equal(status_of(res, 1), "succeeded");
    json_decref(res);
    const char *p1[1] = { h_id("busy-p1") }, *m1[1] = { h_id("busy-p1-m") };
    assert_int_equal(h_int("SELECT count(*) FROM payq.payments WHERE payment_id = $1", 1, p1), 0);
    assert_int_equal(h_int("SELECT count(*) FROM payq.inbox WHERE message_id = $1", 1, m1), 0);
    assert_int_equal(h_balance(held), 1000);
    assert_int_equal(h_balance(free_w), 800);

    /* Its next batch, the wallet free again: marked "wait", it is applied. */
    PQclear(PQexec(other, "COMMIT"));
    json_object_set_new(json_array_get(batch, 0), "wait", json_true());
    json_array_remove(batch, 1);
    res = run_batch(skip_sql, batch, NULL);
    assert_string_equal(status_of(res, 0), "succeeded");
    json_decref(res);
    assert_int_equal(h_balance(held), 900);
    assert_int_equal(h_balance(shop), 300);

    /* Held again: a "wait" command blocks instead of being passed over (the
     * lock timeout fails the batch, 55P03); so does any command of the
     * one-argument form. */
    hold_wallet(other, held);
    json_t *again = json_pack("[o]", wallet_payment("busy-p3", held, shop, 1));
    json_object_set_new(json_array_get(again, 0), "wait", json_true());
    assert_string_equal(h_exec("SET lock_timeout = '300ms'", 0, NULL), "");
    run_batch("SELECT payq.apply_batch($1::jsonb, true)", again, "55P03");
    json_object_del(json_array_get(again, 0), "wait");
    run_batch("SELECT payq.apply_batch($1::jsonb)", again, "55P03");
    assert_string_equal(h_exec("RESET lock_timeout", 0, NULL), "");
    PQclear(PQexec(other, "ROLLBACK"));
    PQfinish(other);
    assert_int_equal(h_balance(held), 900);
    json_decref(again);
    json_decref(batch);
    h_check_invariants();
}

int main(void)
{
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_outcome_as_per_command_path),
        cmocka_unit_test(test_large_batch_conserves_money),
        cmocka_unit_test(test_busy_wallet_is_passed_over),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
