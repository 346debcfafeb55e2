/* fault.c - see fault.h. */
#include "fault.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

int fault_parse(struct fault *f, const char *spec)
{
    memset(f, 0, sizeof *f);
    atomic_init(&f->seen, 0);
    if (!spec || !*spec)
        return 0;
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0 || n >= sizeof f->point)
        return -1;
    memcpy(f->point, spec, n);
    if (strcmp(f->point, "body_contains") == 0) {
        if (!colon || !colon[1] || strlen(colon + 1) >= sizeof f->match)
            return -1;
        snprintf(f->match, sizeof f->match, "%s", colon + 1);
        return 0;
    }
    f->nth = colon ? atoi(colon + 1) : 1;
    return f->nth >= 1 ? 0 : -1;
}

void fault_hit(struct fault *f, const char *point)
{
    if (!f || !f->point[0] || strcmp(f->point, point) != 0)
        return;
    if (atomic_fetch_add(&f->seen, 1) + 1 == f->nth) {
        log_warn("fault injection: SIGKILL at %s (hit %d)", point, f->nth);
        raise(SIGKILL);
    }
}

void fault_hit_body(struct fault *f, const void *body, size_t len)
{
    if (f && f->match[0] && memmem(body, len, f->match, strlen(f->match))) {
        log_warn("fault injection: SIGKILL on a body containing \"%s\"", f->match);
        raise(SIGKILL);
    }
}
