/* workload.c - see workload.h. */
#include "workload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t plan_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t plan_below(uint64_t *s, uint64_t n)
{
    return n ? plan_rand(s) % n : 0;
}

int64_t plan_fee(int64_t amount)
{
    int64_t fee = (amount * PLAN_FEE_BPS + 5000) / 10000 + PLAN_FEE_FIXED;
    return fee < amount ? fee : amount;
}

/* Card tokens of the simulated provider (sql/003_simulated_provider.sql),
 * with how often the workload uses each. approved: the authorization ends
 * approved (after timeouts or transient failures, for some); else `code` is
 * the failure the payment must end with. */
static const struct token {
    const char *name;
    int weight;
    bool approved;
    const char *code;
} tokens[] = {
    { "tok_visa", 20, true, NULL },
    { "tok_mastercard", 8, true, NULL },
    { "tok_flaky", 20, true, NULL },
    { "tok_timeout1", 6, true, NULL },
    { "tok_timeout2", 4, true, NULL },
    { "tok_timeout3", 3, true, NULL },
    { "tok_slow", 3, true, NULL },
    { "tok_chargeDeclined", 10, false, "card_declined" },
    { "tok_insufficientFunds", 4, false, "card_declined" },
    { "tok_riskHighest", 6, false, "fraud_suspected" },
    { "tok_captureDeclined", 6, false, "card_declined" },
    { "tok_stolenCard", 2, false, "card_declined" }, /* unknown to the provider */
};

static const struct token *pick_token(uint64_t *rs)
{
    int total = 0;
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
        total += tokens[i].weight;
    int r = (int)plan_below(rs, (uint64_t)total);
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
        if (r < tokens[i].weight)
            return &tokens[i];
        r -= tokens[i].weight;
    }
    return &tokens[0];
}

/* A new command of the plan, published two or three times: the copies
 * share a message_id, except that a third copy sometimes carries a new one
 * (a duplicate only the business id can catch). */
static struct plan_cmd *add_cmd(struct chaos_plan *p, uint64_t *rs, enum cmd_kind kind, int wave,
                                const char *rk, const char *id)
{
    struct plan_cmd *c = &p->cmds[p->ncmds];
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->wave = wave;
    c->pay = -1;
    snprintf(c->rk, sizeof c->rk, "%s", rk);
    snprintf(c->id, sizeof c->id, "%s", id);
    snprintf(c->mid[0], sizeof c->mid[0], "%s-msg%zu", p->prefix, p->ncmds);
    p->ncmds++;
    if (kind == K_BAD) {
        c->copies = 1;
        c->want_status = "rejected";
        return c;
    }
    c->copies = plan_below(rs, 3) == 0 ? 3 : 2;
    memcpy(c->mid[1], c->mid[0], sizeof c->mid[0]);
    memcpy(c->mid[2], c->mid[0], sizeof c->mid[0]);
    if (c->copies == 3 && plan_below(rs, 2) == 0) {
        c->new_mid = true;
        snprintf(c->mid[2], sizeof c->mid[2], "%s-msg%zub", p->prefix, p->ncmds - 1);
    }
    c->want_status = "succeeded";
    return c;
}

static void add_event(const char **ev, int *n, const char *type)
{
    if (*n < 8)
        ev[(*n)++] = type;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The payment events the model expects, sorted as the suite reads them
 * back from payq.payment_events (string_agg ... ORDER BY type). */
static void events_text(struct plan_payment *pm, const char **ev, int n)
{
    qsort(ev, (size_t)n, sizeof *ev, cmp_str);
    pm->events[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(pm->events);
        snprintf(pm->events + len, sizeof pm->events - len, "%s%s", i ? "," : "", ev[i]);
    }
}

/* The money commands of one wallet or card payment: the create, and what
 * follows it in the last wave. Updates the model. */
static void plan_payment(struct chaos_plan *p, uint64_t *rs, size_t i)
{
    struct plan_payment *pm = &p->payments[i];
    snprintf(pm->id, sizeof pm->id, "%s-p%zu", p->prefix, i);
    pm->amount = 100 + (int64_t)plan_below(rs, 3900);
    pm->merchant = (int)plan_below(rs, p->nmerchants);
    pm->customer = -1;
    const struct token *tok = NULL;
    int r = (int)plan_below(rs, 100);
    if (r < 38) {
        /* a wallet with money enough left for it, if one has */
        size_t c0 = plan_below(rs, p->ncustomers);
        for (size_t k = 0; k < p->ncustomers; k++) {
            size_t c = (c0 + k) % p->ncustomers;
            if (p->customers[c].budget >= pm->amount) {
                pm->customer = (int)c;
                p->customers[c].budget -= pm->amount;
                break;
            }
        }
    } else if (r < 43) {
        pm->poor = true;
    }
    if (pm->customer < 0 && !pm->poor) {
        tok = pick_token(rs);
        pm->token = tok->name;
    }
    /* a capture refused by the issuer is only modelled at create */
    pm->capture =
        (tok && strcmp(tok->name, "tok_captureDeclined") == 0) || plan_below(rs, 100) < 62;

    const char *ev[8];
    int nev = 0;
    const char *source = pm->customer >= 0 ? p->customers[pm->customer].id
                         : pm->poor        ? p->poor.id
                                           : pm->token;
    if (tok)
        add_event(ev, &nev, "payment.created");
    if (pm->poor || (tok && !tok->approved)) {
        pm->status = "failed";
        pm->code = pm->poor ? "insufficient_funds" : tok->code;
        add_event(ev, &nev, "payment.failed");
    } else if (pm->capture) {
        pm->status = "succeeded";
        pm->captured = pm->amount;
        add_event(ev, &nev, "payment.succeeded");
    } else {
        pm->status = "authorized";
        pm->held = pm->amount;
        add_event(ev, &nev, "payment.authorized");
    }

    size_t first = p->ncmds;
    struct plan_cmd *c = add_cmd(p, rs, K_CREATE, WAVE_PAY, "payment.create", pm->id);
    c->want_status = pm->status;
    c->want_code = pm->code;
    snprintf(c->body, sizeof c->body,
             "{\"payment_id\":\"%s\",\"amount\":%lld,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":%s,\"description\":\"chaos suite\"}",
             pm->id, (long long)pm->amount, source, p->merchants[pm->merchant].id,
             pm->capture ? "true" : "false");

    /* What follows, once every create has its outcome. */
    r = (int)plan_below(rs, 100);
    if (strcmp(pm->status, "authorized") == 0) {
        if (r < 45) {
            int64_t amt = r < 15 ? 0 : 1 + (int64_t)plan_below(rs, (uint64_t)pm->amount);
            c = add_cmd(p, rs, K_CAPTURE, WAVE_FOLLOW, "payment.capture", pm->id);
            if (amt)
                snprintf(c->body, sizeof c->body, "{\"payment_id\":\"%s\",\"amount\":%lld}", pm->id,
                         (long long)amt);
            else
                snprintf(c->body, sizeof c->body, "{\"payment_id\":\"%s\"}", pm->id);
            pm->status = "succeeded";
            pm->captured = amt ? amt : pm->amount;
            pm->held = 0;
            add_event(ev, &nev, "payment.captured");
        } else if (r < 72) {
            c = add_cmd(p, rs, K_CANCEL, WAVE_FOLLOW, "payment.cancel", pm->id);
            snprintf(c->body, sizeof c->body, "{\"payment_id\":\"%s\"}", pm->id);
            pm->status = "canceled";
            pm->held = 0;
            add_event(ev, &nev, "payment.canceled");
        } else if (r < 80) {
            /* more than was authorized: refused, the hold stays */
            c = add_cmd(p, rs, K_CAPTURE, WAVE_FOLLOW, "payment.capture", pm->id);
            snprintf(c->body, sizeof c->body, "{\"payment_id\":\"%s\",\"amount\":%lld}", pm->id,
                     (long long)pm->amount + 1);
            c->want_status = "failed";
            c->want_code = "invalid_state";
        }
    } else if (strcmp(pm->status, "succeeded") == 0) {
        int nref = r < 35 ? 2 : r < 56 ? 1 : 0;
        for (int k = 0; k < nref; k++) {
            char rid[PLAN_ID_LEN + 16];
            snprintf(rid, sizeof rid, "%s-r%d", pm->id, k);
            c = add_cmd(p, rs, K_REFUND, WAVE_FOLLOW, "payment.refund", rid);
            if (r < 35) { /* two partial refunds: each at most a third */
                c->amount = 1 + (int64_t)plan_below(rs, (uint64_t)pm->captured / 3);
                pm->refunded += c->amount;
                add_event(ev, &nev, "refund.succeeded");
            } else if (r < 50) { /* no amount: all that is left */
                c->amount = pm->captured;
                pm->refunded = pm->captured;
                pm->status = "refunded";
                add_event(ev, &nev, "refund.succeeded");
            } else { /* one minor unit more than was captured: refused */
                c->amount = pm->captured + 1;
                c->want_status = "failed";
                c->want_code = "amount_exceeds_captured";
                add_event(ev, &nev, "refund.failed");
            }
            if (r >= 35 && r < 50)
                snprintf(c->body, sizeof c->body,
                         "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"reason\":\"chaos\"}", rid,
                         pm->id);
            else
                snprintf(c->body, sizeof c->body,
                         "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"amount\":%lld}", rid,
                         pm->id, (long long)c->amount);
        }
        if (r >= 56 && r < 62) { /* captured already: refused */
            c = add_cmd(p, rs, K_CAPTURE, WAVE_FOLLOW, "payment.capture", pm->id);
            snprintf(c->body, sizeof c->body, "{\"payment_id\":\"%s\"}", pm->id);
            c->want_status = "failed";
            c->want_code = "invalid_state";
        }
    } else if (r < 12) { /* a refund of a failed payment: refused */
        char rid[PLAN_ID_LEN + 16];
        snprintf(rid, sizeof rid, "%s-r0", pm->id);
        c = add_cmd(p, rs, K_REFUND, WAVE_FOLLOW, "payment.refund", rid);
        snprintf(c->body, sizeof c->body, "{\"refund_id\":\"%s\",\"payment_id\":\"%s\"}", rid,
                 pm->id);
        c->want_status = "failed";
        c->want_code = "invalid_state";
        add_event(ev, &nev, "refund.failed");
    }
    for (size_t k = first; k < p->ncmds; k++)
        p->cmds[k].pay = (int)i;
    events_text(pm, ev, nev);
    if (pm->captured)
        pm->fee = plan_fee(pm->captured);
}

/* Messages the workload means to fail: each must reach payq.dlq with its
 * reason, once, and nothing else of the run may. */
static void plan_bad(struct chaos_plan *p, uint64_t *rs)
{
    struct plan_cmd *c;
    const char *cust = p->customers[0].id;
    c = add_cmd(p, rs, K_BAD, WAVE_FOLLOW, "account.deposit", "");
    snprintf(c->body, sizeof c->body, "{\"deposit_id\":\"%s-bad0\",\"amount\":", p->prefix);
    c->want_code = "malformed_json";
    c = add_cmd(p, rs, K_BAD, WAVE_FOLLOW, "account.deposit", "");
    snprintf(c->body, sizeof c->body,
             "{\"deposit_id\":\"%s-bad1\",\"account\":\"%s\",\"currency\":\"USD\"}", p->prefix,
             cust);
    c->want_code = "schema_invalid";
    c = add_cmd(p, rs, K_BAD, WAVE_FOLLOW, "payment.teleport", "");
    snprintf(c->body, sizeof c->body, "{\"payment_id\":\"%s-bad2\"}", p->prefix);
    c->want_code = "unknown_command";
    c = add_cmd(p, rs, K_BAD, WAVE_FOLLOW, "payment.create", "");
    snprintf(c->body, sizeof c->body,
             "{\"payment_id\":\"%s-bad3\",\"amount\":100,\"currency\":\"USD\","
             "\"source\":\"4242424242424242\",\"destination\":\"%s\",\"capture\":true}",
             p->prefix, p->merchants[0].id);
    c->want_code = "raw_card_number";
    /* payment 0 again with another amount and a new message_id */
    const struct plan_payment *pm = &p->payments[0];
    c = add_cmd(p, rs, K_BAD, WAVE_FOLLOW, "payment.create", "");
    snprintf(c->body, sizeof c->body,
             "{\"payment_id\":\"%s\",\"amount\":%lld,\"currency\":\"USD\",\"source\":\"tok_visa\","
             "\"destination\":\"%s\",\"capture\":true}",
             pm->id, (long long)pm->amount + 1, p->merchants[0].id);
    c->want_code = "idempotency_conflict";
    /* the message_id of the first deposit, with another deposit */
    const struct plan_cmd *dep = NULL;
    for (size_t k = 0; k < p->ncmds && !dep; k++)
        if (p->cmds[k].kind == K_DEPOSIT)
            dep = &p->cmds[k];
    c = add_cmd(p, rs, K_BAD, WAVE_FOLLOW, "account.deposit", "");
    memcpy(c->mid[0], dep->mid[0], sizeof c->mid[0]);
    snprintf(c->body, sizeof c->body,
             "{\"deposit_id\":\"%s-bad5\",\"account\":\"%s\",\"amount\":1,\"currency\":\"USD\"}",
             p->prefix, cust);
    c->want_code = "idempotency_conflict";
}

/* The model's balances, fees and card flows, from the payments' final state. */
static void plan_balances(struct chaos_plan *p)
{
    for (size_t i = 0; i < p->npayments; i++) {
        const struct plan_payment *pm = &p->payments[i];
        struct plan_account *m = &p->merchants[pm->merchant];
        m->posted += pm->captured - pm->fee - pm->refunded;
        p->fees += pm->fee;
        if (pm->customer >= 0) {
            struct plan_account *c = &p->customers[pm->customer];
            c->posted += pm->refunded - pm->captured;
            c->pending += pm->held;
        } else if (pm->token) {
            p->card_net += pm->captured - pm->refunded;
        }
    }
}

/* Publish order: every copy of every command of a wave, shuffled. */
static void plan_order(struct chaos_plan *p, uint64_t *rs)
{
    for (int w = 0; w < NWAVES; w++) {
        size_t start = p->norder;
        for (size_t k = 0; k < p->ncmds; k++)
            for (int copy = 0; p->cmds[k].wave == w && copy < p->cmds[k].copies; copy++)
                p->order[p->norder++] = k * PLAN_MAX_COPIES + (size_t)copy;
        for (size_t k = p->norder - start; k > 1; k--) {
            size_t j = start + plan_below(rs, k);
            size_t t = p->order[start + k - 1];
            p->order[start + k - 1] = p->order[j];
            p->order[j] = t;
        }
        p->wave_end[w] = p->norder;
    }
}

struct chaos_plan *plan_new(uint64_t seed, size_t size, const char *prefix)
{
    if (size < 40)
        size = 40;
    struct chaos_plan *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    uint64_t rs = seed;
    p->seed = seed;
    p->prefix = prefix;
    p->ncustomers = size / 25 < 4 ? 4 : size / 25;
    p->nmerchants = size / 100 < 2 ? 2 : size / 100;
    size_t opens = p->ncustomers + p->nmerchants + 1, deposits = 2 * p->ncustomers;
    p->npayments = (size - opens - deposits) * 3 / 5;
    if (p->npayments < 8)
        p->npayments = 8;
    size_t maxcmds = opens + deposits + 3 * p->npayments + 8;
    p->customers = calloc(p->ncustomers, sizeof *p->customers);
    p->merchants = calloc(p->nmerchants, sizeof *p->merchants);
    p->payments = calloc(p->npayments, sizeof *p->payments);
    p->cmds = calloc(maxcmds, sizeof *p->cmds);
    p->order = calloc(maxcmds * PLAN_MAX_COPIES, sizeof *p->order);
    if (!p->customers || !p->merchants || !p->payments || !p->cmds || !p->order) {
        plan_free(p);
        return NULL;
    }

    struct plan_cmd *c;
    for (size_t i = 0; i < p->nmerchants; i++) {
        snprintf(p->merchants[i].id, sizeof p->merchants[i].id, "%s-m%zu", prefix, i);
        c = add_cmd(p, &rs, K_OPEN, WAVE_OPEN, "account.open", p->merchants[i].id);
        snprintf(c->body, sizeof c->body,
                 "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"merchant\"}",
                 p->merchants[i].id);
    }
    snprintf(p->poor.id, sizeof p->poor.id, "%s-poor", prefix);
    for (size_t i = 0; i <= p->ncustomers; i++) {
        const char *id = p->poor.id;
        if (i < p->ncustomers) {
            snprintf(p->customers[i].id, sizeof p->customers[i].id, "%s-c%zu", prefix, i);
            id = p->customers[i].id;
        }
        c = add_cmd(p, &rs, K_OPEN, WAVE_OPEN, "account.open", id);
        snprintf(c->body, sizeof c->body,
                 "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"customer\"}", id);
    }
    for (size_t i = 0; i < deposits; i++) {
        struct plan_account *a = &p->customers[i % p->ncustomers];
        int64_t amount = 20000 + (int64_t)plan_below(&rs, 40000);
        char did[PLAN_ID_LEN];
        snprintf(did, sizeof did, "%s-d%zu", prefix, i);
        c = add_cmd(p, &rs, K_DEPOSIT, WAVE_DEPOSIT, "account.deposit", did);
        snprintf(c->body, sizeof c->body,
                 "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":%lld,\"currency\":\"USD\"}",
                 did, a->id, (long long)amount);
        a->budget += amount;
        a->posted += amount;
        p->deposited += amount;
    }
    for (size_t i = 0; i < p->npayments; i++)
        plan_payment(p, &rs, i);
    plan_bad(p, &rs);
    plan_balances(p);
    plan_order(p, &rs);
    return p;
}

void plan_free(struct chaos_plan *p)
{
    if (!p)
        return;
    free(p->customers);
    free(p->merchants);
    free(p->payments);
    free(p->cmds);
    free(p->order);
    free(p);
}
