/*
 * relay.c - the outbox relay thread: leader election, LISTEN/NOTIFY wake-ups,
 * pages of the outbox past the published position, windowed confirms, and
 * moving the position only after the confirms (see relay.h).
 */
#include "relay.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "mq.h"
#include "topology.h"
#include "worker.h"

/* How long the broker may take to confirm a batch before the connection is
 * given up (the batch is then published again after reconnecting). */
#define CONFIRM_TIMEOUT_MS 30000
/* The longest wait for a NOTIFY before looking at the table anyway. */
#define IDLE_WAIT_MS 1000
/* How long the relay waits after a NOTIFY before it reads the outbox, so
 * that the commits of that moment are published together. */
#define LINGER_MS 10
/* The longest the relay goes on publishing after a stop request. */
#define FLUSH_MS 10000
/* Slices of every wait, so a stop request is seen quickly. */
#define STOP_CHECK_MS 250

/*
 * One page of the outbox (sql/015): the rows visible in the target snapshot
 * and not in the position's, with id > $5, in id order, at most $6. With no
 * target ($4 NULL) the target is this statement's snapshot. The first column
 * carries the target, also when the page is empty (a single row of NULLs
 * from the outer join).
 */
static const char PAGE_SQL[] =
    "SELECT t.s::text, o.id, o.event_id, o.routing_key, o.body::text, o.correlation_id,"
    "       floor(extract(epoch FROM o.created_at))::bigint,"
    "       extract(epoch FROM now() - o.created_at)::float8"
    "  FROM (SELECT COALESCE($4::pg_snapshot, pg_current_snapshot()) AS s) t"
    "  LEFT JOIN LATERAL payq.outbox_after($1::pg_snapshot, $2::xid8, $3::bigint, t.s,"
    "                                      $5::bigint, $6::integer) o ON true"
    " ORDER BY o.id";
enum {
    F_TARGET,
    F_ID,
    F_EVENT_ID,
    F_ROUTING_KEY,
    F_BODY,
    F_CORRELATION_ID,
    F_CREATED_AT,
    F_AGE_S /* seconds since created_at, on the database's clock */
};

static const char LOAD_SQL[] =
    "SELECT snapshot::text, horizon::text, max_id, target::text, target_horizon::text,"
    "       through_id FROM payq.relay_position";

/* A horizon not known yet ($2 or $5 NULL: the snapshot was taken this
 * round) is this transaction's xid: it began after the snapshot was taken,
 * so no transaction had an xid as high then. */
static const char SAVE_SQL[] =
    "UPDATE payq.relay_position SET snapshot = $1::pg_snapshot,"
    "       horizon = COALESCE($2::xid8, pg_current_xact_id()), max_id = $3::bigint,"
    "       target = $4::pg_snapshot,"
    "       target_horizon = CASE WHEN $4::pg_snapshot IS NOT NULL"
    "                             THEN COALESCE($5::xid8, pg_current_xact_id()) END,"
    "       through_id = $6::bigint, updated_at = now()"
    " RETURNING horizon::text, target_horizon::text";

/*
 * What has been published (payq.relay_position, sql/015): every outbox row
 * visible in `snapshot`, and, while a backlog is paged through, the rows
 * visible in `target` up to id `through`. Loaded when this relay becomes the
 * leader, saved after the broker confirmed a page.
 */
struct position {
    char *snapshot;       /* pg_snapshot as text */
    char *horizon;        /* xid8 as text; NULL until saved when snapshot is new */
    long long max_id;     /* the largest id visible in snapshot */
    char *target;         /* NULL unless a backlog is being paged through */
    char *target_horizon; /* with target; NULL until saved when target is new */
    long long through;    /* with target: the last id published of it */
};

struct relay {
    const struct worker_config *cfg;
    struct worker_shared *shared;
    char mq_name[128];
    char db_name[64];
    mq_t *mq;
    db_t *db;
    bool leader;         /* this session holds RELAY_LOCK_KEY */
    bool standby;        /* "standing by" was logged for this session */
    struct position pos; /* valid while leader */
    struct backoff reconnect;
};

/* The relay outlives the consumer threads (see relay_stop). */
static bool stopping(const struct relay *r)
{
    return atomic_load(&r->shared->relay_stop) != 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps up to ms, in short steps so a stop request is seen at once. Used
 * while disconnected (there is no heartbeat to answer then) and for the
 * short linger after a NOTIFY (far below any heartbeat). */
static void nap(const struct relay *r, long ms)
{
    while (ms > 0 && !stopping(r)) {
        long step = ms < 100 ? ms : 100;
        struct timespec ts = { 0, step * 1000000L };
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

/* Replaces *dst with a copy of src (NULL: none). */
static int set_text(char **dst, const char *src)
{
    char *copy = NULL;
    if (src && !(copy = strdup(src)))
        return PAYQ_ERR_NOMEM;
    free(*dst);
    *dst = copy;
    return PAYQ_OK;
}

static void position_clear(struct position *p)
{
    free(p->snapshot);
    free(p->horizon);
    free(p->target);
    free(p->target_horizon);
    memset(p, 0, sizeof *p);
}

/* A query on payq.relay_position that should have returned its one row:
 * PAYQ_OK if it did, else the error (res is cleared then). */
static int one_position_row(struct relay *r, PGresult *res)
{
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return db_fail(r->db, res);
    if (PQntuples(res) == 1)
        return PAYQ_OK;
    PQclear(res);
    log_error("relay: payq.relay_position has no row (migration 015_snapshot_relay.sql writes "
              "it, and it must never be deleted)");
    return PAYQ_ERR_DB;
}

/* Reads the position the last leader saved. */
static int position_load(struct relay *r)
{
    PGresult *res = PQexec(db_conn(r->db), LOAD_SQL);
    int rc = one_position_row(r, res);
    if (rc != PAYQ_OK)
        return rc;
    struct position *p = &r->pos;
    position_clear(p);
    const char *v[6];
    for (int i = 0; i < 6; i++)
        v[i] = PQgetisnull(res, 0, i) ? NULL : PQgetvalue(res, 0, i);
    if (set_text(&p->snapshot, v[0]) || set_text(&p->horizon, v[1]) || set_text(&p->target, v[3]) ||
        set_text(&p->target_horizon, v[4]))
        rc = PAYQ_ERR_NOMEM;
    p->max_id = strtoll(v[2], NULL, 10);
    p->through = v[5] ? strtoll(v[5], NULL, 10) : 0;
    PQclear(res);
    if (rc == PAYQ_OK && p->target)
        log_info("relay: going on with a backlog the last leader was publishing, after outbox "
                 "id %lld",
                 p->through);
    return rc;
}

/* Records r->pos (and learns the horizons it set); once it commits, what it
 * covers is never published again (short of restoring the database). */
static int position_save(struct relay *r)
{
    struct position *p = &r->pos;
    char max_id[24], through[24];
    snprintf(max_id, sizeof max_id, "%lld", p->max_id);
    snprintf(through, sizeof through, "%lld", p->through);
    const char *params[6] = { p->snapshot, p->horizon,        max_id,
                              p->target,   p->target_horizon, p->target ? through : NULL };
    PGresult *res = PQexecParams(db_conn(r->db), SAVE_SQL, 6, NULL, params, NULL, NULL, 0);
    int rc = one_position_row(r, res);
    if (rc != PAYQ_OK)
        return rc;
    rc = set_text(&p->horizon, PQgetvalue(res, 0, 0));
    if (rc == PAYQ_OK && p->target)
        rc = set_text(&p->target_horizon, PQgetvalue(res, 0, 1));
    PQclear(res);
    return rc;
}

static void disconnect(struct relay *r)
{
    mq_close(r->mq);
    r->mq = NULL;
    db_close(r->db); /* ends the session: PostgreSQL releases the lock */
    r->db = NULL;
    r->leader = false;
    r->standby = false;
    position_clear(&r->pos);
}

static int connect_all(struct relay *r)
{
    int rc;
    if ((rc = db_connect(r->cfg->database_url, r->db_name, r->cfg->statement_timeout_ms, &r->db)) !=
        PAYQ_OK)
        return rc;
    if ((rc = mq_connect(r->cfg->amqp_url, &r->cfg->amqp_tls, r->mq_name, (int)r->cfg->heartbeat,
                         &r->mq)) != PAYQ_OK)
        return rc;
    /* The worker threads declare the topology too, but the relay may get
     * there first, and a publish to a missing exchange closes the channel. */
    if (!r->cfg->no_declare && (rc = mq_declare_topology(r->mq)) != PAYQ_OK) {
        log_error("relay: cannot declare the topology: %s", mq_error(r->mq));
        return rc;
    }
    return PAYQ_OK;
}

/* Lets rabbitmq-c read what the broker sent (heartbeats, a connection.close)
 * and send a heartbeat when one is due: it does so only inside its calls. */
static int amqp_keepalive(struct relay *r)
{
    return mq_pump(r->mq, 0);
}

/*
 * Waits up to ms for a NOTIFY on RELAY_NOTIFY_CHANNEL while keeping both
 * connections serviced; a standby (not listening) uses it as a watchful
 * sleep. *notified says whether one came. Returns early on a stop request.
 * An error means a connection is gone.
 */
static int wait_notify(struct relay *r, long ms, bool *notified)
{
    PGconn *c = db_conn(r->db);
    long long deadline = now_ms() + ms;
    int rc;
    *notified = false;
    for (;;) {
        /* Notifications that came with earlier results are already queued:
         * look before sleeping. */
        if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK)
            return db_fail(r->db, NULL);
        PGnotify *n;
        while ((n = PQnotifies(c)) != NULL) {
            *notified = true;
            PQfreemem(n);
        }
        if ((rc = amqp_keepalive(r)) != PAYQ_OK)
            return rc;
        long long left = deadline - now_ms();
        if (*notified || left <= 0 || stopping(r))
            return PAYQ_OK;
        struct pollfd p = { .fd = PQsocket(c), .events = POLLIN };
        if (p.fd < 0)
            return db_fail(r->db, NULL);
        if (poll(&p, 1, (int)(left < STOP_CHECK_MS ? left : STOP_CHECK_MS)) < 0 && errno != EINTR) {
            log_error("relay: poll on the PostgreSQL socket: %s", strerror(errno));
            return PAYQ_ERR_IO;
        }
    }
}

/* Tries once to become the leader; on success starts listening. */
static int try_lead(struct relay *r)
{
    char k[24];
    snprintf(k, sizeof k, "%lld", RELAY_LOCK_KEY);
    const char *key[1] = { k };
    PGresult *res = PQexecParams(db_conn(r->db), "SELECT pg_try_advisory_lock($1::bigint)", 1, NULL,
                                 key, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return db_fail(r->db, res);
    bool got = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!got) {
        metrics_outbox_lag_clear(); /* the leader's process reports the lag */
        if (!r->standby)
            log_info("relay: another payq-worker is the outbox relay leader; standing by "
                     "(retrying every %d ms)",
                     RELAY_STANDBY_MS);
        r->standby = true;
        return PAYQ_OK;
    }
    /* LISTEN before the first read of the table: a row committed after the
     * read then always wakes us, and one committed before is in the read. */
    int rc = db_exec(r->db, "LISTEN " RELAY_NOTIFY_CHANNEL);
    if (rc != PAYQ_OK || (rc = position_load(r)) != PAYQ_OK)
        return rc;
    r->leader = true;
    log_info("relay: this process is now the outbox relay leader (advisory lock %lld); "
             "publishing to %s",
             RELAY_LOCK_KEY, PAYQ_X_EVENTS);
    return PAYQ_OK;
}

/* Publishes row i of the batch (not mandatory: an event that no queue
 * subscribes to is fine). */
static int publish_row(struct relay *r, const PGresult *res, int i, uint64_t *seq)
{
    const char *event_id = PQgetvalue(res, i, F_EVENT_ID);
    const char *rk = PQgetvalue(res, i, F_ROUTING_KEY);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.message_id = mq_bytes(event_id);
    p.type = mq_bytes(rk);
    p.timestamp = strtoull(PQgetvalue(res, i, F_CREATED_AT), NULL, 10);
    if (!PQgetisnull(res, i, F_CORRELATION_ID)) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = mq_bytes(PQgetvalue(res, i, F_CORRELATION_ID));
    }
    return mq_publish(r->mq, PAYQ_X_EVENTS, rk, false, &p, PQgetvalue(res, i, F_BODY),
                      (size_t)PQgetlength(res, i, F_BODY), seq);
}

/*
 * Publishes the next page of at most cfg->relay_batch rows past the position
 * (sql/015), waits for all their confirms at once, then saves the new
 * position. *count gets the number of rows published.
 *
 * At least once, never lost: the position moves only after the broker
 * confirmed every row it now covers. A crash, a nack or a lost connection
 * before the UPDATE commits leaves the old position, and the next round (or
 * the next leader) publishes the same rows again, in the same order, with the
 * same message_id (event_id), which consumers use to drop duplicates.
 */
static int relay_batch(struct relay *r, int *count)
{
    struct position *p = &r->pos;
    char max_id[24], through[24], limit[24];
    snprintf(max_id, sizeof max_id, "%lld", p->max_id);
    snprintf(through, sizeof through, "%lld", p->target ? p->through : 0);
    snprintf(limit, sizeof limit, "%ld", r->cfg->relay_batch);
    const char *params[6] = { p->snapshot, p->horizon, max_id, p->target, through, limit };
    long long t0 = now_ms();
    PGresult *res = PQexecParams(db_conn(r->db), PAGE_SQL, 6, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
        return db_fail(r->db, res);
    int n = PQgetisnull(res, 0, F_ID) ? 0 : PQntuples(res);
    *count = 0;

    int rc = PAYQ_OK;
    if (n > 0) {
        metrics_outbox_lag(strtod(PQgetvalue(res, 0, F_AGE_S), NULL));
        uint64_t last = 0;
        for (int i = 0; i < n && rc == PAYQ_OK; i++)
            rc = publish_row(r, res, i, &last);
        /* Windowed confirms: one wait for the whole page. */
        if (rc == PAYQ_OK)
            rc = mq_wait_confirms(r->mq, last, CONFIRM_TIMEOUT_MS);
        if (rc != PAYQ_OK) {
            log_error("relay: publishing %d event(s) from outbox id %s failed (%s: %s); they "
                      "stay unpublished and will be published again",
                      n, PQgetvalue(res, 0, F_ID), payq_strerror(rc), mq_error(r->mq));
            PQclear(res);
            return rc;
        }
    }

    long long last_id = n > 0 ? strtoll(PQgetvalue(res, n - 1, F_ID), NULL, 10) : 0;
    bool was_paging = p->target != NULL;
    if (n == 0 && !was_paging) {
        /* Nothing new: the position stays, and an idle relay writes nothing. */
        metrics_outbox_lag_clear();
        PQclear(res);
        return PAYQ_OK;
    }
    if (n >= r->cfg->relay_batch) {
        /* Maybe more: page on against the same target, from last_id. */
        if (!was_paging && (set_text(&p->target, PQgetvalue(res, 0, F_TARGET)) ||
                            set_text(&p->target_horizon, NULL)))
            rc = PAYQ_ERR_NOMEM;
        p->through = last_id;
    } else {
        /* The target's whole difference is published: it is the position. */
        if (set_text(&p->snapshot, PQgetvalue(res, 0, F_TARGET)) ||
            set_text(&p->horizon, was_paging ? p->target_horizon : NULL))
            rc = PAYQ_ERR_NOMEM;
        if (was_paging && p->through > p->max_id)
            p->max_id = p->through;
        if (last_id > p->max_id)
            p->max_id = last_id;
        set_text(&p->target, NULL);
        set_text(&p->target_horizon, NULL);
        p->through = 0;
    }
    if (rc == PAYQ_OK && (rc = position_save(r)) != PAYQ_OK)
        log_error("relay: %d event(s) were published but the position could not be saved (%s); "
                  "they will be published again",
                  n, db_error(r->db));
    if (rc == PAYQ_OK && n > 0) {
        *count = n;
        metrics_outbox_published(n);
        log_debug("relay: published %d event(s), outbox ids %s..%lld, in %lld ms", n,
                  PQgetvalue(res, 0, F_ID), last_id, now_ms() - t0);
    }
    if (n < r->cfg->relay_batch)
        metrics_outbox_lag_clear(); /* caught up (the next look says if more came) */
    PQclear(res);
    return rc;
}

/* On the way out, after the consumer threads stopped: publish what they
 * left in the outbox (bounded by FLUSH_MS; the next relay publishes the
 * rest). */
static int flush(struct relay *r)
{
    long long deadline = now_ms() + FLUSH_MS;
    int count, total = 0, rc;
    do {
        if ((rc = relay_batch(r, &count)) != PAYQ_OK)
            return rc;
        total += count;
    } while (count >= r->cfg->relay_batch && now_ms() < deadline);
    log_info("relay: published %d event(s) on the way out; the outbox is %s", total,
             count < r->cfg->relay_batch ? "empty" : "not empty yet (the next relay goes on)");
    return PAYQ_OK;
}

/* Works on one pair of connections until a failure or a stop request. */
static int run(struct relay *r)
{
    long long next_try = 0;
    while (!stopping(r)) {
        bool notified;
        int rc;
        if (!r->leader) {
            if (now_ms() >= next_try) {
                if ((rc = try_lead(r)) != PAYQ_OK)
                    return rc;
                backoff_reset(&r->reconnect);
                next_try = now_ms() + RELAY_STANDBY_MS;
            }
            if (!r->leader) {
                if ((rc = wait_notify(r, IDLE_WAIT_MS, &notified)) != PAYQ_OK)
                    return rc;
                continue;
            }
        }
        int count;
        if ((rc = relay_batch(r, &count)) != PAYQ_OK)
            return rc;
        backoff_reset(&r->reconnect);
        if (count >= r->cfg->relay_batch)
            continue; /* more may be waiting: no pause */
        /* Rows arrive with a NOTIFY; the timeout is a safety net (a lost
         * notification, a row written by something that does not notify). */
        if ((rc = wait_notify(r, IDLE_WAIT_MS, &notified)) != PAYQ_OK)
            return rc;
        if (notified) {
            /* Each worker commit notifies: linger a moment so the commits
             * of that moment go out as one batch (one query, one confirm
             * wait, one UPDATE, one commit) instead of one round each. */
            nap(r, LINGER_MS);
            if ((rc = wait_notify(r, 0, &notified)) != PAYQ_OK) /* drains them */
                return rc;
        }
    }
    return r->leader ? flush(r) : PAYQ_OK;
}

/* Says which connection failed and why, and whether leadership goes with it. */
static void log_failure(const struct relay *r, int rc)
{
    char why[800];
    if (r->db && !db_ok(r->db))
        snprintf(why, sizeof why, "lost the PostgreSQL connection: %s", db_error(r->db));
    else if (r->mq && mq_error(r->mq)[0])
        snprintf(why, sizeof why, "RabbitMQ: %s", mq_error(r->mq));
    else if (r->db && db_error(r->db)[0])
        snprintf(why, sizeof why, "PostgreSQL: %s (SQLSTATE %s)", db_error(r->db),
                 db_sqlstate(r->db));
    else
        snprintf(why, sizeof why, "%s", payq_strerror(rc));
    if (r->leader)
        log_warn("relay: giving up the outbox relay leadership: %s", why);
    else
        log_warn("relay: %s", why);
}

void *relay_thread(void *arg)
{
    struct relay_arg *ra = arg;
    struct relay r = { .cfg = ra->shared->cfg, .shared = ra->shared };
    char host[64] = "localhost";
    (void)gethostname(host, sizeof host - 1);
    snprintf(r.mq_name, sizeof r.mq_name, "payq-worker relay %s pid %d", host, (int)getpid());
    /* Shown in pg_stat_activity next to the lock: who leads. */
    snprintf(r.db_name, sizeof r.db_name, "payq-worker relay pid %d", (int)getpid());
    backoff_init(&r.reconnect, 500, 30000);

    while (!stopping(&r)) {
        int rc = connect_all(&r);
        if (rc == PAYQ_OK && (rc = run(&r)) != PAYQ_OK)
            log_failure(&r, rc);
        disconnect(&r);
        if (rc != PAYQ_OK && !stopping(&r)) {
            long ms = backoff_next(&r.reconnect);
            log_warn("relay: reconnecting to RabbitMQ and PostgreSQL in %ld ms", ms);
            nap(&r, ms);
        }
    }
    disconnect(&r);
    log_info("relay stopped");
    return NULL;
}
