/*
 * log.c - JSON-lines logging to stderr.
 *
 * A line is built in a stack buffer and written with one write(2), so lines
 * from several worker threads never interleave.
 */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
    const char *program;
    enum log_level level;
} log_cfg = { "payq", LOG_INFO };

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_init(const char *program, enum log_level level)
{
    log_cfg.program = program;
    log_cfg.level = level;
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

static void put(char *buf, size_t len, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    if (*pos + n >= len)
        n = len - 1 - *pos;
    memcpy(buf + *pos, s, n);
    *pos += n;
}

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
    size_t n;
    unsigned int min;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) { n = 2; min = 0x80; }
    else if ((s[0] & 0xf0) == 0xe0) { n = 3; min = 0x800; }
    else if ((s[0] & 0xf8) == 0xf0) { n = 4; min = 0x10000; }
    else return 0;
    if (n > left)
        return 0;
    unsigned int cp = s[0] & (0xff >> (n + 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

void log_json_escape(char *buf, size_t len, size_t *pos, const char *s, size_t slen)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < slen && *pos + 7 < len;) {
        unsigned char c = p[i];
        char tmp[8];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\'; tmp[1] = (char)c; tmp[2] = 0;
            put(buf, len, pos, tmp);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            put(buf, len, pos, tmp);
            i++;
        } else {
            size_t n = utf8_seq(p + i, slen - i);
            if (n == 0) {
                put(buf, len, pos, "\xef\xbf\xbd");
                i++;
            } else {
                if (*pos + n >= len)
                    break;
                memcpy(buf + *pos, p + i, n);
                *pos += n;
                i += n;
            }
        }
    }
    buf[*pos] = 0;
}

static void field(char *buf, size_t len, size_t *pos, const char *name, const char *value)
{
    if (!value || !*value)
        return;
    put(buf, len, pos, ",\"");
    put(buf, len, pos, name);
    put(buf, len, pos, "\":\"");
    log_json_escape(buf, len, pos, value, strlen(value));
    put(buf, len, pos, "\"");
}

void log_msg(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
{
    if (level < log_cfg.level)
        return;
    char line[4096], msg[2048], ts[40];
    size_t pos = 0;
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof ts - tl, ".%03ldZ", now.tv_nsec / 1000000);

    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg[0] = 0;

    put(line, sizeof line, &pos, "{\"time\":\"");
    put(line, sizeof line, &pos, ts);
    put(line, sizeof line, &pos, "\",\"level\":\"");
    put(line, sizeof line, &pos, level_names[level]);
    put(line, sizeof line, &pos, "\"");
    field(line, sizeof line, &pos, "program", log_cfg.program);
    field(line, sizeof line, &pos, "msg", msg);
    if (ctx) {
        field(line, sizeof line, &pos, "command", ctx->command);
        field(line, sizeof line, &pos, "id", ctx->id);
        field(line, sizeof line, &pos, "message_id", ctx->message_id);
        field(line, sizeof line, &pos, "correlation_id", ctx->correlation_id);
        if (ctx->attempt > 0) {
            char a[32];
            snprintf(a, sizeof a, ",\"attempt\":%d", ctx->attempt);
            put(line, sizeof line, &pos, a);
        }
    }
    put(line, sizeof line - 1, &pos, "}");
    line[pos++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, pos);
    (void)w;
}
