/*
 * test_cluster.c - a RabbitMQ node stops mid-run: nothing lost, nothing
 * applied twice, the workers carry on.
 *
 * Run through tests/integration/test_cluster.sh, which starts a three-node
 * cluster (tests/cluster.sh up) and sets AMQP_URL to the list of its nodes;
 * the database is tests/stack.sh's. Two worker processes (two threads each)
 * take the list, and so does this test's publisher. A steady stream of
 * wallet payments is published with confirms; a third of the way through,
 * the node leading the work queue (payq.commands, a quorum queue with a
 * replica on each node) is stopped (PAYQ_CLUSTER_FAULT=stop, the default:
 * SIGTERM, a clean shutdown; kill: SIGKILL, a crash) while publishing goes
 * on through the other nodes. Then every payment must be applied exactly
 * once with the right balances, the work queue empty, no dead letter, the
 * checker content and both workers alive and still working. The node is
 * started again at the end and its replica comes back online.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "mqurl.h"
#include "topology.h"

#define WORKERS 2
#define WALLETS 20
#define DEPOSIT 1000000

static int payments = 400; /* PAYQ_CLUSTER_PAYMENTS */
static pid_t workers[WORKERS];
static int metrics_port[WORKERS];
static char port_env[WORKERS][64];
static int stopped_node; /* restarted by the teardown if a test failed midway */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* bash tests/cluster.sh ARGS; its stdout (first line) into out when given. */
static int cluster(const char *args, char *out, size_t len)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash %s/tests/cluster.sh %s", PAYQ_SOURCE_DIR, args);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[256] = "";
    if (!fgets(line, sizeof line, f))
        line[0] = 0;
    char rest[256];
    while (fgets(rest, sizeof rest, f))
        ;
    int st = pclose(f);
    line[strcspn(line, "\n")] = 0;
    if (out)
        snprintf(out, len, "%s", line);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The same in the background: returns the child's pid. */
static pid_t cluster_async(const char *verb, int node)
{
    char script[512], n[16];
    snprintf(script, sizeof script, "%s/tests/cluster.sh", PAYQ_SOURCE_DIR);
    snprintf(n, sizeof n, "%d", node);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execlp("bash", "bash", script, verb, n, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* A port nobody listens on right now (the kernel's pick). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* The sum of every series of a worker's metric `name` whose labels contain
 * `label` (NULL: all), read from its /metrics; -1 when it does not answer. */
static double metric(int w, const char *name, const char *label)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -fs --max-time 5 http://127.0.0.1:%d/metrics", metrics_port[w]);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[1024];
    double sum = 0;
    bool any = false;
    size_t nlen = strlen(name);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, nlen) != 0 || (line[nlen] != '{' && line[nlen] != ' '))
            continue;
        if (label && !strstr(line, label))
            continue;
        const char *v = strrchr(line, ' ');
        if (v) {
            sum += strtod(v + 1, NULL);
            any = true;
        }
    }
    int st = pclose(f);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0 && any) ? sum : -1;
}

/* Node n of the cluster (1-based): its name and the port of its HTTP API,
 * from the environment tests/cluster.sh env exports. */
static int cluster_port(const char *env, int def, int node)
{
    const char *v = getenv(env);
    return (v && atoi(v) > 0 ? atoi(v) : def) + node - 1;
}

static const char *node_name(int node)
{
    static char name[64];
    snprintf(name, sizeof name, "payqc-%d@localhost",
             cluster_port("PAYQ_CLUSTER_AMQP_PORT", 5711, node));
    return name;
}

/* A number from node n's management API: GET /api<path> | jq -r <filter>;
 * -1 when it does not answer. */
static long api_num(int node, const char *path, const char *filter)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "curl -fs --max-time 5 -u payq:payq http://127.0.0.1:%d/api%s | jq -r '%s'",
             cluster_port("PAYQ_CLUSTER_MGMT_PORT", 15715, node), path, filter);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[64] = "";
    if (!fgets(line, sizeof line, f))
        line[0] = 0;
    int st = pclose(f);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0 && line[0] >= '0' && line[0] <= '9') ? atol(line)
                                                                                       : -1;
}

/* Connections of payq-worker processes (consumer threads and relays), all
 * or on one node, as node `ask` sees them. */
static long worker_conns(int ask, int on_node)
{
    char filter[256];
    snprintf(filter, sizeof filter,
             "[.[] | select((.client_properties.connection_name // \"\") | "
             "startswith(\"payq-worker\"))%s%s%s]"
             " | length",
             on_node ? " | select(.node == \"" : "", on_node ? node_name(on_node) : "",
             on_node ? "\")" : "");
    return api_num(ask, "/connections", filter);
}

static int setup(void **state)
{
    (void)state;
    h_init();
    const char *n = getenv("PAYQ_CLUSTER_PAYMENTS");
    if (n && atoi(n) >= 30)
        payments = atoi(n);
    for (int w = 0; w < WORKERS; w++) {
        metrics_port[w] = free_port();
        snprintf(port_env[w], sizeof port_env[w], "PAYQ_METRICS_PORT=%d", metrics_port[w]);
        const char *env[] = { "PAYQ_THREADS=2", "PAYQ_PREFETCH=16", "PAYQ_LOG_LEVEL=info",
                              port_env[w], NULL };
        workers[w] = h_worker_start(env);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h_kill_workers();
    if (stopped_node) {
        char args[32];
        snprintf(args, sizeof args, "start %d", stopped_node);
        (void)cluster(args, NULL, 0);
    }
    return 0;
}

/* The test's publisher: one connection to whichever node answers. */
static mq_t *pub;

struct pub_stats {
    int republished;        /* publishes repeated after a lost connection or confirm */
    int reconnects;         /* connections opened again */
    long long outage_start; /* first failure of the current outage, 0 = none */
    long long longest_outage_ms;
};

/*
 * Publishes one command (persistent, mandatory, message_id) and returns once
 * the broker confirmed it. A lost connection or a missing confirm means: open
 * another connection (the list starts at another node) and publish again,
 * with the same message_id, so the worker applies it once however often it
 * arrives.
 */
static void publish_confirmed(const char *rk, const char *message_id, const char *body,
                              struct pub_stats *s)
{
    long long deadline = now_ms() + 60000;
    for (;;) {
        assert_true(now_ms() < deadline);
        if (!pub) {
            if (mq_connect(getenv("AMQP_URL"), NULL, "payq cluster test", 30, &pub) != PAYQ_OK) {
                pub = NULL;
                sleep_ms(200);
                continue;
            }
            s->reconnects++;
        }
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                   AMQP_BASIC_MESSAGE_ID_FLAG;
        p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
        p.content_type = amqp_cstring_bytes("application/json");
        p.message_id = amqp_cstring_bytes(message_id);
        uint64_t seq;
        int rc = mq_publish(pub, PAYQ_X_COMMANDS, rk, true, &p, body, strlen(body), &seq);
        if (rc == PAYQ_OK)
            rc = mq_wait_confirms(pub, seq, 10000);
        if (rc == PAYQ_OK) {
            if (s->outage_start) {
                long long ms = now_ms() - s->outage_start;
                if (ms > s->longest_outage_ms)
                    s->longest_outage_ms = ms;
                s->outage_start = 0;
            }
            return;
        }
        print_message("# publish of %s failed (%s: %s); publishing again\n", message_id,
                      payq_strerror(rc), mq_error(pub));
        if (!s->outage_start)
            s->outage_start = now_ms();
        s->republished++;
        mq_close(pub);
        pub = NULL;
        sleep_ms(50); /* a queue without a leader refuses publishes until it has one */
    }
}

static const char *mid_prefix, *pay_prefix;

static int64_t count_like(const char *sql, const char *prefix)
{
    char like[256];
    snprintf(like, sizeof like, "%s%%", prefix);
    const char *p[1] = { like };
    return h_int(sql, 1, p);
}

static void test_node_stops_mid_run(void **state)
{
    (void)state;
    const char *fault = getenv("PAYQ_CLUSTER_FAULT");
    if (!fault || !*fault)
        fault = "stop";
    assert_true(strcmp(fault, "stop") == 0 || strcmp(fault, "kill") == 0);
    struct pub_stats ps = { 0 };

    /* Accounts, through the workers (replies on a connection of its own). */
    mq_t *mq = h_mq();
    const char *shop = h_id("c-shop");
    h_open(mq, shop, "USD", "merchant");
    const char *wallet[WALLETS];
    int64_t spent[WALLETS] = { 0 };
    for (int i = 0; i < WALLETS; i++) {
        char name[32];
        snprintf(name, sizeof name, "c-wallet%d", i);
        wallet[i] = h_id(name);
        h_open(mq, wallet[i], "USD", "customer");
        snprintf(name, sizeof name, "c-dep%d", i);
        h_deposit(mq, h_id(name), wallet[i], DEPOSIT, "USD");
    }
    mq_close(mq);

    char leader[16];
    assert_int_equal(cluster("leader payq.commands", leader, sizeof leader), 0);
    int victim = atoi(leader);
    assert_true(victim >= 1 && victim <= 3);
    int other = victim % 3 + 1; /* a node that stays up, for its API */

    /* Each worker process spreads its three connections (two consumers and
     * the relay) over the three nodes: the victim has some of them. (The
     * API lists a connection once its first statistics are in: wait.) */
    long long deadline = now_ms() + 30000;
    while (now_ms() < deadline && worker_conns(other, 0) != 3 * WORKERS)
        sleep_ms(500);
    assert_int_equal(worker_conns(other, 0), 3 * WORKERS);
    long on_victim = worker_conns(other, victim);
    assert_true(on_victim >= 1);
    /* The publisher starts on the victim too, so it has to move as well. */
    char url[1024], err[256];
    assert_int_equal(
        mq_url_at(getenv("AMQP_URL"), (size_t)victim - 1, url, sizeof url, err, sizeof err),
        PAYQ_OK);
    assert_int_equal(mq_connect(url, NULL, "payq cluster test", 30, &pub), PAYQ_OK);
    mid_prefix = h_id("c-msg-");
    pay_prefix = h_id("c-pay-");

    /* The stream: ~25 payments a second, each confirmed. */
    double before[WORKERS], at_fault[WORKERS];
    for (int w = 0; w < WORKERS; w++)
        assert_true((before[w] = metric(w, "payq_commands_total", NULL)) >= 0);
    pid_t fault_pid = 0;
    long long t0 = now_ms(), fault_at = 0, stop_ms = 0;
    for (int i = 0; i < payments; i++) {
        if (i == payments / 3) {
            for (int w = 0; w < WORKERS; w++)
                assert_true((at_fault[w] = metric(w, "payq_commands_total", NULL)) >= 0);
            print_message("# %d payments published; node %d (leader of payq.commands): %s\n", i,
                          victim, fault);
            fault_at = now_ms();
            stopped_node = victim;
            fault_pid = cluster_async(fault, victim);
        }
        char mid[160], pid[160], body[512];
        snprintf(mid, sizeof mid, "%s%d", mid_prefix, i);
        snprintf(pid, sizeof pid, "%s%d", pay_prefix, i);
        int w = i % WALLETS;
        int64_t amount = 100 + i % 50;
        spent[w] += amount;
        snprintf(body, sizeof body,
                 "{\"payment_id\":\"%s\",\"amount\":%lld,\"currency\":\"USD\",\"source\":\"%s\","
                 "\"destination\":\"%s\",\"capture\":true}",
                 pid, (long long)amount, wallet[w], shop);
        publish_confirmed("payment.create", mid, body, &ps);
        sleep_ms(40);
        int fst;
        if (fault_pid > 0 && waitpid(fault_pid, &fst, WNOHANG) == fault_pid) {
            assert_true(WIFEXITED(fst) && WEXITSTATUS(fst) == 0);
            stop_ms = now_ms() - fault_at;
            fault_pid = -1;
        }
    }
    long long published_ms = now_ms() - t0;
    int st;
    if (fault_pid > 0) {
        assert_int_equal(waitpid(fault_pid, &st, 0), fault_pid);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        stop_ms = now_ms() - fault_at;
    }

    /* The survivors lead the queue now. */
    assert_int_equal(cluster("leader payq.commands", leader, sizeof leader), 0);
    assert_int_not_equal(atoi(leader), victim);

    /* Every payment applied, once. */
    const char *sql_done = "SELECT count(*) FROM payq.payments WHERE payment_id LIKE $1"
                           " AND status = 'succeeded' AND recovery_point = 'finished'";
    deadline = now_ms() + 60000;
    while (count_like(sql_done, pay_prefix) < payments && now_ms() < deadline)
        sleep_ms(200);
    long long drained_ms = now_ms() - t0;
    assert_int_equal(
        count_like("SELECT count(*) FROM payq.payments WHERE payment_id LIKE $1", pay_prefix),
        payments);
    assert_int_equal(count_like(sql_done, pay_prefix), payments);
    assert_int_equal(
        count_like("SELECT count(*) FROM payq.inbox WHERE message_id LIKE $1", mid_prefix),
        payments);
    assert_int_equal(
        count_like("SELECT count(*) FROM payq.payment_events e JOIN payq.payments p USING"
                   " (payment_id) WHERE p.payment_id LIKE $1 AND e.type = 'payment.succeeded'",
                   pay_prefix),
        payments);

    /* Money: each wallet down by exactly what it paid; the shop credited
     * the amounts less the fees. */
    for (int i = 0; i < WALLETS; i++)
        assert_int_equal(h_balance(wallet[i]), DEPOSIT - spent[i]);
    int64_t total = 0;
    for (int i = 0; i < WALLETS; i++)
        total += spent[i];
    const char *ps1[1] = { shop };
    assert_int_equal(h_int("SELECT sum(amount) FROM payq.payments WHERE destination = $1", 1, ps1),
                     total);
    assert_int_equal(
        h_balance(shop),
        h_int("SELECT sum(amount - fee) FROM payq.payments WHERE destination = $1", 1, ps1));

    /* Nothing dead-lettered or retried. */
    assert_int_equal(
        count_like("SELECT count(*) FROM payq.dead_letters WHERE message_id LIKE $1", mid_prefix),
        0);
    assert_int_equal(
        count_like("SELECT count(*) FROM payq.failures WHERE message_key LIKE 'id:' || $1",
                   mid_prefix),
        0);

    /* The publisher moved to another node. */
    assert_true(ps.reconnects >= 1);

    /* Every worker connection is back, on the survivors. */
    deadline = now_ms() + 30000;
    while (now_ms() < deadline && worker_conns(other, 0) != 3 * WORKERS)
        sleep_ms(500);
    assert_int_equal(worker_conns(other, 0), 3 * WORKERS);
    assert_int_equal(worker_conns(other, victim), 0);

    /* Both workers alive, and both kept working after the fault. */
    double after[WORKERS], reconnects = 0;
    for (int w = 0; w < WORKERS; w++) {
        assert_int_equal(waitpid(workers[w], &st, WNOHANG), 0);
        assert_true((after[w] = metric(w, "payq_commands_total", NULL)) >= 0);
        assert_true(after[w] > at_fault[w]);
        reconnects += metric(w, "payq_reconnects_total", "dependency=\"amqp\"");
    }

    /* The longest pause in applying payments, the fault's cost. */
    int64_t gap_ms = count_like("SELECT coalesce(max(gap), 0) FROM (SELECT (extract(epoch FROM"
                                " created_at - lag(created_at) OVER (ORDER BY created_at)) * 1000)"
                                "::bigint AS gap FROM payq.payments WHERE payment_id LIKE $1) g",
                                pay_prefix);

    /* SIGTERM drains: unacked deliveries would go back to the queue, so an
     * empty queue afterwards means every delivery was acked. */
    for (int w = 0; w < WORKERS; w++) {
        st = h_worker_stop(workers[w], SIGTERM);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    mq = NULL;
    assert_int_equal(mq_connect(getenv("AMQP_URL"), NULL, "payq cluster test", 30, &mq), PAYQ_OK);
    uint32_t depth = 1;
    assert_int_equal(mq_queue_depth(mq, PAYQ_Q_COMMANDS, &depth), PAYQ_OK);
    assert_int_equal(depth, 0);
    for (size_t i = 0; i < topo_ntiers; i++) {
        assert_int_equal(mq_queue_depth(mq, topo_tiers[i].queue, &depth), PAYQ_OK);
        assert_int_equal(depth, 0);
    }
    mq_close(mq);
    mq_close(pub);
    pub = NULL;

    h_check_invariants();

    /* The node comes back and its replica of the work queue catches up. */
    long long t_restart = now_ms();
    char args[32], online[16] = "";
    snprintf(args, sizeof args, "start %d", victim);
    assert_int_equal(cluster(args, NULL, 0), 0);
    stopped_node = 0;
    deadline = now_ms() + 60000;
    while (now_ms() < deadline) {
        if (cluster("online payq.commands", online, sizeof online) == 0 && atoi(online) == 3)
            break;
        sleep_ms(500);
    }
    assert_int_equal(atoi(online), 3);

    print_message("# cluster failover (%s of node %d after %d of %d payments):\n", fault, victim,
                  payments / 3, payments);
    print_message("#   published in %.1f s, all applied %.1f s after the first publish\n",
                  published_ms / 1000.0, drained_ms / 1000.0);
    print_message("#   node %s took %.1f s; longest pause in applying payments %lld ms\n",
                  strcmp(fault, "stop") == 0 ? "shutdown" : "kill", stop_ms / 1000.0,
                  (long long)gap_ms);
    print_message("#   publisher: %d publishes repeated, %d reconnects, longest outage %lld ms\n",
                  ps.republished, ps.reconnects, ps.longest_outage_ms);
    print_message("#   workers: %ld of their %d connections were on node %d; %.0f consumer "
                  "reconnects; commands acked %.0f + %.0f (%d published)\n",
                  on_victim, 3 * WORKERS, victim, reconnects, after[0] - before[0],
                  after[1] - before[1], payments);
    print_message("#   node %d back, replicas online again in %.1f s\n", victim,
                  (now_ms() - t_restart) / 1000.0);
    /* The broker's own count, from the channels of the nodes that stayed
     * up (statistics are emitted every 5 s). */
    sleep_ms(5500);
    print_message("#   redelivered by the broker: %ld (payq.commands message_stats.redeliver)\n",
                  api_num(other, "/queues/%2F/payq.commands", ".message_stats.redeliver // 0"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_stops_mid_run),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
