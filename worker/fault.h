/*
 * fault.h - fault injection for crash tests (testing only).
 *
 * PAYQ_FAULT=point[:n] makes the worker SIGKILL itself the n-th time (default
 * the first) it reaches `point`, so a test can prove what a crash at that
 * exact place leaves behind. Points: after_commit (a saga phase committed),
 * before_provider_call, after_provider_call (the provider answered, nothing
 * recorded yet), before_ack (the outcome is published and confirmed).
 * PAYQ_FAULT=body_contains:TEXT kills the worker every time it starts
 * applying a delivery whose body contains TEXT (a poison message).
 * Unset, it costs one pointer test.
 */
#ifndef PAYQ_FAULT_H
#define PAYQ_FAULT_H

#include <stdatomic.h>
#include <stddef.h>

struct fault {
    char point[32];
    char match[64]; /* body_contains: the text */
    int nth;
    atomic_int seen;
};

/* Parses "point[:n]"; NULL or "" disables. Returns 0, or -1 when malformed. */
int fault_parse(struct fault *f, const char *spec);

/* Dies with SIGKILL if this is the configured point's n-th hit. */
void fault_hit(struct fault *f, const char *point);

/* Dies with SIGKILL if the fault is body_contains and the body has the text. */
void fault_hit_body(struct fault *f, const void *body, size_t len);

#endif
