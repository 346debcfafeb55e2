/*
 * metrics.h - payq's Prometheus metrics: one process-wide registry.
 *
 * Any thread records events with the functions below: each is a few relaxed
 * C11 atomic additions, without locks or allocation, so they are cheap enough
 * for the hot path. metrics_render writes the whole registry in the
 * Prometheus text exposition format 0.0.4, which worker/http.c serves on
 * GET /metrics.
 *
 * This registry is the one global state of payq, on purpose: a counter of
 * commands handled belongs to the process, not to a thread or a connection,
 * and every thread must add to the same one. Everything else is passed down
 * in context structs.
 *
 * Every label has a small fixed set of values; anything else (an unknown
 * routing key, a reason code this file does not know) is counted under
 * "other", so no input can grow the number of series. All series exist from
 * the start with value 0, so rate() and increase() see the first event.
 *
 * The metrics (units in the names):
 *
 *   payq_commands_total{command, outcome}       counter
 *       deliveries settled and acked, by command (account.open,
 *       account.deposit, payment.create, payment.capture, payment.cancel,
 *       payment.refund, other) and outcome: succeeded | authorized | failed
 *       (applied, or refused by the business) | rejected (can never apply
 *       as sent: replied and dead-lettered) | retried (sent to a delay tier) |
 *       dead_lettered (retries_exhausted or poison). A delivery that is
 *       redelivered before its ack counts when it is finally acked.
 *   payq_command_duration_seconds{command}      histogram, 1 ms .. 10 s
 *       from the worker taking the delivery from its connection to the ack
 *   payq_retries_total{tier}                    counter: copies sent to a delay tier
 *   payq_dead_letters_total{reason}             counter: copies sent to payq.dlq
 *   payq_deliveries_in_flight                   gauge: deliveries a worker thread holds
 *   payq_circuit_open                           gauge: worker threads whose circuit is open
 *   payq_reconnects_total{dependency}           counter: lost connections re-established
 *                                               (amqp | postgres)
 *   payq_outbox_lag_seconds                     gauge: age of the oldest unpublished outbox
 *                                               row (0 when none, or when another process
 *                                               is the relay leader)
 *   payq_outbox_published_total                 counter: outbox events published and confirmed
 *   payq_db_transaction_duration_seconds        histogram, 1 ms .. 10 s: one call of
 *                                               payq.apply_command or payq.apply_batch
 *   payq_batch_size                             histogram, 1 .. 1000: deliveries applied in
 *                                               one database transaction
 *   payq_build_info{version}                    gauge, always 1
 *   payq_process_resident_memory_bytes          gauge (/proc/self/statm)
 *   payq_process_cpu_seconds_total              counter, user + system (getrusage)
 */
#ifndef PAYQ_METRICS_H
#define PAYQ_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

/* Seconds on a monotonic clock: the start of a duration to record. */
double metrics_now(void);

/* A delivery was settled and acked: its command (routing key name), its
 * outcome (see above) and the seconds since the worker took it. */
void metrics_command_done(const char *command, const char *outcome, double seconds);

/* A retry copy went to delay tier `tier` ("1s", "5s", ... see topology.h). */
void metrics_retry(const char *tier);

/* A copy went to the DLQ with x-payq-reason `reason`. */
void metrics_dead_letter(const char *reason);

/* Deliveries taken from the connection (+n) or finished with (-n). */
void metrics_in_flight_add(int delta);

/* A worker thread's circuit opened (true) or closed (false): +1 / -1.
 * Call on transitions only (http_health_set_circuit does). */
void metrics_circuit(bool opened);

/* A lost connection to `dependency` ("amqp" or "postgres") is back. */
void metrics_reconnect(const char *dependency);

/* The oldest unpublished outbox row is `seconds` old now. Until the next
 * call the gauge keeps growing by itself, so it rises while the relay cannot
 * look (broker or database down) instead of freezing. */
void metrics_outbox_lag(double seconds);
/* Nothing is waiting to be published (or another process relays): 0. */
void metrics_outbox_lag_clear(void);

/* n outbox events were published (confirmed) and the relay position moved past them. */
void metrics_outbox_published(int n);

/* One payq.apply_command / payq.apply_batch call took `seconds`. */
void metrics_db_tx(double seconds);

/* n deliveries were applied in one database transaction. */
void metrics_batch(int n);

/*
 * Renders every metric in the Prometheus text format 0.0.4 into a malloc'd,
 * NUL-terminated buffer: *out (the caller frees it) and *len (without the
 * NUL). Safe while other threads record. PAYQ_OK or PAYQ_ERR_NOMEM; the
 * out-parameters are written only on success.
 */
int metrics_render(char **out, size_t *len) PAYQ_MUSTCHECK;

/*
 * Escapes a label value for the text format (\ -> \\, " -> \", newline ->
 * \n) into out, like snprintf: always NUL-terminated when len > 0, returns
 * the length the whole result needs.
 */
size_t metrics_escape_label(char *out, size_t len, const char *value);

/* Sets every metric back to 0. For tests, while no other thread records. */
void metrics_reset(void);

#endif
