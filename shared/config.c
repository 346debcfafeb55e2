/*
 * config.c - table-driven settings: defaults < environment < flags.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FIELD(cfg, opt, T) ((T *)(void *)((char *)(cfg) + (opt)->offset))

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off", "" };
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (strcasecmp(s, yes[i]) == 0) { *out = 1; return PAYQ_OK; }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (strcasecmp(s, no[i]) == 0) { *out = 0; return PAYQ_OK; }
    return PAYQ_ERR_CONFIG;
}

/* Reads a whole small file, trailing newlines removed. Caller frees. */
static char *read_secret_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    return strdup(buf);
}

static int set_value(const struct cfg_opt *o, void *cfg, const char *value, const char *source,
                     char *err, size_t errlen)
{
    switch (o->type) {
    case CFG_STR:
    case CFG_SECRET:
        *FIELD(cfg, o, const char *) = value;
        return PAYQ_OK;
    case CFG_BOOL: {
        int b;
        if (parse_bool(value, &b) != PAYQ_OK) {
            snprintf(err, errlen, "%s: expected true or false, got \"%s\"", source, value);
            return PAYQ_ERR_CONFIG;
        }
        *FIELD(cfg, o, int) = b;
        return PAYQ_OK;
    }
    case CFG_INT: {
        char *end;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end || v < o->min || v > o->max) {
            snprintf(err, errlen, "%s: expected an integer from %ld to %ld, got \"%s\"", source,
                     o->min, o->max, value);
            return PAYQ_ERR_CONFIG;
        }
        *FIELD(cfg, o, long) = v;
        return PAYQ_OK;
    }
    }
    return PAYQ_ERR_CONFIG;
}

static int apply_env(const struct cfg_opt *o, void *cfg, struct cfg_strings *owned, char *err,
                     size_t errlen)
{
    if (!o->env)
        return PAYQ_OK;
    const char *v = getenv(o->env);
    if (v)
        return set_value(o, cfg, v, o->env, err, errlen);
    if (o->type != CFG_SECRET)
        return PAYQ_OK;
    char name[128];
    snprintf(name, sizeof name, "%s_FILE", o->env);
    const char *path = getenv(name);
    if (!path)
        return PAYQ_OK;
    if (owned->n == (int)(sizeof owned->s / sizeof owned->s[0])) {
        snprintf(err, errlen, "%s: too many settings read from files", name);
        return PAYQ_ERR_CONFIG;
    }
    char *s = read_secret_file(path);
    if (!s) {
        snprintf(err, errlen, "%s: cannot read %s: %s", name, path, strerror(errno));
        return PAYQ_ERR_CONFIG;
    }
    owned->s[owned->n++] = s;
    *FIELD(cfg, o, const char *) = s;
    return PAYQ_OK;
}

int cfg_parse(const struct cfg_opt *opts, void *cfg, struct cfg_strings *owned, int argc,
              char **argv, int *nargs, int *help, char *err, size_t errlen)
{
    int rc;
    *help = 0;
    for (const struct cfg_opt *o = opts; o->flag; o++) {
        if (o->type == CFG_STR || o->type == CFG_SECRET)
            *FIELD(cfg, o, const char *) = o->def;
        else if (o->type == CFG_BOOL)
            *FIELD(cfg, o, int) = 0;
        else
            *FIELD(cfg, o, long) = 0;
        if (o->def && o->type != CFG_STR && o->type != CFG_SECRET &&
            (rc = set_value(o, cfg, o->def, o->flag, err, errlen)) != PAYQ_OK)
            return rc;
    }
    for (const struct cfg_opt *o = opts; o->flag; o++)
        if ((rc = apply_env(o, cfg, owned, err, errlen)) != PAYQ_OK)
            return rc;

    int out = 1, only_args = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_args || a[0] != '-' || a[1] == 0) {
            argv[out++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_args = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            *help = 1;
            continue;
        }
        if (a[1] != '-') {
            snprintf(err, errlen, "unknown option %s (see --help)", a);
            return PAYQ_ERR_CONFIG;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct cfg_opt *o = opts;
        while (o->flag && !(strlen(o->flag) == nlen && strncmp(o->flag, name, nlen) == 0))
            o++;
        if (!o->flag) {
            snprintf(err, errlen, "unknown option --%.*s (see --help)", (int)nlen, name);
            return PAYQ_ERR_CONFIG;
        }
        const char *value;
        if (o->type == CFG_BOOL && !eq) {
            value = "true";
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            snprintf(err, errlen, "option --%s needs a value (see --help)", o->flag);
            return PAYQ_ERR_CONFIG;
        }
        char source[80];
        snprintf(source, sizeof source, "--%s", o->flag);
        if ((rc = set_value(o, cfg, value, source, err, errlen)) != PAYQ_OK)
            return rc;
    }
    *nargs = out - 1;
    for (int i = out; i < argc; i++)
        argv[i] = NULL;
    return PAYQ_OK;
}

void cfg_strings_free(struct cfg_strings *owned)
{
    for (int i = 0; i < owned->n; i++)
        free(owned->s[i]);
    owned->n = 0;
}

/* Prints text word-wrapped to `width` columns, continuation lines indented. */
static void wrap(FILE *out, const char *text, int indent, int width)
{
    int col = indent;
    while (*text) {
        size_t word = strcspn(text, " ");
        if (col > indent && col + 1 + (int)word > width) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', out);
            col++;
        }
        fwrite(text, 1, word, out);
        col += (int)word;
        text += word;
        while (*text == ' ')
            text++;
    }
    fputc('\n', out);
}

void cfg_usage(FILE *out, const struct cfg_opt *opts)
{
    enum { INDENT = 31, WIDTH = 96 };
    for (const struct cfg_opt *o = opts; o->flag; o++) {
        char left[64];
        if (o->type == CFG_BOOL)
            snprintf(left, sizeof left, "--%s", o->flag);
        else
            snprintf(left, sizeof left, "--%s %s", o->flag, o->metavar ? o->metavar : "VALUE");
        fprintf(out, "  %-28s ", left);
        wrap(out, o->help, INDENT, WIDTH);
        if (o->env || (o->def && *o->def)) {
            char line[512], red[256];
            int n = 0;
            if (o->env)
                n = snprintf(line, sizeof line, "[env %s%s%s%s", o->env,
                             o->type == CFG_SECRET ? " or " : "",
                             o->type == CFG_SECRET ? o->env : "",
                             o->type == CFG_SECRET ? "_FILE" : "");
            else
                n = snprintf(line, sizeof line, "[");
            if (o->def && *o->def) {
                cfg_redact_url(o->def, red, sizeof red);
                snprintf(line + n, sizeof line - (size_t)n, "%sdefault %s]", o->env ? "; " : "",
                         red);
            } else {
                snprintf(line + n, sizeof line - (size_t)n, "]");
            }
            fprintf(out, "%*s", INDENT, "");
            wrap(out, line, INDENT, WIDTH);
        }
    }
}

/* Appends n bytes of s at out[*pos], truncating; out stays NUL-terminated. */
static void put(char *out, size_t len, size_t *pos, const char *s, size_t n)
{
    while (n-- > 0 && *pos + 1 < len)
        out[(*pos)++] = *s++;
    out[*pos] = 0;
}

/* Where the value of a password parameter that starts at v ends: at `&` or
 * `#` in a URI query, at a space in a keyword string (or past its quotes). */
static const char *param_end(const char *v, bool uri)
{
    if (uri)
        return v + strcspn(v, "&#");
    if (*v == '\'') {
        v++;
        while (*v && *v != '\'')
            v += (*v == '\\' && v[1]) ? 2 : 1;
        return *v ? v + 1 : v;
    }
    return v + strcspn(v, " ");
}

/* Appends [p, stop) with the value of every password=... and
 * sslpassword=... masked: libpq takes them as URI query parameters and as
 * keywords alike. */
static void put_params(char *out, size_t len, size_t *pos, const char *p, const char *stop,
                       bool uri)
{
    const char *pw;
    while ((pw = strstr(p, "password=")) != NULL && pw + 9 <= stop) {
        const char *v = pw + 9;
        put(out, len, pos, p, (size_t)(v - p));
        put(out, len, pos, "***", 3);
        p = param_end(v, uri);
        if (p > stop)
            p = stop;
    }
    put(out, len, pos, p, (size_t)(stop - p));
}

/* In a comma-separated list of URLs (AMQP_URL naming the nodes of a
 * cluster), where the URL after the one whose authority starts at auth
 * begins: just after a ',' followed by a scheme and "://". NULL when it is
 * the last. */
static const char *next_url(const char *auth)
{
    for (const char *c = strchr(auth, ','); c; c = strchr(c + 1, ',')) {
        const char *s = c + 1 + strspn(c + 1, " \t");
        size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");
        if (n > 0 && strncmp(s + n, "://", 3) == 0)
            return c + 1;
    }
    return NULL;
}

void cfg_redact_url(const char *url, char *out, size_t len)
{
    if (!len)
        return;
    if (!url) {
        snprintf(out, len, "(unset)");
        return;
    }
    size_t pos = 0;
    out[0] = 0;
    if (!strstr(url, "://")) { /* a libpq keyword/value string */
        put_params(out, len, &pos, url, url + strlen(url), false);
        return;
    }
    /* Each URL of the list: user:password@ in its authority, which ends at
     * '/', '?', '#' or the next URL. The password is whatever lies between
     * the first ':' and the last '@', so an unencoded ',' or '@' in it is
     * masked too. Then its query parameters. */
    for (const char *p = url; *p;) {
        const char *auth = strstr(p, "://") + 3;
        const char *next = next_url(auth);
        const char *stop = next ? next - 1 : auth + strlen(auth); /* at the ',' */
        const char *end = auth + strcspn(auth, "/?#");
        if (end > stop)
            end = stop;
        const char *at = NULL;
        for (const char *c = auth; c < end; c++)
            if (*c == '@')
                at = c;
        const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon) {
            put(out, len, &pos, p, (size_t)(colon - p));
            put(out, len, &pos, ":***", 4);
            p = at;
        }
        put_params(out, len, &pos, p, stop, true);
        p = stop;
    }
}
