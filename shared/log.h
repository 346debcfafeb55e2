/*
 * log.h - structured logs: one JSON object per line on stderr.
 *
 * Every line has time, level, program and msg; a log_ctx adds the fields of
 * the command being handled (message_id, correlation_id, payment_id, attempt)
 * so a log search can follow one command across workers. The level threshold
 * is process-wide and set once at start (log_init) before threads exist.
 * Never pass secrets or card numbers to these functions.
 */
#ifndef PAYQ_LOG_H
#define PAYQ_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "status.h"

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Context fields; NULL or "" fields are omitted. Not owned. */
struct log_ctx {
    const char *message_id;
    const char *correlation_id;
    const char *command;
    const char *id; /* business id: payment_id, deposit_id, ... */
    int attempt;    /* 0 = omit */
};

/* Sets the program name and threshold. Call before starting threads. */
void log_init(const char *program, enum log_level level);

/* "debug" | "info" | "warn" | "error" -> level; -1 when unknown. */
int log_level_parse(const char *name);

void log_msg(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
    PAYQ_PRINTF(3, 4);

#define log_debug(...) log_msg(LOG_DEBUG, NULL, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, NULL, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, NULL, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, NULL, __VA_ARGS__)

/* Appends s as a JSON string body (no quotes) to buf at *pos, escaping as
 * needed and replacing invalid UTF-8 with U+FFFD; truncates at len. */
void log_json_escape(char *buf, size_t len, size_t *pos, const char *s, size_t slen);

#endif
