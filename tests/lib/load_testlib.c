/* load_testlib.c - see load_testlib.h. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "load_testlib.h"
#include "sched_testlib.h"
#include "snaplib.h"
#include "base/timeutil.h"

static const char *str_(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* ---- a session's history ---- */

json_t *th_history(int port, const char *key, const char *sid)
{
    char path[160];
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    if (port <= 0 || th_http(port, "GET", path, key, NULL, &r) < 0)
        return NULL;
    json_t *o = r.status == 200 ? json_loads(r.body, 0, NULL) : NULL;
    th_resp_free(&r);
    json_t *d = json_incref(json_object_get(o, "data"));
    json_decref(o);
    return d;
}

int th_count_type(json_t *data, const char *type)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(data); i++)
        n += !strcmp(str_(json_array_get(data, i), "type"), type);
    return n;
}

int th_count_idle(json_t *data, const char *reason)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(data); i++) {
        json_t *e = json_array_get(data, i);
        n += !strcmp(str_(e, "type"), "session.status_idle") &&
             !strcmp(str_(json_object_get(e, "stop_reason"), "type"), reason);
    }
    return n;
}

int th_count_tool_errors(json_t *data)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(data); i++) {
        json_t *e = json_array_get(data, i);
        n += !strcmp(str_(e, "type"), "agent.tool_result") && json_is_true(json_object_get(e, "is_error"));
    }
    return n;
}

/* A history from any scheduler that answers, starting with the i-th. */
static json_t *history_any(struct th_load *l, int i)
{
    for (int k = 0; k < l->nports; k++) {
        json_t *h = th_history(l->ports[(i + k) % l->nports], l->key, l->s[i].sid);
        if (h)
            return h;
    }
    return NULL;
}

static int turns_ended(json_t *h)
{
    return th_count_idle(h, "end_turn") + th_count_idle(h, "retries_exhausted");
}

/* ---- the session load ---- */

/* POST a user message to any scheduler; 0 with its acknowledged id, or
 * -1 when none answered 200 within 30 s (nothing acknowledged). */
static int load_send(struct th_load *l, int s, char *id, size_t cap)
{
    char path[160], body[512];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", l->s[s].sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
             l->text ? l->text : "load round");
    for (int i = 0; i < 300; i++) {
        struct th_resp r;
        int port = l->ports[(s + i) % l->nports];
        if (port > 0 && th_http(port, "POST", path, l->key, body, &r) == 0) {
            json_t *o = r.status == 200 ? json_loads(r.body, 0, NULL) : NULL;
            const char *eid = json_string_value(json_object_get(json_array_get(json_object_get(o, "data"), 0), "id"));
            if (eid)
                snprintf(id, cap, "%s", eid);
            if (!eid)
                snprintf(l->last_refusal, sizeof(l->last_refusal), "%d %.200s", r.status, r.body ? r.body : "");
            json_decref(o);
            th_resp_free(&r);
            if (eid)
                return 0;
        }
        th_msleep(100);
    }
    return -1;
}

static void load_fail(struct th_load *l, const char *what, const char *sid, int n)
{
    snprintf(l->why, sizeof(l->why), "session %s: %s (turn %d)", sid, what, n);
    l->failed = 1;
}

static void *load_main(void *arg)
{
    struct th_load *l = arg;
    bool inflight[TH_LOAD_SESS] = { false };
    for (;;) {
        bool busy = false;
        for (int i = 0; i < l->nsess; i++) {
            struct th_load_sess *s = &l->s[i];
            if (!inflight[i]) {
                if (l->stop || s->nacked >= TH_LOAD_ACKS || (l->max_turns && s->nacked >= l->max_turns))
                    continue;
                uint64_t t = wp_now_ns();
                if (load_send(l, i, s->acked[s->nacked], sizeof(s->acked[0])) < 0) {
                    char why[300];
                    snprintf(why, sizeof(why), "no scheduler acknowledged input (last answer: %s)", l->last_refusal);
                    load_fail(l, why, s->sid, s->nacked);
                    return NULL;
                }
                s->sent_ns[s->nacked++] = t;
                inflight[i] = true;
            }
            busy = true;
            json_t *h = history_any(l, i);
            if (!h)
                continue;
            if (!l->tolerate_errors && (th_count_type(h, "session.error") > 0 || th_count_tool_errors(h) > 0)) {
                load_fail(l, th_count_tool_errors(h) ? "a tool call failed" : "session.error", s->sid, s->nacked);
                json_decref(h);
                return NULL;
            }
            int ended = turns_ended(h);
            json_decref(h);
            uint64_t now = wp_now_ns();
            if (ended >= s->nacked) {
                inflight[i] = false;
                s->ended = ended;
                l->turns++;
                if (l->fault_ns && !s->recovered_ns && s->sent_ns[s->nacked - 1] > l->fault_ns)
                    s->recovered_ns = now;
            } else if (now - s->sent_ns[s->nacked - 1] > (uint64_t)l->turn_timeout_s * 1000000000ull) {
                load_fail(l, "the turn did not end in time", s->sid, s->nacked);
                return NULL;
            }
        }
        if (l->stop && !busy)
            return NULL;
        th_msleep(150);
    }
}

/* ---- the /v1/sandboxes user ---- */

/* DELETE until a scheduler answers 200 or 404 (10 s): one that cannot
 * reach Redis answers 503 and keeps the sandbox (renewing it). */
static void sbx_delete(struct th_load *l, const char *id)
{
    char path[160];
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    for (int k = 0; k < 50; k++, th_msleep(200)) {
        int port = l->ports[k % l->nports];
        if (port <= 0 || th_http(port, "DELETE", path, l->key, NULL, &r) < 0)
            continue;
        int st = r.status;
        th_resp_free(&r);
        if (st == 200 || st == 404)
            return;
    }
    fprintf(stderr, "# DELETE %s: no scheduler deleted it\n", path);
}

static void *sbx_main(void *arg)
{
    struct th_load *l = arg;
    char id[96] = "", path[200], body[256];
    for (int k = 0; !l->stop; k++, th_msleep(200)) {
        int port = l->ports[k % l->nports];
        struct th_resp r;
        if (port <= 0)
            continue;
        if (!id[0]) {
            snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", l->sandbox_env);
            if (th_http(port, "POST", "/v1/sandboxes", l->key, body, &r) < 0)
                continue;
            json_t *o = r.status == 200 ? json_loads(r.body, 0, NULL) : NULL;
            if (o && json_string_value(json_object_get(o, "id"))) {
                snprintf(id, sizeof(id), "%s", str_(o, "id"));
                l->sbx_new++;
            }
            json_decref(o);
            th_resp_free(&r);
            continue;
        }
        uint64_t t = wp_now_ns();
        snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
        if (th_http(port, "POST", path, l->key, "{\"name\":\"bash\",\"input\":{\"command\":\"echo sbx-ok\"}}", &r) < 0)
            continue; /* that scheduler is down: another next time */
        bool ok = r.status == 200 && strstr(r.body, "sbx-ok") && !strstr(r.body, "\"is_error\":true");
        int st = r.status;
        th_resp_free(&r);
        if (ok) {
            l->sbx_ok++;
            if (l->fault_ns && !l->sbx_recovered_ns && t > l->fault_ns)
                l->sbx_recovered_ns = wp_now_ns();
            continue;
        }
        l->sbx_err++;
        fprintf(stderr, "# execute on %s: %d\n", id, st);
        if (st != 503 && st != 409) { /* gone (its node died): give it back, take another */
            sbx_delete(l, id);
            id[0] = '\0';
        }
    }
    if (id[0])
        sbx_delete(l, id);
    return NULL;
}

/* ---- the streams ---- */

struct stream_arg {
    struct th_load *l;
    int i;
};

static void stream_take(struct th_load_stream *st, char *block)
{
    char *idl = strstr(block, "id: "), *data = strstr(block, "data: ");
    if (!data)
        return; /* a comment (": connected") */
    json_t *j = json_loads(data + 6, JSON_DISABLE_EOF_CHECK, NULL);
    const char *eid = json_string_value(json_object_get(j, "id"));
    pthread_mutex_lock(&st->mu);
    if (eid) {
        if (st->nseen == st->cap) {
            st->cap = st->cap ? st->cap * 2 : 256;
            st->seen = realloc(st->seen, (size_t)st->cap * sizeof(*st->seen));
        }
        snprintf(st->seen[st->nseen++], sizeof(st->seen[0]), "%s", eid);
    }
    if (idl) {
        size_t n = strcspn(idl + 4, "\n");
        snprintf(st->last, sizeof(st->last), "%.*s", (int)(n < sizeof(st->last) ? n : sizeof(st->last) - 1), idl + 4);
    }
    pthread_mutex_unlock(&st->mu);
    json_decref(j);
}

/* One connection: 0 when it answered 200 (and later ended), -1 if not. */
static int stream_once(struct th_load *l, struct th_load_stream *st, const char *sid, int port, char *buf,
                       size_t cap)
{
    char req[768], last[96];
    int fd = th_connect(port);
    if (fd < 0)
        return -1;
    pthread_mutex_lock(&st->mu);
    snprintf(last, sizeof(last), "%s", st->last);
    pthread_mutex_unlock(&st->mu);
    int n = snprintf(req, sizeof(req),
                     "GET /v1/sessions/%s/events/stream HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\n"
                     "anthropic-beta: managed-agents-2026-04-01\r\n%s%s%s\r\n",
                     sid, l->key, last[0] ? "Last-Event-ID: " : "", last, last[0] ? "\r\n" : "");
    size_t len = 0;
    bool head = false;
    if (th_send_all(fd, req, (size_t)n) < 0) {
        close(fd);
        return -1;
    }
    while (!l->stop_streams) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int pr = poll(&p, 1, 200);
        if (pr == 0)
            continue;
        ssize_t r = pr > 0 ? read(fd, buf + len, cap - 1 - len) : -1;
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (!head) {
            char *end = strstr(buf, "\r\n\r\n");
            if (!end)
                continue;
            if (strncmp(buf, "HTTP/1.1 200", 12) != 0) {
                close(fd);
                return -1;
            }
            head = true;
            st->opens++;
            size_t used = (size_t)(end + 4 - buf);
            memmove(buf, buf + used, len - used + 1);
            len -= used;
        }
        char *sep;
        while ((sep = strstr(buf, "\n\n"))) {
            *sep = '\0';
            stream_take(st, buf);
            size_t used = (size_t)(sep + 2 - buf);
            memmove(buf, buf + used, len - used + 1);
            len -= used;
        }
        if (len == cap - 1)
            break; /* an event over the buffer: not ours */
    }
    close(fd);
    return head ? 0 : -1;
}

static void *stream_main(void *arg)
{
    struct stream_arg *a = arg;
    struct th_load *l = a->l;
    struct th_load_sess *s = &l->s[a->i];
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    for (int k = a->i; !l->stop_streams; k++) {
        int port = l->ports[k % l->nports];
        if (port <= 0 || stream_once(l, &s->st, s->sid, port, buf, cap) < 0)
            th_msleep(100);
    }
    free(buf);
    free(a);
    return NULL;
}

static void streams_stop(struct th_load *l)
{
    l->stop_streams = 1;
    for (int i = 0; i < l->nsess; i++)
        if (l->s[i].st.running) {
            pthread_join(l->s[i].st.thr, NULL);
            l->s[i].st.running = false;
        }
}

int th_load_start(struct th_load *l)
{
    if (!l->turn_timeout_s)
        l->turn_timeout_s = 60;
    for (int i = 0; i < l->nsess; i++) {
        struct stream_arg *a = malloc(sizeof(*a));
        *a = (struct stream_arg){ l, i };
        pthread_mutex_init(&l->s[i].st.mu, NULL);
        if (pthread_create(&l->s[i].st.thr, NULL, stream_main, a) != 0) {
            free(a);
            streams_stop(l);
            return -1;
        }
        l->s[i].st.running = true;
    }
    for (int i = 0; i < l->nsess; i++)
        for (int t = 0; t < 100 && l->s[i].st.opens == 0; t++)
            th_msleep(50);
    for (int i = 0; i < l->nsess; i++)
        if (l->s[i].st.opens == 0) {
            streams_stop(l);
            return -1;
        }
    pthread_create(&l->thr, NULL, load_main, l);
    if (l->sandbox_env)
        pthread_create(&l->sbx_thr, NULL, sbx_main, l);
    return 0;
}

static bool stream_has(struct th_load_stream *st, const char *id)
{
    bool has = false;
    pthread_mutex_lock(&st->mu);
    for (int k = st->nseen - 1; k >= 0 && !has; k--)
        has = !strcmp(st->seen[k], id);
    pthread_mutex_unlock(&st->mu);
    return has;
}

void th_load_stop(struct th_load *l)
{
    l->stop = 1;
    pthread_join(l->thr, NULL);
    if (l->sandbox_env)
        pthread_join(l->sbx_thr, NULL);
    /* Each stream catches up with its history's last event. */
    for (int i = 0; i < l->nsess; i++) {
        for (int t = 0; t < 50; t++) {
            json_t *h = history_any(l, i);
            const char *last = str_(json_array_get(h, json_array_size(h) - 1), "id");
            bool caught = h && stream_has(&l->s[i].st, last);
            json_decref(h);
            if (caught)
                break;
            th_msleep(200);
        }
    }
    streams_stop(l);
}

void th_load_free(struct th_load *l)
{
    for (int i = 0; i < l->nsess; i++) {
        free(l->s[i].st.seen);
        l->s[i].st.seen = NULL;
        pthread_mutex_destroy(&l->s[i].st.mu);
    }
}

static int seen_count(struct th_load_stream *st, const char *id)
{
    int c = 0;
    for (int k = 0; k < st->nseen; k++)
        c += !strcmp(st->seen[k], id);
    return c;
}

void th_load_check(struct th_load *l, int port, struct th_load_report *rep)
{
    memset(rep, 0, sizeof(*rep));
    uint64_t rec = 0;
    bool recovered = l->fault_ns != 0;
    for (int i = 0; i < l->nsess; i++) {
        struct th_load_sess *s = &l->s[i];
        json_t *h = th_history(port, l->key, s->sid);
        if (!h)
            h = history_any(l, i);
        if (!h) {
            fprintf(stderr, "# session %s: no history\n", s->sid);
            rep->lost += s->nacked;
            continue;
        }
        json_t *ids = json_object();
        size_t nh = json_array_size(h);
        rep->events += (int)nh;
        rep->acked += s->nacked;
        for (size_t k = 0; k < nh; k++) {
            json_t *e = json_array_get(h, k);
            const char *id = str_(e, "id");
            if (json_object_get(ids, id)) {
                fprintf(stderr, "# session %s: event %s twice in the history\n", s->sid, id);
                rep->dup++;
            }
            json_object_set_new(ids, id, json_true());
            if (!strcmp(str_(e, "type"), "session.error")) {
                rep->errors++;
                json_t *rs = json_object_get(json_object_get(e, "error"), "retry_status");
                rep->retrying += !strcmp(str_(rs, "type"), "retrying");
            }
            if (!strcmp(str_(e, "type"), "user.message")) {
                bool acked = false;
                for (int a = 0; a < s->nacked && !acked; a++)
                    acked = !strcmp(s->acked[a], id);
                rep->extra_input += !acked;
            }
        }
        for (int a = 0; a < s->nacked; a++)
            if (!json_object_get(ids, s->acked[a])) {
                fprintf(stderr, "# session %s: acknowledged event %s lost\n", s->sid, s->acked[a]);
                rep->lost++;
            }
        int exhausted = th_count_idle(h, "retries_exhausted");
        int unended = s->nacked - turns_ended(h);
        rep->exhausted += exhausted;
        rep->tool_errors += th_count_tool_errors(h);
        rep->unended += unended > 0 ? unended : 0;
        rep->sessions_failed += exhausted > 0 || unended > 0;
        /* The stream: every event from its first on, once. */
        struct th_load_stream *st = &s->st;
        rep->stream_resumes += st->opens > 0 ? st->opens - 1 : 0;
        size_t from = nh;
        for (size_t k = 0; st->nseen && k < nh && from == nh; k++)
            if (!strcmp(str_(json_array_get(h, k), "id"), st->seen[0]))
                from = k;
        if (st->nseen && from == nh) {
            fprintf(stderr, "# session %s: its stream's first event %s is not in the history\n", s->sid,
                    st->seen[0]);
            rep->stream_missing++;
        }
        for (size_t k = from; k < nh; k++) {
            const char *id = str_(json_array_get(h, k), "id");
            int c = seen_count(st, id);
            if (c == 0) {
                fprintf(stderr, "# session %s: stream never delivered %s (%s)\n", s->sid, id,
                        str_(json_array_get(h, k), "type"));
                rep->stream_missing++;
            } else if (c > 1) {
                fprintf(stderr, "# session %s: stream delivered %s %d times\n", s->sid, id, c);
                rep->stream_dup += c - 1;
            }
        }
        /* An event a stream delivered is acknowledged too: it must stay. */
        for (int k = 0; k < st->nseen; k++)
            if (!json_object_get(ids, st->seen[k])) {
                fprintf(stderr, "# session %s: its stream delivered %s, the history lost it\n", s->sid,
                        st->seen[k]);
                rep->lost++;
            }
        if (!s->recovered_ns)
            recovered = false;
        else if (s->recovered_ns - l->fault_ns > rec)
            rec = s->recovered_ns - l->fault_ns;
        json_decref(ids);
        json_decref(h);
    }
    if (l->sandbox_env && recovered) {
        if (!l->sbx_recovered_ns)
            recovered = false;
        else if (l->sbx_recovered_ns - l->fault_ns > rec)
            rec = l->sbx_recovered_ns - l->fault_ns;
    }
    rep->recover_s = recovered ? (double)rec / 1e9 : -1;
}
