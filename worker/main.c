/*
 * payq-worker - consumes payment commands and applies them to PostgreSQL.
 *
 *   payq-worker [run]     migrate (unless --no-migrate), then consume until SIGTERM
 *   payq-worker migrate   apply the SQL migrations and exit
 *   payq-worker report    print balances and payment outcomes as tables
 *   payq-worker status    queues, payments, sagas, throughput, outbox and DLQ at a glance
 *   payq-worker check     verify the invariants of the ledger, holds, refunds and history
 *   payq-worker version   print the version
 *
 * Signals are taken by sigwait() in the main thread, so no code runs in a
 * signal handler: the first SIGTERM/SIGINT asks every thread to finish the
 * delivery in hand and stop; a second one exits at once.
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "http.h"
#include "log.h"
#include "relay.h"
#include "overview.h"
#include "report.h"
#include "worker.h"

#define OPT(f, e, t, d, lo, hi, field, mv, h) \
    { f, e, t, d, lo, hi, offsetof(struct worker_config, field), mv, h }

static const struct cfg_opt options[] = {
    OPT("amqp-url", "AMQP_URL", CFG_SECRET, "amqp://guest:guest@localhost:5672", 0, 0, amqp_url,
        "URL[,URL...]",
        "RabbitMQ to consume from (amqp:// or amqps://user:password@host:port/vhost); the nodes "
        "of a cluster as a comma-separated list, later ones also as host:port, tried in turn"),
    OPT("amqp-cacert", "AMQP_CACERT", CFG_STR, NULL, 0, 0, amqp_tls.cacert, "FILE",
        "amqps://: PEM file of the CA(s) that signed the broker's certificate (default: the "
        "system's CAs). The certificate is always verified and must name the URL's host"),
    OPT("amqp-cert", "AMQP_CERT", CFG_STR, NULL, 0, 0, amqp_tls.cert, "FILE",
        "amqps://: client certificate (PEM) for mutual TLS, with --amqp-key"),
    OPT("amqp-key", "AMQP_KEY", CFG_STR, NULL, 0, 0, amqp_tls.key, "FILE",
        "amqps://: the client certificate's private key (PEM, not encrypted)"),
    OPT("database-url", "DATABASE_URL", CFG_SECRET, "", 0, 0, database_url, "URL",
        "PostgreSQL to apply commands to (postgresql://user:password@host:port/db; TLS: "
        "?sslmode=verify-full&sslrootcert=FILE); empty = libpq's PGHOST, PGUSER, ... variables"),
    OPT("threads", "PAYQ_THREADS", CFG_INT, "2", 1, 256, threads, "N",
        "worker threads, each with its own broker and database connection"),
    OPT("prefetch", "PAYQ_PREFETCH", CFG_INT, "32", 1, 65535, prefetch, "N",
        "unacked deliveries the broker may send each thread ahead (basic.qos)"),
    OPT("batch", "PAYQ_BATCH", CFG_INT, "16", 1, 1000, batch, "N",
        "deliveries applied in one database transaction (one commit, one confirm wait, one "
        "ack), at most"),
    OPT("batch-wait-ms", "PAYQ_BATCH_WAIT_MS", CFG_INT, "5", 0, 1000, batch_wait_ms, "MS",
        "once a delivery is in hand, how long a thread waits for more to join its batch "
        "(0 = only what has already arrived). A few ms cost that much latency on a quiet "
        "queue and save a commit per delivery under load"),
    OPT("queue", "PAYQ_QUEUE", CFG_STR, "payq.commands", 0, 0, queue, "NAME",
        "work queue to consume"),
    OPT("max-attempts", "PAYQ_MAX_ATTEMPTS", CFG_INT, "8", 1, 1000, max_attempts, "N",
        "attempts of a transiently failing command before it is dead-lettered "
        "(retries_exhausted)"),
    OPT("retry-base-ms", "PAYQ_RETRY_BASE_MS", CFG_INT, "1000", 1, 3600000, retry_base_ms, "MS",
        "first retry delay ceiling; doubles per attempt, full jitter, rounded up to a delay tier"),
    OPT("retry-cap-ms", "PAYQ_RETRY_CAP_MS", CFG_INT, "3600000", 1, 3600000, retry_cap_ms, "MS",
        "largest retry delay"),
    OPT("retry-deadline-s", "PAYQ_RETRY_DEADLINE_S", CFG_INT, "86400", 1, 31536000,
        retry_deadline_s, "SEC",
        "give up (retries_exhausted) once this long has passed since the first failure"),
    OPT("poison-deliveries", "PAYQ_POISON_DELIVERIES", CFG_INT, "5", 2, 9, poison_deliveries,
        "N",
        "a message delivered this many times without an outcome (it killed or stalled the "
        "workers that took it) goes to the DLQ as poison; the queue's x-delivery-limit (10) is "
        "the backstop"),
    OPT("circuit-threshold", "PAYQ_CIRCUIT_THRESHOLD", CFG_INT, "5", 1, 1000, circuit_threshold,
        "N",
        "consecutive transient failures (database or provider) after which a thread stops "
        "taking new work and probes the same command with backoff until it succeeds"),
    OPT("inbox-retention-hours", "PAYQ_INBOX_RETENTION_HOURS", CFG_INT, "24", 1, 87600,
        inbox_retention_hours, "H",
        "keep message_id idempotency keys at least this long (keys of unfinished commands and "
        "business ids are never pruned)"),
    OPT("reaper-interval-s", "PAYQ_REAPER_INTERVAL_S", CFG_INT, "60", 1, 86400,
        reaper_interval_s, "SEC",
        "how often the reaper runs: prunes expired idempotency keys, expires wallet holds past "
        "their deadline (7 days), resumes stuck sagas"),
    OPT("stuck-after-s", "PAYQ_STUCK_AFTER_S", CFG_INT, "600", 1, 604800, stuck_after_s, "SEC",
        "a payment saga in flight this long is resumed by the reaper from its recovery point"),
    OPT("sim-flaky-percent", "PAYQ_SIM_FLAKY_PERCENT", CFG_INT, "30", 0, 100, sim_flaky_percent,
        "PCT", "simulated provider: chance that a call for tok_flaky fails transiently"),
    OPT("sim-slow-ms", "PAYQ_SIM_SLOW_MS", CFG_INT, "1500", 0, 60000, sim_slow_ms, "MS",
        "simulated provider: how long tok_slow takes to answer"),
    OPT("heartbeat", "PAYQ_HEARTBEAT", CFG_INT, "30", 0, 3600, heartbeat, "SEC",
        "AMQP heartbeat interval (0 = off)"),
    OPT("statement-timeout-ms", "PAYQ_STATEMENT_TIMEOUT_MS", CFG_INT, "5000", 0, 600000,
        statement_timeout_ms, "MS",
        "longest database statement; keep well under the heartbeat"),
    OPT("no-migrate", "PAYQ_NO_MIGRATE", CFG_BOOL, NULL, 0, 0, no_migrate, NULL,
        "do not apply SQL migrations at start"),
    OPT("no-declare", "PAYQ_NO_DECLARE", CFG_BOOL, NULL, 0, 0, no_declare, NULL,
        "do not declare the RabbitMQ topology at start (it was imported from definitions.json)"),
    OPT("no-relay", "PAYQ_NO_RELAY", CFG_BOOL, NULL, 0, 0, no_relay, NULL,
        "do not run the outbox relay that publishes events to payq.events (one relay "
        "publishes at a time across all workers; the others stand by)"),
    OPT("relay-batch", "PAYQ_RELAY_BATCH", CFG_INT, "500", 1, 10000, relay_batch, "N",
        "outbox events the relay publishes per batch (one confirm wait, one UPDATE)"),
    OPT("metrics-port", "PAYQ_METRICS_PORT", CFG_INT, "9464", 0, 65535, metrics_port, "PORT",
        "HTTP port of /metrics (Prometheus), /healthz and /readyz; 0 = off. Each worker "
        "process on a host needs its own"),
    OPT("metrics-address", "PAYQ_METRICS_ADDRESS", CFG_STR, "127.0.0.1", 0, 0, metrics_address,
        "IP", "numeric IPv4 or IPv6 address the metrics port listens on (0.0.0.0 or :: for all)"),
    OPT("sql-dir", "PAYQ_SQL_DIR", CFG_STR, NULL, 0, 0, sql_dir, "DIR",
        "directory of the SQL migrations (default: the source tree's sql/, else "
        "/usr/local/share/payq/sql)"),
    OPT("log-level", "PAYQ_LOG_LEVEL", CFG_STR, "info", 0, 0, log_level, "LEVEL",
        "debug, info, warn or error"),
    OPT("prefix", NULL, CFG_STR, "", 0, 0, prefix, "TEXT",
        "report: only accounts and payments whose id starts with TEXT"),
    OPT("json", NULL, CFG_BOOL, NULL, 0, 0, json, NULL,
        "status: print one JSON object instead of tables"),
    OPT("mgmt-url", "PAYQ_MGMT_URL", CFG_STR, "http://127.0.0.1:15673", 0, 0, mgmt_url, "URL",
        "status: RabbitMQ management API, for unacked counts (logs in with the AMQP URL's "
        "user and password; empty = do not ask)"),
    OPT("fault", "PAYQ_FAULT", CFG_STR, NULL, 0, 0, fault, "POINT",
        "testing only: SIGKILL the worker the N-th time it reaches POINT (POINT[:N]; points: "
        "after_commit, before_provider_call, after_provider_call, before_ack)"),
    CFG_END
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: payq-worker [COMMAND] [OPTIONS]\n"
            "\n"
            "Consumes payment commands from RabbitMQ and applies each one exactly once to\n"
            "PostgreSQL, replying to reply_to and dead-lettering what can never succeed.\n"
            "\n"
            "Commands:\n"
            "  run        migrate the database (unless --no-migrate), then consume until\n"
            "             SIGTERM or SIGINT (the default)\n"
            "  migrate    apply the SQL migrations in --sql-dir and exit\n"
            "  report     print account balances and payment outcomes as tables\n"
            "             (--prefix limits them to ids starting with it)\n"
            "  check      verify every invariant (balanced postings, no overdraft, holds,\n"
            "             refunds, one outbox event per state change, history rebuilds\n"
            "             state); exits 1 and lists what is wrong on any violation\n"
            "  status     queues (ready, unacked, consumers), payments by status, sagas in\n"
            "             flight, throughput, outbox backlog and top dead-letter reasons;\n"
            "             --json prints one JSON object; exits 1 when the broker or the\n"
            "             database cannot be read\n"
            "  version    print the version and exit\n"
            "\n"
            "Options (each also read from the environment variable shown):\n");
    cfg_usage(out, options);
    fprintf(out,
            "\n"
            "Passwords belong in AMQP_URL / DATABASE_URL or in files named by\n"
            "AMQP_URL_FILE / DATABASE_URL_FILE, not on the command line, where `ps` shows\n"
            "them. They are never logged.\n"
            "\n"
            "Exit status: 0 after a clean stop or migration, 1 on a runtime error,\n"
            "2 on a usage or configuration error.\n"
            "\n"
            "Example:\n"
            "  AMQP_URL=amqp://payq:payq@127.0.0.1:5673 \\\n"
            "  DATABASE_URL=postgresql://payq:payq@127.0.0.1:5433/payq payq-worker --threads 4\n");
}

static int migrate(const struct worker_config *cfg)
{
    db_t *db;
    const char *dir = cfg->sql_dir ? cfg->sql_dir : db_default_sql_dir();
    if (db_connect(cfg->database_url, "payq-worker migrate", 0, &db) != PAYQ_OK) {
        char red[512];
        cfg_redact_url(cfg->database_url && *cfg->database_url ? cfg->database_url
                                                                : "(PG* environment)",
                       red, sizeof red);
        log_error("cannot migrate: no database at %s — is PostgreSQL running? "
                  "(bash tests/stack.sh up starts a local one)", red);
        return 1;
    }
    int applied = 0;
    int rc = db_migrate(db, dir, &applied);
    db_close(db);
    if (rc != PAYQ_OK)
        return 1;
    log_info("database schema is current (%d migration%s applied now, from %s)", applied,
             applied == 1 ? "" : "s", dir);
    return 0;
}

static int report(const struct worker_config *cfg)
{
    db_t *db;
    if (db_connect(cfg->database_url, "payq-worker report", 30000, &db) != PAYQ_OK)
        return 1;
    int rc = report_print(db, stdout, cfg->prefix, 1000);
    if (rc != PAYQ_OK)
        log_error("report failed: %s", db_error(db));
    db_close(db);
    return rc == PAYQ_OK ? 0 : 1;
}

static int check(const struct worker_config *cfg)
{
    db_t *db;
    if (db_connect(cfg->database_url, "payq-worker check", 0, &db) != PAYQ_OK)
        return 1;
    int violations = 0;
    int rc = report_check(db, stdout, &violations);
    if (rc != PAYQ_OK)
        log_error("check failed: %s", db_error(db));
    db_close(db);
    return rc == PAYQ_OK && violations == 0 ? 0 : 1;
}

static int status(const struct worker_config *cfg)
{
    const struct status_config sc = {
        .amqp_url = cfg->amqp_url,
        .database_url = cfg->database_url,
        .mgmt_url = cfg->mgmt_url,
        .statement_timeout_ms = cfg->statement_timeout_ms,
        .json = cfg->json,
        .amqp_tls = &cfg->amqp_tls,
    };
    return status_print(&sc, stdout) == PAYQ_OK ? 0 : 1;
}

static int run(const struct worker_config *cfg)
{
    if (!cfg->no_migrate && migrate(cfg) != 0)
        return 1;
    char red[512];
    cfg_redact_url(cfg->amqp_url, red, sizeof red);
    log_info("payq-worker %s starting: %ld thread(s), broker %s", PAYQ_VERSION, cfg->threads,
             red);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by every thread */
    signal(SIGPIPE, SIG_IGN);

    struct worker_shared shared = { .cfg = cfg };
    atomic_init(&shared.stop, 0);
    atomic_init(&shared.relay_stop, 0);
    if (fault_parse(&shared.fault, cfg->fault) != 0) {
        log_error("--fault must be POINT or POINT:N");
        return 2;
    }
    shared.health = http_health_new((int)cfg->threads);
    if (!shared.health) {
        log_error("out of memory");
        return 1;
    }
    /* After pthread_sigmask: the server's thread inherits the mask. */
    http_server_t *http = NULL;
    int rc = http_start(cfg->metrics_address, (int)cfg->metrics_port, shared.health, &http);
    if (rc != PAYQ_OK) {
        http_health_free(shared.health);
        return rc == PAYQ_ERR_INVALID ? 2 : 1; /* a bad address is a configuration error */
    }
    struct relay_arg relay = { &shared };
    long want = cfg->threads + (cfg->no_relay ? 0 : 1); /* the relay is the last thread */
    pthread_t *tids = calloc((size_t)want, sizeof *tids);
    struct worker_thread_arg *args = calloc((size_t)cfg->threads, sizeof *args);
    if (!tids || !args) {
        free(tids);
        free(args);
        http_stop(http);
        http_health_free(shared.health);
        log_error("out of memory");
        return 1;
    }
    long started = 0;
    for (long i = 0; i < cfg->threads; i++) {
        args[i].shared = &shared;
        args[i].index = (int)i;
        if (pthread_create(&tids[i], NULL, worker_thread, &args[i]) != 0) {
            log_error("cannot start thread %ld", i);
            atomic_store(&shared.stop, 1);
            break;
        }
        started++;
    }
    if (started == cfg->threads && !cfg->no_relay) {
        if (pthread_create(&tids[started], NULL, relay_thread, &relay) != 0) {
            log_error("cannot start the outbox relay thread");
            atomic_store(&shared.stop, 1);
        } else {
            started++;
        }
    }

    int sig;
    if (started == want && sigwait(&set, &sig) == 0) {
        log_info("received %s: finishing the deliveries in hand, then stopping",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT");
        atomic_store(&shared.stop, 1);
    }
    atomic_store(&shared.stop, 1); /* also when a thread failed to start */
    /* The consumer threads finish their batches first; then the relay
     * publishes what they wrote to the outbox, and stops. A second signal
     * while draining exits at once: unacked deliveries are redelivered and
     * the outbox is published by the next relay, so nothing is lost. */
    for (long i = 0; i < started; i++) {
        struct timespec ts;
        if (i == cfg->threads)
            atomic_store(&shared.relay_stop, 1);
        for (;;) {
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            if (pthread_timedjoin_np(tids[i], NULL, &ts) == 0)
                break;
            struct timespec zero = { 0, 0 };
            if (sigtimedwait(&set, NULL, &zero) > 0) {
                log_warn("second signal: exiting now");
                _exit(1);
            }
        }
    }
    free(tids);
    free(args);
    http_stop(http);
    http_health_free(shared.health);
    log_info("payq-worker stopped");
    return 0;
}

int main(int argc, char **argv)
{
    struct worker_config cfg;
    struct cfg_strings owned = { { 0 }, 0 };
    char err[512];
    int nargs, help;
    memset(&cfg, 0, sizeof cfg);
    if (cfg_parse(options, &cfg, &owned, argc, argv, &nargs, &help, err, sizeof err) != PAYQ_OK) {
        fprintf(stderr, "payq-worker: %s\n", err);
        return 2;
    }
    if (help) {
        usage(stdout);
        cfg_strings_free(&owned);
        return 0;
    }
    int level = log_level_parse(cfg.log_level);
    if (level < 0) {
        fprintf(stderr, "payq-worker: --log-level must be debug, info, warn or error\n");
        cfg_strings_free(&owned);
        return 2;
    }
    log_init("payq-worker", (enum log_level)level);
    const char *command = nargs > 0 ? argv[1] : "run";
    int rc;
    bool uses_broker = strcmp(command, "run") == 0 || strcmp(command, "status") == 0;
    if (uses_broker && mq_tls_check(cfg.amqp_url, &cfg.amqp_tls, err, sizeof err) != PAYQ_OK) {
        log_error("%s", err);
        rc = 2;
    } else if (nargs > 1) {
        fprintf(stderr, "payq-worker: unexpected argument %s (see --help)\n", argv[2]);
        rc = 2;
    } else if (strcmp(command, "run") == 0) {
        rc = run(&cfg);
    } else if (strcmp(command, "migrate") == 0) {
        rc = migrate(&cfg);
    } else if (strcmp(command, "check") == 0) {
        rc = check(&cfg);
    } else if (strcmp(command, "report") == 0) {
        rc = report(&cfg);
    } else if (strcmp(command, "status") == 0) {
        rc = status(&cfg);
    } else if (strcmp(command, "version") == 0) {
        printf("payq-worker %s\n", PAYQ_VERSION);
        rc = 0;
    } else {
        fprintf(stderr, "payq-worker: unknown command %s (run, migrate, report, check, status or version; see --help)\n",
                command);
        rc = 2;
    }
    cfg_strings_free(&owned);
    return rc;
}
