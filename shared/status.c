/* status.c - descriptions of payq status codes. */
#include "status.h"

const char *payq_strerror(int status)
{
    switch (status) {
    case PAYQ_OK: return "ok";
    case PAYQ_ERR_NOMEM: return "out of memory";
    case PAYQ_ERR_INVALID: return "invalid input";
    case PAYQ_ERR_OVERFLOW: return "arithmetic overflow";
    case PAYQ_ERR_RANGE: return "value out of range";
    case PAYQ_ERR_CURRENCY: return "unknown currency";
    case PAYQ_ERR_IO: return "I/O error";
    case PAYQ_ERR_TIMEOUT: return "timed out";
    case PAYQ_ERR_AMQP: return "broker connection error";
    case PAYQ_ERR_DB: return "database error";
    case PAYQ_ERR_UNROUTABLE: return "message unroutable (returned by the broker)";
    case PAYQ_ERR_NACKED: return "message refused by the broker (nack)";
    case PAYQ_ERR_CLOSED: return "connection or channel closed";
    case PAYQ_ERR_CONFIG: return "configuration error";
    case PAYQ_ERR_INTERRUPTED: return "interrupted";
    default: return "unknown error";
    }
}
