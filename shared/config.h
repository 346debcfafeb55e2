/*
 * config.h - settings from the environment, overridable by flags.
 *
 * Each program describes its settings once, as a table of cfg_opt (flag,
 * environment variable, type, default, bounds, help) pointing into its own
 * config struct. cfg_parse fills the struct from defaults, then the
 * environment, then the command line, and checks every bound; cfg_usage
 * prints the table as --help. String values point into argv, the environment
 * or the table's defaults (static), or into a struct cfg_strings the caller
 * provides (values read from *_FILE files; released with cfg_strings_free).
 *
 * Secrets: URLs are printed only through cfg_redact_url. A URL setting can
 * also be read from a file named by <ENV>_FILE (e.g. DATABASE_URL_FILE), which
 * keeps passwords out of argv and the process environment.
 */
#ifndef PAYQ_CONFIG_H
#define PAYQ_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

enum cfg_type {
    CFG_STR,    /* const char * */
    CFG_SECRET, /* const char *, a URL that may hold a password; also <ENV>_FILE */
    CFG_INT,    /* long, within [min, max] */
    CFG_BOOL    /* int 0/1; the flag takes no value; env accepts 1/0/true/false/yes/no */
};

struct cfg_opt {
    const char *flag;    /* long option without dashes, e.g. "amqp-url" */
    const char *env;     /* environment variable or NULL */
    enum cfg_type type;
    const char *def;     /* default as text; NULL = unset (NULL string / 0) */
    long min, max;       /* CFG_INT bounds */
    size_t offset;       /* offsetof(struct your_config, field) */
    const char *metavar; /* e.g. "URL", "N" */
    const char *help;
};

#define CFG_END { NULL, NULL, CFG_STR, NULL, 0, 0, 0, NULL, NULL }

/* Strings cfg_parse allocated (secrets read from files). */
struct cfg_strings {
    char *s[8];
    int n;
};

/*
 * Parses defaults, environment and argv[1..] into cfg. Options may appear
 * anywhere; `--` ends them. Non-option words are moved, in order, to the
 * front of argv[1..] and their count is stored in *nargs. `--help`/`-h`
 * sets *help. On error returns PAYQ_ERR_CONFIG with a message in err.
 */
int cfg_parse(const struct cfg_opt *opts, void *cfg, struct cfg_strings *owned, int argc,
              char **argv, int *nargs, int *help, char *err, size_t errlen) PAYQ_MUSTCHECK;

/* Prints one entry per option: flag, metavar, env var, default, help. */
void cfg_usage(FILE *out, const struct cfg_opt *opts);

/* Releases the strings cfg_parse allocated; a zeroed struct is a no-op. */
void cfg_strings_free(struct cfg_strings *owned);

/* Copies url into out with any password replaced by "***"
 * ("amqp://payq:***@host:5673/"); also masks password=... in libpq keyword
 * strings. Always NUL-terminates; truncates to len. */
void cfg_redact_url(const char *url, char *out, size_t len);

#endif
