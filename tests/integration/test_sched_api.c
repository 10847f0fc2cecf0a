/* test_sched_api.c - warmpool-scheduler against a real redis-server:
 * resources end to end, pagination, bad input, the SSE stream (resume
 * without gap or duplicate, slow readers cut off), two scheduler processes
 * on one session, rate limits shared through Redis, graceful drain. */
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "base/timeutil.h"
#include "lib/sched_testlib.h"

static struct th_redis R;
static struct th_sched S; /* unlimited rates, 64 KiB bodies, 1 s header timeout */

#define KEY "sk-acme"

static json_t *call(const char *method, const char *path, const char *body, int want)
{
    struct th_resp r;
    assert_int_equal(th_http(S.port, method, path, KEY, body, &r), 0);
    if (r.status != want)
        fprintf(stderr, "%s %s -> %d %s\n", method, path, r.status, r.body);
    assert_int_equal(r.status, want);
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    th_resp_free(&r);
    return j;
}

static const char *s_(json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

static char *new_agent(const char *name)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"name\":\"%s\",\"model\":\"claude-sonnet-4-5\"}", name);
    json_t *a = call("POST", "/v1/agents", body, 200);
    char *id = strdup(s_(a, "id"));
    json_decref(a);
    return id;
}

static char *new_env(void)
{
    json_t *e = call("POST", "/v1/environments", "{\"name\":\"e\"}", 200);
    char *id = strdup(s_(e, "id"));
    json_decref(e);
    return id;
}

static char *new_session(const char *agent, const char *env)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", agent, env);
    json_t *s = call("POST", "/v1/sessions", body, 200);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

static void send_msg(int port, const char *sid, const char *text)
{
    char path[256], body[65536];
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
             text);
    assert_int_equal(th_http(port, "POST", path, KEY, body, &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
}

static int group_setup(void **state)
{
    (void)state;
    return th_stack_start(&R, &S, "--rate-create", "0", "--rate-read", "0", "--max-body",
                          "65536", "--header-timeout", "1", (char *)NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    return th_stack_stop(&R, &S);
}

static void agents_crud(void **state)
{
    (void)state;
    char path[256];
    struct th_resp r;
    char *id = new_agent("crud");
    snprintf(path, sizeof(path), "/v1/agents/%s", id);
    json_t *a = call("POST", path, "{\"version\":1,\"description\":\"d\",\"metadata\":{\"k\":\"v\"}}", 200);
    assert_int_equal(json_integer_value(json_object_get(a, "version")), 2);
    assert_string_equal(s_(a, "description"), "d");
    json_decref(a);
    /* A stale version is a conflict the SDK must not retry. */
    assert_int_equal(th_http(S.port, "POST", path, KEY, "{\"version\":1,\"name\":\"x\"}", &r), 0);
    assert_int_equal(r.status, 409);
    char hv[32];
    assert_int_equal(th_resp_header(&r, "x-should-retry", hv, sizeof(hv)), 0);
    assert_string_equal(hv, "false");
    assert_int_equal(th_resp_header(&r, "request-id", hv, sizeof(hv)), 0);
    th_resp_free(&r);
    /* No-op update keeps the version. */
    a = call("POST", path, "{\"description\":\"d\"}", 200);
    assert_int_equal(json_integer_value(json_object_get(a, "version")), 2);
    json_decref(a);
    snprintf(path, sizeof(path), "/v1/agents/%s?version=1", id);
    a = call("GET", path, NULL, 200);
    assert_true(json_is_null(json_object_get(a, "description")));
    json_decref(a);
    snprintf(path, sizeof(path), "/v1/agents/%s/versions?limit=1", id);
    a = call("GET", path, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(a, "data")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(a, "data"), 0), "version")), 2);
    char next[128];
    snprintf(next, sizeof(next), "/v1/agents/%s/versions?limit=1&page=%s", id, s_(a, "next_page"));
    json_decref(a);
    a = call("GET", next, NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(a, "data"), 0), "version")), 1);
    assert_true(json_is_null(json_object_get(a, "next_page")));
    json_decref(a);
    snprintf(path, sizeof(path), "/v1/agents/%s/archive", id);
    a = call("POST", path, NULL, 200);
    assert_non_null(s_(a, "archived_at"));
    json_decref(a);
    /* Archived agents leave the default list. */
    a = call("GET", "/v1/agents?limit=1000", NULL, 200);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(a, "data"), i, e) assert_string_not_equal(s_(e, "id"), id);
    json_decref(a);
    a = call("GET", "/v1/agents?limit=1000&include_archived=true", NULL, 200);
    bool found = false;
    json_array_foreach(json_object_get(a, "data"), i, e) found |= !strcmp(s_(e, "id"), id);
    assert_true(found);
    json_decref(a);
    /* Another organization cannot see it. */
    snprintf(path, sizeof(path), "/v1/agents/%s", id);
    assert_int_equal(th_http(S.port, "GET", path, "sk-beta", NULL, &r), 0);
    assert_int_equal(r.status, 404);
    th_resp_free(&r);
    free(id);
}

static void environments_crud(void **state)
{
    (void)state;
    char path[256];
    json_t *e = call("POST", "/v1/environments",
                     "{\"name\":\"sh\",\"config\":{\"type\":\"self_hosted\"},\"metadata\":{\"a\":\"1\"}}", 200);
    char *id = strdup(s_(e, "id"));
    json_decref(e);
    snprintf(path, sizeof(path), "/v1/environments/%s", id);
    e = call("POST", path, "{\"config\":{\"type\":\"cloud\"}}", 400);
    assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "details"), "error_code"),
                        "invalid_config_type_change");
    json_decref(e);
    e = call("POST", path, "{\"metadata\":{\"a\":\"\",\"b\":\"2\"},\"description\":\"x\"}", 200);
    assert_null(json_object_get(json_object_get(e, "metadata"), "a"));
    assert_string_equal(s_(json_object_get(e, "metadata"), "b"), "2");
    json_decref(e);
    e = call("POST", "/v1/environments",
             "{\"name\":\"c\",\"config\":{\"type\":\"cloud\",\"networking\":{\"type\":\"limited\",\"allowed_hosts\":[\"x.com\"]},\"packages\":{\"pip\":[\"requests\"]}}}", 400);
    json_decref(e);
    snprintf(path, sizeof(path), "/v1/environments/%s/archive", id);
    json_decref(call("POST", path, NULL, 200));
    snprintf(path, sizeof(path), "/v1/environments/%s", id);
    e = call("POST", path, "{\"name\":\"y\"}", 400);
    assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "details"), "error_code"),
                        "environment_archived");
    json_decref(e);
    e = call("DELETE", path, NULL, 200);
    assert_string_equal(s_(e, "type"), "environment_deleted");
    json_decref(e);
    e = call("GET", path, NULL, 404);
    assert_string_equal(s_(json_object_get(e, "error"), "type"), "not_found_error");
    json_decref(e);
    free(id);
}

static void sessions_crud_and_status(void **state)
{
    (void)state;
    char path[256], body[512];
    char *a = new_agent("s"), *env = new_env();
    snprintf(body, sizeof(body),
             "{\"agent\":{\"type\":\"agent\",\"id\":\"%s\",\"version\":1},\"environment_id\":\"%s\","
             "\"metadata\":{\"m\":\"1\"},\"initial_events\":[{\"type\":\"user.message\",\"content\":"
             "[{\"type\":\"text\",\"text\":\"go\"}]}],\"resources\":[],\"vault_ids\":[]}",
             a, env);
    json_t *s = call("POST", "/v1/sessions", body, 200);
    assert_string_equal(s_(s, "status"), "running");
    char *sid = strdup(s_(s, "id"));
    assert_int_equal(json_array_size(json_object_get(s, "resources")), 0);
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    s = call("POST", path, "{\"title\":\"T\",\"metadata\":{\"m\":null}}", 200);
    assert_string_equal(s_(s, "title"), "T");
    assert_int_equal(json_object_size(json_object_get(s, "metadata")), 0);
    assert_string_equal(s_(s, "status"), "running");
    json_decref(s);
    s = call("GET", "/v1/sessions?statuses[]=running&limit=1000", NULL, 200);
    assert_true(json_array_size(json_object_get(s, "data")) >= 1);
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    s = call("POST", path, "{\"events\":[{\"type\":\"user.interrupt\"}]}", 200);
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    s = call("GET", path, NULL, 200);
    assert_string_equal(s_(s, "status"), "idle");
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?types[]=session.status_running&types[]=session.status_idle", sid);
    s = call("GET", path, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(s, "data")), 2);
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", sid);
    s = call("POST", path, NULL, 200);
    assert_string_equal(s_(s, "status"), "terminated");
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    json_decref(call("POST", path, "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]}", 400));
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    s = call("DELETE", path, NULL, 200);
    assert_string_equal(s_(s, "type"), "session_deleted");
    json_decref(s);
    json_decref(call("GET", path, NULL, 404));
    /* Archived environment: no new sessions. */
    snprintf(path, sizeof(path), "/v1/environments/%s/archive", env);
    json_decref(call("POST", path, NULL, 200));
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", a, env);
    json_decref(call("POST", "/v1/sessions", body, 400));
    snprintf(body, sizeof(body), "{\"agent\":\"agent_nope\",\"environment_id\":\"%s\"}", env);
    json_decref(call("POST", "/v1/sessions", body, 404));
    free(sid);
    free(a);
    free(env);
}

static void pagination_across_pages(void **state)
{
    (void)state;
    char *a = new_agent("pager"), *env = new_env(), *ids[7], path[512];
    for (int i = 0; i < 7; i++)
        ids[i] = new_session(a, env);
    /* Newest first, 3 per page, filtered by agent: 3 + 3 + 1. */
    char page[128] = "";
    int seen = 0, pages = 0;
    char firstpage[3][64];
    char second_prev[128] = "";
    for (;;) {
        snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&limit=3%s%s", a, page[0] ? "&page=" : "", page);
        json_t *l = call("GET", path, NULL, 200);
        json_t *d = json_object_get(l, "data");
        pages++;
        for (size_t i = 0; i < json_array_size(d); i++) {
            assert_string_equal(s_(json_array_get(d, i), "id"), ids[6 - seen]);
            if (pages == 1)
                snprintf(firstpage[i], 64, "%s", s_(json_array_get(d, i), "id"));
            seen++;
        }
        if (pages == 1)
            assert_true(json_is_null(json_object_get(l, "prev_page")));
        if (pages == 2)
            snprintf(second_prev, sizeof(second_prev), "%s", s_(l, "prev_page"));
        json_t *np = json_object_get(l, "next_page");
        if (json_is_null(np)) {
            json_decref(l);
            break;
        }
        snprintf(page, sizeof(page), "%s", json_string_value(np));
        json_decref(l);
    }
    assert_int_equal(seen, 7);
    assert_int_equal(pages, 3);
    /* prev_page of page 2 gives page 1 back, in the same order. */
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&limit=3&page=%s", a, second_prev);
    json_t *l = call("GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    assert_int_equal(json_array_size(d), 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(s_(json_array_get(d, (size_t)i), "id"), firstpage[i]);
    assert_true(json_is_null(json_object_get(l, "prev_page")));
    json_decref(l);
    /* Ascending order. */
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&limit=100&order=asc", a);
    l = call("GET", path, NULL, 200);
    assert_string_equal(s_(json_array_get(json_object_get(l, "data"), 0), "id"), ids[0]);
    json_decref(l);
    json_decref(call("GET", "/v1/sessions?page=garbage", NULL, 400));
    json_decref(call("GET", "/v1/sessions?limit=0", NULL, 400));
    /* Event history pages: 7 messages (+1 status event) at 3 per page. */
    send_msg(S.port, ids[0], "m0");
    for (int i = 1; i < 7; i++) {
        char t[8];
        snprintf(t, sizeof(t), "m%d", i);
        send_msg(S.port, ids[0], t);
    }
    page[0] = '\0';
    int nev = 0;
    char last[64] = "";
    for (;;) {
        snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=3%s%s", ids[0], page[0] ? "&page=" : "", page);
        l = call("GET", path, NULL, 200);
        d = json_object_get(l, "data");
        for (size_t i = 0; i < json_array_size(d); i++) {
            const char *eid = s_(json_array_get(d, i), "id");
            assert_true(strcmp(eid, last) > 0 || strlen(eid) > strlen(last));
            snprintf(last, sizeof(last), "%s", eid);
            nev++;
        }
        if (json_is_null(json_object_get(l, "next_page"))) {
            json_decref(l);
            break;
        }
        snprintf(page, sizeof(page), "%s", s_(l, "next_page"));
        json_decref(l);
    }
    assert_int_equal(nev, 8);
    for (int i = 0; i < 7; i++)
        free(ids[i]);
    free(a);
    free(env);
}

static void raw_expect(const char *req, size_t len, int want_status)
{
    int fd = th_connect(S.port);
    char buf[8192];
    int st = 0;
    assert_true(fd >= 0);
    assert_int_equal(th_send_all(fd, req, len), 0);
    int n = th_read_until(fd, buf, sizeof(buf), "\r\n\r\n", 5000);
    assert_true(n > 0);
    sscanf(buf, "HTTP/1.1 %d", &st);
    assert_non_null(strstr(buf, "request-id: req_")); /* on every response */
    if (st != want_status)
        fprintf(stderr, "got: %s\n", buf);
    assert_int_equal(st, want_status);
    close(fd);
}

static void bad_input(void **state)
{
    (void)state;
    struct th_resp r;
    json_t *e = call("POST", "/v1/agents", "{\"name\":", 400);
    assert_string_equal(s_(json_object_get(e, "error"), "type"), "invalid_request_error");
    assert_non_null(s_(e, "request_id"));
    json_decref(e);
    json_decref(call("POST", "/v1/agents", "[1,2]", 400));
    json_decref(call("POST", "/v1/agents", "{\"name\":5,\"model\":\"m\"}", 400));
    json_decref(call("POST", "/v1/agents", "{\"name\":\"a\",\"model\":\"m\",\"colour\":\"red\"}", 400));
    json_decref(call("POST", "/v1/agents", "{\"name\":\"a\",\"name\":\"b\",\"model\":\"m\"}", 400));
    json_decref(call("POST", "/v1/agents", "{\"model\":\"m\"}", 400));
    json_decref(call("POST", "/v1/agents", "{\"name\":\"a\",\"model\":\"m\",\"metadata\":{\"k\":1}}", 400));
    json_decref(call("POST", "/v1/agents", "{\"name\":\"a\",\"model\":{\"id\":\"m\",\"effort\":\"extreme\"}}", 400));
    json_decref(call("POST", "/v1/sessions", "{\"agent\":7,\"environment_id\":\"e\"}", 400));
    /* Invalid UTF-8 inside a JSON string. */
    json_decref(call("POST", "/v1/agents", "{\"name\":\"\xc3\x28\",\"model\":\"m\"}", 400));
    json_decref(call("GET", "/v1/nothing", NULL, 404));
    json_decref(call("PUT", "/v1/agents", NULL, 405));
    assert_int_equal(th_http(S.port, "GET", "/v1/agents", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    th_resp_free(&r);
    assert_int_equal(th_http(S.port, "GET", "/v1/agents", "sk-wrong", NULL, &r), 0);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "authentication_error"));
    th_resp_free(&r);
    /* Bearer works as the SDK sends it. */
    static const char bearer[] = "GET /v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-acme\r\n\r\n";
    raw_expect(bearer, sizeof(bearer) - 1, 200);
    /* A huge body: refused from Content-Length before it is read. */
    char *big = malloc(200000);
    memset(big, 'a', 199999);
    big[0] = '"';
    big[199998] = '"';
    big[199999] = '\0';
    assert_int_equal(th_http(S.port, "POST", "/v1/agents", KEY, big, &r), 0);
    assert_int_equal(r.status, 413);
    th_resp_free(&r);
    free(big);
    /* Huge chunked body: cut at the limit while streaming. */
    {
        int fd = th_connect(S.port);
        char buf[4096];
        static const char h[] = "POST /v1/agents HTTP/1.1\r\nHost: x\r\nx-api-key: sk-acme\r\n"
                                "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n";
        th_send_all(fd, h, sizeof(h) - 1);
        char chunk[8192 + 16];
        int cl = snprintf(chunk, sizeof(chunk), "2000\r\n");
        memset(chunk + cl, 'x', 8192);
        memcpy(chunk + cl + 8192, "\r\n", 2);
        for (int i = 0; i < 20; i++)
            if (th_send_all(fd, chunk, (size_t)cl + 8194) < 0)
                break;
        th_read_until(fd, buf, sizeof(buf), "\r\n\r\n", 5000);
        assert_non_null(strstr(buf, "413"));
        close(fd);
    }
    /* Huge header block. */
    char *hh = malloc(40000);
    int n = snprintf(hh, 40000, "GET /v1/agents HTTP/1.1\r\nX-Big: ");
    memset(hh + n, 'b', 30000);
    n += 30000;
    n += snprintf(hh + n, 40000 - (size_t)n, "\r\n\r\n");
    raw_expect(hh, (size_t)n, 431);
    free(hh);
    static const char garbage[] = "HELLO THERE\r\n\r\n";
    raw_expect(garbage, sizeof(garbage) - 1, 400);
    static const char smuggle[] = "POST /v1/agents HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    raw_expect(smuggle, sizeof(smuggle) - 1, 400);
    /* Chunked bodies are fine. */
    static const char chunked[] =
        "POST /v1/agents HTTP/1.1\r\nHost: x\r\nx-api-key: sk-acme\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n10\r\n{\"name\":\"chunk\",\r\n1b\r\n\"model\":\"claude-haiku-4-5\"}\r\n0\r\n\r\n";
    raw_expect(chunked, sizeof(chunked) - 1, 200);
    /* The server still serves. */
    json_decref(call("GET", "/v1/agents?limit=1", NULL, 200));
}

static void keepalive_and_pipelining(void **state)
{
    (void)state;
    int fd = th_connect(S.port);
    char buf[65536];
    static const char three[] =
        "GET /v1/agents?limit=1 HTTP/1.1\r\nHost: x\r\nx-api-key: sk-acme\r\n\r\n"
        "GET /v1/nope HTTP/1.1\r\nHost: x\r\nx-api-key: sk-acme\r\n\r\n"
        "GET /v1/environments?limit=1 HTTP/1.1\r\nHost: x\r\nx-api-key: sk-acme\r\nConnection: close\r\n\r\n";
    assert_int_equal(th_send_all(fd, three, sizeof(three) - 1), 0);
    int n = th_read_all(fd, buf, sizeof(buf), 5000);
    assert_true(n > 0);
    char *p1 = strstr(buf, "HTTP/1.1 200");
    char *p2 = p1 ? strstr(p1 + 1, "HTTP/1.1 404") : NULL;
    char *p3 = p2 ? strstr(p2 + 1, "HTTP/1.1 200") : NULL;
    assert_non_null(p3);
    close(fd);
}

static void slowloris_is_cut_off(void **state)
{
    (void)state;
    int fd = th_connect(S.port);
    char buf[4096];
    time_t t0 = time(NULL);
    th_send_all(fd, "GET /v1/agents HTTP/1.1\r\n", 25);
    /* Others are served meanwhile. */
    json_decref(call("GET", "/v1/agents?limit=1", NULL, 200));
    for (int i = 0; i < 3; i++) {
        if (th_send_all(fd, "X", 1) < 0)
            break;
        usleep(400000);
    }
    int n = th_read_all(fd, buf, sizeof(buf), 5000);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "408"));
    assert_true(time(NULL) - t0 <= 4);
    close(fd);
}

/* SSE: parse "id: sevt_..." lines from a buffer into ids. */
static int sse_ids(const char *buf, char ids[][64], int max)
{
    int n = 0;
    for (const char *p = buf; (p = strstr(p, "\nid: ")) && n < max; p++) {
        sscanf(p + 5, "%63s", ids[n]);
        n++;
    }
    return n;
}

/* Bytes that arrived with the stream's headers (events can share the
 * first segment), handed to the first sread() on that fd. */
static int carry_fd = -1;
static char carry[4096];
static size_t carry_len;

static int sread(int fd, char *buf, size_t cap, const char *needle, int ms)
{
    size_t have = 0;
    if (fd == carry_fd && carry_len) {
        have = carry_len < cap - 1 ? carry_len : cap - 1;
        memcpy(buf, carry, have);
        carry_len = 0;
    }
    buf[have] = '\0';
    if (needle && strstr(buf, needle))
        return (int)have;
    return (int)have + th_read_until(fd, buf + have, cap - have, needle, ms);
}

static int open_stream(int port, const char *sid, const char *last_id)
{
    char req[512], buf[4096];
    int fd = th_connect(port);
    snprintf(req, sizeof(req),
             "GET /v1/sessions/%s/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-acme\r\n"
             "Accept: application/json\r\n%s%s%s\r\n",
             sid, last_id ? "Last-Event-ID: " : "", last_id ? last_id : "", last_id ? "\r\n" : "");
    th_send_all(fd, req, strlen(req));
    int n = th_read_until(fd, buf, sizeof(buf), ": connected\n\n", 5000);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    assert_non_null(strstr(buf, "text/event-stream"));
    char *rest = strstr(buf, ": connected\n\n") + 13;
    carry_fd = fd;
    carry_len = (size_t)(buf + n - rest);
    memcpy(carry, rest, carry_len);
    return fd;
}

static void sse_resume_without_gap_or_duplicate(void **state)
{
    (void)state;
    char *a = new_agent("sse"), *env = new_env(), *sid = new_session(a, env);
    static char buf[1 << 20];
    char ids[64][64], ids2[64][64], path[256];
    int fd = open_stream(S.port, sid, NULL);
    send_msg(S.port, sid, "one");
    send_msg(S.port, sid, "two");
    send_msg(S.port, sid, "three");
    sread(fd, buf, sizeof(buf), "three", 5000);
    usleep(50000);
    int n = sse_ids(buf, ids, 64);
    assert_int_equal(n, 4); /* 3 messages + status_running */
    close(fd);              /* disconnect mid-stream */
    send_msg(S.port, sid, "four");
    send_msg(S.port, sid, "five");
    fd = open_stream(S.port, sid, ids[n - 1]);
    sread(fd, buf, sizeof(buf), "five", 5000);
    int m = sse_ids(buf, ids2, 64);
    assert_int_equal(m, 2);
    close(fd);
    /* Together they are exactly the history, in order. */
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=100", sid);
    json_t *l = call("GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    assert_int_equal(json_array_size(d), (size_t)(n + m));
    for (int i = 0; i < n + m; i++)
        assert_string_equal(s_(json_array_get(d, (size_t)i), "id"), i < n ? ids[i] : ids2[i - n]);
    json_decref(l);
    /* Resuming from the very first event replays the rest. */
    fd = open_stream(S.port, sid, ids[0]);
    sread(fd, buf, sizeof(buf), "five", 5000);
    assert_int_equal(sse_ids(buf, ids2, 64), n + m - 1);
    close(fd);
    /* Deleting the session ends open streams. */
    fd = open_stream(S.port, sid, NULL);
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_decref(call("DELETE", path, NULL, 200));
    int got = sread(fd, buf, sizeof(buf), NULL, 5000);
    assert_true(got > 0);
    assert_non_null(strstr(buf, "session.deleted"));
    close(fd);
    free(a);
    free(env);
    free(sid);
}

static void two_schedulers_one_session(void **state)
{
    (void)state;
    struct th_sched b;
    static char buf[65536];
    char path[256];
    assert_int_equal(th_sched_start(&b, R.port, "--rate-create", "0", "--rate-read", "0", (char *)NULL), 0);
    char *a = new_agent("two"), *env = new_env(), *sid = new_session(a, env);
    int fd = open_stream(b.port, sid, NULL); /* stream from B */
    send_msg(S.port, sid, "via-A");          /* write through A */
    sread(fd, buf, sizeof(buf), "via-A", 5000);
    assert_non_null(strstr(buf, "via-A"));
    send_msg(b.port, sid, "via-B");
    sread(fd, buf, sizeof(buf), "via-B", 5000);
    assert_non_null(strstr(buf, "via-B"));
    close(fd);
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    assert_int_equal(th_http(b.port, "GET", path, KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "via-A"));
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&b), 0);
    free(a);
    free(env);
    free(sid);
}

static void slow_reader_cut_off_then_resumes(void **state)
{
    (void)state;
    struct th_sched c;
    assert_int_equal(th_sched_start(&c, R.port, "--rate-create", "0", "--rate-read", "0",
                                    "--sse-soft-limit", "4096", "--sse-hard-limit", "65536",
                                    "--sse-soft-seconds", "1", (char *)NULL), 0);
    char *a = new_agent("slow"), *env = new_env(), *sid = new_session(a, env);
    char path[256];
    int fd = open_stream(c.port, sid, NULL);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    /* ~6 MB of events that the client does not read. */
    static char text[60000];
    memset(text, 'z', sizeof(text) - 1);
    for (int i = 0; i < 100; i++)
        send_msg(S.port, sid, text);
    sleep(3);
    /* Drain what the kernel holds: the server has closed the stream. */
    static char buf[16 << 20];
    int n = sread(fd, buf, sizeof(buf), NULL, 5000);
    close(fd);
    assert_true(n > 0);
    char (*ids)[64] = calloc(256, 64);
    int got = sse_ids(buf, ids, 256);
    assert_true(got < 101); /* cut off before the end */
    /* Only complete events count: the last id may belong to a torn event. */
    const char *last_complete = NULL;
    char lastbuf[64] = "";
    for (int i = 0; i < got; i++) {
        char needle[96];
        snprintf(needle, sizeof(needle), "\"id\":\"%s\"", ids[i]);
        const char *p = strstr(buf, needle);
        if (p && strstr(p, "\n\n")) {
            snprintf(lastbuf, sizeof(lastbuf), "%s", ids[i]);
            last_complete = lastbuf;
        }
    }
    int complete = 0;
    for (int i = 0; i < got; i++) {
        complete++;
        if (!strcmp(ids[i], lastbuf))
            break;
    }
    assert_non_null(last_complete);
    /* Resume: the rest arrives, no gap, no duplicate. */
    fd = open_stream(c.port, sid, last_complete);
    int total = 0;
    char (*ids2)[64] = calloc(256, 64);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    json_t *l = call("GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    const char *final_id = s_(json_array_get(d, json_array_size(d) - 1), "id");
    n = sread(fd, buf, sizeof(buf), final_id, 10000);
    usleep(100000);
    total = sse_ids(buf, ids2, 256);
    assert_int_equal(complete + total, (int)json_array_size(d));
    for (int i = 0; i < total; i++)
        assert_string_equal(ids2[i], s_(json_array_get(d, (size_t)(complete + i)), "id"));
    json_decref(l);
    close(fd);
    free(ids);
    free(ids2);
    assert_int_equal(th_sched_stop(&c), 0);
    free(a);
    free(env);
    free(sid);
}

static void rate_limits_shared_across_processes(void **state)
{
    (void)state;
    struct th_sched d, e;
    struct th_resp r;
    char v[32];
    assert_int_equal(th_sched_start(&d, R.port, "--api-key", "gamma:sk-gamma", "--rate-create", "3",
                                    "--rate-read", "4", (char *)NULL), 0);
    assert_int_equal(th_sched_start(&e, R.port, "--api-key", "gamma:sk-gamma", "--rate-create", "3",
                                    "--rate-read", "4", (char *)NULL), 0);
    /* Align to a fresh minute window if the current one is about to roll. */
    if (time(NULL) % 60 > 55)
        sleep(6);
    int ports[] = {d.port, e.port, d.port};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(th_http(ports[i], "POST", "/v1/vaults", "sk-gamma", "{\"display_name\":\"v\"}", &r), 0);
        assert_int_equal(r.status, 200);
        th_resp_free(&r);
    }
    assert_int_equal(th_http(e.port, "POST", "/v1/vaults", "sk-gamma", "{\"display_name\":\"v\"}", &r), 0);
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.body, "rate_limit_error"));
    assert_int_equal(th_resp_header(&r, "retry-after", v, sizeof(v)), 0);
    assert_true(atoi(v) >= 1 && atoi(v) <= 60);
    th_resp_free(&r);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(th_http(ports[i % 2], "GET", "/v1/vaults", "sk-gamma", NULL, &r), 0);
        assert_int_equal(r.status, 200);
        th_resp_free(&r);
    }
    assert_int_equal(th_http(d.port, "GET", "/v1/vaults", "sk-gamma", NULL, &r), 0);
    assert_int_equal(r.status, 429);
    th_resp_free(&r);
    /* Another organization is not affected. */
    assert_int_equal(th_http(d.port, "GET", "/v1/vaults", "sk-beta", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&d), 0);
    assert_int_equal(th_sched_stop(&e), 0);
}

/* /v1/sandboxes has limits of its own: a harness opening sandboxes does
 * not eat the organization's create budget, nor the other way round. */
static void sandbox_limits_apart_from_creates(void **state)
{
    (void)state;
    struct th_sched d;
    struct th_resp r;
    assert_int_equal(th_sched_start(&d, R.port, "--api-key", "delta:sk-delta", "--rate-create", "2",
                                    "--rate-read", "0", "--rate-sandbox-create", "4",
                                    "--rate-sandbox", "3", (char *)NULL), 0);
    if (time(NULL) % 60 > 50)
        sleep(11);
    /* Refused by the handler (400), after the limiter counted them. */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(th_http(d.port, "POST", "/v1/sandboxes", "sk-delta", "{}", &r), 0);
        assert_int_equal(r.status, 400);
        th_resp_free(&r);
    }
    assert_int_equal(th_http(d.port, "POST", "/v1/sandboxes", "sk-delta", "{}", &r), 0);
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.body, "4 sandbox create requests per minute"));
    th_resp_free(&r);
    /* The create budget is untouched... */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(th_http(d.port, "POST", "/v1/vaults", "sk-delta", "{\"display_name\":\"v\"}", &r), 0);
        assert_int_equal(r.status, 200);
        th_resp_free(&r);
    }
    assert_int_equal(th_http(d.port, "POST", "/v1/vaults", "sk-delta", "{\"display_name\":\"v\"}", &r), 0);
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.body, "2 create requests per minute"));
    th_resp_free(&r);
    /* ...and the other sandbox requests count apart again. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(th_http(d.port, "GET", "/v1/sandboxes/sbx_none", "sk-delta", NULL, &r), 0);
        assert_int_equal(r.status, 404);
        th_resp_free(&r);
    }
    assert_int_equal(th_http(d.port, "GET", "/v1/sandboxes/sbx_none", "sk-delta", NULL, &r), 0);
    assert_int_equal(r.status, 429);
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&d), 0);
}

/* The vault key is its own: a scheduler with another API key opens what
 * the first sealed; a rotation re-seals with the new key (the old one
 * still opens meanwhile); a wrong key says which key the value needs. */
static void vault_key_survives_api_keys_and_rotates(void **state)
{
    (void)state;
    char path[256], k1[300], k2[300], k3[300], out[4096];
    struct th_sched s2;
    char *dir = th_tmpdir("vaultkey");
    snprintf(k1, sizeof(k1), "%s/k1", dir);
    snprintf(k2, sizeof(k2), "%s/k2", dir);
    snprintf(k3, sizeof(k3), "%s/k3", dir);
    assert_int_equal(th_sched_start(&s2, R.port, "--vault-key-file", k1, NULL), 0);
    /* Made on first start: 64 hex digits, readable by root only. */
    struct stat st;
    assert_int_equal(stat(k1, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    struct th_resp r;
    assert_int_equal(th_http(s2.port, "POST", "/v1/vaults", KEY, "{\"display_name\":\"vk\"}", &r), 0);
    json_t *v = json_loads(r.body, 0, NULL);
    th_resp_free(&r);
    char *vid = strdup(s_(v, "id"));
    json_decref(v);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", vid);
    assert_int_equal(th_http(s2.port, "POST", path, KEY,
                             "{\"auth\":{\"type\":\"environment_variable\",\"secret_name\":\"T\","
                             "\"secret_value\":\"s1\",\"networking\":{\"type\":\"unrestricted\"}}}",
                             &r), 0);
    assert_int_equal(r.status, 200);
    v = json_loads(r.body, 0, NULL);
    th_resp_free(&r);
    char *cid = strdup(s_(v, "id"));
    json_decref(v);
    th_sh(out, sizeof(out), "redis-cli -p %d HGET 'wp:obj:{acme}:%s' sealed", R.port, cid);
    assert_int_equal(strncmp(out, "v2:", 3), 0);
    assert_int_equal(th_sched_stop(&s2), 0);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", vid, cid);
    const char *upd = "{\"auth\":{\"type\":\"environment_variable\",\"secret_value\":\"s2\"}}";

    /* Another API key added: the secrets still open (update reads them). */
    assert_int_equal(th_sched_start(&s2, R.port, "--vault-key-file", k1, "--api-key", "gamma:sk-g",
                                    NULL), 0);
    assert_int_equal(th_http(s2.port, "POST", path, KEY, upd, &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&s2), 0);

    /* A new key with the old as previous: the rotation opens each value
     * with the old one and seals it with the new. */
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "%s/warmpool-scheduler --redis 127.0.0.1:%d --vault-key-file %s "
             "--vault-key-previous-file %s --rotate-vault-key", th_build_dir(), R.port, k2, k1);
    assert_int_equal(th_sh(out, sizeof(out), "%s", cmd), 0);
    assert_non_null(strstr(out, "\"resealed\":1"));
    assert_non_null(strstr(out, "\"failed\":0"));
    /* Now the new key alone opens it. */
    assert_int_equal(th_sched_start(&s2, R.port, "--vault-key-file", k2, NULL), 0);
    assert_int_equal(th_http(s2.port, "POST", path, KEY, upd, &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&s2), 0);

    /* A wrong key: a clear error naming the key the value needs. */
    assert_int_equal(th_sched_start(&s2, R.port, "--vault-key-file", k3, NULL), 0);
    assert_int_equal(th_http(s2.port, "POST", path, KEY, upd, &r), 0);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(r.body, "sealed with vault key"));
    assert_non_null(strstr(r.body, "vault_key_mismatch"));
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&s2), 0);
    /* A damaged key file is refused at start. */
    th_sh(out, sizeof(out), "echo nothex > %s", k3);
    assert_int_equal(th_sched_start(&s2, R.port, "--vault-key-file", k3, NULL), -1);
    free(vid);
    free(cid);
    th_rmtree(dir);
    free(dir);
}

static void vault_secrets_never_returned(void **state)
{
    (void)state;
    char path[256];
    json_t *v = call("POST", "/v1/vaults", "{\"display_name\":\"vault\"}", 200);
    char *vid = strdup(s_(v, "id"));
    json_decref(v);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", vid);
    v = call("POST", path,
             "{\"auth\":{\"type\":\"environment_variable\",\"secret_name\":\"TOKEN\",\"secret_value\":\"hunter2\","
             "\"networking\":{\"type\":\"unrestricted\"}}}", 200);
    char *cid = strdup(s_(v, "id"));
    json_t *auth = json_object_get(v, "auth");
    assert_null(json_object_get(auth, "secret_value"));
    assert_string_equal(s_(auth, "secret_name"), "TOKEN");
    json_decref(v);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", vid, cid);
    v = call("POST", path, "{\"auth\":{\"type\":\"environment_variable\",\"secret_value\":\"hunter3\"}}", 200);
    json_decref(v);
    json_decref(call("POST", path, "{\"auth\":{\"type\":\"static_bearer\",\"token\":\"x\"}}", 400));
    struct th_resp r;
    assert_int_equal(th_http(S.port, "GET", path, KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body, "hunter"));
    th_resp_free(&r);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", vid);
    assert_int_equal(th_http(S.port, "GET", path, KEY, NULL, &r), 0);
    assert_null(strstr(r.body, "hunter"));
    assert_non_null(strstr(r.body, cid));
    th_resp_free(&r);
    /* In Redis the secret is sealed, not stored in clear. */
    char out[4096];
    th_sh(out, sizeof(out), "redis-cli -p %d HGETALL 'wp:obj:{acme}:%s'", R.port, cid);
    assert_null(strstr(out, "hunter"));
    assert_non_null(strstr(out, "sealed"));
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", vid, cid);
    json_decref(call("DELETE", path, NULL, 200));
    json_decref(call("GET", path, NULL, 404));
    /* Deleting a vault deletes its credentials. */
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", vid);
    v = call("POST", path, "{\"auth\":{\"type\":\"static_bearer\",\"mcp_server_url\":\"https://m\",\"token\":\"t\"}}", 200);
    free(cid);
    cid = strdup(s_(v, "id"));
    json_decref(v);
    snprintf(path, sizeof(path), "/v1/vaults/%s", vid);
    v = call("DELETE", path, NULL, 200);
    assert_string_equal(s_(v, "type"), "vault_deleted");
    json_decref(v);
    th_sh(out, sizeof(out), "redis-cli -p %d EXISTS 'wp:obj:{acme}:%s'", R.port, cid);
    assert_int_equal(atoi(out), 0);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", vid, cid);
    json_decref(call("GET", path, NULL, 404));
    free(vid);
    free(cid);
}

static void graceful_drain_on_sigterm(void **state)
{
    (void)state;
    struct th_sched d;
    char buf[4096];
    assert_int_equal(th_sched_start(&d, R.port, (char *)NULL), 0);
    char *a = new_agent("drain"), *env = new_env(), *sid = new_session(a, env);
    int fd = open_stream(d.port, sid, NULL);
    int idle = th_connect(d.port);
    assert_int_equal(th_sched_stop(&d), 0); /* exits 0, promptly */
    assert_true(sread(fd, buf, sizeof(buf), NULL, 2000) >= 0);
    close(fd);
    close(idle);
    free(a);
    free(env);
    free(sid);
}


static json_t *callk(const char *key, const char *method, const char *path, const char *body, int want)
{
    struct th_resp r;
    assert_int_equal(th_http(S.port, method, path, key, body, &r), 0);
    if (r.status != want)
        fprintf(stderr, "%s %s -> %d %s\n", method, path, r.status, r.body);
    assert_int_equal(r.status, want);
    json_t *j = json_loads(r.body, JSON_DECODE_ANY, NULL);
    assert_non_null(j);
    th_resp_free(&r);
    return j;
}

static void work_queue(void **state)
{
    (void)state;
    char path[512], body[256], ek[128], hb[128];
    char *a = new_agent("wq");
    json_t *e = call("POST", "/v1/environments", "{\"name\":\"sh\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    char *env = strdup(s_(e, "id"));
    json_decref(e);
    snprintf(path, sizeof(path), "/v1/environments/%s/keys", env);
    e = call("POST", path, NULL, 200);
    snprintf(ek, sizeof(ek), "%s", s_(e, "key"));
    json_decref(e);
    /* Empty queue: JSON null, also after blocking ~300 ms. */
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll", env);
    e = callk(ek, "GET", path, NULL, 200);
    assert_true(json_is_null(e));
    json_decref(e);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll?block_ms=300", env);
    json_decref(callk(ek, "GET", path, NULL, 200));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms >= 250 && ms < 1500);
    /* A client that leaves during a long poll (the SDK aborts its poll on
     * shutdown): the request must finish quietly (ASan checks the rest). */
    {
        char req[512];
        int fd = th_connect(S.port);
        snprintf(req, sizeof(req), "GET /v1/environments/%s/work/poll?block_ms=500 HTTP/1.1\r\n"
                 "Host: x\r\nAuthorization: Bearer %s\r\n\r\n", env, ek);
        th_send_all(fd, req, strlen(req));
        usleep(100000);
        close(fd);
        usleep(600000);
    }
    /* A session in the environment queues a work item. */
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", a, env);
    e = call("POST", "/v1/sessions", body, 200);
    char *sid = strdup(s_(e, "id"));
    json_decref(e);
    /* The environment key reaches that session, and no other of the
     * organization's: one in another environment is not found. */
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_decref(callk(ek, "GET", path, NULL, 200));
    json_t *oenv = call("POST", "/v1/environments", "{\"name\":\"osess\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", a, s_(oenv, "id"));
    json_t *osess = call("POST", "/v1/sessions", body, 200);
    snprintf(path, sizeof(path), "/v1/sessions/%s", s_(osess, "id"));
    json_decref(callk(ek, "GET", path, NULL, 404));
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", s_(osess, "id"));
    json_decref(callk(ek, "GET", path, NULL, 404));
    json_decref(callk(ek, "POST", path, "{\"events\":[{\"type\":\"user.message\",\"content\":"
                                        "[{\"type\":\"text\",\"text\":\"hi\"}]}]}", 404));
    snprintf(path, sizeof(path), "/v1/sessions/%s/events/stream", s_(osess, "id"));
    json_decref(callk(ek, "GET", path, NULL, 404));
    json_decref(callk(ek, "GET", "/v1/sessions/sesn_nope", NULL, 404));
    json_decref(osess);
    json_decref(oenv);
    /* Another organization's API key neither reads this queue nor takes
     * its item (the queue's keys carry only the environment). */
    snprintf(path, sizeof(path), "/v1/environments/%s/work/stats", env);
    json_decref(callk("sk-beta", "GET", path, NULL, 404));
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll", env);
    json_decref(callk("sk-beta", "GET", path, NULL, 404));
    snprintf(path, sizeof(path), "/v1/environments/%s/work/stats", env);
    e = call("GET", path, NULL, 200); /* the owner's API key does */
    assert_int_equal(json_integer_value(json_object_get(e, "depth")), 1);
    json_decref(e);
    e = callk(ek, "GET", path, NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(e, "depth")), 1);
    assert_non_null(s_(e, "oldest_queued_at"));
    json_decref(e);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll?block_ms=999", env);
    json_t *w = callk(ek, "GET", path, NULL, 200);
    assert_string_equal(s_(w, "type"), "work");
    assert_string_equal(s_(json_object_get(w, "data"), "id"), sid);
    assert_string_equal(s_(w, "state"), "queued");
    /* secret: base64url of {"sessions_token": "sk-wp-req-..."} */
    char out[512], tok[128] = "";
    assert_non_null(s_(w, "secret"));
    th_sh(out, sizeof(out), "python3 -c 'import base64,json,sys; s=sys.argv[1]; "
          "print(json.loads(base64.urlsafe_b64decode(s + \"=\" * (-len(s) %% 4)))[\"sessions_token\"])' %s",
          s_(w, "secret"));
    sscanf(out, "%127s", tok);
    assert_int_equal(strncmp(tok, "sk-wp-req-", 10), 0);
    char *wid = strdup(s_(w, "id"));
    json_decref(w);
    /* Not acked: reclaimed by a later poll. */
    usleep(20000);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll?reclaim_older_than_ms=10", env);
    w = callk(ek, "GET", path, NULL, 200);
    assert_string_equal(s_(w, "id"), wid);
    json_decref(w);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/ack", env, wid);
    w = callk(ek, "POST", path, NULL, 200);
    assert_string_equal(s_(w, "state"), "starting");
    assert_non_null(s_(w, "acknowledged_at"));
    json_decref(w);
    json_decref(callk(ek, "POST", path, NULL, 409)); /* ack twice */
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=NO_HEARTBEAT", env, wid);
    w = callk(ek, "POST", path, NULL, 200);
    assert_string_equal(s_(w, "type"), "work_heartbeat");
    assert_true(json_is_true(json_object_get(w, "lease_extended")));
    assert_string_equal(s_(w, "state"), "active");
    assert_int_equal(json_integer_value(json_object_get(w, "ttl_seconds")), 90);
    snprintf(hb, sizeof(hb), "%s", s_(w, "last_heartbeat"));
    json_decref(w);
    /* Replaying NO_HEARTBEAT now fails the precondition. */
    w = callk(ek, "POST", path, NULL, 412);
    json_t *det = json_object_get(json_object_get(w, "error"), "details");
    assert_string_equal(s_(det, "error_code"), "heartbeat_precondition_failed");
    assert_string_equal(s_(json_object_get(det, "current_state"), "last_heartbeat"), hb);
    json_decref(w);
    char enc[256];
    size_t k = 0;
    for (const char *p = hb; *p && k < sizeof(enc) - 4; p++) {
        if (*p == ':' || *p == '#' || *p == '+')
            k += (size_t)snprintf(enc + k, sizeof(enc) - k, "%%%02X", (unsigned char)*p);
        else
            enc[k++] = *p;
    }
    enc[k] = '\0';
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=%s", env, wid, enc);
    w = callk(ek, "POST", path, NULL, 200);
    assert_string_not_equal(s_(w, "last_heartbeat"), hb);
    json_decref(w);
    /* The worker reads its session with the environment key. */
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_decref(callk(ek, "GET", path, NULL, 200));
    /* The sessions token of the first poll was replaced by the reclaim's;
     * a token covers its own session only, and never the queue itself. */
    json_decref(callk(tok, "GET", path, NULL, 200));
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll", env);
    json_decref(callk(tok, "GET", path, NULL, 403));
    {
        char other[256];
        char *s2 = new_session(a, env);
        snprintf(other, sizeof(other), "/v1/sessions/%s", s2);
        json_decref(callk(tok, "GET", other, NULL, 403));
        free(s2);
        /* that session queued an item: take it out of the way */
        snprintf(path, sizeof(path), "/v1/environments/%s/work/poll", env);
        json_t *w2 = callk(ek, "GET", path, NULL, 200);
        snprintf(other, sizeof(other), "/v1/environments/%s/work/%s/stop", env, s_(w2, "id"));
        json_decref(callk(ek, "POST", other, "{\"force\":true}", 200));
        json_decref(w2);
    }
    /* ... but cannot create agents with it. */
    json_decref(callk(ek, "POST", "/v1/agents", "{\"name\":\"x\",\"model\":\"m\"}", 403));
    snprintf(path, sizeof(path), "/v1/environments/%s/work", env);
    w = callk(ek, "GET", path, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(w, "data")), 2);
    json_decref(w);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s", env, wid);
    w = call("POST", path, "{\"metadata\":{\"host\":\"w1\"}}", 200);
    assert_string_equal(s_(json_object_get(w, "metadata"), "host"), "w1");
    assert_string_equal(s_(w, "state"), "active");
    json_decref(w);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/stop", env, wid);
    w = callk(ek, "POST", path, "{\"force\":true}", 200);
    assert_string_equal(s_(w, "state"), "stopped");
    assert_non_null(s_(w, "stopped_at"));
    json_decref(w);
    struct th_resp r;
    assert_int_equal(th_http(S.port, "POST", path, ek, "{}", &r), 0);
    assert_int_equal(r.status, 409);
    char v[16];
    assert_int_equal(th_resp_header(&r, "x-should-retry", v, sizeof(v)), 0);
    th_resp_free(&r);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=x", env, wid);
    w = callk(ek, "POST", path, NULL, 200);
    assert_string_equal(s_(w, "state"), "stopped");
    json_decref(w);
    /* A dormant session (its work item stopped) is queued again by input. */
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll", env);
    e = callk(ek, "GET", path, NULL, 200);
    assert_true(json_is_null(e));
    json_decref(e);
    send_msg(S.port, sid, "wake up");
    w = callk(ek, "GET", path, NULL, 200);
    assert_string_equal(s_(json_object_get(w, "data"), "id"), sid);
    assert_string_not_equal(s_(w, "id"), wid);
    assert_string_equal(s_(w, "state"), "queued");
    json_decref(w);
    send_msg(S.port, sid, "again"); /* the new item is not stopped: no third one */
    snprintf(path, sizeof(path), "/v1/environments/%s/work/stats", env);
    e = callk(ek, "GET", path, NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(e, "depth")), 0);
    assert_int_equal(json_integer_value(json_object_get(e, "pending")), 1);
    json_decref(e);
    /* A key for another environment is refused. */
    json_t *e2 = call("POST", "/v1/environments", "{\"name\":\"sh2\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/poll", s_(e2, "id"));
    json_decref(callk(ek, "GET", path, NULL, 403));
    json_decref(e2);
    free(a);
    free(env);
    free(sid);
    free(wid);
}

static void survives_redis_connection_loss(void **state)
{
    (void)state;
    struct th_resp r;
    char out[256];
    /* Drop every client connection (the port stays ours: a restart would
     * release it to other test runs on the machine for a moment). */
    th_sh(out, sizeof(out), "redis-cli -p %d CLIENT KILL TYPE normal", R.port);
    assert_true(atoi(out) >= 1);
    /* Requests fail cleanly (503) until the reconnect, then succeed. */
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        assert_int_equal(th_http(S.port, "GET", "/v1/agents?limit=1", KEY, NULL, &r), 0);
        assert_true(r.status == 200 || r.status == 503);
        if (r.status == 503)
            assert_non_null(strstr(r.body, "\"type\":\"error\""));
        ok = r.status == 200;
        th_resp_free(&r);
        if (!ok)
            usleep(50000);
    }
    assert_true(ok);
    json_decref(call("POST", "/v1/vaults", "{\"display_name\":\"after-restart\"}", 200));
}

/* Issue 15 defect 10: memory stores are stored but nothing attaches them
 * yet, so a session that asks for one is refused with a clear
 * invalid_request_error and nothing is stored; an empty array is fine
 * (repositories and files work since issue 16: test_sched_egress,
 * test_sched_files). vault_ids are taken (the brain lends their MCP credentials) and
 * kept on the session. The shapes are the reference's (12.6, 14). */
static void refused_resources_check(json_t *e, const char *what)
{
    json_t *err = json_object_get(e, "error");
    assert_string_equal(s_(e, "type"), "error");
    assert_string_equal(s_(err, "type"), "invalid_request_error");
    assert_string_equal(s_(json_object_get(err, "details"), "error_code"), "not_supported_yet");
    assert_non_null(strstr(s_(err, "message"), "not supported yet"));
    assert_non_null(strstr(s_(err, "message"), what));
    json_decref(e);
}

static void session_resources(void **state)
{
    (void)state;
    char path[512], body[1024];
    char *a = new_agent("res"), *env = new_env();
    static const char *const refused[][2] = {
        {"\"resources\":[{\"type\":\"memory_store\",\"memory_store_id\":\"memstore_1\"}]", "memory_store"},
        {"\"resources\":[{\"type\":\"file\",\"file_id\":\"file_1\"},{\"type\":\"memory_store\","
         "\"memory_store_id\":\"memstore_1\"}],\"vault_ids\":[\"vlt_1\"]", "memory_store"},
    };
    /* Files are mounted (issue 16): one that is not the organization's is 404. */
    static const char *const no_file[] = {
        "\"resources\":[{\"type\":\"file\",\"file_id\":\"file_1\",\"mount_path\":null}]",
        "\"resources\":[{\"type\":\"file\",\"file_id\":\"file_1\"}],\"vault_ids\":[\"vlt_1\"]",
    };
    json_t *before = call("GET", "/v1/sessions?limit=1000", NULL, 200);
    size_t n0 = json_array_size(json_object_get(before, "data"));
    json_decref(before);
    for (size_t k = 0; k < sizeof(refused) / sizeof(refused[0]); k++) {
        snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\",%s}", a, env,
                 refused[k][0]);
        refused_resources_check(call("POST", "/v1/sessions", body, 400), refused[k][1]);
    }
    for (size_t k = 0; k < sizeof(no_file) / sizeof(no_file[0]); k++) {
        snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\",%s}", a, env,
                 no_file[k]);
        json_t *e = call("POST", "/v1/sessions", body, 404);
        assert_non_null(strstr(s_(json_object_get(e, "error"), "message"), "file_1"));
        json_decref(e);
    }
    json_t *after = call("GET", "/v1/sessions?limit=1000", NULL, 200);
    assert_int_equal(json_array_size(json_object_get(after, "data")), n0); /* nothing stored */
    json_decref(after);

    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[],\"vault_ids\":[]}", a, env);
    json_t *s = call("POST", "/v1/sessions", body, 200);
    char *sid = strdup(s_(s, "id"));
    assert_int_equal(json_array_size(json_object_get(s, "resources")), 0);
    assert_int_equal(json_array_size(json_object_get(s, "vault_ids")), 0);
    json_decref(s);
    json_t *v = call("POST", "/v1/vaults", "{\"display_name\":\"res\"}", 200);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"vault_ids\":[\"%s\"]}",
             a, env, s_(v, "id"));
    s = call("POST", "/v1/sessions", body, 200);
    assert_int_equal(json_array_size(json_object_get(s, "vault_ids")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(s, "vault_ids"), 0)),
                        s_(v, "id"));
    json_decref(s);
    json_decref(v);
    snprintf(path, sizeof(path), "/v1/sessions/%s/resources", sid);
    json_decref(call("POST", path, "{\"type\":\"file\",\"file_id\":\"file_9\"}", 404));
    json_decref(call("POST", path, "{\"type\":\"github_repository\",\"url\":\"x\"}", 400));
    json_t *r = call("GET", path, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(r, "data")), 0);
    json_decref(r);
    snprintf(path, sizeof(path), "/v1/sessions/%s/resources/sesrsc_none", sid);
    json_decref(call("GET", path, NULL, 404));
    free(a); free(env); free(sid);
}

static void connection_limit(void **state)
{
    (void)state;
    struct th_sched d;
    struct th_resp r;
    char buf[1024];
    assert_int_equal(th_sched_start(&d, R.port, "--max-conns", "2", (char *)NULL), 0);
    int a = th_connect(d.port), b = th_connect(d.port);
    usleep(100000);
    int c = th_connect(d.port);
    int n = th_read_all(c, buf, sizeof(buf), 3000);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "503"));
    assert_non_null(strstr(buf, "overloaded_error"));
    close(c);
    close(a);
    usleep(100000);
    assert_int_equal(th_http(d.port, "GET", "/v1/agents?limit=1", KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
    close(b);
    assert_int_equal(th_sched_stop(&d), 0);
}

/* Nothing is held for a client that cannot authenticate: the key is
 * checked once the head is in, before any body byte is read; a token
 * Redis has not checked yet gets a small body; one address gets at most
 * --max-conns-per-addr connections. */
static void auth_before_body_and_per_address_limit(void **state)
{
    (void)state;
    char buf[2048], req[512];
    static const char *const keys[] = { NULL, "sk-wrong", "wpek_unchecked" };
    static const char *const want[] = { "401", "401", "413" };
    static const char *const lens[] = { "1000", "1000", "2000000" };
    struct th_sched big; /* bodies up to 4 MiB for configured keys */
    assert_int_equal(th_sched_start(&big, R.port, "--max-body", "4194304", (char *)NULL), 0);
    for (int i = 0; i < 3; i++) {
        int fd = th_connect(big.port);
        /* A body announced, none sent: a server that waits for it would
         * answer only at its header timeout (10 s). */
        int n = snprintf(req, sizeof(req),
                         "POST /v1/agents HTTP/1.1\r\nHost: x\r\n%s%s%sContent-Type: application/json\r\n"
                         "Content-Length: %s\r\n\r\n",
                         keys[i] ? "x-api-key: " : "", keys[i] ? keys[i] : "", keys[i] ? "\r\n" : "",
                         lens[i]);
        th_send_all(fd, req, (size_t)n);
        uint64_t t0 = wp_now_ns();
        int got = th_read_until(fd, buf, sizeof(buf), "\r\n\r\n", 3000);
        double secs = (double)(wp_now_ns() - t0) / 1e9;
        assert_true(got > 0);
        buf[got] = '\0';
        if (!strstr(buf, want[i]))
            fail_msg("key %s: want %s, got %s", keys[i] ? keys[i] : "(none)", want[i], buf);
        assert_true(secs < 2);
        close(fd);
    }
    /* A configured key sends a large body as before. */
    size_t bl = 2000000;
    char *body = malloc(bl + 1);
    int hl = snprintf(body, bl, "{\"name\":\"big\",\"model\":\"claude-x\",\"system\":\"");
    memset(body + hl, 'a', bl - (size_t)hl - 2);
    memcpy(body + bl - 2, "\"}", 3);
    struct th_resp r;
    assert_int_equal(th_http(big.port, "POST", "/v1/agents", KEY, body, &r), 0);
    assert_int_not_equal(r.status, 413);
    assert_int_not_equal(r.status, 401);
    th_resp_free(&r);
    free(body);
    assert_int_equal(th_sched_stop(&big), 0);

    struct th_sched d;
    assert_int_equal(th_sched_start(&d, R.port, "--max-conns-per-addr", "2", (char *)NULL), 0);
    int a = th_connect(d.port), b = th_connect(d.port);
    usleep(100000);
    int c = th_connect(d.port);
    int n = th_read_all(c, buf, sizeof(buf) - 1, 3000);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "503"));
    close(c);
    close(a);
    close(b);
    assert_int_equal(th_sched_stop(&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(agents_crud),
        cmocka_unit_test(environments_crud),
        cmocka_unit_test(sessions_crud_and_status),
        cmocka_unit_test(pagination_across_pages),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(keepalive_and_pipelining),
        cmocka_unit_test(slowloris_is_cut_off),
        cmocka_unit_test(sse_resume_without_gap_or_duplicate),
        cmocka_unit_test(two_schedulers_one_session),
        cmocka_unit_test(slow_reader_cut_off_then_resumes),
        cmocka_unit_test(rate_limits_shared_across_processes),
        cmocka_unit_test(sandbox_limits_apart_from_creates),
        cmocka_unit_test(vault_secrets_never_returned),
        cmocka_unit_test(vault_key_survives_api_keys_and_rotates),
        cmocka_unit_test(work_queue),
        cmocka_unit_test(session_resources),
        cmocka_unit_test(connection_limit),
        cmocka_unit_test(auth_before_body_and_per_address_limit),
        cmocka_unit_test(graceful_drain_on_sigterm),
        cmocka_unit_test(survives_redis_connection_loss),
    };
    return cmocka_run_group_tests_name("sched_api", tests, group_setup, group_teardown);
}
