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
