/*
 * payq-dlq - the dead-letter tool: list, show, stats, replay, discard,
 * export, import, sync.
 *
 * This file holds the options, --help, the checks of each command's
 * arguments and the connections; dlq.h says where the rest lives and how a
 * dead letter is kept (a row in payq.dead_letters, the truth, and a copy in
 * payq.dlq).
 */
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dlq.h"
#include "log.h"
#include "topology.h"

/* AMQP heartbeat, seconds: long enough for the slowest statement. */
#define HEARTBEAT 60

#define OPT(f, e, t, d, lo, hi, field, mv, h)                         \
    {                                                                 \
        f, e, t, d, lo, hi, offsetof(struct dlq_config, field), mv, h \
    }

/*
 * Selection options have no environment variable on purpose: one left in
 * a shell would silently change what a replay or a discard touches.
 */
static const struct cfg_opt options[] = {
    OPT("amqp-url", "AMQP_URL", CFG_SECRET, "amqp://guest:guest@localhost:5672", 0, 0, amqp_url,
        "URL[,URL...]",
        "RabbitMQ (replay, discard, sync, import); a cluster's nodes comma-separated"),
    OPT("amqp-cacert", "AMQP_CACERT", CFG_STR, NULL, 0, 0, amqp_tls.cacert, "FILE",
        "amqps://: PEM file of the CA(s) that signed the broker's certificate (default: the "
        "system's CAs). The certificate is always verified and must name the URL's host"),
    OPT("amqp-cert", "AMQP_CERT", CFG_STR, NULL, 0, 0, amqp_tls.cert, "FILE",
        "amqps://: client certificate (PEM) for mutual TLS, with --amqp-key"),
    OPT("amqp-key", "AMQP_KEY", CFG_STR, NULL, 0, 0, amqp_tls.key, "FILE",
        "amqps://: the client certificate's private key (PEM, not encrypted)"),
    OPT("database-url", "DATABASE_URL", CFG_SECRET, NULL, 0, 0, database_url, "URL",
        "PostgreSQL URI or keyword string (TLS: ?sslmode=verify-full&sslrootcert=FILE); unset = "
        "libpq's PG* variables"),
    OPT("queue", "PAYQ_DLQ", CFG_STR, PAYQ_Q_DLQ, 0, 0, queue, "NAME",
        "the dead-letter queue to reconcile"),
    OPT("reason", NULL, CFG_STR, NULL, 0, 0, reason, "CODE|TEXT",
        "filter: dead letters with this reason code (malformed_json, retries_exhausted, ...). "
        "In discard it is instead the required note saying why (kept in resolution_note); "
        "filter there with --code"),
    OPT("code", NULL, CFG_STR, NULL, 0, 0, code, "CODE",
        "filter on the reason code, in every command (the same as --reason outside discard)"),
    OPT("routing-key", NULL, CFG_STR, NULL, 0, 0, routing_key, "RK",
        "filter: the command's routing key; * is a wildcard (payment.*)"),
    OPT("since", NULL, CFG_STR, NULL, 0, 0, since, "WHEN",
        "filter: archived at or after WHEN: RFC 3339 (2026-11-27T16:00:00Z) or an age (30m, 2h, "
        "7d)"),
    OPT("until", NULL, CFG_STR, NULL, 0, 0, until, "WHEN", "filter: archived at or before WHEN"),
    OPT("grep", NULL, CFG_STR, NULL, 0, 0, grep, "TEXT",
        "filter: TEXT in the body, the error, the message_id, the business id or the "
        "correlation_id (case-sensitive)"),
    OPT("status", NULL, CFG_STR, "dead", 0, 0, status, "STATUS",
        "filter: dead, replayed, discarded or all (ids named on the command line are taken "
        "whatever their status)"),
    OPT("limit", NULL, CFG_INT, "0", 0, 100000000, limit, "N",
        "at most N dead letters (list: the newest N, default 200; stats: N groups; others: the "
        "oldest N, default all)"),
    OPT("all", NULL, CFG_BOOL, NULL, 0, 0, all, NULL,
        "replay, discard: every dead letter the filters select, even with no filter"),
    OPT("dry-run", NULL, CFG_BOOL, NULL, 0, 0, dry_run, NULL,
        "replay, discard: print what would be done, change nothing"),
    OPT("force", NULL, CFG_BOOL, NULL, 0, 0, force, NULL,
        "replay: also dead letters already replayed or discarded; discard: also replayed ones"),
    OPT("rate", "PAYQ_DLQ_RATE", CFG_INT, "0", 0, 1000000, rate, "N",
        "replay: at most N messages per second (0 = as fast as the broker confirms)"),
    OPT("canary", NULL, CFG_INT, "0", 0, 10000, canary, "N",
        "replay: replay the first N, wait for their outcome, and stop before the rest if any "
        "failed again"),
    OPT("canary-timeout", "PAYQ_DLQ_CANARY_TIMEOUT", CFG_INT, "30", 1, 3600, canary_timeout, "S",
        "replay: how long to wait for the canaries' outcome; none within it counts as failed"),
    OPT("statement-timeout-ms", "PAYQ_STATEMENT_TIMEOUT_MS", CFG_INT, "30000", 0, 3600000,
        statement_timeout_ms, "MS", "longest SQL statement (export has none)"),
    OPT("log-level", "PAYQ_LOG_LEVEL", CFG_STR, "warn", 0, 0, log_level, "LEVEL",
        "debug, info, warn or error (JSON lines on stderr)"),
    CFG_END
};

/* clang-format off */
static void usage(FILE *out)
{
    fprintf(out,
"Usage: payq-dlq COMMAND [ARGUMENTS] [OPTIONS]\n"
"\n"
"Inspects, replays and discards payq's dead letters. A dead letter is a row in PostgreSQL\n"
"(payq.dead_letters, with its full diagnostics) and a message in the queue payq.dlq whose\n"
"header x-payq-dead-letter-id names the row.\n"
"\n"
"Commands:\n"
"  list                     one line per dead letter, newest last: id, age, reason, command,\n"
"                           business id, message_id, attempts, status\n"
"  show ID                  one dead letter: status, diagnostics (full error, SQLSTATE,\n"
"                           fingerprint, worker, first and last failure), properties and\n"
"                           headers, every failed attempt, the body\n"
"  stats                    counts grouped by reason and fingerprint (one cause), with the\n"
"                           first and last time seen and an example error\n"
"  replay ID...             publish again to the original exchange and routing key, with the\n"
"  replay FILTERS | --all   original properties and message_id and a fresh attempt count;\n"
"                           after the broker's confirm the row is marked replayed and its\n"
"                           queue copy removed. Progress on stderr when it is a terminal\n"
"  discard ID... | FILTERS | --all  --reason TEXT\n"
"                           mark dead letters discarded (TEXT is recorded) and remove their\n"
"                           queue copies\n"
"  export                   the rows as NDJSON on stdout: every column, properties as JSON,\n"
"                           the body in base64 under \"body_base64\"\n"
"  import FILE|-            insert the rows of an export that are not here yet and publish\n"
"                           their copies to payq.dlx, so queue and archive agree\n"
"  sync                     reconcile payq.dlq with the rows: remove the copies of replayed\n"
"                           and discarded dead letters, archive messages that have no row\n"
"\n"
"ID is the id `list` shows (at least 4 hex digits, if unique) or the full uuid.\n"
"list, show, stats and export read PostgreSQL only: they never take, reorder or re-count\n"
"a message of the queue. Replay, discard and sync read the queue once each (basic.get),\n"
"ack what is resolved and leave every other message where it was.\n"
"\n"
"Options (filters apply to list, stats, export, replay and discard):\n");
    cfg_usage(out, options);
    fprintf(out,
"\n"
"Replay never loses a message: the row is marked only after the broker confirmed the copy,\n"
"so a replay killed midway leaves it 'dead', and replaying it again is harmless because the\n"
"message_id and the business id are unchanged (the worker applies a command once). It\n"
"takes the dead letters archived before it started, oldest first. Rows whose body was\n"
"masked (a card number; `show` says \"redacted\") are refused. With --canary N, success is\n"
"the worker's stored reply for the message_id (any status but \"rejected\"); failure is a\n"
"new failed attempt, a new dead letter, or no outcome within --canary-timeout; a canary\n"
"that failed is put back to 'dead'.\n"
"\n"
"Examples:\n"
"  payq-dlq list --reason malformed_json --since 2h\n"
"  payq-dlq show 3f2a9c1b\n"
"  payq-dlq stats --since 7d\n"
"  payq-dlq replay --routing-key 'payment.*' --since 1d --dry-run\n"
"  payq-dlq replay --reason retries_exhausted --canary 5 --rate 20\n"
"  payq-dlq discard 3f2a9c1b --reason \"sent twice by the order system, ticket OPS-12\"\n"
"  payq-dlq export --status all > dead-letters.ndjson\n"
"\n"
"Exit status: 0 ok; 1 runtime error, or (replay) a message failed or a canary failed\n"
"again; 2 usage error.\n"
"\n"
"Testing only: %s=1 makes replay SIGKILL itself right after\n"
"the broker confirmed a message, before its row is marked replayed.\n", DLQ_TEST_KILL_ENV);
}
/* clang-format on */

/* ---- signals ------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    if (interrupted)
        _exit(130); /* a second signal: at once (nothing unconfirmed is marked) */
    interrupted = 1;
}

bool dlq_interrupted(void)
{
    return interrupted != 0;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ---- connections --------------------------------------------------------- */

int dlq_need_mq(struct dlq *t)
{
    if (t->mq)
        return PAYQ_OK;
    char red[512];
    cfg_redact_url(t->cfg->amqp_url, red, sizeof red);
    mq_t *mq;
    if (mq_connect(t->cfg->amqp_url, &t->cfg->amqp_tls, "payq-dlq", HEARTBEAT, &mq) != PAYQ_OK) {
        const char *why = mq_connect_error();
        fprintf(stderr, "payq-dlq: cannot connect to RabbitMQ at %s: %s\n", red, why);
        /* A TLS error already names the certificate problem and its fix. */
        if (strstr(why, "ACCESS_REFUSED") || strstr(why, "NOT_ALLOWED"))
            fprintf(stderr, "  check the user, password and vhost in AMQP_URL / --amqp-url\n");
        else if (!strstr(why, "TLS"))
            fprintf(stderr, "  is RabbitMQ running? bash tests/stack.sh up starts a local one "
                            "(or set AMQP_URL / --amqp-url)\n");
        return PAYQ_ERR_AMQP;
    }
    /* The exchanges a replay or an import publishes to exist even on a
     * broker no worker has touched yet (idempotent). */
    if (mq_declare_topology(mq) != PAYQ_OK) {
        fprintf(stderr,
                "payq-dlq: cannot declare payq's exchanges and queues on %s: %s\n"
                "  the broker holds a different definition; compare it with "
                "rabbitmq/definitions.json\n",
                red, mq_error(mq));
        mq_close(mq);
        return PAYQ_ERR_AMQP;
    }
    t->mq = mq;
    return PAYQ_OK;
}

static int connect_db(struct dlq *t)
{
    char red[512];
    cfg_redact_url(t->cfg->database_url ? t->cfg->database_url : "(libpq's PG* variables)", red,
                   sizeof red);
    if (db_connect(t->cfg->database_url, "payq-dlq", t->cfg->statement_timeout_ms, &t->db) !=
        PAYQ_OK) {
        t->db = NULL;
        fprintf(stderr,
                "payq-dlq: cannot connect to PostgreSQL at %s (the cause is logged "
                "above)\n  is PostgreSQL running? bash tests/stack.sh up starts a local "
                "one (or set DATABASE_URL / --database-url)\n",
                red);
        return DLQ_EXIT_FAIL;
    }
    /* Times shown, and dates given to --since/--until, are UTC. */
    if (db_exec(t->db, "SET TimeZone = 'UTC'") != PAYQ_OK)
        return dlq_db_error(t, "setting the time zone");
    return DLQ_EXIT_OK;
}

/* ---- commands ---------------------------------------------------------------- */

enum command {
    CMD_LIST,
    CMD_SHOW,
    CMD_STATS,
    CMD_REPLAY,
    CMD_DISCARD,
    CMD_EXPORT,
    CMD_IMPORT,
    CMD_SYNC
};

static const char *const command_names[] = { "list",    "show",   "stats",  "replay",
                                             "discard", "export", "import", "sync" };

static int usage_error(const char *fmt, ...) PAYQ_PRINTF(1, 2);

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "payq-dlq: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (payq-dlq --help)\n");
    va_end(ap);
    return DLQ_EXIT_USAGE;
}

/* Checks the arguments and options of command c before anything connects. */
static int check_usage(enum command c, const struct dlq_config *cfg, int nargs)
{
    const char *name = command_names[c];
    bool takes_ids = c == CMD_SHOW || c == CMD_REPLAY || c == CMD_DISCARD || c == CMD_IMPORT;
    if (!takes_ids && nargs > 0)
        return usage_error("%s takes no arguments (did you mean show ID?)", name);
    if (c == CMD_SHOW && nargs != 1)
        return usage_error("%s needs exactly one ID (from payq-dlq list)", name);
    if (c == CMD_IMPORT && nargs != 1)
        return usage_error("%s needs one FILE, or - for stdin", name);
    if ((cfg->dry_run || cfg->all || cfg->force) && c != CMD_REPLAY && c != CMD_DISCARD)
        return usage_error("--dry-run, --all and --force belong to replay and discard, not %s",
                           name);
    if ((cfg->rate || cfg->canary) && c != CMD_REPLAY)
        return usage_error("--rate and --canary belong to replay, not %s", name);
    if (c == CMD_DISCARD && (!cfg->reason || !*cfg->reason))
        return usage_error("%s needs --reason TEXT saying why (it is recorded with the rows; "
                           "filter by reason code with --code)",
                           name);
    if (c != CMD_DISCARD && cfg->reason && cfg->code && strcmp(cfg->reason, cfg->code) != 0)
        return usage_error("--reason and --code are the same filter in %s; give one", name);
    if (cfg->all && nargs > 0)
        return usage_error("%s: give IDs or --all, not both", name);
    return DLQ_EXIT_OK;
}

int main(int argc, char **argv)
{
    struct dlq_config cfg;
    struct cfg_strings owned = { { 0 }, 0 };
    struct dlq_filter f;
    struct dlq t;
    char err[512];
    int nargs = 0, help = 0, rc = DLQ_EXIT_USAGE;
    memset(&cfg, 0, sizeof cfg);
    memset(&f, 0, sizeof f);
    memset(&t, 0, sizeof t);
    log_init("payq-dlq", LOG_WARN);
    if (cfg_parse(options, &cfg, &owned, argc, argv, &nargs, &help, err, sizeof err) != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: %s\n", err);
        goto out;
    }
    if (help || nargs == 0) {
        usage(help ? stdout : stderr);
        rc = help ? DLQ_EXIT_OK : DLQ_EXIT_USAGE;
        goto out;
    }
    int level = log_level_parse(cfg.log_level);
    if (level < 0) {
        rc = usage_error("--log-level must be debug, info, warn or error, not %s", cfg.log_level);
        goto out;
    }
    log_init("payq-dlq", (enum log_level)level);
    if (mq_tls_check(cfg.amqp_url, &cfg.amqp_tls, err, sizeof err) != PAYQ_OK) {
        rc = usage_error("%s", err);
        goto out;
    }

    enum command c = CMD_LIST;
    size_t k = 0;
    while (k < sizeof command_names / sizeof *command_names && strcmp(argv[1], command_names[k]))
        k++;
    if (k == sizeof command_names / sizeof *command_names) {
        rc = usage_error("unknown command %s (list, show, stats, replay, discard, export, "
                         "import, sync)",
                         argv[1]);
        goto out;
    }
    c = (enum command)k;
    char **args = argv + 2;
    int n = nargs - 1;
    if ((rc = check_usage(c, &cfg, n)) != DLQ_EXIT_OK)
        goto out;
    const char *reason_filter = c == CMD_DISCARD ? cfg.code : (cfg.code ? cfg.code : cfg.reason);
    if (!dlq_filter_init(&f, &cfg, reason_filter)) {
        rc = DLQ_EXIT_USAGE;
        goto out;
    }
    if ((c == CMD_REPLAY || c == CMD_DISCARD) && n == 0 && !cfg.all && !dlq_filter_selects(&f)) {
        rc = usage_error("%s needs IDs, a filter (--reason/--code, --routing-key, --since, "
                         "--until, --grep) or --all",
                         command_names[c]);
        goto out;
    }

    t.cfg = &cfg;
    const char *user = getenv("USER");
    snprintf(t.user, sizeof t.user, "%s", user && *user ? user : "operator");
    t.progress = isatty(STDERR_FILENO) != 0;
    if (c == CMD_REPLAY || c == CMD_DISCARD || c == CMD_SYNC || c == CMD_IMPORT)
        install_signals();
    else
        signal(SIGPIPE, SIG_IGN);
    if ((rc = connect_db(&t)) != DLQ_EXIT_OK)
        goto out;
    if ((c == CMD_REPLAY || c == CMD_DISCARD) && n > 0) {
        if ((rc = dlq_resolve_ids(&t, args, n, &f)) != DLQ_EXIT_OK)
            goto out;
        f.status = NULL; /* named ids are taken whatever their status */
    }

    switch (c) {
    case CMD_LIST: rc = dlq_list(&t, &f); break;
    case CMD_SHOW: rc = dlq_show(&t, args[0]); break;
    case CMD_STATS: rc = dlq_stats(&t, &f); break;
    case CMD_REPLAY: rc = dlq_replay(&t, &f); break;
    case CMD_DISCARD: rc = dlq_discard(&t, &f, cfg.reason); break;
    case CMD_EXPORT: rc = dlq_export(&t, &f); break;
    case CMD_IMPORT: rc = dlq_import(&t, args[0]); break;
    case CMD_SYNC: rc = dlq_sync(&t); break;
    }
    if (fflush(stdout) != 0 && rc == DLQ_EXIT_OK)
        rc = DLQ_EXIT_FAIL;
out:
    dlq_filter_free(&f);
    mq_close(t.mq);
    db_close(t.db);
    cfg_strings_free(&owned);
    return rc;
}
