/* node_egress.c - the node's side of the egress proxy: it starts
 * warmpool-egress, confines a sandbox whose session has secrets in play
 * and registers the secrets with the proxy before the sandbox's relay is
 * routed (ARCHITECTURE.md, "The egress proxy").
 *
 * The secrets arrive in the route frame (relay.c) and are passed on at
 * once on the proxy's control socket; the node keeps a digest of them,
 * never the secrets. A registration is keyed by sandbox id and by that
 * digest: the same route again (a brain reconnecting) is answered from
 * the registration; other credentials register again.
 *
 * Ordering the node keeps: remove before the sandbox is destroyed (its
 * slot, hence its address, goes to the next sandbox, which must not be
 * served this session's secrets). The proxy dies with the node
 * (PR_SET_PDEATHSIG); if it dies alone it is started again and every
 * registration is forgotten: those sandboxes stay confined (the chain is
 * the sandbox's) and reach nothing until their sessions route again. */
#define WP_LOG_COMPONENT "egress"
#include "pool/pool_int.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/wipe.h"
#include "snapshot/snapshot.h"

#define REPLY_MAX 4096
#define CONNECT_TRIES 250 /* x 20 ms: the proxy makes its CA at first start */

enum reg_state { REG_PENDING, REG_READY, REG_FAILED };

struct reg {
    struct reg *next;
    char sandbox[64];
    unsigned char digest[32];
    enum reg_state st;
    bool confined;
    bool added;              /* an "add" went to the proxy (a "remove" undoes it) */
    char host[16], addr[16];
    char why[200];
};

/* A command sent, waiting for its answer line (answers come in order). */
struct sent {
    struct sent *next;
    char sandbox[64];
    unsigned char digest[32]; /* "add": the registration it answers */
    bool add;
};

struct pool__negress {
    struct ev_loop *loop;
    struct pool__negress_cfg cfg;
    char bin[512], sock[512], ca_dir[512];
    char *pins[65];          /* ours (cfg.pins points here): a respawn reads them
                                long after the caller's array is gone */
    char *ca_pem;
    pid_t pid;
    ev_child child;
    ev_timer timer;          /* connect retries, restarts */
    int tries;
    int fd;                  /* the control socket, -1 while not connected */
    ev_io rd, wr;
    struct wp_buf out, in;
    struct sent *sent, **sent_tail;
    struct reg *regs;
    pool__negress_ready_cb ready;
    void *ctx;
    bool stopping;
};

static void spawn(struct pool__negress *ne);

static struct reg *find(struct pool__negress *ne, const char *sandbox)
{
    for (struct reg *r = ne->regs; r; r = r->next)
        if (!strcmp(r->sandbox, sandbox))
            return r;
    return NULL;
}

static void fail_all(struct pool__negress *ne, const char *why)
{
    for (struct reg *r = ne->regs; r; r = r->next) {
        if (r->st == REG_PENDING || r->st == REG_READY) {
            r->st = REG_FAILED;
            snprintf(r->why, sizeof(r->why), "%s", why);
            memset(r->digest, 0, sizeof(r->digest)); /* the next route registers again */
            r->added = false;                        /* the proxy forgot it */
            ne->ready(ne->ctx, r->sandbox);
        }
    }
    while (ne->sent) {
        struct sent *s = ne->sent;
        ne->sent = s->next;
        free(s);
    }
    ne->sent_tail = &ne->sent;
}

static void disconnect(struct pool__negress *ne, const char *why)
{
    if (ne->fd >= 0) {
        ev_io_stop(ne->loop, &ne->rd);
        ev_io_stop(ne->loop, &ne->wr);
        close(ne->fd);
        ne->fd = -1;
    }
    if (ne->out.data)
        OPENSSL_cleanse(ne->out.data, ne->out.cap);
    wp_buf_reset(&ne->out);
    wp_buf_reset(&ne->in);
    fail_all(ne, why);
}

static void answer(struct pool__negress *ne, const char *line, size_t len)
{
    struct sent *s = ne->sent;
    if (!s) {
        log_warn("egress proxy answered a command never sent");
        return;
    }
    ne->sent = s->next;
    if (!ne->sent)
        ne->sent_tail = &ne->sent;
    json_t *j = json_loadb(line, len, 0, NULL);
    bool ok = json_is_true(json_object_get(j, "ok"));
    const char *err = json_string_value(json_object_get(j, "error"));
    struct reg *r = s->add ? find(ne, s->sandbox) : NULL;
    /* An answer for credentials replaced meanwhile is not this one's. */
    if (r && r->st == REG_PENDING && !memcmp(r->digest, s->digest, sizeof(r->digest))) {
        r->st = ok ? REG_READY : REG_FAILED;
        if (!ok) {
            snprintf(r->why, sizeof(r->why), "the egress proxy refused the sandbox: %s",
                     err ? err : "no reason given");
            log_warn("sandbox=%s %s", r->sandbox, r->why);
        } else {
            log_info("sandbox=%s confined to the egress proxy at %s:%d", r->sandbox, r->host,
                     ne->cfg.port);
        }
        ne->ready(ne->ctx, r->sandbox);
    } else if (!ok && !s->add) {
        log_warn("egress proxy: remove sandbox=%s: %s", s->sandbox, err ? err : "failed");
    }
    json_decref(j);
    free(s);
}

static void flush_out(struct pool__negress *ne)
{
    while (ne->out.len) {
        ssize_t n = send(ne->fd, ne->out.data, ne->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            disconnect(ne, "the egress proxy's control socket failed");
            return;
        }
        /* What was sent held secrets: nothing of it stays in the buffer. */
        OPENSSL_cleanse(ne->out.data, (size_t)n);
        wp_buf_consume(&ne->out, (size_t)n);
    }
    if (ne->out.len)
        ev_io_start(ne->loop, &ne->wr);
    else
        ev_io_stop(ne->loop, &ne->wr);
}

static void wr_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    flush_out(w->data);
}

static void rd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pool__negress *ne = w->data;
    char buf[4096];
    (void)loop;
    (void)revents;
    ssize_t n = recv(ne->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        disconnect(ne, "the egress proxy closed its control socket");
        return;
    }
    if (n < 0)
        return;
    if (wp_buf_append(&ne->in, buf, (size_t)n) < 0) {
        disconnect(ne, "the egress proxy's answer is too long");
        return;
    }
    char *nl;
    while (ne->fd >= 0 && (nl = memchr(ne->in.data, '\n', ne->in.len))) {
        size_t len = (size_t)(nl - ne->in.data);
        answer(ne, ne->in.data, len);
        wp_buf_consume(&ne->in, len + 1);
    }
}

static int send_line(struct pool__negress *ne, json_t *cmd, const char *sandbox,
                     const unsigned char digest[32])
{
    struct sent *s = calloc(1, sizeof(*s));
    char *line = json_dumps(cmd, JSON_COMPACT);
    int rc = -1;
    if (s && line && ne->fd >= 0) {
        size_t len = strlen(line);
        if (wp_buf_append(&ne->out, line, len) == 0 && wp_buf_append(&ne->out, "\n", 1) == 0) {
            snprintf(s->sandbox, sizeof(s->sandbox), "%s", sandbox);
            s->add = digest != NULL;
            if (digest)
                memcpy(s->digest, digest, sizeof(s->digest));
            *ne->sent_tail = s;
            ne->sent_tail = &s->next;
            s = NULL;
            rc = 0;
        }
        OPENSSL_cleanse(line, len);
    }
    free(line);
    free(s);
    if (rc == 0)
        flush_out(ne);
    return rc;
}

/* ---- the proxy process ---------------------------------------------------- */

static void retry_later(struct pool__negress *ne, double s)
{
    ev_timer_stop(ne->loop, &ne->timer);
    ev_timer_set(&ne->timer, s, 0.);
    ev_timer_start(ne->loop, &ne->timer);
}

static void try_connect(struct pool__negress *ne)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", ne->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        char path[600];
        snprintf(path, sizeof(path), "%s/ca.pem", ne->ca_dir);
        free(ne->ca_pem);
        ne->ca_pem = NULL;
        size_t len = 0;
        struct wp_err err;
        if (wp_read_file(path, 64 * 1024, &ne->ca_pem, &len, &err) < 0) {
            log_error("egress proxy: its CA: %s", err.msg);
            close(fd);
            retry_later(ne, 1.0);
            return;
        }
        ne->fd = fd;
        ev_io_init(&ne->rd, rd_cb, fd, EV_READ);
        ev_io_init(&ne->wr, wr_cb, fd, EV_WRITE);
        ne->rd.data = ne->wr.data = ne;
        ev_io_start(ne->loop, &ne->rd);
        log_info("egress proxy pid=%d ready on port %d (control %s)", (int)ne->pid, ne->cfg.port,
                 ne->sock);
        return;
    }
    if (fd >= 0)
        close(fd);
    if (++ne->tries >= CONNECT_TRIES) {
        log_error("egress proxy: no control socket at %s after %d s", ne->sock,
                  CONNECT_TRIES / 50);
        return; /* its exit (or the node's stop) decides what comes next */
    }
    retry_later(ne, 0.02);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pool__negress *ne = w->data;
    (void)loop;
    (void)revents;
    if (ne->stopping)
        return;
    if (ne->pid <= 0)
        spawn(ne);
    else if (ne->fd < 0)
        try_connect(ne);
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
    struct pool__negress *ne = w->data;
    (void)revents;
    ev_child_stop(loop, w);
    log_warn("egress proxy pid=%d exited (status %d)%s", w->rpid, w->rstatus,
             ne->stopping ? "" : ": starting it again in 1 s");
    ne->pid = -1;
    disconnect(ne, "the egress proxy exited");
    if (!ne->stopping)
        retry_later(ne, 1.0);
}

static void spawn(struct pool__negress *ne)
{
    char port[16];
    const char *argv[8 + 2 * 64 + 1];
    int argc = 0;

    snprintf(port, sizeof(port), "%d", ne->cfg.port);
    argv[argc++] = ne->bin;
    argv[argc++] = "--port";
    argv[argc++] = port;
    argv[argc++] = "--control";
    argv[argc++] = ne->sock;
    argv[argc++] = "--ca-dir";
    argv[argc++] = ne->ca_dir;
    if (ne->cfg.upstream_ca && *ne->cfg.upstream_ca) {
        argv[argc++] = "--upstream-ca";
        argv[argc++] = ne->cfg.upstream_ca;
    }
    for (int i = 0; ne->cfg.pins && ne->cfg.pins[i] && i < 64; i++) {
        argv[argc++] = "--pin";
        argv[argc++] = ne->cfg.pins[i];
    }
    argv[argc] = NULL;
    unlink(ne->sock);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* It dies with the node: a new node starts its own. Until exec
         * this child runs the node's signal handlers, and a death signal
         * they caught would be consumed here: the proxy would start with
         * its parent gone and no signal left to come (a leak, seen when a
         * node was killed within a few ms of spawning it). So the default
         * action first, then the death signal, then the check for a
         * parent that died before it was set. */
        for (int sig = 1; sig < NSIG; sig++)
            if (sig != SIGKILL && sig != SIGSTOP)
                signal(sig, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        wp_close_fds_from(3);
        execv(ne->bin, (char *const *)argv);
        _exit(127);
    }
    if (pid < 0) {
        log_error("egress proxy: fork: %s", strerror(errno));
        retry_later(ne, 1.0);
        return;
    }
    ne->pid = pid;
    ne->tries = 0;
    ev_child_init(&ne->child, child_cb, pid, 0);
    ne->child.data = ne;
    ev_child_start(ne->loop, &ne->child);
    retry_later(ne, 0.02);
}

int pool__negress_start(struct ev_loop *loop, const struct pool__negress_cfg *cfg,
                        pool__negress_ready_cb ready, void *ctx, struct pool__negress **out,
                        struct wp_err *err)
{
    struct pool__negress *ne;

    if (access(cfg->bin, X_OK) != 0)
        return wp_err_set(err, WP_ECONFIG, "egress proxy %s: %s", cfg->bin, strerror(errno));
    if (cfg->port <= 0 || cfg->port > 65535)
        return wp_err_set(err, WP_ECONFIG, "egress proxy port %d", cfg->port);
    ne = calloc(1, sizeof(*ne));
    if (!ne)
        return wp_err_set(err, -ENOMEM, "out of memory");
    ne->loop = loop;
    ne->cfg = *cfg;
    for (int i = 0; cfg->pins && cfg->pins[i] && i < 64; i++)
        if (!(ne->pins[i] = strdup(cfg->pins[i]))) {
            for (int k = 0; k < i; k++)
                free(ne->pins[k]);
            free(ne);
            return wp_err_set(err, -ENOMEM, "out of memory");
        }
    ne->cfg.pins = (const char *const *)ne->pins;
    snprintf(ne->bin, sizeof(ne->bin), "%s", cfg->bin);
    snprintf(ne->sock, sizeof(ne->sock), "%s/egress.sock", cfg->state_dir);
    snprintf(ne->ca_dir, sizeof(ne->ca_dir), "%s", cfg->ca_dir);
    ne->cfg.bin = ne->bin; /* the caller's strings may not outlive this call */
    ne->cfg.ca_dir = ne->ca_dir;
    ne->ready = ready;
    ne->ctx = ctx;
    ne->fd = -1;
    ne->pid = -1;
    ne->sent_tail = &ne->sent;
    wp_buf_init(&ne->out, 64u << 20); /* commands queued while the proxy reads */
    wp_buf_init(&ne->in, REPLY_MAX);
    ev_timer_init(&ne->timer, timer_cb, 0., 0.);
    ne->timer.data = ne;
    spawn(ne);
    *out = ne;
    return 0;
}

void pool__negress_stop(struct pool__negress *ne)
{
    if (!ne)
        return;
    ne->stopping = true;
    ev_timer_stop(ne->loop, &ne->timer);
    if (ne->pid > 0) {
        kill(ne->pid, SIGTERM);
        ev_child_stop(ne->loop, &ne->child);
        for (int i = 0; i < 200 && waitpid(ne->pid, NULL, WNOHANG) == 0; i++)
            usleep(10000);
    }
    ne->pid = -1;
    if (ne->fd >= 0) {
        ev_io_stop(ne->loop, &ne->rd);
        ev_io_stop(ne->loop, &ne->wr);
        close(ne->fd);
    }
    while (ne->sent) {
        struct sent *s = ne->sent;
        ne->sent = s->next;
        free(s);
    }
    while (ne->regs) {
        struct reg *r = ne->regs;
        ne->regs = r->next;
        free(r);
    }
    if (ne->out.data)
        OPENSSL_cleanse(ne->out.data, ne->out.cap);
    wp_buf_free(&ne->out);
    wp_buf_free(&ne->in);
    free(ne->ca_pem);
    for (int i = 0; ne->pins[i]; i++)
        free(ne->pins[i]);
    unlink(ne->sock);
    free(ne);
}

/* ---- routes ------------------------------------------------------------------ */

static int failed(struct reg *r, char *why, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int failed(struct reg *r, char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    r->st = REG_FAILED;
    snprintf(why, cap, "%s", r->why);
    log_warn("sandbox=%s egress: %s", r->sandbox, r->why);
    return WP_EPROTO;
}

static json_t *network_of(const struct snap_network *net)
{
    if (net->mode != SNAP_NET_LIMITED)
        return json_pack("{s:s}", "type", "unrestricted");
    json_t *hosts = json_array();
    for (int i = 0; i < net->n_hosts; i++) /* at most SNAP_MAX_ALLOWED_HOSTS, as the proxy */
        json_array_append_new(hosts, json_string(net->hosts[i]));
    return json_pack("{s:s, s:o}", "type", "limited", "allowed_hosts", hosts);
}

int pool__negress_route(struct pool__negress *ne, struct snap_ctx *snap,
                        const struct snap_sandbox *sb, const struct snap_network *net,
                        const char *egress, size_t len, char proxy[64], char *why, size_t cap)
{
    unsigned char digest[32];
    unsigned int dlen = 0;
    struct reg *r = find(ne, sb->id);

    proxy[0] = '\0';
    if (!EVP_Digest(egress, len, digest, &dlen, EVP_sha256(), NULL))
        return snprintf(why, cap, "out of memory"), WP_EPROTO;
    if (!r) {
        if (!(r = calloc(1, sizeof(*r))))
            return snprintf(why, cap, "out of memory"), WP_EPROTO;
        snprintf(r->sandbox, sizeof(r->sandbox), "%s", sb->id);
        r->st = REG_FAILED;
        r->next = ne->regs;
        ne->regs = r;
    } else if (!memcmp(r->digest, digest, sizeof(digest))) {
        if (r->st == REG_PENDING)
            return WP_ESTATE;
        if (r->st == REG_FAILED)
            return snprintf(why, cap, "%s", r->why), WP_EPROTO;
        if (r->host[0])
            snprintf(proxy, 64, "%s:%d", r->host, ne->cfg.port);
        return 0;
    }
    memcpy(r->digest, digest, sizeof(digest));

    json_error_t jerr;
    json_t *j = json_loadb(egress, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *creds = json_object_get(j, "credentials");
    int rc;
    if (!json_is_object(j) || !json_is_array(creds) || json_object_size(j) != 1) {
        rc = failed(r, why, cap, "the route's egress must be {\"credentials\":[...]}");
    } else if (net->mode == SNAP_NET_NONE) {
        /* No network at all: the placeholders reach nobody, and the
         * secrets go nowhere. */
        r->st = REG_READY;
        r->host[0] = '\0';
        rc = 0;
    } else if (ne->fd < 0 || !ne->ca_pem) {
        rc = failed(r, why, cap, "the node's egress proxy is not running");
    } else {
        struct wp_err err;
        if (!r->confined &&
            pool_egress_confine(snap, sb, ne->cfg.port, ne->ca_pem, r->host, r->addr, &err) < 0) {
            rc = failed(r, why, cap, "confining the sandbox: %s", err.msg);
        } else {
            r->confined = true;
            if (r->added) { /* other credentials than before: the old go first */
                json_t *rm = json_pack("{s:s, s:s}", "t", "remove", "sandbox", sb->id);
                if (rm)
                    send_line(ne, rm, sb->id, NULL);
                json_decref(rm);
            }
            r->added = true;
            json_t *cmd = json_pack("{s:s, s:s, s:s, s:s, s:o, s:O}", "t", "add", "sandbox", sb->id,
                                    "host", r->host, "addr", r->addr, "network", network_of(net),
                                    "credentials", creds);
            r->st = REG_PENDING;
            rc = cmd && send_line(ne, cmd, sb->id, digest) == 0
                     ? WP_ESTATE
                     : failed(r, why, cap, "the egress proxy's control socket failed");
            json_decref(cmd);
        }
    }
    wp_wipe_json(j); /* jansson frees without wiping */
    json_decref(j);
    if (rc == 0 && r->host[0])
        snprintf(proxy, 64, "%s:%d", r->host, ne->cfg.port);
    return rc;
}

void pool__negress_remove(struct pool__negress *ne, const char *sandbox)
{
    if (!ne)
        return;
    for (struct reg **pp = &ne->regs; *pp; pp = &(*pp)->next) {
        struct reg *r = *pp;
        if (strcmp(r->sandbox, sandbox))
            continue;
        *pp = r->next;
        if (r->added && ne->fd >= 0) {
            json_t *cmd = json_pack("{s:s, s:s}", "t", "remove", "sandbox", sandbox);
            if (!cmd || send_line(ne, cmd, sandbox, NULL) < 0)
                log_warn("sandbox=%s: could not tell the egress proxy it is gone", sandbox);
            json_decref(cmd);
        }
        free(r);
        return;
    }
}
