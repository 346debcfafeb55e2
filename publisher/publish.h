/*
 * publish.h - the parts of payq-publish shared by its files:
 *   publish.c           options, one command from the command line (main);
 *   publish_batch.c     many commands from an NDJSON file (--file);
 *   publish_examples.c  a valid example body per command (--example).
 * Internal to the payq-publish program; nothing here is a library.
 */
#ifndef PAYQ_PUBLISH_H
#define PAYQ_PUBLISH_H

#include <stddef.h>
#include <stdio.h>

#include "mq.h"
#include "status.h"

/* Exit codes, also documented in --help. With --file the worst one wins:
 * 5 > 4 > 3 > 1 > 0. */
enum {
    EXIT_SUCCEEDED = 0,  /* published (and, with --wait, succeeded or authorized) */
    EXIT_FAILED = 1,     /* the business refused it (--wait) */
    EXIT_USAGE = 2,      /* bad options or input; nothing was published */
    EXIT_REJECTED = 3,   /* rejected: invalid, dead-lettered (--wait) */
    EXIT_TIMEOUT = 4,    /* no reply in time (--wait) */
    EXIT_UNAVAILABLE = 5 /* broker unreachable, or it refused the message */
};

/* Publisher confirms outstanding at most, with --file. */
#define PUBLISH_WINDOW 500

struct publish_config {
    const char *amqp_url;
    struct mq_tls amqp_tls; /* amqps:// CA file and client certificate */
    const char *exchange;
    const char *message_id;
    const char *correlation_id;
    const char *reply_to;
    const char *user_id;
    const char *file;
    long timeout;
    long rate;
    int wait;
    int no_message_id;
    int quiet;
    int example;
};

/* A random version-4 UUID. 0 on success, -1 when /dev/urandom fails. */
int publish_uuid4(char out[37]) PAYQ_MUSTCHECK;

/* The exit code a reply's status means: 0 succeeded/authorized, 3 rejected,
 * 1 otherwise (failed, or a reply that is not what the contract says). */
int publish_status_exit(const char *status);

/*
 * Publishes every command of cfg->file (NDJSON, "-" = standard input) and
 * returns the exit code. Prints replies on stdout (--wait), progress and
 * the summary on stderr.
 */
int publish_batch(const struct publish_config *cfg);

/* The example body of a command (static JSON text), or NULL when the
 * command is unknown. */
const char *publish_example(const char *command);

/* --example [COMMAND]: prints the list, or one body; returns the exit code. */
int publish_example_main(int nargs, char **args, FILE *out);

#endif
