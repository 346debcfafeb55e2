/*
 * test_metrics.c - the metrics registry: the exact Prometheus text it renders
 * (HELP/TYPE lines, labels, cumulative histogram buckets, +Inf, sums), label
 * values folded into "other", label sets that match the contract's names,
 * and counters that add up exactly under concurrent updates.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmd.h"
#include "metrics.h"
#include "topology.h"

static char *render(void)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(&text, &len), PAYQ_OK);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

/* The lines of one metric family: from its "# HELP" line to the next one.
 * Caller frees. */
static char *family(const char *text, const char *name)
{
    char head[128];
    snprintf(head, sizeof head, "# HELP %s ", name);
    const char *start = strstr(text, head);
    if (!start)
        fail_msg("no family %s in:\n%s", name, text);
    const char *end = strstr(start + 1, "# HELP ");
    size_t n = end ? (size_t)(end - start) : strlen(start);
    char *out = strndup(start, n);
    assert_non_null(out);
    return out;
}

/* The value of one sample line, e.g. series "payq_batch_size_count". */
static double value(const char *text, const char *series)
{
    char key[512];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(text, key);
    if (!p)
        fail_msg("no sample %s", series);
    return strtod(p + strlen(key), NULL);
}

static void assert_family(const char *name, const char *expected)
{
    char *text = render();
    char *got = family(text, name);
    if (strcmp(got, expected) != 0)
        fail_msg("family %s:\n--- expected\n%s--- got\n%s", name, expected, got);
    free(got);
    free(text);
}

static int reset(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static void test_counter_text(void **state)
{
    (void)state;
    metrics_retry("5s");
    metrics_retry("5s");
    metrics_retry("3s"); /* no such tier */
    assert_family("payq_retries_total",
                  "# HELP payq_retries_total Copies of failed commands sent to a delay tier.\n"
                  "# TYPE payq_retries_total counter\n"
                  "payq_retries_total{tier=\"1s\"} 0\n"
                  "payq_retries_total{tier=\"5s\"} 2\n"
                  "payq_retries_total{tier=\"30s\"} 0\n"
                  "payq_retries_total{tier=\"2m\"} 0\n"
                  "payq_retries_total{tier=\"10m\"} 0\n"
                  "payq_retries_total{tier=\"1h\"} 0\n"
                  "payq_retries_total{tier=\"other\"} 1\n");
    metrics_outbox_published(3);
    metrics_outbox_published(4);
    assert_family("payq_outbox_published_total",
                  "# HELP payq_outbox_published_total Outbox events published with a confirm "
                  "(the relay position moved past them).\n"
                  "# TYPE payq_outbox_published_total counter\n"
                  "payq_outbox_published_total 7\n");
}

/* Buckets are cumulative, +Inf equals _count, the sum is exact. */
static void test_histogram_text(void **state)
{
    (void)state;
    metrics_batch(1);
    metrics_batch(3);
    metrics_batch(16); /* le is inclusive */
    metrics_batch(5000);
    metrics_batch(0); /* not a batch: ignored */
    assert_family("payq_batch_size",
                  "# HELP payq_batch_size Deliveries applied in one database transaction.\n"
                  "# TYPE payq_batch_size histogram\n"
                  "payq_batch_size_bucket{le=\"1\"} 1\n"
                  "payq_batch_size_bucket{le=\"2\"} 1\n"
                  "payq_batch_size_bucket{le=\"4\"} 2\n"
                  "payq_batch_size_bucket{le=\"8\"} 2\n"
                  "payq_batch_size_bucket{le=\"16\"} 3\n"
                  "payq_batch_size_bucket{le=\"32\"} 3\n"
                  "payq_batch_size_bucket{le=\"64\"} 3\n"
                  "payq_batch_size_bucket{le=\"128\"} 3\n"
                  "payq_batch_size_bucket{le=\"256\"} 3\n"
                  "payq_batch_size_bucket{le=\"512\"} 3\n"
                  "payq_batch_size_bucket{le=\"1000\"} 3\n"
                  "payq_batch_size_bucket{le=\"+Inf\"} 4\n"
                  "payq_batch_size_sum 5020\n"
                  "payq_batch_size_count 4\n");

    metrics_db_tx(0.0004);
    metrics_db_tx(0.003);
    metrics_db_tx(0.7);
    metrics_db_tx(12);
    metrics_db_tx(-1); /* a clock step: counted as 0 s */
    assert_family("payq_db_transaction_duration_seconds",
                  "# HELP payq_db_transaction_duration_seconds Seconds of one "
                  "payq.apply_command or payq.apply_batch call.\n"
                  "# TYPE payq_db_transaction_duration_seconds histogram\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.001\"} 2\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.0025\"} 2\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.005\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.01\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.025\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.05\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.1\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.25\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"0.5\"} 3\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"1\"} 4\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"2.5\"} 4\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"5\"} 4\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"10\"} 4\n"
                  "payq_db_transaction_duration_seconds_bucket{le=\"+Inf\"} 5\n"
                  "payq_db_transaction_duration_seconds_sum 12.7034\n"
                  "payq_db_transaction_duration_seconds_count 5\n");
}

/* A labelled histogram and its counter: the label comes before le. */
static void test_command_text(void **state)
{
    (void)state;
    metrics_command_done("payment.create", "failed", 0.02);
    metrics_command_done("payment.create", "succeeded", 0.2);
    char *text = render();
    assert_int_equal(
        value(text, "payq_commands_total{command=\"payment.create\",outcome=\"failed\"}"), 1);
    assert_int_equal(
        value(text, "payq_commands_total{command=\"payment.create\",outcome=\"succeeded\"}"), 1);
    assert_int_equal(
        value(text, "payq_commands_total{command=\"payment.refund\",outcome=\"succeeded\"}"), 0);
    assert_non_null(strstr(text, "\npayq_command_duration_seconds_bucket{command=\"payment."
                                 "create\",le=\"0.01\"} 0\n"
                                 "payq_command_duration_seconds_bucket{command=\"payment."
                                 "create\",le=\"0.025\"} 1\n"));
    assert_non_null(strstr(text, "\npayq_command_duration_seconds_bucket{command=\"payment."
                                 "create\",le=\"+Inf\"} 2\n"
                                 "payq_command_duration_seconds_sum{command=\"payment."
                                 "create\"} 0.22\n"
                                 "payq_command_duration_seconds_count{command=\"payment."
                                 "create\"} 2\n"));
    free(text);
}

/* Unknown label values land in "other": the series set never grows. */
static void test_folding(void **state)
{
    (void)state;
    char *before = render();
    metrics_command_done("evil\"key\n", "weird", 0.001);
    metrics_command_done(NULL, NULL, 0.001);
    metrics_command_done("", "succeeded", 0.001);
    metrics_dead_letter("something_new");
    metrics_dead_letter("poison");
    metrics_reconnect("redis");
    metrics_retry(NULL);
    char *text = render();
    assert_null(strstr(text, "evil"));
    assert_null(strstr(text, "weird"));
    assert_int_equal(value(text, "payq_commands_total{command=\"other\",outcome=\"other\"}"), 2);
    assert_int_equal(value(text, "payq_commands_total{command=\"other\",outcome=\"succeeded\"}"),
                     1);
    assert_int_equal(value(text, "payq_command_duration_seconds_count{command=\"other\"}"), 3);
    assert_int_equal(value(text, "payq_dead_letters_total{reason=\"other\"}"), 1);
    assert_int_equal(value(text, "payq_dead_letters_total{reason=\"poison\"}"), 1);
    assert_int_equal(value(text, "payq_reconnects_total{dependency=\"other\"}"), 1);
    assert_int_equal(value(text, "payq_retries_total{tier=\"other\"}"), 1);
    /* Same lines as before: only values changed. */
    int lines_before = 0, lines_after = 0;
    for (const char *p = before; *p; p++)
        lines_before += *p == '\n';
    for (const char *p = text; *p; p++)
        lines_after += *p == '\n';
    assert_int_equal(lines_before, lines_after);
    free(before);
    free(text);
}

/* Every command of cmd.h, rejection code and delay tier has its own label
 * value: none of them is folded into "other". */
static void test_label_sets_match_the_contract(void **state)
{
    (void)state;
    char series[256];
    for (int t = 1;; t++) {
        const char *name = cmd_type_name((cmd_type_t)t);
        if (strcmp(name, "unknown") == 0)
            break;
        metrics_command_done(name, "succeeded", 0);
        char *text = render();
        snprintf(series, sizeof series, "payq_commands_total{command=\"%s\",outcome=\"succeeded\"}",
                 name);
        if (value(text, series) != 1)
            fail_msg("command %s is not a label value of its own", name);
        free(text);
    }
    const char *more[] = { "retries_exhausted", "poison" };
    for (int c = 1; c <= (int)CMD_REJECT_IDEMPOTENCY_CONFLICT + 2; c++) {
        const char *reason = c <= (int)CMD_REJECT_IDEMPOTENCY_CONFLICT
                                 ? cmd_reject_code((cmd_reject_t)c)
                                 : more[c - (int)CMD_REJECT_IDEMPOTENCY_CONFLICT - 1];
        metrics_dead_letter(reason);
        char *text = render();
        snprintf(series, sizeof series, "payq_dead_letters_total{reason=\"%s\"}", reason);
        if (value(text, series) != 1)
            fail_msg("reason %s is not a label value of its own", reason);
        free(text);
    }
    for (size_t i = 0; i < topo_ntiers; i++) {
        metrics_retry(topo_tiers[i].name);
        char *text = render();
        snprintf(series, sizeof series, "payq_retries_total{tier=\"%s\"}", topo_tiers[i].name);
        if (value(text, series) != 1)
            fail_msg("tier %s is not a label value of its own", topo_tiers[i].name);
        free(text);
    }
}

static void test_escape(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(metrics_escape_label(out, sizeof out, "a\\b\"c\nd"), 10);
    assert_string_equal(out, "a\\\\b\\\"c\\nd");
    assert_int_equal(metrics_escape_label(out, sizeof out, "payment.create"), 14);
    assert_string_equal(out, "payment.create");
    /* Like snprintf: truncated, terminated, and the full length returned. */
    assert_int_equal(metrics_escape_label(out, 3, "a\"b"), 4);
    assert_string_equal(out, "a\\");
    assert_int_equal(metrics_escape_label(NULL, 0, "\"\""), 4);
}

static void test_gauges(void **state)
{
    (void)state;
    metrics_in_flight_add(3);
    metrics_in_flight_add(-1);
    metrics_circuit(true);
    metrics_circuit(true);
    metrics_circuit(false);
    metrics_outbox_lag(2.5);
    char *text = render();
    assert_int_equal(value(text, "payq_deliveries_in_flight"), 2);
    assert_int_equal(value(text, "payq_circuit_open"), 1);
    double lag = value(text, "payq_outbox_lag_seconds");
    assert_true(lag >= 2.5 && lag < 3.5);
    static const char info[] = "\npayq_build_info{version=\"";
    const char *version = strstr(text, info);
    assert_non_null(version);
    const char *end = strchr(version + strlen(info), '"');
    assert_non_null(end);
    assert_memory_equal(end, "\"} 1\n", 5);
    assert_true(value(text, "payq_process_resident_memory_bytes") > 1e5);
    assert_true(value(text, "payq_process_cpu_seconds_total") >= 0);
    free(text);
    metrics_outbox_lag_clear();
    text = render();
    assert_non_null(strstr(text, "\npayq_outbox_lag_seconds 0\n"));
    free(text);
}

/* The whole text is well-formed 0.0.4: each family has HELP then TYPE, its
 * samples follow with names that belong to it, every value is a number,
 * every line ends with a newline. */
static void test_well_formed(void **state)
{
    (void)state;
    metrics_command_done("payment.capture", "authorized", 0.3);
    char *text = render();
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    char fam[128] = "", type[16] = "";
    int families = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%127s", fam), 1);
            type[0] = 0;
            families++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[128];
            assert_int_equal(sscanf(line + 7, "%127s %15s", name, type), 2);
            assert_string_equal(name, fam);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            continue;
        }
        assert_true(type[0] != 0); /* a sample before its TYPE line */
        size_t n = strcspn(line, "{ ");
        char name[128];
        assert_true(n < sizeof name);
        memcpy(name, line, n);
        name[n] = 0;
        bool ok = strcmp(name, fam) == 0;
        if (strcmp(type, "histogram") == 0) {
            static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
            char b[160];
            ok = false;
            for (size_t i = 0; i < 3; i++) {
                snprintf(b, sizeof b, "%s%s", fam, suffixes[i]);
                ok |= strcmp(name, b) == 0;
            }
        }
        if (!ok)
            fail_msg("sample %s is not of family %s", line, fam);
        const char *v = strrchr(line, ' ');
        assert_non_null(v);
        char *end;
        strtod(v + 1, &end);
        if (*end != 0 || end == v + 1)
            fail_msg("not a number: %s", line);
    }
    assert_int_equal(families, 14);
    free(text);
}

enum {
    THREADS = 8,
    PER_THREAD = 50000
};

static void *hammer(void *arg)
{
    (void)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        metrics_in_flight_add(1);
        metrics_command_done("account.deposit", "succeeded", 0.001);
        metrics_retry("1s");
        metrics_batch(2);
        metrics_in_flight_add(-1);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, NULL), 0);
    /* Rendering while they run is safe (and +Inf always equals count). */
    char *mid = render();
    assert_int_equal(
        value(mid, "payq_command_duration_seconds_bucket{command=\"account.deposit\",le=\"+Inf\"}"),
        value(mid, "payq_command_duration_seconds_count{command=\"account.deposit\"}"));
    free(mid);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    char *text = render();
    const double total = (double)THREADS * PER_THREAD;
    assert_true(value(text, "payq_commands_total{command=\"account.deposit\","
                            "outcome=\"succeeded\"}") == total);
    assert_true(value(text, "payq_command_duration_seconds_bucket{command=\"account.deposit\","
                            "le=\"0.001\"}") == total);
    assert_true(value(text, "payq_command_duration_seconds_count{command=\"account.deposit\"}") ==
                total);
    /* 400000 x 1 ms, summed in integer nanoseconds: exactly 400 s. */
    assert_non_null(
        strstr(text, "\npayq_command_duration_seconds_sum{command=\"account.deposit\"} 400\n"));
    assert_true(value(text, "payq_retries_total{tier=\"1s\"}") == total);
    assert_true(value(text, "payq_batch_size_sum") == 2 * total);
    assert_true(value(text, "payq_batch_size_count") == total);
    assert_int_equal(value(text, "payq_deliveries_in_flight"), 0);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_counter_text, reset),
        cmocka_unit_test_setup(test_histogram_text, reset),
        cmocka_unit_test_setup(test_command_text, reset),
        cmocka_unit_test_setup(test_folding, reset),
        cmocka_unit_test_setup(test_label_sets_match_the_contract, reset),
        cmocka_unit_test_setup(test_escape, reset),
        cmocka_unit_test_setup(test_gauges, reset),
        cmocka_unit_test_setup(test_well_formed, reset),
        cmocka_unit_test_setup(test_concurrent, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
