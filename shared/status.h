/*
 * status.h - the one error vocabulary of payq.
 *
 * Every fallible function in shared/ returns an int: PAYQ_OK (0) on success or
 * one of the negative codes below. Library-specific errors (amqp_rpc_reply_t,
 * PGresult, jansson's json_error_t) are translated into these at the module
 * boundary, with the detail logged where it happened.
 */
#ifndef PAYQ_STATUS_H
#define PAYQ_STATUS_H

#define PAYQ_MUSTCHECK __attribute__((warn_unused_result))
#define PAYQ_PRINTF(f, a) __attribute__((format(printf, f, a)))

enum payq_status {
    PAYQ_OK = 0,
    PAYQ_ERR_NOMEM = -1,       /* allocation failed */
    PAYQ_ERR_INVALID = -2,     /* invalid argument or input */
    PAYQ_ERR_OVERFLOW = -3,    /* integer arithmetic would overflow */
    PAYQ_ERR_RANGE = -4,       /* value outside its allowed range, or buffer too small */
    PAYQ_ERR_CURRENCY = -5,    /* not an ISO 4217 currency code payq knows */
    PAYQ_ERR_IO = -6,          /* file or socket I/O failed */
    PAYQ_ERR_TIMEOUT = -7,     /* nothing happened before the deadline */
    PAYQ_ERR_AMQP = -8,        /* broker connection or protocol failure (transient) */
    PAYQ_ERR_DB = -9,          /* database failure (see db.h for transient vs permanent) */
    PAYQ_ERR_UNROUTABLE = -10, /* a mandatory publish was returned by the broker */
    PAYQ_ERR_NACKED = -11,     /* the broker refused a publish (basic.nack) */
    PAYQ_ERR_CLOSED = -12,     /* the peer closed the channel or connection */
    PAYQ_ERR_CONFIG = -13,     /* bad configuration value */
    PAYQ_ERR_INTERRUPTED = -14 /* stopped by a signal */
};

/* A short, static, human description of a status code. Never NULL. */
const char *payq_strerror(int status);

#endif
