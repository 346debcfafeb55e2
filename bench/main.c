/*
 * payq-bench - the end-to-end benchmark of payq: real broker, real workers,
 * real database.
 *
 * A run opens and funds its own wallets and merchants through the broker,
 * optionally starts its own payq-worker processes, publishes payment.create
 * commands for a fixed time at a fixed rate (open loop: latency from each
 * command's due time) or as fast as the system answers (closed loop), then
 * verifies that every command got one reply, that the run's money is
 * conserved, that no wallet went below zero and that the ledger agrees with
 * the replies, and runs `payq-worker check`. Every id of a run starts with
 * its run id, so runs share a broker and a database without colliding.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "broker.h"
#include "config.h"
#include "db.h"
#include "disk.h"
#include "dist.h"
#include "fleet.h"
#include "load.h"
#include "log.h"
#include "mq.h"
#include "procs.h"
#include "report.h"
#include "stats.h"
#include "topology.h"
#include "verify.h"
#include "workload.h"

/* Exit codes, also in --help. */
enum {
    EXIT_PASSED = 0,
    EXIT_CHECK_FAILED = 1, /* a verification failed or replies are missing */
    EXIT_USAGE = 2,
    EXIT_UNAVAILABLE = 3 /* could not run: broker, database or workers unavailable,
                          * setup failed, or interrupted */
};

#define OPT(f, e, t, d, lo, hi, field, mv, h)                           \
    {                                                                   \
        f, e, t, d, lo, hi, offsetof(struct bench_config, field), mv, h \
    }

static const struct cfg_opt options[] = {
    OPT("amqp-url", "AMQP_URL", CFG_SECRET, "amqp://guest:guest@localhost:5672", 0, 0, amqp_url,
        "URL[,URL...]",
        "RabbitMQ to publish to (a cluster's nodes comma-separated); spawned workers get it too"),
    OPT("amqp-cacert", "AMQP_CACERT", CFG_STR, NULL, 0, 0, amqp_tls.cacert, "FILE",
        "amqps://: PEM file of the CA(s) that signed the broker's certificate (default: the "
        "system's CAs); spawned workers get it too"),
    OPT("amqp-cert", "AMQP_CERT", CFG_STR, NULL, 0, 0, amqp_tls.cert, "FILE",
        "amqps://: client certificate (PEM) for mutual TLS, with --amqp-key"),
    OPT("amqp-key", "AMQP_KEY", CFG_STR, NULL, 0, 0, amqp_tls.key, "FILE",
        "amqps://: the client certificate's private key (PEM, not encrypted)"),
    OPT("database-url", "DATABASE_URL", CFG_SECRET, "", 0, 0, database_url, "URL",
        "PostgreSQL to verify against; spawned workers and the checker get it too (empty = "
        "libpq's PG* variables)"),
    OPT("run-id", "PAYQ_BENCH_RUN_ID", CFG_STR, NULL, 0, 0, run_id, "ID",
        "prefix of every id of the run (up to 40 of [A-Za-z0-9_.:-]); must be unused. "
        "Default: b<unix time>p<pid>"),
    OPT("wallets", "PAYQ_BENCH_WALLETS", CFG_INT, "10000", 1, 1000000, wallets, "N",
        "customer wallets to open and fund"),
    OPT("merchants", "PAYQ_BENCH_MERCHANTS", CFG_INT, "100", 1, 100000, merchants, "N",
        "merchant accounts to open"),
    OPT("fund", "PAYQ_BENCH_FUND", CFG_INT, "10000000000", 1, 1000000000000L, fund, "MINOR",
        "deposit into each wallet, in minor units (cents); the default cannot run out in an "
        "hour even under zipf; set it low to provoke insufficient_funds"),
    OPT("rate", "PAYQ_BENCH_RATE", CFG_INT, "0", 0, 1000000, rate, "PER_S",
        "payments per second, open loop, latency from each command's due time; 0 = as fast as "
        "possible (closed loop, --max-inflight outstanding, latency from the send)"),
    OPT("duration", "PAYQ_BENCH_DURATION", CFG_INT, "10", 1, 3600, duration, "SEC",
        "length of the measured phase (publishing time)"),
    OPT("count", "PAYQ_BENCH_COUNT", CFG_INT, "0", 0, 20000000, count, "N",
        "publish exactly N payments instead of running for --duration (0 = use --duration)"),
    OPT("dist", "PAYQ_BENCH_DIST", CFG_STR, "uniform", 0, 0, dist, "uniform|zipf",
        "how payments pick their wallet and merchant: uniformly, or Zipf-skewed (w0 and m0 "
        "hottest)"),
    OPT("zipf-s", "PAYQ_BENCH_ZIPF_S", CFG_STR, "1.1", 0, 0, zipf_s, "S",
        "Zipf exponent (> 0, at most 10) for --dist zipf"),
    OPT("amount-min", "PAYQ_BENCH_AMOUNT_MIN", CFG_INT, "100", 1, 1000000000L, amount_min, "MINOR",
        "smallest payment amount (uniformly drawn)"),
    OPT("amount-max", "PAYQ_BENCH_AMOUNT_MAX", CFG_INT, "999", 1, 1000000000L, amount_max, "MINOR",
        "largest payment amount"),
    OPT("confirm-window", "PAYQ_BENCH_CONFIRM_WINDOW", CFG_INT, "1000", 1, 100000, confirm_window,
        "N", "publishes the broker has not confirmed yet, at most"),
    OPT("max-inflight", "PAYQ_BENCH_MAX_INFLIGHT", CFG_INT, "1000", 1, 1000000, max_inflight, "N",
        "commands without a reply, at most, when --rate is 0 and during setup"),
    OPT("reply-timeout", "PAYQ_BENCH_REPLY_TIMEOUT", CFG_INT, "30", 1, 600, reply_timeout, "SEC",
        "after the last publish of a phase, how long to wait for a reply before the "
        "outstanding commands count as missing (each reply restarts the wait, so a backlog "
        "drains)"),
    OPT("seed", "PAYQ_BENCH_SEED", CFG_INT, "0", 0, 9007199254740991L, seed, "N",
        "seed of the workload generator (0 = a new one, printed)"),
    OPT("spawn-workers", "PAYQ_BENCH_SPAWN_WORKERS", CFG_INT, "1", 0, FLEET_MAX, spawn_workers, "P",
        "payq-worker processes to start for the run and stop after it; 0 = use the "
        "workers already running"),
    OPT("worker-threads", "PAYQ_BENCH_WORKER_THREADS", CFG_INT, "2", 1, 256, worker_threads, "T",
        "--threads of each spawned worker"),
    OPT("prefetch", "PAYQ_BENCH_PREFETCH", CFG_INT, "32", 1, 65535, prefetch, "N",
        "--prefetch of each spawned worker"),
    OPT("batch", "PAYQ_BENCH_BATCH", CFG_INT, NULL, 1, 1000, batch, "N",
        "--batch of each spawned worker (deliveries per database transaction); not given = "
        "the worker's own default"),
    OPT("worker-log-level", "PAYQ_BENCH_WORKER_LOG_LEVEL", CFG_STR, "info", 0, 0, worker_log_level,
        "LEVEL",
        "--log-level of each spawned worker (debug, info, warn, error); at info a worker logs "
        "a line per command, which costs it some CPU"),
    OPT("worker", "PAYQ_BENCH_WORKER", CFG_STR, NULL, 0, 0, worker, "PATH",
        "payq-worker to spawn and to run `check` with (default: the one next to payq-bench)"),
    OPT("log-dir", "PAYQ_BENCH_LOG_DIR", CFG_STR, NULL, 0, 0, log_dir, "DIR",
        "where spawned workers log (payq-bench-<run id>-worker<k>.log, deleted after a run "
        "that passed; default $TMPDIR or /tmp)"),
    OPT("latency-log", "PAYQ_BENCH_LATENCY_LOG", CFG_STR, NULL, 0, 0, latency_log, "FILE",
        "write every measured command's latency to FILE as CSV: index, due time in ms from "
        "the start of the measured phase (with --rate; empty as fast as possible), latency in "
        "ms (empty: no reply), after a first line \"# due_ms 0 = <Unix time> s ...\" that "
        "puts the timeline on the wall clock. When the slow ones happened"),
    OPT("disk-probe-dir", "PAYQ_BENCH_DISK_PROBE_DIR", CFG_STR, NULL, 0, 0, disk_probe_dir, "DIR",
        "where the fsync probe writes during the measured phase: 8 KiB and an fdatasync every "
        "20 ms, to report the disk's sync latency beside the payments' (default "
        "$PAYQ_STACK_DIR, then $TMPDIR, then /tmp: put it on the disk of the broker's and the "
        "database's data)"),
    OPT("no-disk-probe", "PAYQ_BENCH_NO_DISK_PROBE", CFG_BOOL, NULL, 0, 0, no_disk_probe, NULL,
        "do not run the fsync probe"),
    OPT("no-check", "PAYQ_BENCH_NO_CHECK", CFG_BOOL, NULL, 0, 0, no_check, NULL,
        "skip `payq-worker check` (it checks the whole database, which takes longer as it "
        "grows); the run's own checks still run"),
    OPT("quiet", "PAYQ_BENCH_QUIET", CFG_BOOL, NULL, 0, 0, quiet, NULL,
        "no progress lines on stderr"),
    OPT("smoke", "PAYQ_BENCH_SMOKE", CFG_BOOL, NULL, 0, 0, smoke, NULL,
        "a tiny run for CI that checks invariants, never timing: 200 wallets, 10 merchants, "
        "200/s for 2 s, its own worker (1 x 2 threads); overrides those settings"),
    CFG_END
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: payq-bench [OPTIONS]\n"
            "\n"
            "End-to-end benchmark of payq through the real broker, workers and database:\n"
            "  1. setup: opens --wallets wallets and --merchants merchants (USD) and funds\n"
            "     every wallet, all as commands through payq.commands; then runs VACUUM\n"
            "     (ANALYZE) on the tables that wrote, so autovacuum does not do it during\n"
            "     the measurement;\n"
            "  2. starts --spawn-workers payq-worker processes and waits until they consume\n"
            "     (or uses the workers already running, with --spawn-workers 0);\n"
            "  3. measured phase: publishes payment.create (wallet -> merchant, capture) at\n"
            "     --rate per second, or as fast as possible, for --duration seconds (or\n"
            "     --count payments), each with a reply_to, and times every reply;\n"
            "  4. verifies: one reply per command, the run's money conserved (wallets +\n"
            "     merchants + platform fees = deposits), no wallet below zero, the ledger\n"
            "     equal to what the replies said, and `payq-worker check`;\n"
            "  5. prints a table, a `RESULT {json}` line and the command that repeats the run.\n"
            "\n"
            "Options (each also read from the environment variable shown):\n");
    cfg_usage(out, options);
    fprintf(
        out,
        "\n"
        "Latency: with --rate R, command i is due at t0 + i/R and its latency runs from\n"
        "then to its reply, so a stall counts against every command it delays (no\n"
        "coordinated omission). With --rate 0 the bench keeps --max-inflight commands\n"
        "outstanding and measures from each send: that measures capacity, and its latency\n"
        "is mostly queueing (about in-flight / throughput).\n"
        "\n"
        "Spawned workers inherit the environment (PAYQ_* settings), get AMQP_URL and\n"
        "DATABASE_URL from the bench, and --threads, --prefetch (and --batch if given)\n"
        "as flags.\n"
        "\n"
        "Exit status: 0 every check passed, 1 a check failed or replies are missing,\n"
        "2 usage error, 3 the run could not be done (broker, database or workers\n"
        "unavailable, setup failed, interrupted).\n"
        "\n"
        "Examples:\n"
        "  eval \"$(bash tests/stack.sh env)\"\n"
        "  build/payq-bench --duration 10                     # capacity, 1 worker x 2 threads\n"
        "  build/payq-bench --rate 500 --duration 10          # latency at 500 payments/s\n"
        "  build/payq-bench --rate 300 --dist zipf --spawn-workers 2 --worker-threads 4\n"
        "  build/payq-bench --smoke                           # CI: invariants only\n");
}

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second signal ends the bench at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --latency-log: one CSV line per measured command. A failure to write is
 * reported and does not fail the run. */
static void write_latency_log(const char *path, const struct load_result *m, long rate)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "payq-bench: cannot write --latency-log %s: %s\n", path, strerror(errno));
        return;
    }
    /* The first line says when due time 0 was on the wall clock, so the
     * slow commands can be found in the broker's and the database's logs. */
    fprintf(f, "# due_ms 0 = %.3f s since the Unix epoch\n", m->started_unix_s);
    fputs("index,due_ms,latency_ms\n", f);
    for (uint64_t i = 0; i < m->sent; i++) {
        fprintf(f, "%" PRIu64 ",", i);
        if (rate > 0)
            fprintf(f, "%.3f", (double)i * 1000.0 / (double)rate);
        fputc(',', f);
        if (m->nrep[i])
            fprintf(f, "%.3f", m->lat_us[i] / 1000.0);
        fputc('\n', f);
    }
    if (fclose(f) != 0)
        fprintf(stderr, "payq-bench: writing --latency-log %s: %s\n", path, strerror(errno));
    else
        fprintf(stderr, "payq-bench: latencies written to %s\n", path);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static bool run_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > BENCH_PREFIX_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* Settings that depend on each other; err gets the reason. */
static int validate(struct bench_config *cfg, double *zipf_s, enum dist_kind *kind, char *err,
                    size_t errlen)
{
    if (cfg->smoke) {
        cfg->wallets = 200;
        cfg->merchants = 10;
        cfg->rate = 200;
        cfg->duration = 2;
        cfg->count = 0;
        cfg->spawn_workers = 1;
        cfg->worker_threads = 2;
    }
    if (strcmp(cfg->dist, "uniform") == 0) {
        *kind = DIST_UNIFORM;
    } else if (strcmp(cfg->dist, "zipf") == 0) {
        *kind = DIST_ZIPF;
    } else {
        snprintf(err, errlen, "--dist must be uniform or zipf, not \"%s\"", cfg->dist);
        return PAYQ_ERR_CONFIG;
    }
    char *end;
    errno = 0;
    *zipf_s = strtod(cfg->zipf_s, &end);
    if (errno || end == cfg->zipf_s || *end || !(*zipf_s > 0) || *zipf_s > 10) {
        snprintf(err, errlen, "--zipf-s must be a number above 0 and at most 10, not \"%s\"",
                 cfg->zipf_s);
        return PAYQ_ERR_CONFIG;
    }
    if (log_level_parse(cfg->worker_log_level) < 0) {
        snprintf(err, errlen, "--worker-log-level must be debug, info, warn or error");
        return PAYQ_ERR_CONFIG;
    }
    if (cfg->amount_min > cfg->amount_max) {
        snprintf(err, errlen, "--amount-min (%ld) is above --amount-max (%ld)", cfg->amount_min,
                 cfg->amount_max);
        return PAYQ_ERR_CONFIG;
    }
    if (cfg->rate > 0 && cfg->count && cfg->count / cfg->rate > 3600) {
        snprintf(err, errlen, "--count %ld at --rate %ld would run longer than an hour", cfg->count,
                 cfg->rate);
        return PAYQ_ERR_CONFIG;
    }
    if (cfg->run_id && !run_id_valid(cfg->run_id)) {
        snprintf(err, errlen, "--run-id must be 1-%d characters of [A-Za-z0-9_.:-]",
                 BENCH_PREFIX_MAX);
        return PAYQ_ERR_CONFIG;
    }
    return PAYQ_OK;
}

/*
 * Runs `payq-worker check` once: false when it could not finish (no "OK:" or
 * "FAILED:" summary, e.g. the database restarted under it).
 */
static bool check_once(const struct bench_config *cfg, const char *worker, struct report *r)
{
    char *argv[] = { (char *)(uintptr_t)worker, "check", NULL };
    struct procs_env env = { cfg->amqp_url, cfg->database_url, &cfg->amqp_tls };
    static char out[16384];
    int status = 0;
    double t = now_s();
    fprintf(stderr, "payq-bench: running %s check\n", worker);
    if (procs_run(argv, &env, out, sizeof out, &status) != PAYQ_OK) {
        r->checker = CHECK_FAILED;
        r->checker_exit = -1;
        snprintf(r->checker_line, sizeof r->checker_line, "cannot run %.200s", worker);
        return true;
    }
    r->checker_s = now_s() - t;
    r->checker_exit = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r->checker = r->checker_exit == 0 ? CHECK_OK : CHECK_FAILED;
    /* Its summary is the line starting "OK:" or "FAILED:"; else the last line. */
    const char *line = NULL, *last = out;
    for (const char *p = out; *p;) {
        if (*p != '\n')
            last = p;
        if (strncmp(p, "OK:", 3) == 0 || strncmp(p, "FAILED:", 7) == 0)
            line = p;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : p + strlen(p);
    }
    snprintf(r->checker_line, sizeof r->checker_line, "%.*s",
             (int)strcspn(line ? line : last, "\n"), line ? line : last);
    if (r->checker == CHECK_FAILED)
        fprintf(stderr, "payq-bench: payq-worker check failed; its output:\n%s\n", out);
    return line != NULL;
}

/* The checker's verdict; a run that could not finish is tried once more. */
static void run_checker(const struct bench_config *cfg, const char *worker, struct report *r)
{
    if (check_once(cfg, worker, r) || r->checker_exit < 0)
        return;
    fprintf(stderr, "payq-bench: payq-worker check did not finish; trying again in 2 s\n");
    struct timespec ts = { 2, 0 };
    nanosleep(&ts, NULL);
    (void)check_once(cfg, worker, r);
}

/* Runs one setup phase; false (with the reason on stderr) unless every
 * command succeeded. */
static bool setup_phase(mq_t *mq, const struct bench_config *cfg, const char *prefix,
                        const char *what, char tag, uint64_t count, load_build_fn build,
                        struct workload *w)
{
    struct load_spec s = { .label = what,
                           .prefix = prefix,
                           .tag = tag,
                           .count = count,
                           .max_inflight = cfg->max_inflight,
                           .window = cfg->confirm_window,
                           .reply_timeout_ms = cfg->reply_timeout * 1000,
                           .progress_ms = cfg->quiet ? 0 : 5000,
                           .build = build,
                           .arg = w,
                           .stop = &stop_requested };
    struct load_result r;
    double t = now_s();
    int rc = load_run(mq, &s, &r);
    uint64_t ok = stats_total(&r.outcomes, "succeeded");
    bool good = rc == PAYQ_OK && !r.interrupted && r.missing == 0 && ok == count;
    if (rc != PAYQ_OK)
        fprintf(stderr, "payq-bench: setup: %s\n", r.error);
    else if (r.interrupted)
        fprintf(stderr, "payq-bench: interrupted during setup\n");
    else if (r.missing)
        fprintf(stderr,
                "payq-bench: setup: %" PRIu64 " of %" PRIu64 " %s commands got no reply "
                "within %ld s: do the workers run? (their logs are in --log-dir)\n",
                r.missing, count, what, cfg->reply_timeout);
    else if (ok != count)
        fprintf(stderr,
                "payq-bench: setup: %" PRIu64 " of %" PRIu64 " %s commands did not "
                "succeed; the first reply: %s\n",
                count - ok, count, what, r.first_problem);
    else
        fprintf(stderr, "payq-bench: setup: %" PRIu64 " %s in %.2f s\n", count, what, now_s() - t);
    load_result_free(&r);
    return good;
}

/* Everything main() owns, released in one place. */
struct run {
    struct bench_config cfg;
    struct cfg_strings owned;
    char prefix[BENCH_PREFIX_MAX + 1];
    char worker[1024];
    db_t *db;
    mq_t *mq;
    struct fleet fleet;
    struct workload w;
    struct load_result m;
};

static void run_free(struct run *r)
{
    mq_close(r->mq);
    if (r->fleet.n) {
        char note[8];
        (void)fleet_stop(&r->fleet, note, sizeof note);
    }
    db_close(r->db);
    dist_free(r->w.wallet_dist);
    dist_free(r->w.merchant_dist);
    load_result_free(&r->m);
    cfg_strings_free(&r->owned);
}

/* Resolves the payq-worker path: --worker, or the sibling of this program. */
static int find_worker(struct run *run)
{
    if (run->cfg.worker) {
        snprintf(run->worker, sizeof run->worker, "%s", run->cfg.worker);
    } else {
        char dir[900];
        if (procs_self_dir(dir, sizeof dir) != PAYQ_OK)
            return PAYQ_ERR_IO;
        snprintf(run->worker, sizeof run->worker, "%s/payq-worker", dir);
    }
    return access(run->worker, X_OK) == 0 ? PAYQ_OK : PAYQ_ERR_IO;
}

/* Checks the broker and counts consumers the bench did not start. */
static int look_at_broker(const struct run *run, struct report *rep)
{
    char err[256], red[512];
    uint32_t messages = 0, consumers = 0;
    int rc = broker_queue_stats(run->cfg.amqp_url, &run->cfg.amqp_tls, PAYQ_Q_COMMANDS, &messages,
                                &consumers, err, sizeof err);
    cfg_redact_url(run->cfg.amqp_url, red, sizeof red);
    if (rc == PAYQ_ERR_CLOSED && run->cfg.spawn_workers == 0) {
        fprintf(stderr,
                "payq-bench: the queue %s does not exist on %s: start payq-worker once "
                "(it declares the topology) or import rabbitmq/definitions.json, or let the "
                "bench start workers (--spawn-workers N)\n",
                PAYQ_Q_COMMANDS, red);
        return rc;
    }
    if (rc != PAYQ_OK && rc != PAYQ_ERR_CLOSED) {
        fprintf(stderr,
                "payq-bench: cannot connect to %s: %s — is RabbitMQ running? "
                "(bash tests/stack.sh up starts a local one; eval \"$(bash tests/stack.sh env)\" "
                "sets AMQP_URL)\n",
                red, err);
        return rc;
    }
    if (run->cfg.spawn_workers == 0 && consumers == 0) {
        fprintf(stderr,
                "payq-bench: no worker consumes %s: start build/payq-worker, or let "
                "the bench start some (--spawn-workers N)\n",
                PAYQ_Q_COMMANDS);
        return PAYQ_ERR_INVALID;
    }
    if (run->cfg.spawn_workers > 0 && consumers > 0)
        fprintf(stderr,
                "payq-bench: note: %u other consumer%s already take%s from %s: they "
                "will share the load with the spawned workers\n",
                consumers, consumers == 1 ? "" : "s", consumers == 1 ? "s" : "", PAYQ_Q_COMMANDS);
    if (messages > 0)
        fprintf(stderr,
                "payq-bench: note: %u messages are waiting in %s before the run; "
                "the workers will process them too\n",
                messages, PAYQ_Q_COMMANDS);
    rep->other_consumers = consumers;
    rep->backlog = messages;
    return PAYQ_OK;
}

static int connect_db(struct run *run)
{
    if (db_connect(run->cfg.database_url, "payq-bench", 600000, &run->db) == PAYQ_OK)
        return PAYQ_OK;
    char red[512];
    cfg_redact_url(run->cfg.database_url && *run->cfg.database_url ? run->cfg.database_url
                                                                   : "(PG* environment)",
                   red, sizeof red);
    fprintf(stderr,
            "payq-bench: cannot connect to PostgreSQL at %s — is PostgreSQL running? "
            "(bash tests/stack.sh up starts a local one; eval \"$(bash tests/stack.sh env)\" "
            "sets DATABASE_URL)\n",
            red);
    run->db = NULL;
    return PAYQ_ERR_DB;
}

/*
 * Refuses a run id that is already in use. Before the workers start, a
 * missing schema is no error yet when the bench starts workers (they
 * migrate): *later is set and the check is made again after them.
 */
static int check_fresh(struct run *run, bool *later)
{
    int64_t n = 0;
    if (verify_existing(run->db, run->prefix, &n) != PAYQ_OK) {
        bool no_schema = strcmp(db_sqlstate(run->db), "42P01") == 0 ||
                         strcmp(db_sqlstate(run->db), "3F000") == 0;
        if (no_schema && later && run->cfg.spawn_workers > 0) {
            *later = true;
            return PAYQ_OK;
        }
        fprintf(stderr, "payq-bench: cannot read payq.accounts: %s%s\n", db_error(run->db),
                no_schema ? " (the schema is missing: run payq-worker migrate, or start a worker)"
                          : "");
        return PAYQ_ERR_DB;
    }
    if (n > 0) {
        fprintf(stderr,
                "payq-bench: the run id %s is already used by %" PRId64 " accounts: "
                "choose another --run-id\n",
                run->prefix, n);
        return PAYQ_ERR_INVALID;
    }
    return PAYQ_OK;
}

static int connect_mq(struct run *run)
{
    char red[512];
    cfg_redact_url(run->cfg.amqp_url, red, sizeof red);
    if (mq_connect(run->cfg.amqp_url, &run->cfg.amqp_tls, "payq-bench", 30, &run->mq) != PAYQ_OK) {
        fprintf(stderr,
                "payq-bench: cannot connect to %s: %s — is RabbitMQ running? "
                "(bash tests/stack.sh up)\n",
                red, mq_connect_error());
        run->mq = NULL;
        return PAYQ_ERR_AMQP;
    }
    if (mq_consume_direct_reply(run->mq) != PAYQ_OK) {
        fprintf(stderr, "payq-bench: cannot consume amq.rabbitmq.reply-to: %s\n",
                mq_error(run->mq));
        return PAYQ_ERR_AMQP;
    }
    return PAYQ_OK;
}

/* Where the fsync probe writes: the stack's own directory (tests/stack.sh
 * exports it), on the disk its data lives on, unless told otherwise. */
static const char *probe_dir(const struct bench_config *cfg)
{
    const char *d = cfg->disk_probe_dir;
    if (!d || !*d)
        d = getenv("PAYQ_STACK_DIR");
    if (!d || !*d)
        d = getenv("TMPDIR");
    return d && *d ? d : "/tmp";
}

/* The measured phase with CPU accounting (and the fsync probe) around it. */
static int measure(struct run *run, struct report *rep)
{
    const struct bench_config *cfg = &run->cfg;
    struct load_spec s = { .label = "measured",
                           .prefix = run->prefix,
                           .tag = 'p',
                           .count = (uint64_t)cfg->count,
                           .duration_ms = cfg->duration * 1000,
                           .rate = cfg->rate,
                           .max_inflight = cfg->max_inflight,
                           .window = cfg->confirm_window,
                           .reply_timeout_ms = cfg->reply_timeout * 1000,
                           .grace_ms = 500, /* late duplicates still count */
                           .progress_ms = cfg->quiet ? 0 : 5000,
                           .build = workload_payment,
                           .arg = &run->w,
                           .stop = &stop_requested };
    uint64_t busy0 = 0, total0 = 0, busy1 = 0, total1 = 0;
    bool host = procs_host_cpu(&busy0, &total0) == PAYQ_OK;
    double self0 = self_cpu_s(), workers0 = fleet_cpu_seconds(&run->fleet);
    static struct procs_sample broker0, broker1, database0, database1;
    procs_sample_named("beam.smp", &broker0);
    procs_sample_named("postgres", &database0);
    double t0 = now_s();
    if (cfg->rate > 0)
        fprintf(stderr, "payq-bench: measuring: %ld payments/s %s %ld %s\n", cfg->rate,
                cfg->count ? "until" : "for", cfg->count ? cfg->count : cfg->duration,
                cfg->count ? "are published" : "s");
    else
        fprintf(stderr, "payq-bench: measuring: as fast as possible %s %ld %s\n",
                cfg->count ? "until" : "for", cfg->count ? cfg->count : cfg->duration,
                cfg->count ? "are published" : "s");
    struct disk_probe *probe = NULL;
    char probe_why[160] = "off (--no-disk-probe)";
    /* A probe that cannot start says why in the report; the run goes on. */
    if (!cfg->no_disk_probe && disk_probe_start(probe_dir(cfg), DISK_PROBE_INTERVAL_MS, &probe,
                                                probe_why, sizeof probe_why) != PAYQ_OK)
        probe = NULL;
    int rc = load_run(run->mq, &s, &run->m);
    double wall = now_s() - t0;
    disk_probe_stop(probe, &rep->disk, probe_why);
    host = host && procs_host_cpu(&busy1, &total1) == PAYQ_OK && total1 > total0;
    rep->bench_cpu = wall > 0 ? 100 * (self_cpu_s() - self0) / wall : 0;
    rep->workers_cpu = wall > 0 ? 100 * (fleet_cpu_seconds(&run->fleet) - workers0) / wall : 0;
    procs_sample_named("beam.smp", &broker1);
    procs_sample_named("postgres", &database1);
    rep->broker_cpu = wall > 0 ? 100 * procs_sample_delta(&broker0, &broker1) / wall : 0;
    rep->database_cpu = wall > 0 ? 100 * procs_sample_delta(&database0, &database1) / wall : 0;
    rep->worker_rss_mib = (double)fleet_peak_rss_kib(&run->fleet) / 1024.0;
    rep->host_cores = sysconf(_SC_NPROCESSORS_ONLN);
    rep->host_busy = host ? 100.0 * (double)(busy1 - busy0) / (double)(total1 - total0) : 0;
    if (rc != PAYQ_OK) {
        fprintf(stderr, "payq-bench: the measured phase failed: %s\n", run->m.error);
        return rc;
    }
    if (run->m.interrupted) {
        fprintf(stderr, "payq-bench: interrupted\n");
        return PAYQ_ERR_INTERRUPTED;
    }
    rep->m = &run->m;
    if (cfg->latency_log && *cfg->latency_log)
        write_latency_log(cfg->latency_log, &run->m, cfg->rate);
    rep->throughput = run->m.elapsed_s > 0 ? (double)run->m.replied / run->m.elapsed_s : 0;
    if (stats_latency(run->m.lat_us, run->m.nrep, run->m.sent, &rep->lat) != PAYQ_OK) {
        fprintf(stderr, "payq-bench: out of memory\n");
        return PAYQ_ERR_NOMEM;
    }
    return PAYQ_OK;
}

/*
 * Between setup and the measured phase. Setup writes tens of thousands of
 * rows (accounts, deposits with their postings, ledger entries, idempotency
 * keys and outbox events) in a few seconds; left alone, autovacuum vacuums and
 * analyzes those tables a few seconds into the measured phase, and on a small
 * machine that shows up as a burst of latency belonging to the setup, not to
 * the payments. So the bench does that maintenance itself, before measuring,
 * and reports how long it took. A failure (a role that may not vacuum) is
 * reported and the run goes on.
 */
static void settle_setup(struct run *run, struct report *rep)
{
    double t = now_s();
    if (db_exec(run->db, "VACUUM (ANALYZE) payq.accounts, payq.deposits, payq.postings,"
                         " payq.ledger_entries, payq.inbox, payq.outbox") != PAYQ_OK) {
        fprintf(stderr, "payq-bench: VACUUM (ANALYZE) of the tables setup wrote failed: %s\n",
                db_error(run->db));
        rep->settle_s = -1;
        return;
    }
    rep->settle_s = now_s() - t;
    if (!run->cfg.quiet)
        fprintf(stderr, "payq-bench: VACUUM (ANALYZE) of the tables setup wrote: %.2f s\n",
                rep->settle_s);
}

/* After the measured phase: stop the fleet, read the ledger, run check. */
static void verify(struct run *run, struct report *rep)
{
    mq_close(run->mq);
    run->mq = NULL;
    if (run->fleet.n) {
        bool clean = fleet_stop(&run->fleet, rep->workers_note, sizeof rep->workers_note);
        rep->workers = clean ? CHECK_OK : CHECK_FAILED;
    }
    int st = verify_read(run->db, run->prefix, BENCH_CURRENCY, &rep->v);
    if (st != PAYQ_OK && !db_ok(run->db)) {
        /* The database restarted during the run: one new connection. */
        db_close(run->db);
        run->db = NULL;
        if (connect_db(run) == PAYQ_OK)
            st = verify_read(run->db, run->prefix, BENCH_CURRENCY, &rep->v);
    }
    rep->ledger_read = st == PAYQ_OK;
    if (!rep->ledger_read)
        snprintf(rep->ledger_error, sizeof rep->ledger_error, "%s",
                 run->db ? db_error(run->db) : "no connection to PostgreSQL");
    report_judge(rep);
    if (!run->cfg.no_check)
        run_checker(&run->cfg, run->worker, rep);
}

int main(int argc, char **argv)
{
    struct run run;
    struct report rep;
    char err[512];
    int nargs, help, rc = EXIT_USAGE;
    memset(&run, 0, sizeof run);
    memset(&rep, 0, sizeof rep);
    log_init("payq-bench", LOG_WARN);

    if (cfg_parse(options, &run.cfg, &run.owned, argc, argv, &nargs, &help, err, sizeof err) !=
        PAYQ_OK) {
        fprintf(stderr, "payq-bench: %s\n", err);
        goto out;
    }
    if (help) {
        usage(stdout);
        rc = EXIT_PASSED;
        goto out;
    }
    if (nargs > 0) {
        fprintf(stderr, "payq-bench: unexpected argument %s (see --help)\n", argv[1]);
        goto out;
    }
    enum dist_kind kind;
    if (validate(&run.cfg, &rep.zipf_s, &kind, err, sizeof err) != PAYQ_OK) {
        fprintf(stderr, "payq-bench: %s\n", err);
        goto out;
    }
    const struct bench_config *cfg = &run.cfg;
    if ((cfg->spawn_workers > 0 || !cfg->no_check) && find_worker(&run) != PAYQ_OK) {
        fprintf(stderr,
                "payq-bench: cannot find an executable payq-worker at %s: build it "
                "(cmake --build build) or pass --worker PATH\n",
                run.worker);
        goto out;
    }
    install_signals();
    rc = EXIT_UNAVAILABLE;

    if (cfg->run_id)
        snprintf(run.prefix, sizeof run.prefix, "%s", cfg->run_id);
    else
        snprintf(run.prefix, sizeof run.prefix, "b%lldp%d", (long long)time(NULL), (int)getpid());
    rep.seed = cfg->seed ? (uint64_t)cfg->seed
                         : ((uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid() * 7919u) %
                                   9007199254740991u +
                               1;
    rep.cfg = cfg;
    rep.program = argv[0];
    rep.prefix = run.prefix;
    rep.worker = run.worker;
    run.w.prefix = run.prefix;
    run.w.currency = BENCH_CURRENCY;
    run.w.wallets = cfg->wallets;
    run.w.merchants = cfg->merchants;
    run.w.fund = cfg->fund;
    run.w.amount_min = cfg->amount_min;
    run.w.amount_max = cfg->amount_max;
    dist_seed(&run.w.rng, rep.seed);
    if (dist_new(kind, rep.zipf_s, (uint64_t)cfg->wallets, &run.w.wallet_dist) != PAYQ_OK ||
        dist_new(kind, rep.zipf_s, (uint64_t)cfg->merchants, &run.w.merchant_dist) != PAYQ_OK) {
        fprintf(stderr, "payq-bench: out of memory\n");
        goto out;
    }
    rep.top_wallet = dist_top_share(run.w.wallet_dist);
    rep.top_merchant = dist_top_share(run.w.merchant_dist);
    fprintf(stderr, "payq-bench: run %s, seed %" PRIu64 "\n", run.prefix, rep.seed);

    bool check_later = false;
    if (connect_db(&run) != PAYQ_OK)
        goto out;
    int st = check_fresh(&run, &check_later);
    if (st != PAYQ_OK) {
        rc = st == PAYQ_ERR_INVALID ? EXIT_USAGE : EXIT_UNAVAILABLE;
        goto out;
    }
    if (look_at_broker(&run, &rep) != PAYQ_OK)
        goto out;
    if (cfg->spawn_workers > 0) {
        char batch[32] = "";
        if (cfg->batch)
            snprintf(batch, sizeof batch, " --batch %ld", cfg->batch);
        fprintf(stderr,
                "payq-bench: starting %ld x %s --threads %ld --prefetch %ld --log-level %s%s\n",
                cfg->spawn_workers, run.worker, cfg->worker_threads, cfg->prefetch,
                cfg->worker_log_level, batch);
        if (fleet_start(&run.fleet, cfg, run.worker, run.prefix, rep.other_consumers,
                        &stop_requested) != PAYQ_OK)
            goto out;
    }
    if (check_later && (st = check_fresh(&run, NULL)) != PAYQ_OK) {
        rc = st == PAYQ_ERR_INVALID ? EXIT_USAGE : EXIT_UNAVAILABLE;
        goto out;
    }
    if (connect_mq(&run) != PAYQ_OK)
        goto out;

    rep.ref_before_ms = stats_machine_ref_ms();
    double t = now_s();
    if (!setup_phase(run.mq, cfg, run.prefix, "account.open", 'o',
                     (uint64_t)(cfg->wallets + cfg->merchants), workload_open, &run.w) ||
        !setup_phase(run.mq, cfg, run.prefix, "account.deposit", 'd', (uint64_t)cfg->wallets,
                     workload_deposit, &run.w))
        goto out;
    rep.setup_s = now_s() - t;
    rep.setup_commands = (uint64_t)(2 * cfg->wallets + cfg->merchants);
    settle_setup(&run, &rep);

    if (measure(&run, &rep) != PAYQ_OK)
        goto out;
    rep.ref_after_ms = stats_machine_ref_ms();
    verify(&run, &rep);
    report_print(&rep, stdout);
    rc = report_ok(&rep) ? EXIT_PASSED : EXIT_CHECK_FAILED;
out:
    run_free(&run);
    /* Worker logs (a line per command at info) are kept only when needed. */
    for (int k = 0; k < run.fleet.n; k++) {
        if (rc == EXIT_PASSED)
            unlink(run.fleet.log[k]);
        else
            fprintf(stderr, "payq-bench: worker log kept: %s\n", run.fleet.log[k]);
    }
    return rc;
}
