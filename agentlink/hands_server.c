/* hands_server.c - warmpool-hands: the listener, connections, frame
 * dispatch and attach. Runs as PID 1 of a sandbox (or as a plain child
 * process in tests) on libev's default loop, which also reaps every child
 * and orphan through one catch-all child watcher. */
#define WP_LOG_COMPONENT "hands"
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/random.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "agentlink/alink_int.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

/* ---- output ------------------------------------------------------------- */

static void conn_close(struct alink__conn *c);

static void conn_flush(struct alink__conn *c)
{
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            log_debug("conn fd=%d write failed: %s", c->fd, strerror(errno));
            conn_close(c);
            return;
        }
        wp_buf_consume(&c->out, (size_t)n);
    }
    int want = EV_READ | (c->out.len ? EV_WRITE : 0);
    if ((c->io.events & (EV_READ | EV_WRITE)) != want) {
        ev_io_stop(c->h->loop, &c->io);
        ev_io_set(&c->io, c->fd, want);
        ev_io_start(c->h->loop, &c->io);
    }
}

/* Steals msg. */
static void conn_send(struct alink__conn *c, json_t *msg)
{
    struct wp_err err;
    bool was_empty;

    if (!c || c->closing || !msg) {
        json_decref(msg);
        return;
    }
    was_empty = c->out.len == 0;
    if (alink_frame_encode(&c->out, msg, c->h->max_frame, &err) < 0) {
        json_t *id = json_object_get(msg, "id");
        uint64_t rid = json_is_integer(id) ? (uint64_t)json_integer_value(id) : 0;
        if (err.code == WP_ETOOBIG && c->out.len + 4096 < c->out.max) {
            /* The message itself is too big: tell the caller instead. */
            json_t *r = alink_msg_result(rid, "hands: result too large to send", 31, true);
            if (r && alink_frame_encode(&c->out, r, c->h->max_frame, NULL) == 0) {
                json_decref(r);
                json_decref(msg);
                goto flush;
            }
            json_decref(r);
        }
        log_warn("conn fd=%d closing: %s", c->fd, err.msg);
        json_decref(msg);
        conn_close(c);
        return;
    }
    json_decref(msg);
flush:
    if (was_empty)
        conn_flush(c);
}

void alink__reply(struct alink__conn *c, uint64_t id, const char *text, size_t len,
                  bool is_error)
{
    if (!c || c->closing)
        return;
    if (len == 0 && !is_error) {
        text = "(no output)";
        len = strlen(text);
    }
    conn_send(c, alink_msg_result(id, text, len, is_error));
}

void alink__replyf(struct alink__conn *c, uint64_t id, bool is_error, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    alink__reply(c, id, msg, (size_t)n, is_error);
}

bool alink__chunk(struct alink__conn *c, uint64_t id, const char *data, size_t len)
{
    if (!c || c->closing)
        return false;
    if (c->out.len > ALINK_CHUNK_SOFT)
        return false;
    conn_send(c, alink_msg_chunk(id, "output", data, len));
    return true;
}

static void send_error(struct alink__conn *c, uint64_t id, const char *code, const char *msg)
{
    conn_send(c, alink_msg_error(id, code, msg));
}

void alink__call_free(struct alink__call *call)
{
    if (!call)
        return;
    json_decref(call->input);
    free(call);
}

uint64_t alink__rand(struct alink__hands *h)
{
    uint64_t s1 = h->rng[0];
    const uint64_t s0 = h->rng[1];

    h->rng[0] = s0;
    s1 ^= s1 << 23;
    h->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return h->rng[1] + s0;
}

/* ---- attach --------------------------------------------------------------- */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* CAP_SYS_ADMIN in the effective set (on) or only in the permitted set
 * (off). A sandbox whose template says init_sets_hostname starts us with it
 * so attach can set the hostname; it is effective only around that call. */
static int admin_effective(bool on)
{
    struct __user_cap_header_struct hd = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];

    if (syscall(SYS_capget, &hd, d) < 0)
        return -errno;
    if (!(d[0].permitted & (1u << CAP_SYS_ADMIN)))
        return -EPERM;
    if (on)
        d[0].effective |= 1u << CAP_SYS_ADMIN;
    else
        d[0].effective &= ~(1u << CAP_SYS_ADMIN);
    return syscall(SYS_capset, &hd, d) < 0 ? -errno : 0;
}

/* Keep CAP_SYS_ADMIN for ourselves only: out of the bounding and
 * inheritable sets, so nothing we run (the shell, tools) can have it, and
 * out of the effective set until attach needs it. No-op without it. */
static void admin_confine(void)
{
    struct __user_cap_header_struct hd = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];

    if (prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) != 1)
        return;
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) < 0) {
        /* Unconfined sandboxes (benchmark baseline) have no SETPCAP
         * reduction to fear; confined ones always keep SETPCAP. */
        log_warn("drop CAP_SYS_ADMIN from the bounding set: %s", strerror(errno));
        return;
    }
    if (syscall(SYS_capget, &hd, d) == 0) {
        d[0].inheritable &= ~(1u << CAP_SYS_ADMIN);
        if (syscall(SYS_capset, &hd, d) < 0)
            log_warn("capset: %s", strerror(errno));
    }
    admin_effective(false);
}

static void reseed(struct alink__hands *h, const uint8_t *seed, size_t n)
{
    union {
        struct rand_pool_info info;
        uint8_t raw[sizeof(struct rand_pool_info) + 256];
    } rp;
    int fd;

    if (n > 256)
        n = 256;
    for (size_t i = 0; i < n; i++)
        ((uint8_t *)h->rng)[i % sizeof(h->rng)] ^= seed[i];
    if (!h->rng[0] && !h->rng[1])
        h->rng[0] = 1;
    /* Mix into the kernel pool of this sandbox. RNDADDENTROPY also credits
     * entropy but needs CAP_SYS_ADMIN; a plain write mixes without credit. */
    fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    rp.info.entropy_count = (int)(n * 8);
    rp.info.buf_size = (int)n;
    memcpy(rp.raw + offsetof(struct rand_pool_info, buf), seed, n);
    if (ioctl(fd, RNDADDENTROPY, &rp) < 0 && write(fd, seed, n) < 0)
        log_debug("reseed: write /dev/urandom: %s", strerror(errno));
    close(fd);
}

static bool shell_name_ok(const char *k)
{
    if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_'))
        return false;
    for (; *k; k++)
        if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_' ||
              (*k >= '0' && *k <= '9')))
            return false;
    return true;
}

/* Append 'text' single-quoted for the shell. */
static void shq(struct wp_buf *b, const char *s)
{
    wp_buf_append(b, "'", 1);
    for (; *s; s++) {
        if (*s == '\'')
            wp_buf_append(b, "'\\''", 4);
        else
            wp_buf_append(b, s, 1);
    }
    wp_buf_append(b, "'", 1);
}

static void handle_attach(struct alink__conn *c, struct alink_msg *m)
{
    struct alink__hands *h = c->h;
    json_t *o = m->json, *env = json_object_get(o, "env"), *v;
    const char *session = json_string_value(json_object_get(o, "session"));
    const char *workdir = json_string_value(json_object_get(o, "workdir"));
    const char *hostname = json_string_value(json_object_get(o, "hostname"));
    const char *seedhex = json_string_value(json_object_get(o, "seed"));
    struct wp_buf pre;
    struct wp_err err;
    uint8_t seed[256];
    size_t n_seed = 0;
    const char *k;

    wp_buf_init(&pre, 256 * 1024);
    c->attach_failed = true; /* until it succeeds below */
    if (strlen(session) >= sizeof(h->session)) {
        alink__replyf(c, m->id, true, "attach: session id too long");
        goto out;
    }
    if (seedhex) {
        size_t l = strlen(seedhex);
        if (l % 2 || l / 2 > sizeof(seed)) {
            alink__replyf(c, m->id, true, "attach: seed must be at most 256 bytes of hex");
            goto out;
        }
        for (size_t i = 0; i < l; i += 2) {
            int hi = hexval(seedhex[i]), lo = hexval(seedhex[i + 1]);
            if (hi < 0 || lo < 0) {
                alink__replyf(c, m->id, true, "attach: seed is not hex");
                goto out;
            }
            seed[n_seed++] = (uint8_t)(hi << 4 | lo);
        }
    }
    if (workdir) {
        if (wp_mkdir_p(workdir, 0755, &err) < 0 || alink__set_workdir(h, workdir, &err) < 0) {
            alink__replyf(c, m->id, true, "attach: workdir %s: %s", workdir, err.msg);
            goto out;
        }
    }
    if (hostname && h->allow_hostname) {
        int raised = admin_effective(true);
        int rc = sethostname(hostname, strlen(hostname)) < 0 ? -errno : 0;
        if (raised == 0)
            admin_effective(false);
        if (rc < 0) {
            alink__replyf(c, m->id, true, "attach: sethostname: %s", strerror(-rc));
            goto out;
        }
    }
    json_object_foreach(env, k, v) {
        const char *val = json_string_value(v);
        if (setenv(k, val, 1) < 0) {
            alink__replyf(c, m->id, true, "attach: setenv %.64s: %s", k, strerror(errno));
            goto out;
        }
        /* The running shell gets what a fresh one would inherit. */
        if (shell_name_ok(k) && strncmp(k, "ANTHROPIC_", 10) != 0) {
            wp_buf_printf(&pre, "export %s=", k);
            shq(&pre, val);
            wp_buf_append(&pre, "\n", 1);
        }
    }
    if (n_seed)
        reseed(h, seed, n_seed);
    if (workdir) {
        wp_buf_append(&pre, "cd ", 3);
        shq(&pre, h->workdir);
        wp_buf_append(&pre, " 2>/dev/null\n", 13);
    }
    /* bash's $RANDOM is userspace state copied into every clone too. */
    wp_buf_printf(&pre, "RANDOM=%u\n", (unsigned)(alink__rand(h) & 0x7fffffff));
    if (hostname && h->allow_hostname) {
        wp_buf_append(&pre, "HOSTNAME=", 9);
        shq(&pre, hostname);
        wp_buf_append(&pre, "\n", 1);
    }
    alink__bash_preamble(h, pre.data, pre.len);
    snprintf(h->session, sizeof(h->session), "%s", session);
    log_info("attach session=%s workdir=%s env=%zu", h->session, h->workdir,
             json_object_size(env));
    c->attach_failed = false;
    alink__replyf(c, m->id, false, "attached %s", h->session);
out:
    wp_buf_free(&pre);
}

/* ---- calls ---------------------------------------------------------------- */

typedef bool (*sync_tool_fn)(struct alink__hands *h, json_t *input, struct wp_buf *out);

static const struct {
    const char *name;
    sync_tool_fn fn; /* NULL: bash (asynchronous) */
} tools[] = {
    {"bash", NULL},
    {"read", alink__tool_read},
    {"write", alink__tool_write},
    {"edit", alink__tool_edit},
    {"glob", alink__tool_glob},
    {"grep", alink__tool_grep},
};

static void handle_call(struct alink__conn *c, struct alink_msg *m)
{
    size_t i;

    /* Never run a call meant for an attached sandbox without its settings. */
    if (c->attach_failed) {
        alink__replyf(c, m->id, true, "Error: not run: this connection's attach failed");
        return;
    }

    for (i = 0; i < sizeof(tools) / sizeof(tools[0]); i++)
        if (strcmp(tools[i].name, m->tool) == 0)
            break;
    if (i == sizeof(tools) / sizeof(tools[0])) {
        alink__replyf(c, m->id, true, "Error: unknown tool %.64s", m->tool);
        return;
    }
    if (tools[i].fn) {
        struct wp_buf out;
        bool is_error;

        wp_buf_init(&out, 2 * ALINK_READ_MAX);
        is_error = tools[i].fn(c->h, m->input, &out);
        alink__reply(c, m->id, out.data ? out.data : "", out.len, is_error);
        wp_buf_free(&out);
        return;
    }
    struct alink__call *call = calloc(1, sizeof(*call));
    if (!call) {
        alink__replyf(c, m->id, true, "Error: out of memory");
        return;
    }
    call->id = m->id;
    call->conn = c;
    call->input = json_incref(m->input);
    call->timeout_ms = m->timeout_ms;
    call->stream = m->stream;
    alink__bash_submit(c->h, call);
}

static void handle_frame(struct alink__conn *c, const uint8_t *p, size_t n)
{
    struct alink_msg m;
    struct wp_err err;
    uint64_t id;

    if (alink_msg_parse(p, n, &m, &id, &err) < 0) {
        send_error(c, id, "bad_message", err.msg);
        return;
    }
    if (m.type == ALINK_MSG_HELLO) {
        if (m.version != ALINK_PROTO_VERSION) {
            send_error(c, 0, "version", "unsupported protocol version");
            conn_close(c);
        } else {
            c->hello = true;
            json_t *r = alink_msg_hello(ALINK_PROTO_VERSION);
            /* The session last attached ("" in a fresh clone) lets the host
             * check it reached the sandbox it meant to. */
            if (r)
                json_object_set_new(r, "session", json_string(c->h->session));
            conn_send(c, r);
        }
        goto out;
    }
    if (!c->hello) {
        send_error(c, m.id, "hello_required", "send hello first");
        goto out;
    }
    switch (m.type) {
    case ALINK_MSG_ATTACH:
        handle_attach(c, &m);
        break;
    case ALINK_MSG_CALL:
        handle_call(c, &m);
        break;
    case ALINK_MSG_CANCEL:
        alink__bash_cancel(c->h, c, m.id); /* unknown or finished: nothing to do */
        break;
    default:
        send_error(c, m.id, "unexpected", "message type not accepted by the hands");
        break;
    }
out:
    alink_msg_free(&m);
}

/* ---- connections ---------------------------------------------------------- */

static void conn_process(struct alink__conn *c)
{
    size_t off = 0;

    while (!c->closing && off < c->in.len) {
        const uint8_t *payload = NULL;
        size_t plen = 0;
        int rc = alink_frame_decode((const uint8_t *)c->in.data + off, c->in.len - off,
                                    c->h->max_frame, &payload, &plen);
        if (rc == 0)
            break;
        if (rc < 0) {
            /* Oversized: answer, then skip its payload so the stream stays
             * in sync and the connection survives. */
            size_t have = c->in.len - off - ALINK_FRAME_HDR;
            send_error(c, 0, "frame_too_big", "frame larger than the maximum; skipped");
            if (have >= plen) {
                off += ALINK_FRAME_HDR + plen;
            } else {
                c->skip = plen - have;
                off = c->in.len;
            }
            continue;
        }
        handle_frame(c, payload, plen);
        off += (size_t)rc;
    }
    if (!c->closing)
        wp_buf_consume(&c->in, off);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct alink__conn *c = w->data;
    char buf[65536];
    (void)loop;

    if (revents & EV_WRITE) {
        conn_flush(c);
        if (c->closing)
            return;
    }
    if (!(revents & EV_READ))
        return;
    for (int rounds = 0; rounds < 16 && !c->closing; rounds++) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        if (n == 0) {
            conn_close(c);
            return;
        }
        size_t start = 0;
        if (c->skip) {
            size_t k = c->skip < (size_t)n ? c->skip : (size_t)n;
            c->skip -= k;
            start = k;
        }
        if (start < (size_t)n) {
            if (wp_buf_append(&c->in, buf + start, (size_t)n - start) < 0) {
                send_error(c, 0, "overflow", "input buffer overflow");
                conn_close(c);
                return;
            }
            conn_process(c);
        }
        if ((size_t)n < sizeof(buf))
            return;
    }
}

static void conn_close(struct alink__conn *c)
{
    struct alink__hands *h = c->h;
    struct alink__conn **pp;

    if (c->closing)
        return;
    c->closing = true;
    /* Best effort: pending error frames may still fit in the socket. */
    if (c->out.len)
        (void)!send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    ev_io_stop(h->loop, &c->io);
    alink__bash_conn_gone(h, c);
    for (pp = &h->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    close(c->fd);
    c->fd = -1;
    c->next = h->closed;
    h->closed = c;
    log_debug("conn closed");
}

/* Before sleep: free what was closed during this loop iteration, so no
 * connection is freed under a running callback. */
static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct alink__hands *h = w->data;
    (void)loop;
    (void)revents;

    while (h->closed) {
        struct alink__conn *c = h->closed;
        h->closed = c->next;
        wp_buf_free(&c->in);
        wp_buf_free(&c->out);
        free(c);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct alink__hands *h = w->data;
    (void)revents;

    for (;;) {
        int fd = accept4(h->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log_perror("accept");
            return;
        }
        struct alink__conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->h = h;
        wp_buf_init(&c->in, h->max_frame + ALINK_FRAME_HDR + 65536);
        wp_buf_init(&c->out, ALINK_CONN_OUT_MAX);
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        c->next = h->conns;
        h->conns = c;
        log_debug("conn accepted fd=%d", fd);
    }
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
    struct alink__hands *h = w->data;
    (void)loop;
    (void)revents;

    alink__bash_child_exit(h, w->rpid, w->rstatus);
}

static void term_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    log_info("signal: shutting down");
    ev_break(loop, EVBREAK_ALL);
}

static int listen_unix(struct alink__hands *h, struct wp_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char dir[sizeof(sa.sun_path)];
    char *slash;
    int fd;

    if (strlen(h->sock_path) >= sizeof(sa.sun_path))
        return wp_err_set(err, WP_EINVAL_INPUT, "socket path too long: %s", h->sock_path);
    snprintf(dir, sizeof(dir), "%s", h->sock_path);
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (wp_mkdir_p(dir, 0755, err) < 0)
            return err ? err->code : -1;
    }
    memcpy(sa.sun_path, h->sock_path, strlen(h->sock_path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return wp_err_errno(err, "socket");
    unlink(h->sock_path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
        int rc = wp_err_errno(err, "bind/listen %s", h->sock_path);
        close(fd);
        return rc;
    }
    chmod(h->sock_path, 0600);
    h->listen_fd = fd;
    return 0;
}

void alink__hands_ready(struct alink__hands *h)
{
    struct wp_err err;

    if (h->ready_sent)
        return;
    h->ready_sent = true;
    ev_timer_stop(h->loop, &h->ready_w);
    log_info("hands ready socket=%s shell=%d", h->sock_path, (int)h->shell.pid);
    if (h->ready_file) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", h->ready_file);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir)
            *slash = '\0';
        if ((slash && slash != dir && wp_mkdir_p(dir, 0755, &err) < 0) ||
            wp_write_file(h->ready_file, "ready\n", 6, 0644, &err) < 0)
            log_warn("ready file %s: %s", h->ready_file, err.msg); /* the boot will time out */
    }
    if (h->ready_fd >= 0) {
        /* The socket accepts from now on; tell whoever booted us, then hold
         * nothing of theirs. */
        (void)!write(h->ready_fd, "ready\n", 6);
        close(h->ready_fd);
        h->ready_fd = -1;
    }
}

static void ready_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct alink__hands *h = w->data;
    (void)loop;
    (void)revents;
    log_warn("shell %s not ready after 5 s: saying ready without it", h->shell_path);
    alink__hands_ready(h);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: warmpool-hands [--socket PATH] [--workdir DIR] [--allow-root DIR]...\n"
            "                      [--shell PATH] [--max-frame BYTES] [--allow-hostname]\n"
            "                      [--ready-fd FD] [--ready-file PATH] [--lazy-shell]\n"
            "                      [--log-level LEVEL]\n"
            "Serves the agentlink protocol on a Unix socket (default %s).\n",
            ALINK_SOCK_PATH_DEFAULT);
}

int alink__hands_main(int argc, char **argv)
{
    static struct alink__hands hs;
    struct alink__hands *h = &hs;
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"workdir", required_argument, NULL, 'w'},
        {"allow-root", required_argument, NULL, 'r'},
        {"shell", required_argument, NULL, 'S'},
        {"max-frame", required_argument, NULL, 'm'},
        {"allow-hostname", no_argument, NULL, 'H'},
        {"log-level", required_argument, NULL, 'l'},
        {"ready-fd", required_argument, NULL, 'R'},
        {"ready-file", required_argument, NULL, 'F'},
        {"lazy-shell", no_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *workdir = "/";
    const char *extra[ALINK_MAX_ROOTS];
    size_t n_extra = 0;
    struct wp_err err;
    const char *ready_file = NULL;
    int ready_fd = -1;
    int c;

    h->sock_path = ALINK_SOCK_PATH_DEFAULT;
    h->shell_path = "/bin/bash";
    h->max_frame = ALINK_FRAME_MAX_DEFAULT;
    h->listen_fd = -1;
    h->allow_hostname = getpid() == 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': h->sock_path = optarg; break;
        case 'w': workdir = optarg; break;
        case 'r':
            if (n_extra + 1 >= ALINK_MAX_ROOTS) {
                fprintf(stderr, "too many --allow-root\n");
                return 2;
            }
            extra[n_extra++] = optarg;
            break;
        case 'S': h->shell_path = optarg; break;
        case 'm': h->max_frame = strtoul(optarg, NULL, 10); break;
        case 'H': h->allow_hostname = true; break;
        case 'R': ready_fd = atoi(optarg); break;
        case 'F': ready_file = optarg; break;
        case 'L': h->lazy_shell = true; break;
        case 'l':
            if (wp_log_set_level(optarg) < 0) {
                fprintf(stderr, "bad --log-level\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (h->max_frame < 4096 || h->max_frame > (64u << 20)) {
        fprintf(stderr, "--max-frame must be in 4096..67108864\n");
        return 2;
    }
    /* Hold nothing of whoever started us (the host side of a sandbox boot),
     * except the optional readiness pipe, moved to fd 3. */
    if (ready_fd >= 0) {
        if (ready_fd != 3 && dup2(ready_fd, 3) < 0) {
            perror("--ready-fd");
            return 2;
        }
        ready_fd = 3;
        wp_close_fds_from(4);
    } else {
        wp_close_fds_from(3);
    }
    signal(SIGPIPE, SIG_IGN);
    if (getpid() == 1)
        admin_confine();
    /* Outside a PID namespace (tests), adopt orphans like PID 1 would. */
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (getrandom(h->rng, sizeof(h->rng), GRND_NONBLOCK) != sizeof(h->rng)) {
        h->rng[0] = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
        h->rng[1] = 0x2545f4914f6cdd1dull;
    }
    if (!h->rng[0] && !h->rng[1])
        h->rng[0] = 1;
    if (alink__set_workdir(h, workdir, &err) < 0) {
        log_error("workdir %s: %s", workdir, err.msg);
        return 1;
    }
    for (size_t i = 0; i < n_extra; i++) {
        char *r = realpath(extra[i], NULL);
        if (!r || strlen(r) >= sizeof(h->roots[0])) {
            log_error("allow-root %s: %s", extra[i], r ? "too long" : strerror(errno));
            free(r);
            return 1;
        }
        snprintf(h->roots[h->n_roots++], sizeof(h->roots[0]), "%s", r);
        free(r);
    }
    h->loop = ev_default_loop(EVFLAG_AUTO);
    if (!h->loop) {
        log_error("no event loop");
        return 1;
    }
    if (listen_unix(h, &err) < 0) {
        log_error("%s", err.msg);
        return 1;
    }
    alink__bash_init(h);
    ev_io_init(&h->listen_w, accept_cb, h->listen_fd, EV_READ);
    h->listen_w.data = h;
    ev_io_start(h->loop, &h->listen_w);
    ev_child_init(&h->child_w, child_cb, 0, 0);
    h->child_w.data = h;
    ev_child_start(h->loop, &h->child_w);
    /* As PID 1 no handler is installed: the kernel then drops SIGTERM and
     * SIGINT sent from inside the sandbox (an agent's `kill 1` cannot take
     * the hands down); the host stops a sandbox with SIGKILL. */
    if (getpid() != 1) {
        ev_signal_init(&h->term_w, term_cb, SIGTERM);
        ev_signal_start(h->loop, &h->term_w);
        ev_signal_init(&h->int_w, term_cb, SIGINT);
        ev_signal_start(h->loop, &h->int_w);
    }
    ev_prepare_init(&h->prepare_w, prepare_cb);
    h->prepare_w.data = h;
    ev_prepare_start(h->loop, &h->prepare_w);
    log_info("hands up socket=%s workdir=%s pid=%d", h->sock_path, h->workdir, (int)getpid());
    h->ready_file = ready_file;
    h->ready_fd = ready_fd;
    /* Ready once the shell answers; a shell that hangs loading delays a
     * boot by at most this much. */
    ev_timer_init(&h->ready_w, ready_timeout_cb, 5.0, 0.);
    h->ready_w.data = h;
    ev_timer_start(h->loop, &h->ready_w);
    alink__bash_prestart(h);
    if (h->lazy_shell)
        alink__hands_ready(h);

    ev_run(h->loop, 0);

    h->stopping = true;
    ev_timer_stop(h->loop, &h->ready_w);
    while (h->conns)
        conn_close(h->conns);
    prepare_cb(h->loop, &h->prepare_w, 0);
    alink__bash_shutdown(h);
    ev_io_stop(h->loop, &h->listen_w);
    if (getpid() != 1) {
        ev_signal_stop(h->loop, &h->term_w);
        ev_signal_stop(h->loop, &h->int_w);
    }
    close(h->listen_fd);
    unlink(h->sock_path);
    return 0;
}
