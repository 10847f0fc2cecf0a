/* curlev.c - libcurl multi on libev (see curlev.h). */
#include "base/curlev.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct wp_curlev_sock {
    ev_io io;
    curl_socket_t fd;
    struct wp_curlev *ce;
    struct wp_curlev_sock *prev, *next;
};

static void action(struct wp_curlev *ce, curl_socket_t fd, int flags)
{
    int running;

    ce->in_curl++;
    curl_multi_socket_action(ce->multi, fd, flags, &running);
    ce->in_curl--;
    ce->after(ce->ctx);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    /* Copy first: the socket callback may free s during the action. */
    struct wp_curlev_sock *s = w->data;
    struct wp_curlev *ce = s->ce;
    curl_socket_t fd = s->fd;

    (void)loop;
    action(ce, fd, (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0));
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    action(w->data, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_free(struct wp_curlev *ce, struct wp_curlev_sock *s)
{
    ev_io_stop(ce->loop, &s->io);
    if (s->prev)
        s->prev->next = s->next;
    else
        ce->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
    struct wp_curlev *ce = userp;
    struct wp_curlev_sock *s = sockp;

    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(ce->multi, fd, NULL);
            sock_free(ce, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->fd = fd;
        s->ce = ce;
        ev_init(&s->io, on_io);
        s->io.data = s;
        s->next = ce->socks;
        if (ce->socks)
            ce->socks->prev = s;
        ce->socks = s;
        curl_multi_assign(ce->multi, fd, s);
    }
    ev_io_stop(ce->loop, &s->io);
    ev_io_set(&s->io, fd, (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
    ev_io_start(ce->loop, &s->io);
    return 0;
}

/* Never calls curl_multi_socket_action (curl forbids it here). */
static int on_timer_set(CURLM *multi, long timeout_ms, void *userp)
{
    struct wp_curlev *ce = userp;

    (void)multi;
    ev_timer_stop(ce->loop, &ce->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&ce->timer, timeout_ms / 1000.0, 0.);
        ev_timer_start(ce->loop, &ce->timer);
    }
    return 0;
}

int wp_curlev_init(struct wp_curlev *ce, struct ev_loop *loop, wp_curlev_after_cb after, void *ctx)
{
    memset(ce, 0, sizeof(*ce));
    ce->loop = loop;
    ce->after = after;
    ce->ctx = ctx;
    ev_init(&ce->timer, on_timer);
    ce->timer.data = ce;
    ce->multi = curl_multi_init();
    if (!ce->multi)
        return -ENOMEM;
    curl_multi_setopt(ce->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(ce->multi, CURLMOPT_SOCKETDATA, ce);
    curl_multi_setopt(ce->multi, CURLMOPT_TIMERFUNCTION, on_timer_set);
    curl_multi_setopt(ce->multi, CURLMOPT_TIMERDATA, ce);
    return 0;
}

void wp_curlev_cleanup(struct wp_curlev *ce)
{
    if (ce->multi)
        curl_multi_cleanup(ce->multi); /* may still call on_socket */
    ce->multi = NULL;
    ev_timer_stop(ce->loop, &ce->timer);
    while (ce->socks)
        sock_free(ce, ce->socks);
}

bool wp_curlev_next_done(struct wp_curlev *ce, void **priv, CURLcode *res)
{
    for (;;) {
        int left;
        CURLMsg *msg = curl_multi_info_read(ce->multi, &left);
        if (!msg)
            return false;
        if (msg->msg != CURLMSG_DONE)
            continue;
        char *p = NULL;
        *res = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &p);
        *priv = p;
        return true; /* msg is not to be used once the owner removes the handle */
    }
}
