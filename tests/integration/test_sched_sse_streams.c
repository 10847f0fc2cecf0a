/* test_sched_sse_streams.c - one scheduler holds 10 000 SSE streams, one
 * per session, on a handful of Redis connections (issue 15 defect 7: each
 * streamed session used to open its own, and 10 000 exhaust Redis's
 * default maxclients), and an event appended to every session reaches
 * every stream.
 *
 * WP_SSE_STREAMS=N changes the count (default 10000); WP_SSE_REPORT=FILE
 * appends one JSON line of figures (streams, Redis connections before and
 * while held, the scheduler's RSS) for bench/bench_sse_streams.sh. No
 * timing is asserted. */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "base/timeutil.h"
#include "lib/sched_testlib.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched S;
static int nstreams = 10000;

/* One keep-alive connection for the thousands of creates and appends
 * (a new connection each would fill loopback's ephemeral ports). */
static int ka_fd = -1;
static char ka_buf[1 << 16];
static size_t ka_have;

static int ka_call_once(const char *method, const char *path, const char *body, char *out,
                        size_t cap)
{
    char head[4096];
    size_t bl = body ? strlen(body) : 0;
    if (ka_fd < 0) {
        ka_fd = th_connect(S.port);
        ka_have = 0;
    }
    int hl = snprintf(head, sizeof(head),
                      "%s %s HTTP/1.1\r\nHost: x\r\nx-api-key: " KEY "\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                      method, path, bl, body ? body : "");
    /* One write: a head and body sent apart meet Nagle and delayed ACKs. */
    if (hl >= (int)sizeof(head) || th_send_all(ka_fd, head, (size_t)hl) < 0)
        return -1;
    char *end;
    while (!(end = memmem(ka_buf, ka_have, "\r\n\r\n", 4))) {
        ssize_t n = recv(ka_fd, ka_buf + ka_have, sizeof(ka_buf) - 1 - ka_have, 0);
        if (n <= 0)
            return -1;
        ka_have += (size_t)n;
    }
    ka_buf[ka_have] = '\0';
    int status = atoi(ka_buf + 9);
    const char *cl = strcasestr(ka_buf, "content-length:");
    size_t blen = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    size_t total = (size_t)(end + 4 - ka_buf) + blen;
    if (total >= sizeof(ka_buf))
        return -1;
    while (ka_have < total) {
        ssize_t n = recv(ka_fd, ka_buf + ka_have, sizeof(ka_buf) - 1 - ka_have, 0);
        if (n <= 0)
            return -1;
        ka_have += (size_t)n;
    }
    if (out) {
        size_t c = blen < cap - 1 ? blen : cap - 1;
        memcpy(out, end + 4, c);
        out[c] = '\0';
    }
    memmove(ka_buf, ka_buf + total, ka_have - total);
    ka_have -= total;
    return status;
}

/* Again on a new connection if the idle one was closed meanwhile. */
static int ka_call(const char *method, const char *path, const char *body, char *out, size_t cap)
{
    int st = ka_call_once(method, path, body, out, cap);
    if (st < 0) {
        close(ka_fd);
        ka_fd = -1;
        st = ka_call_once(method, path, body, out, cap);
    }
    return st;
}

static char *create_id(const char *path, const char *body)
{
    char out[8192];
    assert_int_equal(ka_call("POST", path, body, out, sizeof(out)), 200);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    char *id = strdup(json_string_value(json_object_get(j, "id")));
    json_decref(j);
    return id;
}

/* connected_clients from INFO clients. */
static int redis_clients(void)
{
    char out[4096];
    th_sh(out, sizeof(out), "redis-cli -p %d INFO clients", R.port);
    const char *p = strstr(out, "connected_clients:");
    return p ? atoi(p + 18) : -1;
}

static long rss_kb(int pid)
{
    char out[256];
    th_sh(out, sizeof(out), "awk '/^VmRSS:/ {print $2}' /proc/%d/status", pid);
    return atol(out);
}

static int group_setup(void **state)
{
    (void)state;
    const char *n = getenv("WP_SSE_STREAMS");
    if (n && atoi(n) > 0)
        nstreams = atoi(n);
    /* Each stream is a socket here and one in the scheduler; children
     * (redis, the scheduler) inherit the limit. */
    struct rlimit rl;
    rlim_t want = (rlim_t)nstreams + 4096;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < want) {
        struct rlimit up = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
        else
            fprintf(stderr, "# RLIMIT_NOFILE hard limit stays %llu: %s\n",
                    (unsigned long long)rl.rlim_max, strerror(errno));
    }
    rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (th_redis_start(&R, 0) < 0)
        return -1;
    char conns[32];
    snprintf(conns, sizeof(conns), "%d", nstreams + 1000);
    if (th_sched_start(&S, R.port, "--rate-create", "0", "--rate-read", "0", "--brain", "off",
                       "--max-conns", conns, "--max-conns-per-addr", conns, "--sse-keepalive", "60",
                       (char *)NULL) < 0) {
        th_redis_stop(&R);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (ka_fd >= 0)
        close(ka_fd);
    int st = th_sched_stop(&S);
    th_redis_stop(&R);
    return st == 0 ? 0 : -1;
}

static void many_streams_few_redis_connections(void **state)
{
    (void)state;
    char path[256], body[512];
    char *agent = create_id("/v1/agents", "{\"name\":\"fan\",\"model\":\"claude-sonnet-4-5\"}");
    char *env = create_id("/v1/environments", "{\"name\":\"fan\",\"config\":{\"type\":\"self_hosted\"}}");
    char (*sids)[64] = calloc((size_t)nstreams, sizeof(*sids));
    int *fds = calloc((size_t)nstreams, sizeof(int));
    assert_non_null(sids);
    assert_non_null(fds);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", agent, env);
    double t0 = wp_now_ms();
    for (int i = 0; i < nstreams; i++) {
        char *id = create_id("/v1/sessions", body);
        snprintf(sids[i], sizeof(sids[i]), "%s", id);
        free(id);
    }
    int before = redis_clients();
    double t1 = wp_now_ms();

    /* Open every stream; the headers and ": connected" come at once. */
    for (int i = 0; i < nstreams; i++) {
        char req[512], buf[2048];
        fds[i] = th_connect(S.port);
        assert_true(fds[i] >= 0);
        int l = snprintf(req, sizeof(req),
                         "GET /v1/sessions/%s/events/stream HTTP/1.1\r\nHost: x\r\n"
                         "x-api-key: " KEY "\r\n\r\n", sids[i]);
        assert_int_equal(th_send_all(fds[i], req, (size_t)l), 0);
        th_read_until(fds[i], buf, sizeof(buf), ": connected\n\n", 10000);
        if (!strstr(buf, ": connected\n\n"))
            fprintf(stderr, "stream %d: %s\n", i, buf);
        assert_non_null(strstr(buf, "HTTP/1.1 200"));
    }
    /* Every stream goes live (catch-up done, hub joined) within moments;
     * then count Redis's clients while all are held. */
    double t2 = wp_now_ms();
    usleep(500000);
    int during = redis_clients();
    long rss = rss_kb(S.pid);

    /* One event per session; every stream gets its own. */
    for (int i = 0; i < nstreams; i++) {
        snprintf(path, sizeof(path), "/v1/sessions/%s/events", sids[i]);
        snprintf(body, sizeof(body),
                 "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\","
                 "\"text\":\"ping-%d-end\"}]}]}", i);
        assert_int_equal(ka_call("POST", path, body, NULL, 0), 200);
    }
    int missing = 0;
    for (int i = 0; i < nstreams; i++) {
        char want[64], buf[8192];
        snprintf(want, sizeof(want), "ping-%d-end", i);
        th_read_until(fds[i], buf, sizeof(buf), want, 10000);
        if (!strstr(buf, want) && missing++ < 5)
            fprintf(stderr, "stream %d (%s) lacks %s: %.200s\n", i, sids[i], want, buf);
    }
    double t3 = wp_now_ms();
    int after = redis_clients();
    long rss_after = rss_kb(S.pid);
    int cap = (nstreams + 999) / 1000; /* --sse-keys-per-conn 1000 */
    printf("# streams=%d redis_clients_before=%d while_held=%d after_events=%d readers_max=%d "
           "sched_rss_kb_held=%ld sched_rss_kb_after=%ld missing=%d\n",
           nstreams, before, during, after, cap, rss, rss_after, missing);
    printf("# seconds: create %.1f, open streams %.1f, send and read one event each %.1f\n",
           (t1 - t0) / 1000, (t2 - t1) / 1000, (t3 - t2 - 500) / 1000);
    const char *rep = getenv("WP_SSE_REPORT");
    if (rep) {
        FILE *f = fopen(rep, "a");
        if (f) {
            fprintf(f, "{\"streams\":%d,\"redis_clients_before\":%d,\"redis_clients_held\":%d,"
                       "\"redis_clients_after_events\":%d,\"sched_rss_kb_held\":%ld,"
                       "\"sched_rss_kb_after_events\":%ld,\"missing\":%d}\n",
                    nstreams, before, during, after, rss, rss_after, missing);
            fclose(f);
        }
    }
    assert_int_equal(missing, 0);
    /* The streams add at most one connection per 1000 sessions. */
    assert_true(during - before <= cap);
    assert_true(after - before <= cap);
    for (int i = 0; i < nstreams; i++)
        close(fds[i]);
    /* Once they are gone the readers go too. */
    int left = 0;
    for (int t = 0; t < 100; t++) {
        left = redis_clients();
        if (left <= before)
            break;
        usleep(50000);
    }
    assert_true(left <= before);
    free(sids);
    free(fds);
    free(agent);
    free(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(many_streams_few_redis_connections),
    };
    return cmocka_run_group_tests_name("sched_sse_streams", tests, group_setup, group_teardown);
}
