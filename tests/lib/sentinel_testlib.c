/* sentinel_testlib.c - see sentinel_testlib.h. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sentinel_testlib.h"
#include "snaplib.h"
#include "testlib.h"
#include "base/err.h"
#include "base/fs.h"

/* Loopback only, or loopback and addr: then without protected mode (no
 * password, and clients come from another address). */
static bool beyond_loopback(const struct th_sentinel *t)
{
    return strcmp(t->addr, "127.0.0.1") != 0;
}

static pid_t redis_at(struct th_sentinel *t, int port, int replica_of)
{
    char p[16], of[16], log[512], dir[512];
    snprintf(p, sizeof(p), "%d", port);
    snprintf(of, sizeof(of), "%d", replica_of);
    snprintf(log, sizeof(log), "%s/redis-%d.log", t->dir, port);
    snprintf(dir, sizeof(dir), "%s/r%d", t->dir, port);
    wp_mkdir_p(dir, 0755, NULL);
    const char *argv[24] = { "redis-server", "--port", p, "--dir", dir, "--save", "", "--appendonly", "no",
                             "--daemonize", "no", "--bind", "127.0.0.1" };
    int n = 13;
    if (beyond_loopback(t)) {
        argv[n++] = t->addr;
        argv[n++] = "--protected-mode";
        argv[n++] = "no";
    }
    if (replica_of) {
        argv[n++] = "--replicaof";
        argv[n++] = t->addr;
        argv[n++] = of;
    }
    argv[n] = NULL;
    return th_spawn(log, argv);
}

static pid_t sentinel_at(struct th_sentinel *t, int port, const char *requirepass)
{
    char conf[512], log[512], text[1200], bind[64];
    if (beyond_loopback(t))
        snprintf(bind, sizeof(bind), "127.0.0.1 %s\nprotected-mode no", t->addr);
    else
        snprintf(bind, sizeof(bind), "127.0.0.1");
    snprintf(conf, sizeof(conf), "%s/sentinel-%d.conf", t->dir, port);
    snprintf(log, sizeof(log), "%s/sentinel-%d.log", t->dir, port);
    /* Small timeouts keep the failover within a few seconds. */
    int n = snprintf(text, sizeof(text),
                     "port %d\nbind %s\ndir %s\n"
                     "sentinel monitor %s %s %d 2\n"
                     "sentinel down-after-milliseconds %s 1000\n"
                     "sentinel failover-timeout %s 3000\n"
                     "sentinel parallel-syncs %s 1\n"
                     "%s%s\n",
                     port, bind, t->dir, t->master, t->addr, t->rport[0], t->master, t->master,
                     t->master, requirepass ? "requirepass " : "", requirepass ? requirepass : "");
    if (wp_write_file(conf, text, (size_t)n, 0644, NULL) < 0)
        return -1;
    const char *argv[] = { "redis-server", conf, "--sentinel", NULL };
    return th_spawn(log, argv);
}

int th_sentinel_start(struct th_sentinel *t, const char *master)
{
    return th_sentinel_start_on(t, master, "127.0.0.1");
}

int th_sentinel_start_on(struct th_sentinel *t, const char *master, const char *addr)
{
    char q1[128], q2[128];
    memset(t, 0, sizeof(*t));
    snprintf(t->master, sizeof(t->master), "%s", master);
    snprintf(t->addr, sizeof(t->addr), "%s", addr);
    t->dir = th_tmpdir("rsent");
    if (!t->dir)
        return -1;
    for (int i = 0; i < 3; i++)
        t->rport[i] = th_free_port();
    t->dead = th_free_port();
    for (int i = 0; i < 3; i++)
        t->sent[i] = th_free_port();
    snprintf(t->list, sizeof(t->list), "%s:%d,%s:%d,%s:%d,%s:%d", addr, t->dead, addr, t->sent[0], addr,
             t->sent[1], addr, t->sent[2]);
    for (int i = 0; i < 3; i++)
        t->rpid[i] = redis_at(t, t->rport[i], i ? t->rport[0] : 0);
    for (int i = 0; i < 3; i++)
        t->spid[i] = sentinel_at(t, t->sent[i], NULL);
    /* Ready: the replicas in sync, and every sentinel sees the others and
     * the replicas (a failover needs a majority that knows each other). */
    snprintf(q1, sizeof(q1), "sentinel ckquorum %s", master);
    snprintf(q2, sizeof(q2), "sentinel master %s", master);
    for (int i = 0; i < 200; i++, th_msleep(100)) {
        bool ok = th_redis_cli_has(t->rport[0], "info replication", "connected_slaves:2");
        for (int s = 0; s < 3 && ok; s++)
            ok = th_redis_cli_has(t->sent[s], q1, "OK 3 usable") && th_redis_cli_has(t->sent[s], q2, "num-slaves\n2\n");
        if (ok)
            return 0;
    }
    fprintf(stderr, "sentinel setup did not converge (logs in %s)\n", t->dir);
    return -1;
}

void th_sentinel_stop(struct th_sentinel *t)
{
    for (int i = 0; i < 3; i++) {
        if (t->rpid[i] > 0) {
            kill(t->rpid[i], SIGKILL);
            waitpid(t->rpid[i], NULL, 0);
            t->rpid[i] = 0;
        }
        if (t->spid[i] > 0) {
            kill(t->spid[i], SIGKILL);
            waitpid(t->spid[i], NULL, 0);
            t->spid[i] = 0;
        }
    }
    if (t->dir) {
        th_rmtree(t->dir);
        free(t->dir);
        t->dir = NULL;
    }
}

int th_sentinel_primary(const struct th_sentinel *t)
{
    for (int s = 0; s < 3; s++) {
        char out[256] = "";
        if (t->spid[s] <= 0)
            continue;
        th_sh(out, sizeof(out), "redis-cli -p %d sentinel get-master-addr-by-name %s 2>/dev/null", t->sent[s],
              t->master);
        char *nl = strchr(out, '\n');
        if (nl && atoi(nl + 1) > 0)
            return atoi(nl + 1);
    }
    return -1;
}

int th_sentinel_index(const struct th_sentinel *t, int port)
{
    for (int i = 0; i < 3; i++)
        if (t->rport[i] == port)
            return i;
    return -1;
}

pid_t th_sentinel_add(struct th_sentinel *t, int port, const char *requirepass)
{
    char q[160];
    pid_t pid = sentinel_at(t, port, requirepass);
    if (pid <= 0)
        return -1;
    snprintf(q, sizeof(q), "%s%s%s sentinel get-master-addr-by-name %s",
             requirepass ? "--no-auth-warning -a '" : "", requirepass ? requirepass : "",
             requirepass ? "'" : "", t->master);
    for (int i = 0; i < 100; i++, th_msleep(100))
        if (th_redis_cli_has(port, q, "127.0.0.1"))
            return pid;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}
