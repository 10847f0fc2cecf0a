/* rcluster_testlib.c - see rcluster_testlib.h. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <hiredis/hiredis.h>

#include "rcluster_testlib.h"
#include "snaplib.h"
#include "testlib.h"
#include "base/fs.h"

pid_t th_rcluster_node_start(struct th_rcluster *c, int i)
{
    char p[16], dir[512], log[512];
    snprintf(p, sizeof(p), "%d", c->port[i]);
    snprintf(dir, sizeof(dir), "%s/n%d", c->dir, i);
    snprintf(log, sizeof(log), "%s/n%d.log", c->dir, i);
    wp_mkdir_p(dir, 0755, NULL);
    const char *argv[32] = { "redis-server", "--port", p, "--dir", dir,
                             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                             "--daemonize", "no", "--bind", "127.0.0.1" };
    int n = 19;
    if (strcmp(c->addr, "127.0.0.1")) { /* no password: protected mode would refuse */
        const char *more[] = { c->addr, "--protected-mode", "no", "--cluster-announce-ip", c->addr };
        for (size_t k = 0; k < sizeof(more) / sizeof(more[0]); k++)
            argv[n++] = more[k];
    }
    argv[n] = NULL;
    return c->pid[i] = th_spawn(log, argv);
}

/* A free port whose cluster bus port (+10000) is a port too, and not one
 * of this cluster's already. */
static int cluster_port(const struct th_rcluster *c, int upto)
{
    for (int k = 0; k < 1000; k++) {
        int p = th_free_port();
        bool taken = p > 55535;
        for (int i = 0; i < upto; i++)
            taken |= c->port[i] == p;
        if (!taken)
            return p;
    }
    return -1;
}

bool th_rcluster_ok(const struct th_rcluster *c)
{
    for (int i = 0; i < c->n; i++)
        if (c->pid[i] > 0 && !th_redis_cli_has(c->port[i], "cluster info", "cluster_state:ok"))
            return false;
    return true;
}

/* Every replica sees its master link up. */
static bool replicas_up(const struct th_rcluster *c)
{
    for (int i = 0; i < c->n; i++)
        if (th_redis_cli_has(c->port[i], "role", "slave") &&
            !th_redis_cli_has(c->port[i], "info replication", "master_link_status:up"))
            return false;
    return true;
}

int th_rcluster_start(struct th_rcluster *c, int masters, int replicas)
{
    return th_rcluster_start_on(c, masters, replicas, "127.0.0.1");
}

int th_rcluster_start_on(struct th_rcluster *c, int masters, int replicas, const char *addr)
{
    char out[256], addrs[TH_RCL_MAX * 24] = "";
    memset(c, 0, sizeof(*c));
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    if (masters < 1 || masters > 3 || replicas < 0 || replicas > 2)
        return -1;
    c->masters = masters;
    c->n = masters * (1 + replicas);
    if (!(c->dir = th_tmpdir("rcl")))
        return -1;
    for (int i = 0; i < c->n; i++) {
        if ((c->port[i] = cluster_port(c, i)) < 0 || th_rcluster_node_start(c, i) < 0)
            return -1;
        size_t l = strlen(addrs);
        snprintf(addrs + l, sizeof(addrs) - l, " %s:%d", addr, c->port[i]);
    }
    for (int i = 0; i < c->n; i++)
        for (int k = 0; k < 100 && !th_redis_cli_has(c->port[i], "ping", "PONG"); k++)
            th_msleep(50);
    /* Masters first in the list: redis-cli makes the first `masters` the
     * masters (it may still pair replicas as it likes). */
    if (th_sh(out, sizeof(out),
              "redis-cli --cluster create%s --cluster-replicas %d --cluster-yes >%s/create.log 2>&1",
              addrs, replicas, c->dir) != 0)
        return -1;
    for (int k = 0; k < 300 && !(th_rcluster_ok(c) && replicas_up(c)); k++)
        th_msleep(100);
    for (int i = 0; i < c->n; i++) {
        th_sh(c->id[i], sizeof(c->id[i]), "redis-cli -p %d cluster myid", c->port[i]);
        c->id[i][strcspn(c->id[i], "\r\n")] = '\0';
    }
    return th_rcluster_ok(c) && replicas_up(c) ? 0 : -1;
}

void th_rcluster_stop(struct th_rcluster *c)
{
    for (int i = 0; i < c->n; i++)
        if (c->pid[i] > 0) {
            kill(c->pid[i], SIGKILL);
            waitpid(c->pid[i], NULL, 0);
            c->pid[i] = 0;
        }
    if (c->dir) {
        th_rmtree(c->dir);
        free(c->dir);
        c->dir = NULL;
    }
}

void th_rcluster_seeds(const struct th_rcluster *c, char *out, size_t cap)
{
    out[0] = '\0';
    for (int i = 0; i < c->n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s:%d", i ? "," : "", c->addr, c->port[i]);
    }
}

int th_rcluster_owner(const struct th_rcluster *c, int slot)
{
    for (int i = 0; i < c->n; i++) {
        if (c->pid[i] <= 0)
            continue;
        redisContext *s = redisConnect("127.0.0.1", c->port[i]);
        redisReply *rep = s && !s->err ? redisCommand(s, "CLUSTER SLOTS") : NULL;
        int port = -1;
        for (size_t k = 0; rep && rep->type == REDIS_REPLY_ARRAY && k < rep->elements; k++) {
            redisReply *e = rep->element[k];
            if (slot >= e->element[0]->integer && slot <= e->element[1]->integer)
                port = (int)e->element[2]->element[1]->integer;
        }
        freeReplyObject(rep);
        redisFree(s);
        if (port > 0)
            return port;
    }
    return -1;
}

int th_rcluster_index(const struct th_rcluster *c, int port)
{
    for (int i = 0; i < c->n; i++)
        if (c->port[i] == port)
            return i;
    return -1;
}
