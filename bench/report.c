/*
 * report.c - verdicts and output of a bench run (see report.h).
 */
#include "report.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static const char *verdict_word(enum report_verdict v)
{
    return v == CHECK_OK ? "OK" : v == CHECK_FAILED ? "FAILED" : "skipped";
}

static enum report_verdict verdict(bool ok)
{
    return ok ? CHECK_OK : CHECK_FAILED;
}

void report_judge(struct report *r)
{
    const struct load_result *m = r->m;
    const struct verify_ledger *v = &r->v;
    r->replies = verdict(m->missing == 0 && m->duplicates == 0 && m->stray == 0 && !m->nacked &&
                         !m->interrupted);
    if (!r->ledger_read) {
        r->conserved = r->overdraft = r->agree = CHECK_FAILED;
        return;
    }
    int64_t wallets = r->cfg->wallets, succeeded = (int64_t)stats_total(&m->outcomes, "succeeded");
    r->conserved = verdict(v->wallets == wallets && v->merchants == r->cfg->merchants &&
                           v->deposits == wallets && v->deposited == wallets * r->cfg->fund &&
                           v->wallet_posted + v->merchant_posted + v->platform == v->deposited &&
                           v->pending == 0);
    r->overdraft = verdict(v->overdrawn == 0);
    r->agree =
        verdict(v->payments == (int64_t)m->sent && v->succeeded == succeeded &&
                v->captured == m->ok_amount && v->fees == m->ok_fee && v->platform == m->ok_fee &&
                v->deposited - v->wallet_posted == m->ok_amount &&
                v->merchant_posted == m->ok_amount - m->ok_fee);
}

bool report_ok(const struct report *r)
{
    const enum report_verdict all[] = { r->replies, r->conserved, r->overdraft,
                                        r->agree,   r->checker,   r->workers };
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i] == CHECK_FAILED)
            return false;
    return r->m->missing == 0;
}

/* Minor units as "1234.56 USD" (2 decimals, as USD has). */
static const char *money(int64_t v, char *buf, size_t len)
{
    uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    snprintf(buf, len, "%s%" PRIu64 ".%02" PRIu64 " %s", v < 0 ? "-" : "", a / 100, a % 100,
             BENCH_CURRENCY);
    return buf;
}

static void print_config(const struct report *r, FILE *out)
{
    const struct bench_config *c = r->cfg;
    fprintf(out, "Configuration\n");
    if (c->spawn_workers > 0) {
        fprintf(out, "  workers           %ld spawned process%s x %ld thread%s, prefetch %ld, ",
                c->spawn_workers, c->spawn_workers == 1 ? "" : "es", c->worker_threads,
                c->worker_threads == 1 ? "" : "s", c->prefetch);
        if (c->batch)
            fprintf(out, "batch %ld", c->batch);
        else
            fprintf(out, "batch: the worker's default");
        fprintf(out, ", log level %s\n", c->worker_log_level);
        fprintf(out, "                    %s\n", r->worker);
    } else {
        fprintf(out, "  workers           none spawned: the %u already running consumer%s\n",
                r->other_consumers, r->other_consumers == 1 ? "" : "s");
    }
    if (c->spawn_workers > 0)
        fprintf(out, "  other consumers   %u%s\n", r->other_consumers,
                r->other_consumers ? " (they took part of the load: not this configuration alone)"
                                   : "");
    if (r->backlog)
        fprintf(out, "  backlog           %u messages were waiting in the queue before the run\n",
                r->backlog);
    const char *span = c->count ? "" : "for ";
    char amount[64];
    if (c->count)
        snprintf(amount, sizeof amount, "%ld payments", c->count);
    else
        snprintf(amount, sizeof amount, "%ld s", c->duration);
    if (c->rate > 0)
        fprintf(out,
                "  load              %ld/s %s%s, open loop (latency from each command's "
                "due time)\n",
                c->rate, span, amount);
    else
        fprintf(out,
                "  load              as fast as possible %s%s, closed loop with at most %ld "
                "in flight\n",
                span, amount, c->max_inflight);
    if (strcmp(c->dist, "zipf") == 0)
        fprintf(out,
                "  accounts          zipf s=%g over %ld wallets -> %ld merchants (hottest "
                "wallet %.1f%%, merchant %.1f%% of payments)\n",
                r->zipf_s, c->wallets, c->merchants, 100 * r->top_wallet, 100 * r->top_merchant);
    else
        fprintf(out, "  accounts          uniform over %ld wallets -> %ld merchants\n", c->wallets,
                c->merchants);
    char fund[48];
    fprintf(out,
            "  payments          payment.create with capture, %ld..%ld minor units; each "
            "wallet funded %s\n",
            c->amount_min, c->amount_max, money(c->fund, fund, sizeof fund));
    fprintf(out, "  publisher         confirm window %ld, reply timeout %ld s, seed %" PRIu64 "\n",
            c->confirm_window, c->reply_timeout, r->seed);
}

static void print_outcomes(const struct load_result *m, FILE *out)
{
    const char *label = "  outcomes          ";
    if (m->outcomes.n == 0)
        fprintf(out, "%snone\n", label);
    for (int i = 0; i < m->outcomes.n; i++) {
        const struct stats_outcome *o = &m->outcomes.v[i];
        fprintf(out, "%s%-10s %-24s %" PRIu64 "\n", label, o->status, o->code, o->n);
        label = "                    ";
    }
    if (m->outcomes.other)
        fprintf(out, "%sother      %" PRIu64 "\n", label, m->outcomes.other);
}

static double cpu_us_per_payment(const struct report *r)
{
    if (!r->m || r->m->replied == 0 || r->throughput <= 0)
        return 0;
    double pct = r->bench_cpu + r->workers_cpu + r->broker_cpu + r->database_cpu;
    /* percent of a core at `throughput` payments per second */
    return pct / 100.0 / r->throughput * 1e6;
}

/* The fsync probe: the disk's share of the latency tail, in its own words. */
static void print_disk(const struct disk_summary *d, FILE *out)
{
    if (!d->ran) {
        fprintf(out, "  disk fsync        not measured: %s\n", d->why);
        return;
    }
    if (d->n == 0) {
        fprintf(out, "  disk fsync        no sync finished%s%s\n", d->why[0] ? ": " : "", d->why);
        return;
    }
    fprintf(out,
            "  disk fsync        p50 %.2f  p99 %.2f  max %.1f ms; %" PRIu64 " of %" PRIu64
            " syncs took %d ms or more (8 KiB + fdatasync every %d ms)\n",
            d->p50_ms, d->p99_ms, d->max_ms, d->slow, d->n, DISK_PROBE_SLOW_MS,
            DISK_PROBE_INTERVAL_MS);
    if (d->slow > 0) {
        fprintf(out, "                    slowest at");
        for (int i = 0; i < d->worst_n && d->worst[i].ms >= DISK_PROBE_SLOW_MS; i++)
            fprintf(out, "%s %.1f s (%.0f ms)", i ? "," : "", d->worst[i].at_s, d->worst[i].ms);
        fprintf(out, " into the phase\n");
    }
    if (d->why[0])
        fprintf(out, "                    %s\n", d->why);
}

static void print_measured(const struct report *r, FILE *out)
{
    const struct load_result *m = r->m;
    fprintf(out, "Measured phase\n");
    fprintf(out,
            "  commands          %" PRIu64 " published in %.2f s; %" PRIu64 " replied; %" PRIu64
            " missing; %" PRIu64 " duplicate, %" PRIu64 " stray replies%s\n",
            m->sent, m->publish_s, m->replied, m->missing, m->duplicates, m->stray,
            m->nacked ? "; the broker nacked some publishes" : "");
    fprintf(out, "  elapsed           %.2f s (first publish to last reply)\n", m->elapsed_s);
    fprintf(out, "  throughput        %.1f replies/s\n", r->throughput);
    const struct stats_latency *l = &r->lat;
    fprintf(out,
            "  latency ms        p50 %.2f  p95 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  "
            "(mean %.2f, %s)\n",
            l->p50, l->p95, l->p99, l->p999, l->max, l->mean,
            r->cfg->rate > 0 ? "from due time" : "from send");
    if (r->cfg->rate > 0)
        fprintf(out, "  send lag          max %.2f ms, mean %.3f ms behind schedule\n",
                m->lag_max_ms, m->lag_mean_ms);
    print_outcomes(m, out);
    /* Broker and database are seen only when they run on this host; their
     * numbers include whatever else they served meanwhile. */
    fprintf(out, "  cpu, %% of a core  bench %.0f", r->bench_cpu);
    if (r->cfg->spawn_workers > 0)
        fprintf(out, ", spawned workers %.0f", r->workers_cpu);
    if (r->broker_cpu > 0)
        fprintf(out, ", RabbitMQ (beam.smp) %.0f", r->broker_cpu);
    if (r->database_cpu > 0)
        fprintf(out, ", PostgreSQL (all postgres processes) %.0f", r->database_cpu);
    fprintf(out, "\n");
    /* Everything measured above, per reply: what one payment costs the
     * machine, whatever the throughput. */
    double cpu_us = cpu_us_per_payment(r);
    if (cpu_us > 0)
        fprintf(out, "  cpu per payment   %.0f us (bench + workers + RabbitMQ + PostgreSQL)\n",
                cpu_us);
    if (r->worker_rss_mib > 0)
        fprintf(out, "  worker memory     peak RSS %.1f MiB (largest spawned worker)\n",
                r->worker_rss_mib);
    if (r->host_cores > 0)
        fprintf(out,
                "  host              %.0f%% of its %ld cores busy (everything running on it, "
                "not only payq)\n",
                r->host_busy, r->host_cores);
    fprintf(out,
            "  machine speed     reference loop %.0f ms before setup, %.0f ms after the run "
            "(about 210 on a quiet machine; higher = a slower machine then)\n",
            r->ref_before_ms, r->ref_after_ms);
    print_disk(&r->disk, out);
}

static void print_checks(const struct report *r, FILE *out)
{
    const struct load_result *m = r->m;
    const struct verify_ledger *v = &r->v;
    char a[48], b[48], c[48], d[48];
    fprintf(out, "Verification\n");
    fprintf(out,
            "  %-7s every command got exactly one reply (%" PRIu64 " of %" PRIu64 ", %" PRIu64
            " duplicate, %" PRIu64 " stray)\n",
            verdict_word(r->replies), m->replied, m->sent, m->duplicates, m->stray);
    if (!r->ledger_read) {
        fprintf(out, "  FAILED  cannot read the run's ledger: %s\n", r->ledger_error);
    } else {
        fprintf(out,
                "  %-7s money conserved: wallets %s + merchants %s + platform fees %s = "
                "deposited %s\n",
                verdict_word(r->conserved), money(v->wallet_posted, a, sizeof a),
                money(v->merchant_posted, b, sizeof b), money(v->platform, c, sizeof c),
                money(v->deposited, d, sizeof d));
        fprintf(out,
                "          (%" PRId64 " wallets, %" PRId64 " merchants, %" PRId64
                " deposits found; %" PRId64 " held)\n",
                v->wallets, v->merchants, v->deposits, v->pending);
        fprintf(out, "  %-7s no wallet below zero (%" PRId64 " overdrawn)\n",
                verdict_word(r->overdraft), v->overdrawn);
        fprintf(out,
                "  %-7s ledger matches the replies: %" PRId64 " payments, %" PRId64
                " succeeded, captured %s, fees %s\n",
                verdict_word(r->agree), v->payments, v->succeeded, money(v->captured, a, sizeof a),
                money(v->fees, b, sizeof b));
    }
    if (r->checker == CHECK_SKIPPED)
        fprintf(out, "  skipped payq-worker check (--no-check)\n");
    else
        fprintf(out, "  %-7s payq-worker check (exit %d, %.1f s): %s\n", verdict_word(r->checker),
                r->checker_exit, r->checker_s, r->checker_line);
    if (r->workers != CHECK_SKIPPED)
        fprintf(out, "  %-7s spawned workers %s\n", verdict_word(r->workers),
                r->workers == CHECK_OK ? "stopped cleanly" : r->workers_note);
}

static json_t *check_json(enum report_verdict v)
{
    return v == CHECK_SKIPPED ? json_null() : json_boolean(v == CHECK_OK);
}

static json_t *num(double x)
{
    return json_real(round(x * 1000) / 1000);
}

/* {"n", "p50_ms", "p99_ms", "max_ms", "slow", "worst": [{"at_s", "ms"}]}, or
 * null when the probe did not run. */
static json_t *disk_json(const struct disk_summary *d)
{
    if (!d->ran || d->n == 0)
        return json_null();
    json_t *o = json_object(), *worst = json_array();
    json_object_set_new(o, "n", json_integer((json_int_t)d->n));
    json_object_set_new(o, "p50_ms", num(d->p50_ms));
    json_object_set_new(o, "p99_ms", num(d->p99_ms));
    json_object_set_new(o, "max_ms", num(d->max_ms));
    json_object_set_new(o, "slow", json_integer((json_int_t)d->slow));
    for (int i = 0; i < d->worst_n; i++) {
        json_t *w = json_object();
        json_object_set_new(w, "at_s", num(d->worst[i].at_s));
        json_object_set_new(w, "ms", num(d->worst[i].ms));
        json_array_append_new(worst, w);
    }
    json_object_set_new(o, "worst", worst);
    return o;
}

static void print_result(const struct report *r, FILE *out)
{
    const struct bench_config *c = r->cfg;
    const struct load_result *m = r->m;
    json_t *o = json_object(), *checks = json_object(), *outcomes = json_object();
    json_object_set_new(o, "run_id", json_string(r->prefix));
    json_object_set_new(o, "ok", json_boolean(report_ok(r)));
    json_object_set_new(o, "throughput", num(r->throughput));
    json_object_set_new(o, "p50_ms", num(r->lat.p50));
    json_object_set_new(o, "p95_ms", num(r->lat.p95));
    json_object_set_new(o, "p99_ms", num(r->lat.p99));
    json_object_set_new(o, "p999_ms", num(r->lat.p999));
    json_object_set_new(o, "max_ms", num(r->lat.max));
    json_object_set_new(o, "mean_ms", num(r->lat.mean));
    json_object_set_new(o, "commands", json_integer((json_int_t)m->sent));
    json_object_set_new(o, "replies", json_integer((json_int_t)m->replied));
    json_object_set_new(o, "succeeded",
                        json_integer((json_int_t)stats_total(&m->outcomes, "succeeded")));
    json_object_set_new(o, "failed", json_integer((json_int_t)stats_total(&m->outcomes, "failed")));
    json_object_set_new(o, "rejected",
                        json_integer((json_int_t)stats_total(&m->outcomes, "rejected")));
    json_object_set_new(o, "missing", json_integer((json_int_t)m->missing));
    json_object_set_new(o, "duplicates", json_integer((json_int_t)m->duplicates));
    json_object_set_new(o, "stray", json_integer((json_int_t)m->stray));
    for (int i = 0; i < m->outcomes.n; i++) {
        char key[80];
        const struct stats_outcome *e = &m->outcomes.v[i];
        snprintf(key, sizeof key, "%s%s%s", e->status, e->code[0] ? ":" : "", e->code);
        json_object_set_new(outcomes, key, json_integer((json_int_t)e->n));
    }
    json_object_set_new(o, "outcomes", outcomes);
    json_object_set_new(o, "setup_s", num(r->setup_s));
    json_object_set_new(o, "settle_s", num(r->settle_s));
    json_object_set_new(o, "elapsed_s", num(m->elapsed_s));
    json_object_set_new(o, "publish_s", num(m->publish_s));
    json_object_set_new(o, "send_lag_max_ms", num(m->lag_max_ms));
    json_object_set_new(o, "rate", json_integer(c->rate));
    json_object_set_new(o, "duration_s", json_integer(c->count ? 0 : c->duration));
    json_object_set_new(o, "count", json_integer(c->count));
    json_object_set_new(o, "max_inflight", json_integer(c->max_inflight));
    json_object_set_new(o, "dist", json_string(c->dist));
    json_object_set_new(o, "zipf_s", strcmp(c->dist, "zipf") == 0 ? num(r->zipf_s) : json_null());
    json_object_set_new(o, "wallets", json_integer(c->wallets));
    json_object_set_new(o, "merchants", json_integer(c->merchants));
    json_object_set_new(o, "workers", json_integer(c->spawn_workers));
    json_object_set_new(o, "worker_threads",
                        c->spawn_workers ? json_integer(c->worker_threads) : json_null());
    json_object_set_new(o, "prefetch", c->spawn_workers ? json_integer(c->prefetch) : json_null());
    json_object_set_new(o, "batch", c->batch ? json_integer(c->batch) : json_null());
    json_object_set_new(o, "worker_log_level",
                        c->spawn_workers ? json_string(c->worker_log_level) : json_null());
    json_object_set_new(o, "other_consumers", json_integer(r->other_consumers));
    json_object_set_new(o, "bench_cpu_pct", num(r->bench_cpu));
    json_object_set_new(o, "workers_cpu_pct", c->spawn_workers ? num(r->workers_cpu) : json_null());
    json_object_set_new(o, "host_cpu_pct", num(r->host_busy));
    json_object_set_new(o, "broker_cpu_pct", num(r->broker_cpu));
    json_object_set_new(o, "database_cpu_pct", num(r->database_cpu));
    json_object_set_new(o, "machine_ref_before_ms", num(r->ref_before_ms));
    json_object_set_new(o, "machine_ref_after_ms", num(r->ref_after_ms));
    json_object_set_new(o, "cpu_us_per_payment", num(cpu_us_per_payment(r)));
    json_object_set_new(o, "disk_fsync", disk_json(&r->disk));
    json_object_set_new(o, "worker_rss_peak_mib",
                        r->worker_rss_mib > 0 ? num(r->worker_rss_mib) : json_null());
    json_object_set_new(o, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(checks, "replies", check_json(r->replies));
    json_object_set_new(checks, "money_conserved", check_json(r->conserved));
    json_object_set_new(checks, "no_overdraft", check_json(r->overdraft));
    json_object_set_new(checks, "ledger_matches_replies", check_json(r->agree));
    json_object_set_new(checks, "checker", check_json(r->checker));
    json_object_set_new(checks, "workers_exited_cleanly", check_json(r->workers));
    json_object_set_new(o, "checks", checks);
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    fprintf(out, "RESULT %s\n", s ? s : "{}");
    free(s);
    json_decref(o);
}

static void print_reproduce(const struct report *r, FILE *out)
{
    const struct bench_config *c = r->cfg;
    fprintf(out, "reproduce: %s --wallets %ld --merchants %ld --fund %ld --rate %ld", r->program,
            c->wallets, c->merchants, c->fund, c->rate);
    if (c->count)
        fprintf(out, " --count %ld", c->count);
    else
        fprintf(out, " --duration %ld", c->duration);
    fprintf(out, " --dist %s", c->dist);
    if (strcmp(c->dist, "zipf") == 0)
        fprintf(out, " --zipf-s %s", c->zipf_s);
    fprintf(out,
            " --amount-min %ld --amount-max %ld --confirm-window %ld --max-inflight %ld"
            " --seed %" PRIu64 " --spawn-workers %ld",
            c->amount_min, c->amount_max, c->confirm_window, c->max_inflight, r->seed,
            c->spawn_workers);
    if (c->spawn_workers)
        fprintf(out, " --worker-threads %ld --prefetch %ld --worker-log-level %s",
                c->worker_threads, c->prefetch, c->worker_log_level);
    if (c->batch)
        fprintf(out, " --batch %ld", c->batch);
    if (c->worker)
        fprintf(out, " --worker %s", c->worker);
    fprintf(out, "\n");
}

void report_print(const struct report *r, FILE *out)
{
    fprintf(out, "\npayq-bench run %s: %ld wallets, %ld merchants, %s\n\n", r->prefix,
            r->cfg->wallets, r->cfg->merchants, BENCH_CURRENCY);
    print_config(r, out);
    fprintf(out, "\nSetup               %" PRIu64 " commands in %.2f s (%.0f/s)\n",
            r->setup_commands, r->setup_s,
            r->setup_s > 0 ? (double)r->setup_commands / r->setup_s : 0.0);
    if (r->settle_s >= 0)
        fprintf(out, "                    then VACUUM (ANALYZE) of the tables it wrote: %.2f s\n\n",
                r->settle_s);
    else
        fprintf(out, "                    then VACUUM (ANALYZE) of the tables it wrote: failed "
                     "(see stderr)\n\n");
    print_measured(r, out);
    fprintf(out, "\n");
    print_checks(r, out);
    fprintf(out, "\n%s\n", report_ok(r) ? "PASSED" : "FAILED");
    print_result(r, out);
    print_reproduce(r, out);
    fflush(out);
}
