/*
 * dlq_text.c - what payq-dlq prints: aligned tables of untrusted text (a
 * dead letter's error or message_id can hold anything), compact ages, and
 * the syntax of --since / --until.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "dlq.h"

void dlq_age(long long s, char *buf, size_t len)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        snprintf(buf, len, "%llds", s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm", s / 60);
    else if (s < 48 * 3600)
        snprintf(buf, len, "%lldh", s / 3600);
    else
        snprintf(buf, len, "%lldd", s / 86400);
}

/* Reads exactly n digits at *p into *v. */
static bool digits(const char **p, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        x = x * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *v = x;
    return true;
}

bool dlq_is_rfc3339(const char *s)
{
    const char *p = s;
    int y, mo, d, h, mi, sec, oh, om;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d))
        return false;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > 31)
        return false;
    if (*p == 0)
        return true; /* a date alone: midnight in the session time zone (UTC) */
    if (*p != 'T' && *p != 't' && *p != ' ')
        return false;
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || h > 23 || mi > 59)
        return false;
    if (*p == ':') {
        p++;
        if (!digits(&p, 2, &sec) || sec > 60)
            return false;
        if (*p == '.') {
            p++;
            if (!isdigit((unsigned char)*p))
                return false;
            while (isdigit((unsigned char)*p))
                p++;
        }
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == 0;
    if (*p == '+' || *p == '-') {
        p++;
        if (!digits(&p, 2, &oh) || oh > 23)
            return false;
        if (*p == ':')
            p++;
        if (!digits(&p, 2, &om) || om > 59)
            return false;
    }
    return *p == 0;
}

bool dlq_parse_when(const char *s, char *rel, size_t rel_len, char *abs, size_t abs_len)
{
    rel[0] = abs[0] = 0;
    if (!s || !*s)
        return false;
    if (dlq_is_rfc3339(s)) {
        if (strlen(s) >= abs_len)
            return false;
        snprintf(abs, abs_len, "%s", s);
        return true;
    }
    char *end;
    long n = strtol(s, &end, 10);
    if (end == s || !isdigit((unsigned char)s[0]) || n < 0 || n > 100000000L)
        return false;
    const char *unit;
    if (strcmp(end, "s") == 0)
        unit = "seconds";
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        unit = "minutes";
    else if (strcmp(end, "h") == 0)
        unit = "hours";
    else if (strcmp(end, "d") == 0)
        unit = "days";
    else if (strcmp(end, "w") == 0)
        unit = "weeks";
    else
        return false;
    snprintf(rel, rel_len, "%ld %s", n, unit);
    return true;
}

/* ---- tables ------------------------------------------------------------ */

struct dlq_table {
    int ncol;
    const char *const *heads;
    const int *maxw;
    char **cells; /* nrows * ncol */
    int nrows, cap;
    int width[16];
};

/* Display width of UTF-8 text: one column per code point. */
static int text_width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

/* A copy of s for a table cell: control characters become '?', and text
 * wider than maxw is cut at a code point boundary and ends with "…". */
static char *cell(const char *s, int maxw)
{
    if (!s)
        s = "-";
    size_t n = strlen(s);
    char *out = malloc(n + 4);
    if (!out)
        return NULL;
    size_t o = 0;
    int w = 0;
    int total = text_width(s);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool lead = (c & 0xC0) != 0x80;
        if (lead) {
            if (maxw > 0 && total > maxw && w == maxw - 1) {
                memcpy(out + o, "\xe2\x80\xa6", 3); /* … */
                o += 3;
                break;
            }
            w++;
        }
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out[o] = 0;
    return out;
}

struct dlq_table *dlq_table_new(int ncol, const char *const *heads, const int *maxw)
{
    if (ncol > 16)
        return NULL;
    struct dlq_table *tb = calloc(1, sizeof *tb);
    if (!tb)
        return NULL;
    tb->ncol = ncol;
    tb->heads = heads;
    tb->maxw = maxw;
    for (int c = 0; c < ncol; c++)
        tb->width[c] = text_width(heads[c]);
    return tb;
}

int dlq_table_add(struct dlq_table *tb, const char *const *cells)
{
    if (tb->nrows == tb->cap) {
        int cap = tb->cap ? tb->cap * 2 : 64;
        char **grown = realloc(tb->cells, (size_t)cap * (size_t)tb->ncol * sizeof *grown);
        if (!grown)
            return PAYQ_ERR_NOMEM;
        tb->cells = grown;
        tb->cap = cap;
    }
    char **row = tb->cells + (size_t)tb->nrows * (size_t)tb->ncol;
    for (int c = 0; c < tb->ncol; c++) {
        row[c] = cell(cells[c], tb->maxw ? tb->maxw[c] : 0);
        if (!row[c]) {
            for (int k = 0; k < c; k++)
                free(row[k]);
            return PAYQ_ERR_NOMEM;
        }
        int w = text_width(row[c]);
        if (w > tb->width[c])
            tb->width[c] = w;
    }
    tb->nrows++;
    return PAYQ_OK;
}

static void pad_cell(FILE *out, const char *s, int width, bool last)
{
    fputs(s, out);
    if (!last)
        for (int k = text_width(s); k < width + 2; k++)
            fputc(' ', out);
}

void dlq_table_print(const struct dlq_table *tb, FILE *out)
{
    for (int c = 0; c < tb->ncol; c++)
        pad_cell(out, tb->heads[c], tb->width[c], c == tb->ncol - 1);
    fputc('\n', out);
    for (int r = 0; r < tb->nrows; r++) {
        char **row = tb->cells + (size_t)r * (size_t)tb->ncol;
        for (int c = 0; c < tb->ncol; c++)
            pad_cell(out, row[c], tb->width[c], c == tb->ncol - 1);
        fputc('\n', out);
    }
}

void dlq_table_free(struct dlq_table *tb)
{
    if (!tb)
        return;
    for (size_t i = 0; i < (size_t)tb->nrows * (size_t)tb->ncol; i++)
        free(tb->cells[i]);
    free(tb->cells);
    free(tb);
}

/* Length of the valid UTF-8 sequence at b (of n bytes), or 0. */
static size_t utf8_len(const unsigned char *b, size_t n)
{
    size_t len;
    if (b[0] >= 0xC2 && b[0] <= 0xDF)
        len = 2;
    else if (b[0] >= 0xE0 && b[0] <= 0xEF)
        len = 3;
    else if (b[0] >= 0xF0 && b[0] <= 0xF4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((b[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

void dlq_print_bytes(FILE *out, const void *bytes, size_t len)
{
    const unsigned char *b = bytes;
    for (size_t i = 0; i < len;) {
        size_t u;
        if (b[i] == '\n' || b[i] == '\t' || (b[i] >= 0x20 && b[i] < 0x7f)) {
            fputc(b[i++], out);
        } else if (b[i] >= 0x80 && (u = utf8_len(b + i, len - i)) > 0) {
            fwrite(b + i, 1, u, out);
            i += u;
        } else {
            fprintf(out, "\\x%02x", b[i++]);
        }
    }
}
