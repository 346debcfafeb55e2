/*
 * workload.h - the chaos suite's seeded workload and the model of its result.
 *
 * From a seed and a size, plan() draws the whole run before anything is
 * sent: accounts, deposits, wallet and card payments (normal, flaky, slow to
 * authorize and meant-to-fail tokens), captures (full, partial, too large),
 * cancels, refunds (partial, full, too large, of a failed payment), a few
 * messages meant for the dead-letter queue, and how often each is published.
 * It also computes what each command must end as and what every account
 * must hold afterwards, from the workload alone (payq's rules: fee =
 * round_half_up(amount * bps / 10000) + fixed, capped at the amount), so the
 * suite compares the database with an independent answer.
 *
 * Same seed, same size: the same commands in the same publish order. Pure
 * logic, no I/O; everything lives in one struct chaos_plan, freed by
 * plan_free().
 */
#ifndef PAYQ_CHAOS_WORKLOAD_H
#define PAYQ_CHAOS_WORKLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The waves: each starts once every command of the previous one has its
 * outcome, so a capture never overtakes the payment it captures. */
enum {
    WAVE_OPEN,
    WAVE_DEPOSIT,
    WAVE_PAY,
    WAVE_FOLLOW,
    NWAVES
};

enum cmd_kind {
    K_OPEN,
    K_DEPOSIT,
    K_CREATE,
    K_CAPTURE,
    K_CANCEL,
    K_REFUND,
    K_BAD
};

/* The merchants' platform fee in the plan (the suite inserts the rule). */
#define PLAN_FEE_BPS 290
#define PLAN_FEE_FIXED 30

#define PLAN_ID_LEN 96
#define PLAN_MAX_COPIES 3

struct plan_cmd {
    enum cmd_kind kind;
    int wave;
    char rk[32];          /* routing key */
    char id[PLAN_ID_LEN]; /* business id the reply carries ("" for K_BAD) */
    char body[640];
    char mid[PLAN_MAX_COPIES][PLAN_ID_LEN]; /* message_id of each copy */
    int copies;
    bool new_mid; /* one copy carries another message_id */
    /* the outcome it must have: reply status and code (NULL = none); for
     * K_BAD, want_code is the dead letter's x-payq-reason */
    const char *want_status;
    const char *want_code;
    int pay;        /* payments[] index (create/capture/cancel/refund), else -1 */
    int64_t amount; /* refund: its amount, once decided */
};

struct plan_payment {
    char id[PLAN_ID_LEN];
    int64_t amount;
    int customer;      /* customers[] index, or -1 for a card */
    bool poor;         /* from the wallet that has no money */
    const char *token; /* card token, or NULL */
    int merchant;
    bool capture;
    /* the model's final state */
    const char *status;
    const char *code;
    int64_t captured, refunded, fee;
    int64_t held;     /* still authorized (a wallet hold when customer >= 0) */
    char events[256]; /* expected event types, sorted, comma-separated */
};

struct plan_account {
    char id[PLAN_ID_LEN];
    int64_t budget;          /* wallets: deposits not yet promised to a payment */
    int64_t posted, pending; /* the model's final balances */
};

struct chaos_plan {
    uint64_t seed;
    const char *prefix; /* every id starts with it */
    struct plan_account *customers, *merchants;
    size_t ncustomers, nmerchants;
    struct plan_account poor;
    struct plan_payment *payments;
    size_t npayments;
    struct plan_cmd *cmds;
    size_t ncmds;
    /* publish order: order[k] = cmd index * PLAN_MAX_COPIES + copy */
    size_t *order;
    size_t norder;
    size_t wave_end[NWAVES]; /* order[] index where each wave ends */
    int64_t deposited;       /* money in */
    int64_t fees;            /* the platform's take */
    int64_t card_net;        /* captured from cards minus refunded to cards */
};

/* Draws a workload of about `size` commands (at least 40). prefix is kept
 * by pointer. Returns NULL when out of memory. */
struct chaos_plan *plan_new(uint64_t seed, size_t size, const char *prefix);
void plan_free(struct chaos_plan *p);

/* A command's routing key for K_BAD messages is chosen by the plan; this
 * says whether the command is one the workload means to dead-letter. */
static inline bool plan_is_bad(const struct plan_cmd *c)
{
    return c->kind == K_BAD;
}

/* payq's fee for an amount under the plan's rule. */
int64_t plan_fee(int64_t amount);

/* splitmix64: the suite's only source of randomness. */
uint64_t plan_rand(uint64_t *state);
uint64_t plan_below(uint64_t *state, uint64_t n);

#endif
