/* test_alink_client.c - the host client against a scripted peer on a
 * socketpair (no hands process): handshake, out-of-order results, chunks,
 * unknown ids, a peer that sends garbage or oversized frames, and the
 * exactly-once result contract. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "lib/testlib.h"
#include "agentlink/agentlink.h"
#include "base/buf.h"
#include "base/err.h"

struct peer {
    int fd;
    struct ev_loop *loop;
    struct alink_client *c;
    int closes;
    int connect_status; /* 0: pending, 1: ok, < 0: failed */
};

struct res {
    int calls;
    int status;
    bool is_error;
    char text[256];
    int chunks;
    char chunk[256];
};

static void on_close(void *ctx, const struct wp_err *err)
{
    (void)err;
    ((struct peer *)ctx)->closes++;
}

static void on_connect(void *ctx, int status, const struct wp_err *err)
{
    (void)err;
    ((struct peer *)ctx)->connect_status = status == 0 ? 1 : status;
}

static void on_result(void *ctx, int status, const struct alink_result *r,
                      const struct wp_err *err)
{
    struct res *x = ctx;
    (void)err;
    x->calls++;
    x->status = status;
    x->is_error = r->is_error;
    snprintf(x->text, sizeof(x->text), "%.*s", (int)r->len, r->content);
}

static void on_chunk(void *ctx, const char *data, size_t len)
{
    struct res *x = ctx;
    x->chunks++;
    snprintf(x->chunk, sizeof(x->chunk), "%.*s", (int)len, data);
}

static void peer_send(struct peer *p, const char *json)
{
    uint32_t n = (uint32_t)strlen(json);
    uint8_t h[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};

    assert_int_equal(write(p->fd, h, 4), 4);
    assert_int_equal(write(p->fd, json, n), (ssize_t)n);
}

/* Read one frame the client sent; returns its JSON (caller decrefs). */
static json_t *peer_recv(struct peer *p)
{
    uint8_t h[4];
    char buf[65536];
    size_t got = 0, n;

    /* The client writes from its loop: run it until bytes arrive. */
    for (;;) {
        struct pollfd pfd = {.fd = p->fd, .events = POLLIN};
        if (poll(&pfd, 1, 0) > 0)
            break;
        ev_run(p->loop, EVRUN_NOWAIT);
    }
    while (got < 4) {
        ssize_t k = read(p->fd, h + got, 4 - got);
        assert_true(k > 0);
        got += (size_t)k;
    }
    n = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
    assert_true(n < sizeof(buf));
    for (got = 0; got < n;) {
        ssize_t k = read(p->fd, buf + got, n - got);
        assert_true(k > 0);
        got += (size_t)k;
    }
    return json_loadb(buf, n, 0, NULL);
}

static void peer_start(struct peer *p)
{
    struct alink_client_opts o = {.on_close = on_close, .close_ctx = p, .max_frame = 4096};
    struct wp_err err;
    int sv[2];
    json_t *hello;

    memset(p, 0, sizeof(*p));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    p->fd = sv[1];
    p->loop = ev_loop_new(EVFLAG_AUTO);
    assert_int_equal(alink_client_new(p->loop, &o, &p->c, &err), 0);
    assert_int_equal(alink_client_connect_fd(p->c, sv[0], on_connect, p, &err), 0);
    hello = peer_recv(p);
    assert_string_equal(json_string_value(json_object_get(hello, "t")), "hello");
    assert_int_equal(json_integer_value(json_object_get(hello, "v")), ALINK_PROTO_VERSION);
    json_decref(hello);
}

static void peer_stop(struct peer *p)
{
    alink_client_free(p->c);
    assert_int_equal(ev_run(p->loop, EVRUN_NOWAIT), 0); /* nothing left on the loop */
    ev_loop_destroy(p->loop);
    close(p->fd);
}

static void run_until(struct peer *p, const int *flag)
{
    for (int i = 0; i < 1000 && !*flag; i++)
        ev_run(p->loop, EVRUN_NOWAIT), usleep(1000);
    assert_true(*flag);
}

static int64_t call(struct peer *p, struct res *r, bool stream)
{
    json_t *in = json_pack("{s:s}", "command", "x");
    struct alink_call_opts o = {.on_chunk = stream ? on_chunk : NULL};
    struct wp_err err;
    int64_t id;

    memset(r, 0, sizeof(*r));
    id = alink_client_call(p->c, "bash", in, &o, on_result, r, &err);
    json_decref(in);
    assert_true(id > 0);
    return id;
}

static void out_of_order_results_and_chunks(void **state)
{
    struct peer p;
    struct res a, b;
    char msg[256];
    (void)state;

    peer_start(&p);
    peer_send(&p, "{\"t\":\"hello\",\"v\":1,\"session\":\"\"}");
    run_until(&p, &p.connect_status);
    assert_int_equal(p.connect_status, 1);
    int64_t ia = call(&p, &a, true);
    int64_t ib = call(&p, &b, false);
    json_t *m = peer_recv(&p);
    assert_string_equal(json_string_value(json_object_get(m, "tool")), "bash");
    assert_true(json_is_true(json_object_get(m, "stream")));
    json_decref(m);
    json_decref(peer_recv(&p));
    /* b answers first; a streams a chunk; a result for an unknown id and a
     * chunk for a call without on_chunk are ignored. */
    snprintf(msg, sizeof(msg), "{\"t\":\"result\",\"id\":%lld,\"content\":\"B\",\"is_error\":true}",
             (long long)ib);
    peer_send(&p, msg);
    peer_send(&p, "{\"t\":\"result\",\"id\":999,\"content\":\"?\"}");
    snprintf(msg, sizeof(msg), "{\"t\":\"chunk\",\"id\":%lld,\"stream\":\"output\",\"data\":\"part\"}",
             (long long)ia);
    peer_send(&p, msg);
    run_until(&p, &b.calls);
    assert_int_equal(b.status, 0);
    assert_true(b.is_error);
    assert_string_equal(b.text, "B");
    run_until(&p, &a.chunks);
    assert_string_equal(a.chunk, "part");
    assert_int_equal(a.calls, 0);
    snprintf(msg, sizeof(msg), "{\"t\":\"result\",\"id\":%lld,\"content\":\"A\"}", (long long)ia);
    peer_send(&p, msg);
    run_until(&p, &a.calls);
    assert_string_equal(a.text, "A");
    assert_false(a.is_error);
    /* An error frame naming a call fails that call only. */
    int64_t ic = call(&p, &a, false);
    json_decref(peer_recv(&p));
    snprintf(msg, sizeof(msg), "{\"t\":\"error\",\"id\":%lld,\"code\":\"bad_message\",\"message\":\"m\"}",
             (long long)ic);
    peer_send(&p, msg);
    run_until(&p, &a.calls);
    assert_int_equal(a.status, WP_EPROTO);
    assert_true(alink_client_connected(p.c));
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    peer_stop(&p);
}

static void garbage_from_peer_fails_all_once(void **state)
{
    struct peer p;
    struct res a, b;
    (void)state;

    peer_start(&p);
    peer_send(&p, "{\"t\":\"hello\",\"v\":1}");
    run_until(&p, &p.connect_status);
    call(&p, &a, false);
    call(&p, &b, false);
    peer_send(&p, "this is not json");
    run_until(&p, &p.closes);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(a.status, WP_EPROTO);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "sandbox connection lost"));
    assert_int_equal(p.closes, 1);
    assert_false(alink_client_connected(p.c));
    peer_stop(&p);
    assert_int_equal(a.calls, 1); /* free after the loss calls nothing again */
}

static void oversized_from_peer(void **state)
{
    struct peer p;
    struct res a;
    uint8_t h[4] = {0, 0, 0x20, 0}; /* 8192 > the client's 4096 */
    (void)state;

    peer_start(&p);
    peer_send(&p, "{\"t\":\"hello\",\"v\":1}");
    run_until(&p, &p.connect_status);
    call(&p, &a, false);
    assert_int_equal(write(p.fd, h, 4), 4);
    run_until(&p, &a.calls);
    assert_int_equal(a.status, WP_ETOOBIG);
    assert_int_equal(p.closes, 1);
    peer_stop(&p);
}

static void handshake_refused_and_eof(void **state)
{
    struct peer p;
    (void)state;

    peer_start(&p);
    peer_send(&p, "{\"t\":\"error\",\"code\":\"version\",\"message\":\"no\"}");
    run_until(&p, &p.connect_status);
    assert_int_equal(p.connect_status, WP_EPROTO);
    assert_int_equal(p.closes, 0); /* a failed connect is reported once, by its cb */
    peer_stop(&p);

    peer_start(&p);
    shutdown(p.fd, SHUT_WR);
    run_until(&p, &p.connect_status);
    assert_true(p.connect_status < 0);
    peer_stop(&p);

    /* Freed while the handshake is pending: the connect cb still runs once. */
    peer_start(&p);
    alink_client_free(p.c);
    p.c = NULL;
    assert_int_equal(p.connect_status, -ECONNABORTED);
    assert_int_equal(ev_run(p.loop, EVRUN_NOWAIT), 0);
    ev_loop_destroy(p.loop);
    close(p.fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(out_of_order_results_and_chunks),
        cmocka_unit_test(garbage_from_peer_fails_all_once),
        cmocka_unit_test(oversized_from_peer),
        cmocka_unit_test(handshake_refused_and_eof),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
