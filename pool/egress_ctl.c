/* egress_ctl.c - how the node tells warmpool-egress which sandboxes it
 * serves: a Unix stream socket (0600, root's) taking one JSON object per
 * line and answering one line each, {"ok":true} or {"ok":false,"error":..}.
 *
 *   {"t":"add","sandbox":ID,"host":"10.88.0.1","addr":"10.88.0.2",
 *    "network":{"type":"unrestricted"} | {"type":"limited","allowed_hosts":[..]},
 *    "credentials":[{"placeholder":P,"secret":S,
 *                    "injection_location":{"header":true,"body":false},
 *                    "networking":{"type":"limited","allowed_hosts":["*.x.com"]}}]}
 *   {"t":"remove","sandbox":ID}
 *
 * Credentials take the API's shapes (managed-agents-api.md 17). Every
 * field is checked; a bad command changes nothing. */
#define WP_LOG_COMPONENT "egress"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "snapshot/snapshot.h"

#define LINE_MAX_BYTES (1 << 20)
#define MAX_CREDS 64
#define MAX_CRED_HOSTS 16                      /* the API's limit for a credential */
#define MAX_ENV_HOSTS SNAP_MAX_ALLOWED_HOSTS  /* a template's, with the ones added for it */

struct pool_egress_ctl {
    struct ev_loop *loop;
    struct pool_egress *px;
    int fd;
    ev_io io;
    struct ctl_conn *conns;
};

struct ctl_conn {
    struct ctl_conn *next;
    struct pool_egress_ctl *ctl;
    int fd;
    ev_io io;
    struct wp_buf in;
};

/* hosts[] from a networking object; *limited false for unrestricted. */
static const char *net_hosts(json_t *net, bool *limited, const char **hosts, size_t max,
                             size_t *n, bool patterns)
{
    static char said[64];
    const char *t = json_string_value(json_object_get(net, "type"));
    json_t *arr = json_object_get(net, "allowed_hosts"), *v;
    size_t i;

    *n = 0;
    if (!json_is_object(net) || !t)
        return "networking: an object with a type";
    *limited = strcmp(t, "limited") == 0;
    if (!*limited)
        return strcmp(t, "unrestricted") == 0 ? NULL : "networking: type unrestricted or limited";
    if (!json_is_array(arr) || json_array_size(arr) > max) {
        snprintf(said, sizeof(said), "networking: limited needs allowed_hosts (up to %zu)", max);
        return said;
    }
    json_array_foreach(arr, i, v) {
        const char *h = json_string_value(v);
        if (!h || (patterns && pool_egress_host_pattern_check(h)))
            return "networking: an allowed host that is not a host name, IPv4 address or *. wildcard";
        hosts[(*n)++] = h;
    }
    return NULL;
}

/* The command in j, applied; NULL or what was wrong. */
static const char *apply(struct pool_egress_ctl *ctl, json_t *j, char *why, size_t cap)
{
    const char *t = json_string_value(json_object_get(j, "t"));
    const char *id = json_string_value(json_object_get(j, "sandbox"));
    struct in_addr a;

    if (!t || !id || !id[0] || strlen(id) >= 64)
        return "a command needs t and sandbox (under 64 characters)";
    if (strcmp(t, "remove") == 0) {
        pool_egress_remove(ctl->px, id);
        return NULL;
    }
    if (strcmp(t, "add") != 0)
        return "t must be add or remove";
    struct pool_egress_sandbox s = { .sandbox_id = id };
    const char *env_hosts[MAX_ENV_HOSTS], *cred_hosts[MAX_CREDS][MAX_CRED_HOSTS], *msg;
    struct pool_egress_cred creds[MAX_CREDS];
    json_t *cs = json_object_get(j, "credentials"), *c;
    size_t i;

    s.host_addr = json_string_value(json_object_get(j, "host"));
    s.sbx_addr = json_string_value(json_object_get(j, "addr"));
    if (!s.host_addr || !s.sbx_addr || inet_pton(AF_INET, s.host_addr, &a) != 1 ||
        inet_pton(AF_INET, s.sbx_addr, &a) != 1)
        return "host and addr must be IPv4 addresses";
    if ((msg = net_hosts(json_object_get(j, "network"), &s.limited, env_hosts, MAX_ENV_HOSTS,
                         &s.n_allowed, false)))
        return msg;
    s.allowed_hosts = env_hosts;
    if (!json_is_array(cs) || json_array_size(cs) > MAX_CREDS)
        return "credentials: an array of up to 64";
    json_array_foreach(cs, i, c) {
        struct pool_egress_cred *cr = &creds[i];
        json_t *inj = json_object_get(c, "injection_location");
        bool limited = false;
        memset(cr, 0, sizeof(*cr));
        cr->placeholder = json_string_value(json_object_get(c, "placeholder"));
        cr->secret = json_string_value(json_object_get(c, "secret"));
        if (!json_is_object(inj))
            return "credentials: injection_location is an object";
        cr->in_header = json_is_true(json_object_get(inj, "header"));
        cr->in_body = json_is_true(json_object_get(inj, "body"));
        if ((msg = net_hosts(json_object_get(c, "networking"), &limited, cred_hosts[i],
                             MAX_CRED_HOSTS, &cr->n_hosts, true)))
            return msg;
        cr->any_host = !limited;
        cr->hosts = cred_hosts[i];
    }
    s.creds = creds;
    s.n_creds = json_array_size(cs);
    struct wp_err err;
    pool_egress_remove(ctl->px, id); /* a re-add replaces */
    if (pool_egress_add(ctl->px, &s, &err) < 0) {
        snprintf(why, cap, "%s", err.msg);
        return why;
    }
    return NULL;
}

static void ctl_conn_free(struct ctl_conn *cc)
{
    for (struct ctl_conn **pp = &cc->ctl->conns; *pp; pp = &(*pp)->next)
        if (*pp == cc) {
            *pp = cc->next;
            break;
        }
    ev_io_stop(cc->ctl->loop, &cc->io);
    close(cc->fd);
    if (cc->in.data)
        memset(cc->in.data, 0, cc->in.len); /* secrets passed through here */
    wp_buf_free(&cc->in);
    free(cc);
}

static void ctl_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctl_conn *cc = w->data;
    char buf[8192], why[300];
    ssize_t n = read(cc->fd, buf, sizeof(buf));
    (void)loop;
    (void)revents;

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0 || wp_buf_append(&cc->in, buf, (size_t)n) < 0) {
        ctl_conn_free(cc);
        return;
    }
    memset(buf, 0, (size_t)n);
    char *nl;
    while (cc->in.len && (nl = memchr(cc->in.data, '\n', cc->in.len))) {
        size_t len = (size_t)(nl - cc->in.data);
        json_error_t je;
        json_t *j = json_loadb(cc->in.data, len, JSON_REJECT_DUPLICATES, &je);
        const char *msg = j && json_is_object(j) ? apply(cc->ctl, j, why, sizeof(why))
                                                 : "each line is one JSON object";
        json_decref(j); /* jansson does not wipe; the strings were short-lived */
        memset(cc->in.data, 0, len + 1);
        wp_buf_consume(&cc->in, len + 1);
        json_t *r = msg ? json_pack("{s:b,s:s}", "ok", 0, "error", msg) : json_pack("{s:b}", "ok", 1);
        char *out = json_dumps(r, JSON_COMPACT);
        json_decref(r);
        /* Replies are a few bytes on a local socket: written at once. */
        if (!out || write(cc->fd, out, strlen(out)) < 0 || write(cc->fd, "\n", 1) < 0) {
            free(out);
            ctl_conn_free(cc);
            return;
        }
        free(out);
    }
}

static void ctl_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pool_egress_ctl *ctl = w->data;
    (void)loop;
    (void)revents;
    for (;;) {
        int fd = accept4(ctl->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct ctl_conn *cc = calloc(1, sizeof(*cc));
        if (!cc) {
            close(fd);
            continue;
        }
        cc->ctl = ctl;
        cc->fd = fd;
        wp_buf_init(&cc->in, LINE_MAX_BYTES);
        ev_io_init(&cc->io, ctl_read, fd, EV_READ);
        cc->io.data = cc;
        ev_io_start(ctl->loop, &cc->io);
        cc->next = ctl->conns;
        ctl->conns = cc;
    }
}

int pool_egress_ctl_open(struct ev_loop *loop, struct pool_egress *px, const char *path,
                         struct pool_egress_ctl **out, struct wp_err *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct pool_egress_ctl *ctl;
    int fd;

    *out = NULL;
    if (strlen(path) >= sizeof(sa.sun_path))
        return wp_err_set(err, WP_ECONFIG, "egress: control socket path too long: %s", path);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return wp_err_errno(err, "egress: socket");
    unlink(path);
    /* Only root may tell the proxy about secrets. */
    mode_t old = umask(077);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(fd, 16) < 0) {
        rc = wp_err_errno(err, "egress: listen on %s", path);
        close(fd);
        return rc;
    }
    if (!(ctl = calloc(1, sizeof(*ctl)))) {
        close(fd);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    ctl->loop = loop;
    ctl->px = px;
    ctl->fd = fd;
    ev_io_init(&ctl->io, ctl_accept, fd, EV_READ);
    ctl->io.data = ctl;
    ev_io_start(loop, &ctl->io);
    *out = ctl;
    return 0;
}

void pool_egress_ctl_close(struct pool_egress_ctl *ctl)
{
    if (!ctl)
        return;
    while (ctl->conns)
        ctl_conn_free(ctl->conns);
    ev_io_stop(ctl->loop, &ctl->io);
    close(ctl->fd);
    free(ctl);
}
