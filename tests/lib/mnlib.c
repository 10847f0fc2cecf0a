/* mnlib.c - see mnlib.h. The network plumbing goes through ip(8) (the
 * operator's view of it, and what a reader of a failure runs by hand). */
#include "mnlib.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "snaplib.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/rcluster.h"

#define MN_LOCK "/run/wpmn.lock"

static void root_path(char *out, size_t cap)
{
    const char *t = getenv("WP_TEST_TMP");
    snprintf(out, cap, "%s/wpmn", t ? t : "/tmp");
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048], out[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return th_sh(out, sizeof(out), "%s", cmd);
}

/* ---- leftovers of a crashed run -------------------------------------- */

/* Host processes listed in ROOT/pids ("pid name" lines), killed when
 * /proc still names the same program (a pid may have been reused). */
static void kill_tracked(const char *root)
{
    char path[600], line[256];
    snprintf(path, sizeof(path), "%s/pids", root);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        int pid;
        char name[128], comm[128] = "", cpath[64];
        if (sscanf(line, "%d %127s", &pid, name) != 2 || pid <= 1)
            continue;
        snprintf(cpath, sizeof(cpath), "/proc/%d/comm", pid);
        FILE *cf = fopen(cpath, "r");
        if (!cf)
            continue;
        if (fgets(comm, sizeof(comm), cf))
            comm[strcspn(comm, "\n")] = '\0';
        fclose(cf);
        if (strncmp(comm, name, 15) == 0) { /* comm is at most 15 chars */
            fprintf(stderr, "# mnlib: killing a crashed run's %s (pid %d)\n", name, pid);
            kill(pid, SIGKILL);
        }
    }
    fclose(f);
}

static void cleanup_stale(const char *root)
{
    char out[4096], snap[4300];

    kill_tracked(root);
    /* Every process of our namespaces (nodes, egress proxies, helpers),
     * then the namespaces; the sandboxes (namespaces of their own) are
     * found by their state dirs below. */
    th_sh(out, sizeof(out), "ip netns list 2>/dev/null | awk '{print $1}' | grep '^wpmn-'");
    for (char *save = NULL, *ns = strtok_r(out, "\n", &save); ns; ns = strtok_r(NULL, "\n", &save)) {
        fprintf(stderr, "# mnlib: removing namespace %s of an earlier run\n", ns);
        sh("ip netns pids %s | xargs -r kill -9", ns);
    }
    th_msleep(out[0] ? 300 : 0);
    th_sh(out, sizeof(out), "ip netns list 2>/dev/null | awk '{print $1}' | grep '^wpmn-'");
    for (char *save = NULL, *ns = strtok_r(out, "\n", &save); ns; ns = strtok_r(NULL, "\n", &save))
        sh("ip netns del %s", ns);
    th_sh(out, sizeof(out), "ip -o link show | grep -o ' wpmn-[a-z0-9]*' | sort -u");
    for (char *save = NULL, *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        sh("ip link del %s 2>/dev/null", l + 1);
    /* Sandboxes of dead nodes: the node's own tool destroys them (kills by
     * cgroup, unmounts, releases network slots). */
    snprintf(snap, sizeof(snap), "%s/warmpool-snap", th_build_dir());
    glob_t g;
    char pat[600];
    snprintf(pat, sizeof(pat), "%s/state-*", root);
    if (glob(pat, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++)
            sh("%s --state-dir %s gc >/dev/null 2>&1", snap, g.gl_pathv[i]);
        globfree(&g);
    }
    if (!getenv("WP_MN_KEEP")) /* kept for a look; the next run removes it */
        th_rmtree(root);
}

/* ---- set-up ---------------------------------------------------------- */

void mn_track(struct mn_cluster *c, pid_t pid, const char *what)
{
    char path[600], line[160];
    snprintf(path, sizeof(path), "%s/pids", c->root);
    snprintf(line, sizeof(line), "%d %s\n", (int)pid, what);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (write(fd, line, strlen(line)) < 0)
            fprintf(stderr, "# mnlib: cannot record pid %d\n", (int)pid);
        close(fd);
    }
}

static int certs(struct mn_cluster *c, const char *args)
{
    char out[512], path[4300];
    const char *b = th_build_dir();
    /* BUILD is <repo>/build or <repo>/build/asan */
    snprintf(path, sizeof(path), "%s/../deploy/relay-certs.sh", b);
    if (access(path, X_OK) != 0)
        snprintf(path, sizeof(path), "%s/../../deploy/relay-certs.sh", b);
    return th_sh(out, sizeof(out), "%s %s %s >/dev/null", path, c->certs, args);
}

static int redis_start(struct mn_cluster *c)
{
    struct th_redis *r = &c->redis;
    int rc = -1;

    switch (c->redis_kind) {
    case MN_REDIS_SINGLE:
        snprintf(r->dir, sizeof(r->dir), "%s/redis", c->root);
        if (mkdir(r->dir, 0700) < 0)
            return -1;
        r->port = th_free_port();
        /* Bound to the bridge address (the nodes' way in) and loopback,
         * nowhere else: no password, so not on the host's own network. */
        rc = th_redis_spawn_on(r, MN_HOST_ADDR);
        if (r->pid > 0)
            mn_track(c, r->pid, "redis-server");
        return rc;
    case MN_REDIS_SENTINEL:
        rc = th_sentinel_start_on(&c->sent, MN_SENTINEL_MASTER, MN_HOST_ADDR);
        for (int i = 0; i < 3; i++) {
            if (c->sent.rpid[i] > 0)
                mn_track(c, c->sent.rpid[i], "redis-server");
            if (c->sent.spid[i] > 0)
                mn_track(c, c->sent.spid[i], "redis-server");
        }
        return rc;
    case MN_REDIS_CLUSTER:
        rc = th_rcluster_start_on(&c->rcl, 3, 1, MN_HOST_ADDR);
        for (int i = 0; i < c->rcl.n; i++)
            if (c->rcl.pid[i] > 0)
                mn_track(c, c->rcl.pid[i], "redis-server");
        th_rcluster_seeds(&c->rcl, c->seeds, sizeof(c->seeds));
        return rc;
    }
    return -1;
}

/* Every Redis process's port (sentinels included). Their number. */
static int redis_ports(struct mn_cluster *c, int *ports, int cap)
{
    int n = 0;
    if (c->redis_kind == MN_REDIS_SINGLE && n < cap)
        ports[n++] = c->redis.port;
    for (int i = 0; c->redis_kind == MN_REDIS_SENTINEL && i < 3 && n + 1 < cap; i++) {
        ports[n++] = c->sent.rport[i];
        ports[n++] = c->sent.sent[i];
    }
    for (int i = 0; c->redis_kind == MN_REDIS_CLUSTER && i < c->rcl.n && n < cap; i++)
        ports[n++] = c->rcl.port[i];
    return n;
}

static int net_start(struct mn_cluster *c)
{
    char out[512];
    if (th_sh(out, sizeof(out),
              "ip link add " MN_BRIDGE " type bridge && ip addr add " MN_HOST_ADDR "/24 dev "
              MN_BRIDGE " && ip link set " MN_BRIDGE " up") != 0)
        return -1;
    for (int k = 0; k < c->n_nodes; k++) {
        struct mn_node *n = &c->nodes[k];
        if (th_sh(out, sizeof(out),
                  "ip netns add %s && ip link add %s type veth peer name wpmn-p%d && "
                  "ip link set wpmn-p%d netns %s && ip link set %s master " MN_BRIDGE " && "
                  "ip link set %s up && ip -n %s link set lo up && "
                  "ip -n %s link set wpmn-p%d name eth0 && ip -n %s addr add %s/24 dev eth0 && "
                  "ip -n %s link set eth0 up",
                  n->ns, n->hostif, k + 1, k + 1, n->ns, n->hostif, n->hostif, n->ns, n->ns,
                  k + 1, n->ns, n->addr, n->ns) != 0) {
            fprintf(stderr, "# mnlib: network of %s failed\n", n->id);
            return -1;
        }
    }
    return 0;
}

/* Each namespace reaches every Redis process (sentinels, every cluster
 * node) on the bridge. */
static int net_check(struct mn_cluster *c)
{
    char out[512], cmd[128];
    int ports[TH_RCL_MAX + 6], n = redis_ports(c, ports, TH_RCL_MAX + 6);
    for (int k = 0; k < c->n_nodes; k++)
        for (int i = 0; i < n; i++) {
            snprintf(cmd, sizeof(cmd), "redis-cli -h " MN_HOST_ADDR " -p %d ping", ports[i]);
            if (mn_in_node(c, k, out, sizeof(out), cmd) != 0 || strncmp(out, "PONG", 4) != 0) {
                fprintf(stderr, "# mnlib: %s cannot reach Redis on the host (port %d)\n", c->nodes[k].id,
                        ports[i]);
                return -1;
            }
        }
    return 0;
}

int mn_start(struct mn_cluster *c, int n_nodes)
{
    return mn_start_redis(c, n_nodes, MN_REDIS_SINGLE);
}

int mn_start_redis(struct mn_cluster *c, int n_nodes, enum mn_redis_kind kind)
{
    memset(c, 0, sizeof(*c));
    c->lock_fd = -1;
    c->redis_kind = kind;
    if (n_nodes < 1 || n_nodes > MN_MAX_NODES)
        return -1;
    c->n_nodes = n_nodes;
    root_path(c->root, sizeof(c->root));
    c->lock_fd = open(MN_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (c->lock_fd < 0 || flock(c->lock_fd, LOCK_EX) < 0) {
        fprintf(stderr, "# mnlib: cannot lock " MN_LOCK ": %s\n", strerror(errno));
        return -1;
    }
    cleanup_stale(c->root);
    th_rmtree(c->root);
    if (mkdir(c->root, 0711) < 0) {
        fprintf(stderr, "# mnlib: mkdir %s: %s\n", c->root, strerror(errno));
        mn_stop(c);
        return -1;
    }
    snprintf(c->certs, sizeof(c->certs), "%s/certs", c->root);
    for (int k = 0; k < n_nodes; k++) {
        struct mn_node *n = &c->nodes[k];
        snprintf(n->id, sizeof(n->id), "n%d", k + 1);
        snprintf(n->ns, sizeof(n->ns), "wpmn-n%d", k + 1);
        snprintf(n->hostif, sizeof(n->hostif), "wpmn-h%d", k + 1);
        snprintf(n->addr, sizeof(n->addr), "10.251.200.%d", 10 + k + 1);
        snprintf(n->state, sizeof(n->state), "%s/state-%s", c->root, n->id);
        snprintf(n->log, sizeof(n->log), "%s/node-%s.log", c->root, n->id);
    }
    if (net_start(c) < 0 || redis_start(c) < 0 || net_check(c) < 0 || th_hands_copy(c->root, c->hands, sizeof(c->hands)) < 0 ||
        certs(c, "ca") != 0) {
        fprintf(stderr, "# mnlib: set-up failed\n");
        mn_stop(c);
        return -1;
    }
    for (int k = 0; k < n_nodes; k++) {
        char a[64];
        snprintf(a, sizeof(a), "node %s %s", c->nodes[k].id, c->nodes[k].addr);
        if (certs(c, a) != 0) {
            mn_stop(c);
            return -1;
        }
    }
    for (int m = 0; m < MN_MAX_SCHEDS; m++) {
        char a[64];
        snprintf(a, sizeof(a), "scheduler s%d", m + 1);
        if (certs(c, a) != 0) {
            mn_stop(c);
            return -1;
        }
    }
    return 0;
}

int mn_redis_args(struct mn_cluster *c, const char **argv)
{
    switch (c->redis_kind) {
    case MN_REDIS_SINGLE:
        snprintf(c->redis_addr, sizeof(c->redis_addr), MN_HOST_ADDR ":%d", c->redis.port);
        argv[0] = "--redis";
        argv[1] = c->redis_addr;
        return 2;
    case MN_REDIS_SENTINEL:
        argv[0] = "--redis-sentinels";
        argv[1] = c->sent.list;
        argv[2] = "--redis-master";
        argv[3] = MN_SENTINEL_MASTER;
        return 4;
    case MN_REDIS_CLUSTER:
        argv[0] = "--redis-cluster";
        argv[1] = c->seeds;
        return 2;
    }
    return 0;
}

void mn_redis_cli(struct mn_cluster *c, const char *key, char *out, size_t cap)
{
    int port = -1;
    switch (c->redis_kind) {
    case MN_REDIS_SINGLE:
        port = c->redis.port;
        break;
    case MN_REDIS_SENTINEL:
        port = th_sentinel_primary(&c->sent);
        break;
    case MN_REDIS_CLUSTER:
        port = th_rcluster_owner(&c->rcl, key ? wp_rcl_keyslot(key, strlen(key)) : 0);
        break;
    }
    snprintf(out, cap, "redis-cli%s -h " MN_HOST_ADDR " -p %d", c->redis_kind == MN_REDIS_CLUSTER ? " -c" : "",
             port);
}

/* ---- nodes and schedulers --------------------------------------------- */

int mn_node_start(struct mn_cluster *c, int k, const char *const *extra)
{
    struct mn_node *n = &c->nodes[k];
    char bin[4200], listen[64], cert[700], key[700], ca[700], nsp[64], out[128], cli[128];
    const char *argv[64];
    int argc = 0;

    snprintf(bin, sizeof(bin), "%s/warmpool-node", th_build_dir());
    snprintf(listen, sizeof(listen), "0.0.0.0:0"); /* every address of its namespace */
    snprintf(cert, sizeof(cert), "%s/%s.pem", c->certs, n->id);
    snprintf(key, sizeof(key), "%s/%s.key", c->certs, n->id);
    snprintf(ca, sizeof(ca), "%s/ca.pem", c->certs);
    snprintf(nsp, sizeof(nsp), "/run/netns/%s", n->ns);
    const char *fixed[] = { bin, "--id", n->id, "--state-dir",
                            n->state, "--listen", listen, "--relay-advertise", n->addr,
                            "--relay-tls-cert", cert,
                            "--relay-tls-key", key, "--relay-tls-ca", ca, "--drain-timeout", "0" };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        argv[argc++] = fixed[i];
    argc += mn_redis_args(c, argv + argc);
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    /* Only the network namespace: the node shares the host's mounts and
     * cgroups, as a node on its own machine has its own (ip netns exec
     * would also give it a mount namespace with a fresh /sys, hiding the
     * cgroup hierarchies). */
    int nsfd = open(nsp, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || setns(nsfd, CLONE_NEWNET) < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        wp_close_fds_from(3);
        execv(bin, (char **)argv);
        _exit(127);
    }
    close(nsfd);
    if (pid < 0)
        return -1;
    n->pid = pid;
    /* Registered, with its relay on its own address. */
    for (int i = 0; i < 600; i++) {
        mn_redis_cli(c, NULL, cli, sizeof(cli));
        th_sh(out, sizeof(out), "%s hget wp:node:%s relay", cli, n->id);
        if (strncmp(out, n->addr, strlen(n->addr)) == 0 && out[strlen(n->addr)] == ':')
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            n->pid = 0;
            fprintf(stderr, "# mnlib: node %s exited at start (log %s)\n", n->id, n->log);
            return -1;
        }
        th_msleep(50);
    }
    fprintf(stderr, "# mnlib: node %s did not register (log %s)\n", n->id, n->log);
    return -1;
}

int mn_node_stop(struct mn_cluster *c, int k)
{
    struct mn_node *n = &c->nodes[k];
    int rc = th_term_wait(n->pid, 20000);
    n->pid = 0;
    return rc;
}

int mn_sched_start(struct mn_cluster *c, int m, const char *const *extra)
{
    char cert[700], key[700], ca[700];
    const char *a[48];
    int argc = 0;
    if (m < 0 || m >= MN_MAX_SCHEDS)
        return -1;
    snprintf(cert, sizeof(cert), "%s/s%d.pem", c->certs, m + 1);
    snprintf(key, sizeof(key), "%s/s%d.key", c->certs, m + 1);
    snprintf(ca, sizeof(ca), "%s/ca.pem", c->certs);
    const char *fixed[] = { "--relay-tls-cert", cert, "--relay-tls-key", key, "--relay-tls-ca", ca,
                            "--hands-dir", c->hands };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        a[argc++] = fixed[i];
    /* th_sched_start passes --redis 127.0.0.1:<port> itself: single Redis
     * through loopback; the other kinds' flags take precedence over it. */
    if (c->redis_kind != MN_REDIS_SINGLE)
        argc += mn_redis_args(c, a + argc);
    for (int i = 0; extra && extra[i] && argc < 46; i++)
        a[argc++] = extra[i];
    while (argc < 47)
        a[argc++] = NULL;
    /* th_sched_start takes varargs: pass the array's slots (NULL ends). */
    int rc = th_sched_start(&c->scheds[m], c->redis_kind == MN_REDIS_SINGLE    ? c->redis.port
                            : c->redis_kind == MN_REDIS_SENTINEL ? c->sent.dead
                                                                 : c->rcl.port[0],
                            a[0], a[1], a[2], a[3], a[4], a[5],
                            a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15],
                            a[16], a[17], a[18], a[19], a[20], a[21], a[22], a[23], (char *)NULL);
    if (rc == 0)
        mn_track(c, c->scheds[m].pid, "warmpool-schedu");
    return rc;
}

int mn_link(struct mn_cluster *c, int k, bool up)
{
    return sh("ip link set %s %s", c->nodes[k].hostif, up ? "up" : "down") == 0 ? 0 : -1;
}

int mn_in_node(struct mn_cluster *c, int k, char *out, size_t cap, const char *cmd)
{
    return th_sh(out, cap, "ip netns exec %s sh -c '%s'", c->nodes[k].ns, cmd);
}

/* ---- what is left ---------------------------------------------------- */

static void add(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add(char *out, size_t cap, const char *fmt, ...)
{
    size_t l = strlen(out);
    va_list ap;
    va_start(ap, fmt);
    if (l + 1 < cap)
        vsnprintf(out + l, cap - l, fmt, ap);
    va_end(ap);
}

void mn_leftovers(struct mn_cluster *c, char *out, size_t cap)
{
    char buf[8192], pat[700];
    out[0] = '\0';
    for (int k = 0; k < c->n_nodes; k++) {
        struct mn_node *n = &c->nodes[k];
        glob_t g;
        snprintf(pat, sizeof(pat), "%s/sandboxes/*", n->state);
        if (glob(pat, 0, NULL, &g) == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) {
                const char *id = strrchr(g.gl_pathv[i], '/') + 1;
                add(out, cap, "sandbox dir %s of %s\n", id, n->id);
                char cg[600];
                snprintf(cg, sizeof(cg), "ls -d /sys/fs/cgroup/*/warmpool/%s /sys/fs/cgroup/warmpool/%s 2>/dev/null",
                         id, id);
                th_sh(buf, sizeof(buf), "%s", cg);
                if (buf[0])
                    add(out, cap, "cgroup %s", buf);
            }
            globfree(&g);
        }
        if (mn_in_node(c, k, buf, sizeof(buf), "ip -o link show | grep -o \"wpn[0-9]*\"") == 0 && buf[0])
            add(out, cap, "links in %s: %s", n->ns, buf);
        /* The table goes with the namespace's last networked sandbox. A slot
         * record of an earlier release (no "netns" line: a process of an
         * older build on this machine, with no .ns- file beside it) counts in every namespace and keeps
         * it: not a leak of this run's. */
        char old[256];
        th_sh(old, sizeof(old), "cd /run/warmpool/net 2>/dev/null && for f in [0-9]*; do "
              "[ -e \"$f\" ] && [ ! -e .ns-$f ] && echo $f; done");
        if (!old[0] && mn_in_node(c, k, buf, sizeof(buf), "nft list table inet warmpool >/dev/null 2>&1") == 0)
            add(out, cap, "nft table inet warmpool in %s\n", n->ns);
    }
    th_sh(buf, sizeof(buf), "grep ' %s/' /proc/self/mountinfo", c->root);
    if (buf[0])
        add(out, cap, "mounts: %s", buf);
    th_sh(buf, sizeof(buf), "grep -l '^%s/' /run/warmpool/net/[0-9]* 2>/dev/null", c->root);
    if (buf[0])
        add(out, cap, "network slots: %s", buf);
}

void mn_stop(struct mn_cluster *c)
{
    for (int m = 0; m < MN_MAX_SCHEDS; m++)
        if (c->scheds[m].pid > 0)
            th_sched_stop(&c->scheds[m]);
    for (int k = 0; k < c->n_nodes; k++)
        if (c->nodes[k].pid > 0)
            mn_node_stop(c, k);
    if (c->redis.pid > 0) {
        kill(c->redis.pid, SIGKILL);
        waitpid(c->redis.pid, NULL, 0);
        c->redis.pid = 0;
    }
    th_sentinel_stop(&c->sent);
    th_rcluster_stop(&c->rcl);
    if (c->root[0]) {
        cleanup_stale(c->root); /* namespaces, links, sandboxes, the dir */
        sh("ip link del " MN_BRIDGE " 2>/dev/null");
    }
    if (c->lock_fd >= 0) {
        close(c->lock_fd);
        c->lock_fd = -1;
    }
}
