/*
 * metrics.c - the process-wide metrics registry and its text rendering (see
 * metrics.h for the metrics and why this one registry is global).
 *
 * Every series is a fixed slot of a static array, indexed by the positions
 * of its label values in the tables below, so recording is a lookup and an
 * atomic_fetch_add with relaxed ordering (counters need no ordering between
 * each other; a scrape may see one counter a moment ahead of another, as with
 * any Prometheus client). Durations are kept in integer nanoseconds, so
 * sums are exact, additions lock-free, and bucket bounds compare exactly.
 */
#include "metrics.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* The label values each label may take; the last one, "other", takes the
 * rest. Command names and reason codes are CONTRACT.md's (the unit test
 * checks them against cmd.h and topology.h, so they cannot drift apart). */
static const char *const commands[] = { "account.open",   "account.deposit",
                                        "payment.create", "payment.capture",
                                        "payment.cancel", "payment.refund",
                                        "other" };
static const char *const outcomes[] = { "succeeded", "authorized",    "failed", "rejected",
                                        "retried",   "dead_lettered", "other" };
static const char *const tiers[] = { "1s", "5s", "30s", "2m", "10m", "1h", "other" };
static const char *const reasons[] = {
    "malformed_json",       "schema_invalid",    "unknown_command", "raw_card_number",
    "idempotency_conflict", "retries_exhausted", "poison",          "other"
};
static const char *const dependencies[] = { "amqp", "postgres", "other" };

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
enum {
    N_COMMANDS = COUNT(commands),
    N_OUTCOMES = COUNT(outcomes),
    N_TIERS = COUNT(tiers),
    N_REASONS = COUNT(reasons),
    N_DEPENDENCIES = COUNT(dependencies)
};

/* The index of value in a label table; unknown (or NULL) -> the last, "other". */
static size_t fold(const char *const *values, size_t n, const char *value)
{
    for (size_t i = 0; value && i + 1 < n; i++)
        if (strcmp(values[i], value) == 0)
            return i;
    return n - 1;
}

#define NS_PER_S 1000000000ULL

/* Histogram bounds (the `le` of each bucket) in the histogram's unit. */
struct buckets {
    const uint64_t *le;
    size_t n;
    uint64_t unit_per_value; /* NS_PER_S for seconds, 1 for counts */
};

/* 1, 2.5, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10 s, in nanoseconds. */
static const uint64_t seconds_le[] = { 1000000,    2500000,    5000000,    10000000,  25000000,
                                       50000000,   100000000,  250000000,  500000000, 1000000000,
                                       2500000000, 5000000000, 10000000000 };
static const struct buckets seconds_buckets = { seconds_le, COUNT(seconds_le), NS_PER_S };

static const uint64_t batch_le[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000 };
static const struct buckets batch_buckets = { batch_le, COUNT(batch_le), 1 };

#define MAX_BUCKETS 16
_Static_assert(COUNT(seconds_le) <= MAX_BUCKETS && COUNT(batch_le) <= MAX_BUCKETS,
               "struct histogram has room for MAX_BUCKETS bounds");

/* Observations per bucket (not cumulative: the renderer adds them up), the
 * last slot being +Inf; the sum in the histogram's unit. */
struct histogram {
    atomic_uint_fast64_t bucket[MAX_BUCKETS + 1];
    atomic_uint_fast64_t sum;
};

static void observe(struct histogram *h, const struct buckets *b, uint64_t v)
{
    size_t i = 0;
    while (i < b->n && v > b->le[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

/* Seconds (a double from a clock difference) as whole nanoseconds; a
 * negative or absurd value (a clock step) is clamped. */
static uint64_t to_ns(double seconds)
{
    if (!(seconds > 0))
        return 0;
    if (seconds > 1e9)
        seconds = 1e9;
    return (uint64_t)llround(seconds * (double)NS_PER_S);
}

/* Zero-initialized: every series starts at 0. */
static struct {
    atomic_uint_fast64_t commands[N_COMMANDS][N_OUTCOMES];
    struct histogram duration[N_COMMANDS];
    atomic_uint_fast64_t retries[N_TIERS];
    atomic_uint_fast64_t dead_letters[N_REASONS];
    atomic_int_fast64_t in_flight;
    atomic_int_fast64_t circuit_open;
    atomic_uint_fast64_t reconnects[N_DEPENDENCIES];
    atomic_uint_fast64_t outbox_published;
    struct histogram db_tx;
    struct histogram batch;
} reg;

/* The oldest unpublished outbox row's creation on our monotonic clock (ns),
 * or NO_LAG: the gauge is "now - origin", so it grows between looks. */
#define NO_LAG INT64_MIN
static atomic_int_fast64_t lag_origin_ns = NO_LAG;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * (int64_t)NS_PER_S + ts.tv_nsec;
}

double metrics_now(void)
{
    return (double)mono_ns() / (double)NS_PER_S;
}

static void inc(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

void metrics_command_done(const char *command, const char *outcome, double seconds)
{
    size_t c = fold(commands, N_COMMANDS, command);
    inc(&reg.commands[c][fold(outcomes, N_OUTCOMES, outcome)], 1);
    observe(&reg.duration[c], &seconds_buckets, to_ns(seconds));
}

void metrics_retry(const char *tier)
{
    inc(&reg.retries[fold(tiers, N_TIERS, tier)], 1);
}

void metrics_dead_letter(const char *reason)
{
    inc(&reg.dead_letters[fold(reasons, N_REASONS, reason)], 1);
}

void metrics_in_flight_add(int delta)
{
    atomic_fetch_add_explicit(&reg.in_flight, delta, memory_order_relaxed);
}

void metrics_circuit(bool opened)
{
    atomic_fetch_add_explicit(&reg.circuit_open, opened ? 1 : -1, memory_order_relaxed);
}

void metrics_reconnect(const char *dependency)
{
    inc(&reg.reconnects[fold(dependencies, N_DEPENDENCIES, dependency)], 1);
}

void metrics_outbox_lag(double seconds)
{
    atomic_store_explicit(&lag_origin_ns, mono_ns() - (int64_t)to_ns(seconds),
                          memory_order_relaxed);
}

void metrics_outbox_lag_clear(void)
{
    atomic_store_explicit(&lag_origin_ns, NO_LAG, memory_order_relaxed);
}

void metrics_outbox_published(int n)
{
    if (n > 0)
        inc(&reg.outbox_published, (uint64_t)n);
}

void metrics_db_tx(double seconds)
{
    observe(&reg.db_tx, &seconds_buckets, to_ns(seconds));
}

void metrics_batch(int n)
{
    if (n > 0)
        observe(&reg.batch, &batch_buckets, (uint64_t)n);
}

void metrics_reset(void)
{
    memset(&reg, 0, sizeof reg); /* tests only: no thread records meanwhile */
    metrics_outbox_lag_clear();
}

size_t metrics_escape_label(char *out, size_t len, const char *value)
{
    size_t n = 0;
    for (const char *p = value; *p; p++) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        char one[2] = { *p, 0 };
        for (const char *r = rep ? rep : one; *r; r++, n++)
            if (n + 1 < len)
                out[n] = *r;
    }
    if (len > 0)
        out[n < len ? n : len - 1] = 0;
    return n;
}

/* ------------------------------------------------------------- rendering */

/* A value of `unit_per_value` units as a decimal number: 2500000 ns ->
 * "0.0025", 10 -> "10". Exact, and the shortest form. */
static const char *number(char buf[32], uint64_t v, uint64_t unit_per_value)
{
    if (unit_per_value == 1) {
        snprintf(buf, 32, "%llu", (unsigned long long)v);
        return buf;
    }
    int n = snprintf(buf, 32, "%llu.%09llu", (unsigned long long)(v / unit_per_value),
                     (unsigned long long)(v % unit_per_value));
    while (n > 0 && buf[n - 1] == '0')
        buf[--n] = 0;
    if (n > 0 && buf[n - 1] == '.')
        buf[--n] = 0;
    return buf;
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    /* HELP texts are constants below without backslashes or newlines. */
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{k1="v1",k2="v2"} (no braces without labels); values escaped. */
static void series(FILE *f, const char *name, const char *suffix, const char *const *keys,
                   const char *const *values, size_t n)
{
    fprintf(f, "%s%s", name, suffix);
    for (size_t i = 0; i < n; i++) {
        char esc[256]; /* label values are the short constants above */
        metrics_escape_label(esc, sizeof esc, values[i]);
        fprintf(f, "%s%s=\"%s\"", i == 0 ? "{" : ",", keys[i], esc);
    }
    fputs(n > 0 ? "} " : " ", f);
}

static uint64_t get(atomic_uint_fast64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* The samples of one histogram: cumulative buckets, +Inf, sum and count.
 * The count is the sum of the buckets read, so +Inf always equals it. */
static void histogram(FILE *f, const char *name, const char *label, const char *value,
                      struct histogram *h, const struct buckets *b)
{
    const char *keys[2], *values[2];
    size_t nl = 0;
    if (label) {
        keys[0] = label;
        values[0] = value;
        nl = 1;
    }
    keys[nl] = "le";
    char le[32], num[32];
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= b->n; i++) {
        cumulative += get(&h->bucket[i]);
        values[nl] = i < b->n ? number(le, b->le[i], b->unit_per_value) : "+Inf";
        series(f, name, "_bucket", keys, values, nl + 1);
        fprintf(f, "%llu\n", (unsigned long long)cumulative);
    }
    series(f, name, "_sum", keys, values, nl);
    fprintf(f, "%s\n", number(num, get(&h->sum), b->unit_per_value));
    series(f, name, "_count", keys, values, nl);
    fprintf(f, "%llu\n", (unsigned long long)cumulative);
}

/* One counter family with one label over all of its values. */
static void counter1(FILE *f, const char *name, const char *help, const char *label,
                     const char *const *values, size_t n, atomic_uint_fast64_t *c)
{
    family(f, name, "counter", help);
    for (size_t i = 0; i < n; i++) {
        series(f, name, "", &label, &values[i], 1);
        fprintf(f, "%llu\n", (unsigned long long)get(&c[i]));
    }
}

/* Resident set size from /proc/self/statm (Linux); false when unknown. */
static bool resident_bytes(unsigned long long *out)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return false;
    unsigned long long size, resident;
    int got = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    if (got != 2 || page <= 0)
        return false;
    *out = resident * (unsigned long long)page;
    return true;
}

static void render(FILE *f)
{
    char num[32];
    const char *keys[2] = { "command", "outcome" };

    family(f, "payq_commands_total", "counter",
           "Deliveries settled and acked, by command and outcome.");
    for (size_t c = 0; c < N_COMMANDS; c++)
        for (size_t o = 0; o < N_OUTCOMES; o++) {
            const char *values[2] = { commands[c], outcomes[o] };
            series(f, "payq_commands_total", "", keys, values, 2);
            fprintf(f, "%llu\n", (unsigned long long)get(&reg.commands[c][o]));
        }

    family(f, "payq_command_duration_seconds", "histogram",
           "Seconds from taking a delivery from the broker connection to its ack.");
    for (size_t c = 0; c < N_COMMANDS; c++)
        histogram(f, "payq_command_duration_seconds", "command", commands[c], &reg.duration[c],
                  &seconds_buckets);

    counter1(f, "payq_retries_total", "Copies of failed commands sent to a delay tier.", "tier",
             tiers, N_TIERS, reg.retries);
    counter1(f, "payq_dead_letters_total", "Copies of commands sent to the dead-letter queue.",
             "reason", reasons, N_REASONS, reg.dead_letters);

    family(f, "payq_deliveries_in_flight", "gauge",
           "Deliveries taken from the broker and not yet finished.");
    fprintf(f, "payq_deliveries_in_flight %lld\n",
            (long long)atomic_load_explicit(&reg.in_flight, memory_order_relaxed));
    family(f, "payq_circuit_open", "gauge", "Worker threads whose circuit breaker is open.");
    fprintf(f, "payq_circuit_open %lld\n",
            (long long)atomic_load_explicit(&reg.circuit_open, memory_order_relaxed));

    counter1(f, "payq_reconnects_total", "Lost connections re-established, by dependency.",
             "dependency", dependencies, N_DEPENDENCIES, reg.reconnects);

    int64_t origin = atomic_load_explicit(&lag_origin_ns, memory_order_relaxed);
    int64_t lag = origin == NO_LAG ? 0 : mono_ns() - origin;
    family(f, "payq_outbox_lag_seconds", "gauge",
           "Age of the oldest unpublished outbox row (0 when none or not the relay leader).");
    fprintf(f, "payq_outbox_lag_seconds %s\n", number(num, lag > 0 ? (uint64_t)lag : 0, NS_PER_S));
    family(f, "payq_outbox_published_total", "counter",
           "Outbox events published with a confirm (the relay position moved past them).");
    fprintf(f, "payq_outbox_published_total %llu\n",
            (unsigned long long)get(&reg.outbox_published));

    family(f, "payq_db_transaction_duration_seconds", "histogram",
           "Seconds of one payq.apply_command or payq.apply_batch call.");
    histogram(f, "payq_db_transaction_duration_seconds", NULL, NULL, &reg.db_tx, &seconds_buckets);
    family(f, "payq_batch_size", "histogram", "Deliveries applied in one database transaction.");
    histogram(f, "payq_batch_size", NULL, NULL, &reg.batch, &batch_buckets);

    family(f, "payq_build_info", "gauge", "The running payq version; always 1.");
    const char *version_key = "version", *version = PAYQ_VERSION;
    series(f, "payq_build_info", "", &version_key, &version, 1);
    fputs("1\n", f);

    unsigned long long rss;
    if (resident_bytes(&rss)) {
        family(f, "payq_process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        fprintf(f, "payq_process_resident_memory_bytes %llu\n", rss);
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        uint64_t us = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
                      (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
        family(f, "payq_process_cpu_seconds_total", "counter",
               "User and system CPU time spent in seconds.");
        fprintf(f, "payq_process_cpu_seconds_total %s\n", number(num, us * 1000, NS_PER_S));
    }
}

int metrics_render(char **out, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return PAYQ_ERR_NOMEM;
    render(f);
    bool failed = ferror(f) != 0;
    /* fclose writes the final size and NUL; on failure buf may still be set. */
    if (fclose(f) != 0 || failed) {
        free(buf);
        return PAYQ_ERR_NOMEM;
    }
    *out = buf;
    *len = n;
    return PAYQ_OK;
}
