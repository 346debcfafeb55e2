/*
 * relay.h - the transactional-outbox relay of payq-worker.
 *
 * A saga step writes its events to payq.outbox in the same transaction as
 * the state change (payq.emit), so an event exists if and only if its change
 * committed (DESIGN.md invariant 8). The relay moves those rows to the
 * payq.events exchange: it keeps a position in payq.relay_position, a
 * database snapshot whose visible outbox rows are all published, and each
 * round publishes the rows a newer snapshot sees and that one did not, in id
 * order, with publisher confirms, then records the newer snapshot (sql/015
 * explains why nothing is skipped and how a backlog is paged through). Rows
 * are never updated. Delivery is at least once: a crash between the confirm
 * and the position's UPDATE publishes the same events again, and consumers
 * drop the duplicates by message_id (= event_id).
 *
 * Leader election: every payq-worker process runs one relay thread, but only
 * the one whose PostgreSQL session holds the session-level advisory lock
 * RELAY_LOCK_KEY publishes; the others stand by and retry the lock every
 * RELAY_STANDBY_MS. One publisher at a time, reading in id order, keeps the
 * events of one payment in the order they happened. When the leader's
 * session ends (the process died, the connection broke), PostgreSQL releases
 * the lock and a standby takes over.
 *
 * The relay owns its own AMQP and PostgreSQL connections (neither library's
 * connections may be shared between threads) and reconnects both with capped,
 * jittered backoff after any failure.
 */
#ifndef PAYQ_RELAY_H
#define PAYQ_RELAY_H

struct worker_shared;

/*
 * The advisory lock of the relay leader: pg_try_advisory_lock(bigint) on
 * "payqoutb" in ASCII. It shows in pg_locks as locktype 'advisory',
 * classid 0x70617971, objid 0x6f757462, objsubid 1; the holder's session has
 * application_name "payq-worker relay pid <pid>". Distinct from the
 * migration lock in db.c ("payq", 0x70617971 as a bigint).
 */
#define RELAY_LOCK_KEY 0x706179716f757462LL

/* How often a standby relay tries to become the leader. */
#define RELAY_STANDBY_MS 2000

/* The channel payq.emit() notifies after inserting an outbox row. */
#define RELAY_NOTIFY_CHANNEL "payq_outbox"

/* Not owned by the thread: must outlive it. */
struct relay_arg {
    struct worker_shared *shared;
};

/* Runs the relay until shared->stop (seen within about a second); arg is a
 * struct relay_arg. Always returns NULL. */
void *relay_thread(void *arg);

#endif
