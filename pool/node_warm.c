/* node_warm.c - a hot clone's first command, run by the node while the
 * clone idles in the hot tier (issue 20).
 *
 * Why: a restored clone's processes have none of their program text mapped
 * (criu maps the files; the page tables start empty), so the session's
 * first `bash` call faulted in the shell's and the hands' code paths, ~40
 * faults of 20-60 us each on this paravirtualised VM: 1.7 ms of the
 * first call's 3.4 ms (perf: exceptions:page_fault_user, sched_switch),
 * where the second call costs 1.2 ms. A checkpoint cannot keep them (page
 * tables are not in the image), and the hands cannot tell that they were
 * restored, so the node runs one no-op call (`:`) through each new hot
 * clone's hands: the same frame, eval and status path a session's call
 * takes. It runs before any claim can see the clone's shell in use; a claim
 * that comes meanwhile queues its calls behind it on the one shell.
 *
 * Ownership: each warm-up is a struct nwarm on n->warms, holding its own
 * agentlink client; it points at no nsb (a clone destroyed meanwhile
 * fails the call with its link), and is freed by its result callback or
 * node__warm_stop. Its connection is never closed while the call runs:
 * the hands would kill the shell's process tree (the clone would then
 * start a cold shell). --warm-clones off turns it off. */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
#include "agentlink/agentlink.h"
#include "base/fs.h"

#include <sys/socket.h>

#define WARM_TIMEOUT_MS 10000 /* `:` takes well under 1 ms */

struct nwarm {
    struct node *n;
    struct alink_client *ac;
    char sandbox[64];
    double t0;
    bool stopping;          /* node__warm_stop frees it, not the callback */
    struct nwarm *next;
};

static void unlink_warm(struct nwarm *w)
{
    for (struct nwarm **pp = &w->n->warms; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            return;
        }
}

/* The connect callback has nothing to do: a failed handshake fails the
 * call first, whose callback frees w (so no ctx here). */
static void warm_hello(void *ctx, int status, const struct wp_err *err)
{
    (void)ctx;
    (void)status;
    (void)err;
}

static void warm_done(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct nwarm *w = ctx;
    if (w->stopping)
        return;
    if (status != 0 || res->is_error)
        log_debug("warm-up sandbox=%s: %s", w->sandbox,
                  status != 0 ? (err ? err->msg : "failed") : "error result");
    else {
        w->n->warmed++;
        log_debug("warm-up sandbox=%s ms=%.1f", w->sandbox, (node__now_s() - w->t0) * 1e3);
    }
    unlink_warm(w);
    alink_client_free(w->ac); /* freed once this callback returns */
    free(w);
}

static void warm_start(struct node *n, struct nsb *s)
{
    struct alink_client_opts o = { 0 };
    struct alink_call_opts co = { .timeout_ms = WARM_TIMEOUT_MS };
    struct wp_err err = { 0 };
    char root[64];

    struct nwarm *w = calloc(1, sizeof(*w));
    if (!w)
        return;
    w->n = n;
    w->t0 = node__now_s();
    snprintf(w->sandbox, sizeof(w->sandbox), "%s", s->sb->id);
    snprintf(root, sizeof(root), "/proc/%d/root", (int)s->sb->init_pid);
    int fd = wp_connect_unix_in_root(root, ALINK_SOCK_PATH_DEFAULT, SOCK_STREAM | SOCK_NONBLOCK, &err);
    json_t *input = json_pack("{s:s}", "command", ":");
    if (fd < 0 || !input || alink_client_new(n->loop, &o, &w->ac, &err) < 0) {
        if (fd >= 0)
            close(fd);
        goto fail;
    }
    if (alink_client_connect_fd(w->ac, fd, warm_hello, NULL, &err) < 0)
        goto fail; /* fd closed by the client */
    w->next = n->warms; /* before the call: its callback may come at once */
    n->warms = w;
    if (alink_client_call(w->ac, "bash", input, &co, warm_done, w, &err) < 0) {
        unlink_warm(w);
        goto fail;
    }
    json_decref(input);
    return;
fail:
    log_debug("warm-up sandbox=%s not started: %s", w->sandbox, !input ? "out of memory" : err.msg);
    json_decref(input);
    alink_client_free(w->ac);
    free(w);
}

void node__warm_tick(struct node *n)
{
    if (n->cfg.warm_off)
        return;
    for (struct nsb *s = n->sbs; s; s = s->next)
        if (s->st == SB_IDLE && !s->warmed && s->sb && s->sb->init_pid > 0) {
            s->warmed = true; /* once: a failed warm-up only costs the first call */
            warm_start(n, s);
        }
}

void node__warm_stop(struct node *n)
{
    while (n->warms) {
        struct nwarm *w = n->warms;
        n->warms = w->next;
        w->stopping = true;
        alink_client_free(w->ac); /* its call fails (-ECONNABORTED) */
        free(w);
    }
}
