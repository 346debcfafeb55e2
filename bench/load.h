/*
 * load.h - one phase of the bench: publish a stream of commands through one
 * connection and collect their replies.
 *
 * A single thread does both, interleaved, on one mq_t: direct reply-to
 * (amq.rabbitmq.reply-to) delivers a reply only on the channel that
 * published the command, and an mq_t has one frame reader, so publishing
 * and receiving on the same connection from one loop is the natural shape.
 * The loop publishes whatever is due, then waits for replies until the next
 * publish is due; broker confirms are windowed (never more than `window`
 * unconfirmed), so memory stays bounded however far the workers fall behind.
 *
 * Pacing:
 *   rate > 0   open loop: command i is due at t0 + i / rate, published then
 *              (or as soon after as the bench can), and its latency is
 *              measured from that due time, not from the actual send, so a
 *              stall anywhere counts against every command it delays (no
 *              coordinated omission);
 *   rate == 0  closed loop: keeps max_inflight commands without a reply
 *              outstanding; latency is measured from the actual send.
 *
 * Every command's message_id and correlation_id is "<prefix>.<tag>.<index>";
 * replies are matched back to their command by the correlation_id.
 */
#ifndef PAYQ_BENCH_LOAD_H
#define PAYQ_BENCH_LOAD_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mq.h"
#include "stats.h"
#include "status.h"

/* What the build callback fills for command i. */
struct load_cmd {
    const char *routing_key; /* static string */
    char body[512];
    size_t len;
};

typedef int (*load_build_fn)(void *arg, uint64_t i, struct load_cmd *out);

struct load_spec {
    const char *label;  /* for progress lines and errors */
    const char *prefix; /* run prefix of correlation ids */
    char tag;           /* phase letter of correlation ids */
    uint64_t count;     /* commands to publish; 0 = until duration_ms is over */
    long duration_ms;
    long rate;             /* commands per second; 0 = closed loop */
    long max_inflight;     /* closed loop: commands without a reply at most */
    long window;           /* unconfirmed publishes at most */
    long reply_timeout_ms; /* no reply for this long after the last publish (or the
                            * last reply, while a backlog drains): the rest are missing */
    long grace_ms;         /* after the last reply: keep listening for duplicates */
    int progress_ms;       /* a progress line on stderr this often; 0 = none */
    load_build_fn build;
    void *arg;
    volatile sig_atomic_t *stop; /* set by a signal handler: stop early */
};

struct load_result {
    uint64_t sent;       /* commands published */
    uint64_t replied;    /* commands with at least one reply */
    uint64_t duplicates; /* replies beyond the first for a command */
    uint64_t stray;      /* replies that match no command of this phase */
    uint64_t missing;    /* sent - replied */
    uint32_t *lat_us;    /* [sent]: latency in microseconds where nrep[i] > 0 */
    uint8_t *nrep;       /* [sent]: replies seen per command (saturates at 255) */
    struct stats_outcomes outcomes;
    int64_t ok_amount, ok_fee; /* sums of amount and fee over succeeded replies */
    double started_unix_s;     /* t0 on the wall clock (to line the latency log up with logs) */
    double publish_s;          /* t0 to the last publish */
    double elapsed_s;          /* t0 to the last reply (to the last publish if none) */
    double lag_max_ms;         /* open loop: the furthest a publish fell behind its due time */
    double lag_mean_ms;
    bool nacked;             /* the broker refused at least one publish */
    bool interrupted;        /* stop was set */
    char first_problem[320]; /* the first reply whose status was not "succeeded" */
    char error[320];         /* why the phase could not finish, when it returns an error */
};

/*
 * Runs a phase on mq, which must consume direct replies already
 * (mq_consume_direct_reply). Returns PAYQ_OK when it ran to its end (missing
 * replies included, see r->missing) or was interrupted; an error (with
 * r->error) when the connection failed or the broker could not route a
 * command. r is always filled; free it with load_result_free.
 */
int load_run(mq_t *mq, const struct load_spec *s, struct load_result *r) PAYQ_MUSTCHECK;

void load_result_free(struct load_result *r);

#endif
