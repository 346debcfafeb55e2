/*
 * fleet.c - spawned payq-worker processes (see fleet.h).
 */
#include "fleet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "broker.h"
#include "procs.h"
#include "topology.h"

#define READY_TIMEOUT_MS 90000 /* a first start migrates the database */
#define STOP_TIMEOUT_MS 30000

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void describe_status(int st, char *out, size_t len)
{
    if (WIFEXITED(st))
        snprintf(out, len, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(out, len, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(out, len, "wait status %d", st);
}

/* Every spawned worker still runs? Reports the first that exited. */
static bool all_alive(struct fleet *f)
{
    for (int k = 0; k < f->n; k++) {
        if (!f->reaped[k] && procs_exited(f->pid[k], &f->status[k])) {
            f->reaped[k] = true;
            char why[64];
            describe_status(f->status[k], why, sizeof why);
            fprintf(stderr,
                    "payq-bench: payq-worker %d (pid %d) exited during start (%s); "
                    "the end of %s:\n",
                    k, (int)f->pid[k], why, f->log[k]);
            procs_print_tail(stderr, f->log[k], 12);
            return false;
        }
    }
    return true;
}

/* The fallback readiness signal: each log says all its threads consume. */
static bool logs_ready(const struct fleet *f, long threads)
{
    for (int k = 0; k < f->n; k++)
        if (procs_count_lines(f->log[k], "consuming") < threads)
            return false;
    return true;
}

int fleet_start(struct fleet *f, const struct bench_config *cfg, const char *worker,
                const char *prefix, uint32_t consumers_before, volatile sig_atomic_t *stop)
{
    char threads[24], prefetch[24], batch[24];
    snprintf(threads, sizeof threads, "%ld", cfg->worker_threads);
    snprintf(prefetch, sizeof prefetch, "%ld", cfg->prefetch);
    snprintf(batch, sizeof batch, "%ld", cfg->batch);
    /* Without --batch the list ends at its NULL: the worker's own default. */
    char *argv[] = { (char *)(uintptr_t)worker,
                     "run",
                     "--metrics-port", /* several workers on one host: no shared port */
                     "0",
                     "--threads",
                     threads,
                     "--prefetch",
                     prefetch,
                     "--log-level",
                     (char *)(uintptr_t)cfg->worker_log_level,
                     cfg->batch ? "--batch" : NULL,
                     batch,
                     NULL };
    struct procs_env env = { cfg->amqp_url, cfg->database_url, &cfg->amqp_tls };
    const char *dir = cfg->log_dir;
    if (!dir || !*dir)
        dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

    for (int k = 0; k < cfg->spawn_workers && k < FLEET_MAX; k++) {
        int w =
            snprintf(f->log[k], sizeof f->log[k], "%s/payq-bench-%s-worker%d.log", dir, prefix, k);
        if (w < 0 || (size_t)w >= sizeof f->log[k] ||
            procs_spawn(argv, &env, f->log[k], &f->pid[k]) != PAYQ_OK) {
            fprintf(stderr, "payq-bench: cannot start %s (log %s)\n", worker, f->log[k]);
            goto fail;
        }
        f->n++;
    }

    uint32_t want = consumers_before + (uint32_t)(f->n * cfg->worker_threads);
    int64_t deadline = now_ms() + READY_TIMEOUT_MS;
    char err[256] = "";
    for (;;) {
        if (*stop)
            goto fail;
        if (!all_alive(f))
            goto fail;
        uint32_t messages, consumers = 0;
        int rc = broker_queue_stats(cfg->amqp_url, &cfg->amqp_tls, PAYQ_Q_COMMANDS, &messages,
                                    &consumers, err, sizeof err);
        if ((rc == PAYQ_OK && consumers >= want) || logs_ready(f, cfg->worker_threads))
            return PAYQ_OK;
        if (now_ms() > deadline) {
            fprintf(stderr,
                    "payq-bench: the workers did not start consuming within %d s "
                    "(%u of %u consumers on %s%s%s); the end of %s:\n",
                    READY_TIMEOUT_MS / 1000, consumers, want, PAYQ_Q_COMMANDS, err[0] ? ": " : "",
                    err, f->log[0]);
            procs_print_tail(stderr, f->log[0], 12);
            goto fail;
        }
        struct timespec ts = { 0, 200 * 1000000L };
        nanosleep(&ts, NULL);
    }
fail:;
    char note[8];
    (void)fleet_stop(f, note, sizeof note);
    return PAYQ_ERR_INTERRUPTED;
}

double fleet_cpu_seconds(const struct fleet *f)
{
    double sum = 0;
    for (int k = 0; k < f->n; k++) {
        double s = f->reaped[k] ? -1 : procs_cpu_seconds(f->pid[k]);
        if (s > 0)
            sum += s;
    }
    return sum;
}

long fleet_peak_rss_kib(const struct fleet *f)
{
    long most = 0;
    for (int k = 0; k < f->n; k++) {
        long kib = f->reaped[k] ? -1 : procs_peak_rss_kib(f->pid[k]);
        if (kib > most)
            most = kib;
    }
    return most;
}

bool fleet_stop(struct fleet *f, char *note, size_t notelen)
{
    bool ok = true;
    note[0] = 0;
    for (int k = 0; k < f->n; k++)
        if (!f->reaped[k] && !procs_exited(f->pid[k], &f->status[k]))
            kill(f->pid[k], SIGTERM);
        else
            f->reaped[k] = true; /* it had exited on its own: status is set */
    for (int k = 0; k < f->n; k++) {
        if (!f->reaped[k]) {
            procs_reap(f->pid[k], STOP_TIMEOUT_MS, &f->status[k]);
            f->reaped[k] = true;
        }
        if (!WIFEXITED(f->status[k]) || WEXITSTATUS(f->status[k]) != 0) {
            if (ok) {
                char why[64];
                describe_status(f->status[k], why, sizeof why);
                snprintf(note, notelen, "payq-worker %d (pid %d) ended with %s; see %s", k,
                         (int)f->pid[k], why, f->log[k]);
            }
            ok = false;
        }
    }
    return ok;
}
