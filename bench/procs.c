/*
 * procs.c - child processes and CPU accounting (see procs.h).
 */
#include "procs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* In the child, after fork: die with the parent, take the URLs, exec. */
static void exec_child(char *const argv[], const struct procs_env *env, pid_t parent)
{
    (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127); /* the bench died before prctl took effect */
    if (env && env->amqp_url)
        setenv("AMQP_URL", env->amqp_url, 1);
    if (env && env->database_url)
        setenv("DATABASE_URL", env->database_url, 1);
    const struct mq_tls *tls = env ? env->amqp_tls : NULL;
    if (tls && tls->cacert)
        setenv("AMQP_CACERT", tls->cacert, 1);
    if (tls && tls->cert)
        setenv("AMQP_CERT", tls->cert, 1);
    if (tls && tls->key)
        setenv("AMQP_KEY", tls->key, 1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execv(argv[0], argv);
    dprintf(STDERR_FILENO, "payq-bench: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int procs_spawn(char *const argv[], const struct procs_env *env, const char *log_path, pid_t *out)
{
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return PAYQ_ERR_IO;
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        return PAYQ_ERR_IO;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        exec_child(argv, env, parent);
    }
    close(fd);
    *out = pid;
    return PAYQ_OK;
}

bool procs_exited(pid_t pid, int *status)
{
    return waitpid(pid, status, WNOHANG) == pid;
}

void procs_reap(pid_t pid, int timeout_ms, int *status)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        if (waitpid(pid, status, WNOHANG) == pid)
            return;
        sleep_ms(20);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
}

int procs_run(char *const argv[], const struct procs_env *env, char *out, size_t outlen,
              int *status)
{
    int p[2];
    if (outlen == 0 || pipe(p) != 0)
        return PAYQ_ERR_IO;
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return PAYQ_ERR_IO;
    }
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], STDOUT_FILENO);
        dup2(p[1], STDERR_FILENO);
        close(p[1]);
        exec_child(argv, env, parent);
    }
    close(p[1]);
    /* Keeps the tail: when full, the oldest half is dropped. */
    size_t n = 0;
    for (;;) {
        if (n == outlen - 1) {
            size_t keep = (outlen - 1) / 2;
            memmove(out, out + n - keep, keep);
            n = keep;
        }
        ssize_t r = read(p[0], out + n, outlen - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    out[n] = 0;
    close(p[0]);
    while (waitpid(pid, status, 0) < 0) {
        if (errno != EINTR)
            return PAYQ_ERR_IO;
    }
    return PAYQ_OK;
}

long procs_peak_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

double procs_cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* Fields after the command name, which is in parentheses and may hold
     * spaces: state is field 3, utime 14, stime 15. */
    const char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long utime, stime;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (double)(utime + stime) / (double)hz : -1;
}

void procs_sample_named(const char *comm, struct procs_sample *out)
{
    out->n = 0;
    DIR *dir = opendir("/proc");
    if (!dir)
        return;
    struct dirent *e;
    while ((e = readdir(dir)) && out->n < PROCS_SAMPLE_MAX) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        char path[64], name[64] = "";
        snprintf(path, sizeof path, "/proc/%ld/comm", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(name, sizeof name, f))
            name[strcspn(name, "\n")] = 0;
        fclose(f);
        double cpu;
        if (strcmp(name, comm) == 0 && (cpu = procs_cpu_seconds((pid_t)pid)) >= 0) {
            out->pid[out->n] = (pid_t)pid;
            out->cpu[out->n++] = cpu;
        }
    }
    closedir(dir);
}

double procs_sample_delta(const struct procs_sample *before, const struct procs_sample *after)
{
    double sum = 0;
    for (int i = 0; i < after->n; i++) {
        double start = 0;
        for (int j = 0; j < before->n; j++)
            if (before->pid[j] == after->pid[i])
                start = before->cpu[j];
        if (after->cpu[i] > start)
            sum += after->cpu[i] - start;
    }
    return sum;
}

int procs_host_cpu(uint64_t *busy, uint64_t *total)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return PAYQ_ERR_IO;
    unsigned long long v[8] = { 0 };
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 4)
        return PAYQ_ERR_IO;
    uint64_t t = 0;
    for (int i = 0; i < 8; i++)
        t += v[i];
    *total = t;
    *busy = t - v[3] - v[4]; /* all but idle and iowait */
    return PAYQ_OK;
}

int procs_self_dir(char *buf, size_t len)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return PAYQ_ERR_IO;
    path[n] = 0;
    char *slash = strrchr(path, '/');
    if (!slash)
        return PAYQ_ERR_IO;
    *slash = 0;
    int w = snprintf(buf, len, "%s", path);
    return w < 0 || (size_t)w >= len ? PAYQ_ERR_RANGE : PAYQ_OK;
}

int procs_count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

void procs_print_tail(FILE *out, const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char ring[16][512];
    int n = 0;
    if (lines > 16)
        lines = 16;
    while (fgets(ring[n % lines], sizeof ring[0], f))
        n++;
    fclose(f);
    for (int i = n > lines ? n - lines : 0; i < n; i++) {
        const char *l = ring[i % lines];
        fprintf(out, "    %s%s", l, l[strlen(l) ? strlen(l) - 1 : 0] == '\n' ? "" : "\n");
    }
}
