/* test_sched_unit.c - scheduler/ pieces without sockets: the HTTP parser
 * wrapper, routing and query decoding, validation helpers, event
 * validation, sealing of vault secrets, configuration. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"
#include "lib/testlib.h"
#include "scheduler/sched_int.h"

static int feed_all(struct sched_http_parser *p, const char *s, size_t *used)
{
    return sched_http_parser_feed(p, s, strlen(s), used);
}

static void parser_simple_and_split(void **state)
{
    (void)state;
    struct sched_http_parser p;
    size_t used;
    assert_int_equal(sched_http_parser_init(&p, 4096, 1024), 0);
    const char *req = "POST /v1/agents?x=1 HTTP/1.1\r\nHost: h\r\nX-Api-Key: k1\r\n"
                      "Content-Length: 4\r\n\r\nbody";
    /* One byte at a time: names and values arrive in pieces. */
    size_t len = strlen(req), off = 0;
    int rc = SCHED_HTTP_MORE;
    char pend[512];
    size_t plen = 0;
    while (off < len) {
        pend[plen++] = req[off++];
        rc = sched_http_parser_feed(&p, pend, plen, &used);
        memmove(pend, pend + used, plen - used);
        plen -= used;
        if (rc != SCHED_HTTP_MORE)
            break;
    }
    assert_int_equal(rc, SCHED_HTTP_DONE);
    assert_string_equal(p.req.method, "POST");
    assert_string_equal(sched_http_url(&p.req), "/v1/agents?x=1");
    assert_string_equal(sched_http_header(&p.req, "x-api-key"), "k1");
    assert_null(sched_http_header(&p.req, "authorization"));
    assert_int_equal(p.req.body.len, 4);
    assert_memory_equal(p.req.body.data, "body", 4);
    assert_true(p.req.keep_alive);
    sched_http_parser_free(&p);
}

static void parser_pipelining_and_chunked(void **state)
{
    (void)state;
    struct sched_http_parser p;
    static const char two[] =
        "GET /a HTTP/1.1\r\n\r\n"
        "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        "GET /c HTTP/1.0\r\n\r\n";
    static const char *const urls[] = {"/a", "/b", "/c"};
    size_t off = 0, total = sizeof(two) - 1;
    assert_int_equal(sched_http_parser_init(&p, 4096, 1024), 0);
    for (int i = 0; i < 3; i++) {
        size_t used = 0;
        int rc = sched_http_parser_feed(&p, two + off, total - off, &used);
        assert_int_equal(rc, SCHED_HTTP_DONE);
        assert_string_equal(sched_http_url(&p.req), urls[i]);
        if (i == 0)
            assert_int_equal(used, 19);
        if (i == 1) {
            assert_int_equal(p.req.body.len, 5);
            assert_memory_equal(p.req.body.data, "abcde", 5);
            assert_true(p.req.keep_alive);
        }
        if (i == 2)
            assert_false(p.req.keep_alive); /* HTTP/1.0 without keep-alive */
        off += used;
        sched_http_parser_next(&p);
    }
    assert_int_equal(off, total);
    sched_http_parser_free(&p);
}

static void parser_limits_and_errors(void **state)
{
    (void)state;
    struct sched_http_parser p;
    size_t used;
    char big[3000];
    assert_int_equal(sched_http_parser_init(&p, 1024, 16), 0);
    assert_int_equal(feed_all(&p, "POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n", &used), WP_EPROTO);
    assert_int_equal(p.err_status, 413);
    sched_http_parser_free(&p);

    assert_int_equal(sched_http_parser_init(&p, 1024, 16), 0);
    assert_int_equal(feed_all(&p, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n", &used),
                     SCHED_HTTP_MORE);
    assert_int_equal(feed_all(&p, "0123456789abcdef0123456789abcdef\r\n", &used), WP_EPROTO);
    assert_int_equal(p.err_status, 413);
    sched_http_parser_free(&p);

    assert_int_equal(sched_http_parser_init(&p, 1024, 16), 0);
    snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: %02000d\r\n\r\n", 1);
    assert_int_equal(feed_all(&p, big, &used), WP_EPROTO);
    assert_int_equal(p.err_status, 431);
    sched_http_parser_free(&p);

    assert_int_equal(sched_http_parser_init(&p, 1024, 16), 0);
    assert_int_equal(feed_all(&p, "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", &used),
                     WP_EPROTO);
    assert_int_equal(p.err_status, 400);
    /* After an error the parser refuses everything. */
    assert_int_equal(feed_all(&p, "GET / HTTP/1.1\r\n\r\n", &used), WP_EPROTO);
    sched_http_parser_free(&p);

    assert_int_equal(sched_http_parser_init(&p, 1024, 16), 0);
    assert_int_equal(feed_all(&p, "GET / HTTP/2.0\r\n\r\n", &used), WP_EPROTO);
    assert_true(p.err_status == 505 || p.err_status == 400);
    sched_http_parser_free(&p);
}

static void routing(void **state)
{
    (void)state;
    char params[3][128];
    int np;
    bool pm;
    const struct sched_route *r;
    r = sched__route_match("GET", "/v1/agents", &pm, &np, params);
    assert_non_null(r);
    assert_string_equal(r->name, "agent_list");
    r = sched__route_match("POST", "/v1/agents/agent_1/archive", &pm, &np, params);
    assert_string_equal(r->name, "agent_archive");
    assert_int_equal(np, 1);
    assert_string_equal(params[0], "agent_1");
    r = sched__route_match("GET", "/v1/sessions/sesn_9/events/stream", &pm, &np, params);
    assert_string_equal(r->name, "events_stream");
    r = sched__route_match("GET", "/v1/sessions/sesn_9/events", &pm, &np, params);
    assert_string_equal(r->name, "events_list");
    r = sched__route_match("POST", "/v1/vaults/v1/credentials/c%2F2", &pm, &np, params);
    assert_string_equal(r->name, "cred_update");
    assert_int_equal(np, 2);
    assert_string_equal(params[1], "c/2"); /* percent-decoded after splitting */
    assert_null(sched__route_match("PATCH", "/v1/agents/a", &pm, &np, params));
    assert_true(pm); /* -> 405 */
    assert_null(sched__route_match("GET", "/v1/nope", &pm, &np, params));
    assert_false(pm); /* -> 404 */
    assert_null(sched__route_match("GET", "/v1/agents/%zz", &pm, &np, params));
    assert_null(sched__route_match("GET", "v1/agents", &pm, &np, params));
    assert_null(sched__route_match("DELETE", "/v1/agents/a", &pm, &np, params)); /* no agent delete */
    assert_true(pm);
    char q[] = "created_at%5Bgte%5D=2026-01-01T00%3A00%3A00Z+x";
    assert_int_equal(sched__pct_decode(q, true), 0);
    assert_string_equal(q, "created_at[gte]=2026-01-01T00:00:00Z x");
    char bad[] = "%4";
    assert_int_equal(sched__pct_decode(bad, false), -1);
}

static void validation_helpers(void **state)
{
    (void)state;
    uint64_t ms;
    char ts[40];
    assert_true(sched__utf8_valid("h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    assert_false(sched__utf8_valid("\xc3\x28", 2));
    assert_false(sched__utf8_valid("\xed\xa0\x80", 3)); /* surrogate */
    assert_false(sched__utf8_valid("\xc0\xaf", 2));     /* overlong */
    assert_int_equal(sched__parse_rfc3339("2026-05-01T12:00:00Z", &ms), 0);
    sched__rfc3339(ms, ts, sizeof(ts));
    assert_string_equal(ts, "2026-05-01T12:00:00.000Z");
    assert_int_equal(sched__parse_rfc3339("2026-05-01T14:00:00.5+02:00", &ms), 0);
    sched__rfc3339(ms, ts, sizeof(ts));
    assert_string_equal(ts, "2026-05-01T12:00:00.500Z");
    assert_true(sched__parse_rfc3339("yesterday", &ms) < 0);
    assert_true(sched__parse_rfc3339("2026-05-01T12:00:00", &ms) < 0);

    json_t *m = json_loads("{\"a\":\"1\"}", 0, NULL);
    assert_null(sched__check_metadata(m, false));
    json_decref(m);
    m = json_loads("{\"a\":1}", 0, NULL);
    assert_non_null(sched__check_metadata(m, false));
    json_decref(m);
    m = json_object();
    for (int i = 0; i < 17; i++) {
        char k[8];
        snprintf(k, sizeof(k), "k%d", i);
        json_object_set_new(m, k, json_string("v"));
    }
    assert_non_null(sched__check_metadata(m, false));
    json_decref(m);
    json_t *stored = json_loads("{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"}", 0, NULL);
    json_t *patch = json_loads("{\"a\":null,\"b\":\"\",\"d\":\"4\"}", 0, NULL);
    assert_null(sched__check_metadata(patch, true));
    sched__apply_metadata_patch(stored, patch, true);
    assert_null(json_object_get(stored, "a"));
    assert_null(json_object_get(stored, "b"));
    assert_string_equal(json_string_value(json_object_get(stored, "d")), "4");
    json_decref(stored);
    json_decref(patch);
    static const char *const allowed[] = {"x", "y", NULL};
    json_t *o = json_loads("{\"x\":1,\"z\":2}", 0, NULL);
    assert_string_equal(sched__unknown_field(o, allowed), "z");
    json_decref(o);
    char id[64];
    sched__new_id("sesn_", id, sizeof(id));
    assert_int_equal(strlen(id), 5 + 24);
    assert_int_equal(strncmp(id, "sesn_", 5), 0);
}

static const char *ev(const char *json, bool initial)
{
    static char msg[256];
    json_t *e = json_loads(json, 0, NULL);
    const char *m = sched__event_validate(e, initial);
    snprintf(msg, sizeof(msg), "%s", m ? m : "");
    json_decref(e);
    return m ? msg : NULL;
}

static void event_validation(void **state)
{
    (void)state;
    assert_null(ev("{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}", false));
    assert_non_null(ev("{\"type\":\"user.message\",\"content\":[]}", false));
    assert_non_null(ev("{\"type\":\"user.message\",\"content\":[{\"type\":\"search_result\"}]}", false));
    assert_non_null(ev("{\"type\":\"user.message\",\"content\":\"hi\"}", false));
    assert_non_null(ev("{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],\"x\":1}", false));
    assert_null(ev("{\"type\":\"user.interrupt\"}", false));
    assert_non_null(ev("{\"type\":\"user.interrupt\"}", true));
    assert_null(ev("{\"type\":\"user.tool_confirmation\",\"tool_use_id\":\"t\",\"result\":\"deny\",\"deny_message\":\"no\"}", false));
    assert_non_null(ev("{\"type\":\"user.tool_confirmation\",\"tool_use_id\":\"t\",\"result\":\"allow\",\"deny_message\":\"no\"}", false));
    assert_null(ev("{\"type\":\"user.custom_tool_result\",\"custom_tool_use_id\":\"t\",\"content\":[{\"type\":\"text\",\"text\":\"r\"}],\"is_error\":false}", false));
    assert_non_null(ev("{\"type\":\"user.custom_tool_result\",\"tool_use_id\":\"t\"}", false));
    assert_null(ev("{\"type\":\"user.define_outcome\",\"description\":\"d\",\"rubric\":{\"type\":\"text\",\"content\":\"r\"}}", true));
    assert_non_null(ev("{\"type\":\"user.define_outcome\",\"description\":\"d\",\"rubric\":{\"type\":\"text\",\"content\":\"r\"},\"max_iterations\":21}", false));
    assert_non_null(ev("{\"type\":\"agent.message\",\"content\":[]}", false));
    assert_non_null(ev("{\"content\":[]}", false));
    json_t *evs = json_loads("[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]},"
                             "{\"type\":\"system.message\",\"content\":[{\"type\":\"text\",\"text\":\"s\"}]}]", 0, NULL);
    json_t *out = NULL;
    const char *msg = NULL;
    assert_int_equal(sched__events_prepare(evs, false, 100, &out, &msg), 0);
    assert_int_equal(json_array_size(out), 2);
    json_decref(out);
    json_array_insert_new(evs, 0, json_pack("{s:s,s:[{s:s,s:s}]}", "type", "system.message", "content", "type", "text", "text", "x"));
    assert_int_equal(sched__events_prepare(evs, false, 100, &out, &msg), -1);
    json_decref(evs);
    evs = json_loads("[{\"type\":\"user.define_outcome\",\"description\":\"d\",\"rubric\":{\"type\":\"file\",\"file_id\":\"f\"}}]", 0, NULL);
    assert_int_equal(sched__events_prepare(evs, true, 50, &out, &msg), 0);
    json_t *o = json_array_get(out, 0);
    assert_int_equal(strncmp(json_string_value(json_object_get(o, "outcome_id")), "outc_", 5), 0);
    assert_int_equal(json_integer_value(json_object_get(o, "max_iterations")), 3);
    json_decref(out);
    json_decref(evs);
    struct wp_buf b;
    wp_buf_init(&b, 4096);
    sched__event_splice(&b, "1777636800000-3", "{\"type\":\"x\"}", 12);
    assert_string_equal(b.data, "{\"id\":\"sevt_1777636800000-3\",\"processed_at\":\"2026-05-01T12:00:00.000Z\",\"type\":\"x\"}");
    wp_buf_free(&b);
}

static void sealing(void **state)
{
    (void)state;
    unsigned char key[32], other[32];
    size_t n = 0;
    memset(key, 7, sizeof(key));
    memset(other, 8, sizeof(other));
    char *s = sched__seal(key, "{\"token\":\"hunter2\"}", 19);
    assert_non_null(s);
    assert_null(strstr(s, "hunter2"));
    char *p = sched__unseal(key, s, &n);
    assert_non_null(p);
    assert_int_equal(n, 19);
    assert_string_equal(p, "{\"token\":\"hunter2\"}");
    free(p);
    assert_null(sched__unseal(other, s, &n)); /* wrong key: the tag fails */
    s[10] = s[10] == 'A' ? 'B' : 'A';
    assert_null(sched__unseal(key, s, &n)); /* tampered */
    free(s);
}

static void config_parsing(void **state)
{
    (void)state;
    struct sched_config c;
    struct wp_err err;
    const char *argv[] = {"x", "--listen", "0.0.0.0:9000", "--redis=10.0.0.1:6380", "--api-key", "acme:k1",
                    "--rate-create", "5", "--sse-keepalive", "2.5", "--metrics-open", NULL};
    sched_config_defaults(&c);
    assert_int_equal(c.rate_create, 60);
    assert_int_equal(c.rate_read, 600);
    /* Beyond loopback, /metrics needs a token (or the operator's explicit open). */
    assert_int_equal(sched_config_parse_args(&c, 10, (char **)argv, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "--metrics-token"));
    sched_config_defaults(&c);
    assert_int_equal(sched_config_parse_args(&c, 11, (char **)argv, &err), 0);
    assert_true(c.metrics_open);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 9000);
    assert_string_equal(c.redis_host, "10.0.0.1");
    assert_int_equal(c.redis_port, 6380);
    assert_int_equal(c.norgs, 1);
    assert_string_equal(c.orgs[0].org, "acme");
    assert_int_equal(c.rate_create, 5);
    assert_true(c.sse_keepalive > 2.4 && c.sse_keepalive < 2.6);
    /* The key itself is not kept anywhere in the config. */
    assert_null(memmem(&c, sizeof(c), "k1", 2));
    const char *bad1[] = {"x", "--nope", "1", NULL};
    sched_config_defaults(&c);
    assert_int_equal(sched_config_parse_args(&c, 3, (char **)bad1, &err), WP_ECONFIG);
    const char *bad2[] = {"x", "--api-key", "nokey", NULL};
    assert_int_equal(sched_config_parse_args(&c, 3, (char **)bad2, &err), WP_ECONFIG);
    const char *bad3[] = {"x", "--listen", "localhost", NULL};
    assert_int_equal(sched_config_parse_args(&c, 3, (char **)bad3, &err), WP_ECONFIG);
    char *dir = th_tmpdir("schedcfg");
    char path[512], cmd[1024], out[64];
    snprintf(path, sizeof(path), "%s/sched.conf", dir);
    snprintf(cmd, sizeof(cmd), "printf '# comment\\nlisten 127.0.0.1:7000\\napi-key beta:k2\\nrate-read = 9\\n' > %s", path);
    th_sh(out, sizeof(out), "%s", cmd);
    const char *argv2[] = {"x", "--config", path, NULL};
    sched_config_defaults(&c);
    assert_int_equal(sched_config_parse_args(&c, 3, (char **)argv2, &err), 0);
    assert_int_equal(c.listen_port, 7000);
    assert_int_equal(c.rate_read, 9);
    assert_string_equal(c.orgs[0].org, "beta");
    th_rmtree(dir);
    free(dir);
}

static void error_mapping(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *type;
    } map[] = {{400, "invalid_request_error"}, {401, "authentication_error"},
               {403, "permission_error"},      {404, "not_found_error"},
               {405, "invalid_request_error"}, {408, "timeout_error"},
               {409, "conflict_error"},        {413, "invalid_request_error"},
               {429, "rate_limit_error"},      {431, "invalid_request_error"},
               {500, "api_error"},             {503, "overloaded_error"}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        assert_string_equal(sched__error_type_for(map[i].status), map[i].type);
}

static void env_pool_names_and_templates(void **state)
{
    char out[64];
    (void)state;

    /* The pool environment of an API environment is its id. */
    assert_int_equal(sched__env_pool_name("env_01ABCdef", out, sizeof(out)), 0);
    assert_string_equal(out, "env_01ABCdef");
    assert_int_equal(sched__env_pool_name("env_01ABCdef", out, 8), WP_ETOOBIG);
    assert_int_equal(sched__env_pool_name("py", out, sizeof(out)), WP_EINVAL_INPUT);
    assert_int_equal(sched__env_pool_name("env_../x", out, sizeof(out)), WP_EINVAL_INPUT);
    assert_int_equal(sched__env_pool_name(NULL, out, sizeof(out)), WP_EINVAL_INPUT);

    /* metadata warmpool.pool: an operator's pool serves the environment;
     * another API environment's name is refused. */
    json_t *ov = json_loads("{\"id\":\"env_y2\",\"config\":{\"type\":\"cloud\"},"
                            "\"metadata\":{\"warmpool.pool\":\"py-3.11\"}}", 0, NULL);
    assert_null(sched__envtpl_check(ov));
    assert_int_equal(sched__env_pool_of(ov, out, sizeof(out)), 0);
    assert_string_equal(out, "py-3.11");
    json_object_set_new(json_object_get(ov, "metadata"), "warmpool.pool", json_string("env_other"));
    assert_non_null(sched__envtpl_check(ov));
    assert_int_equal(sched__env_pool_of(ov, out, sizeof(out)), 0);
    assert_string_equal(out, "env_y2"); /* never someone else's */
    json_object_set_new(json_object_get(ov, "metadata"), "warmpool.pool", json_string("../x"));
    assert_non_null(sched__envtpl_check(ov));
    json_decref(ov);

    /* The operator's cap on API networking (--api-network). */
    json_t *net = json_loads("{\"id\":\"env_n1\",\"config\":{\"type\":\"cloud\",\"networking\":"
                             "{\"type\":\"unrestricted\"}}}", 0, NULL);
    double a, z;
    json_t *tn = sched__envtpl_template(net, "/opt/wp", &a, &z);
    assert_string_equal(json_string_value(json_object_get(json_object_get(tn, "network"), "mode")),
                        "unrestricted");
    json_decref(tn);
    json_t *capped = sched__envtpl_cap_network(net, SCHED_NET_LIMITED);
    tn = sched__envtpl_template(capped, "/opt/wp", &a, &z);
    json_decref(capped);
    /* the stored environment (what its client reads) is left as it is */
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(net, "config"),
                                                                           "networking"), "type")),
                        "unrestricted");
    assert_string_equal(json_string_value(json_object_get(json_object_get(tn, "network"), "mode")),
                        "limited");
    assert_int_equal(json_array_size(json_object_get(json_object_get(tn, "network"), "allowed_hosts")), 0);
    json_decref(tn);
    capped = sched__envtpl_cap_network(net, SCHED_NET_NONE);
    tn = sched__envtpl_template(capped, "/opt/wp", &a, &z);
    json_decref(capped);
    json_t *mode = json_object_get(json_object_get(tn, "network"), "mode");
    assert_true(!mode || !strcmp(json_string_value(mode), "none"));
    json_decref(tn);
    json_decref(net);

    /* Metadata and apt packages shape the template; policy comes apart. */
    json_t *env = json_loads("{\"id\":\"env_x1\",\"config\":{\"type\":\"cloud\",\"packages\":"
                             "{\"apt\":[\"jq\",\"curl=7.88.1-10\"]}},\"metadata\":"
                             "{\"warmpool.max_hot\":\"9\",\"warmpool.memory_mb\":\"128\","
                             "\"warmpool.disk_mb\":\"300\"}}", 0, NULL);
    assert_null(sched__envtpl_check(env));
    double mn, mx;
    json_t *t = sched__envtpl_template(env, "/opt/wp", &mn, &mx);
    assert_non_null(t);
    assert_true(mn == 1 && mx == 9);
    assert_string_equal(json_string_value(json_object_get(t, "name")), "env_x1");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "limits"), "memory_mb")), 128);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "limits"), "disk_mb")), 300);
    assert_null(json_object_get(json_object_get(t, "limits"), "shm_mb")); /* the node's default */
    /* Only the hands binary is bound at /.wp, not the directory it is in. */
    json_t *b0 = json_array_get(json_object_get(t, "binds"), 0);
    assert_string_equal(json_string_value(json_object_get(b0, "source")), "/opt/wp/warmpool-hands");
    assert_string_equal(json_string_value(json_object_get(b0, "target")), "/.wp/warmpool-hands");
    assert_true(json_is_true(json_object_get(t, "init_sets_hostname")));
    json_t *setup = json_object_get(t, "setup");
    assert_int_equal(json_array_size(setup), 2);
    assert_non_null(strstr(json_string_value(json_array_get(setup, 1)), "'installed 7.88.1-10'"));
    /* The host's package database is bound only when apt packages need it. */
    assert_int_equal(json_array_size(json_object_get(t, "binds")), 2);
    json_decref(t);
    json_object_set_new(json_object_get(json_object_get(env, "config"), "packages"), "apt", json_array());
    t = sched__envtpl_template(env, "/opt/wp", &mn, &mx);
    assert_int_equal(json_array_size(json_object_get(t, "binds")), 1);
    json_decref(t);
    /* Bad values name the key. */
    json_object_set_new(json_object_get(env, "metadata"), "warmpool.pids", json_string("0x10"));
    assert_non_null(strstr(sched__envtpl_check(env), "warmpool.pids"));
    json_object_set_new(json_object_get(env, "metadata"), "warmpool.pids", json_string("16"));
    json_object_set_new(json_object_get(env, "metadata"), "warmpool.shm_mb", json_string("0"));
    assert_non_null(strstr(sched__envtpl_check(env), "warmpool.shm_mb"));
    json_decref(env);
}

/* The clone script (repos.c), run by bash against a local repository as
 * the brain runs it in a sandbox: a branch and a commit checkout land, and
 * their reflog entries carry warmpool's identity, not one git would make
 * by asking DNS for the host's domain (a sandbox confined to its proxy has
 * no DNS: each clone waited out the resolver, 10 s). */
static void repo_clone_script_runs_without_the_host_identity(void **state)
{
    (void)state;
    char *dir = th_tmpdir("repo-clone");
    char out[4096], first[64] = "", src[600], ma[600], mb[600];
    assert_non_null(dir);
    assert_int_equal(th_sh(out, sizeof(out),
                           "set -e; cd %s; export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null "
                           "GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t "
                           "GIT_COMMITTER_EMAIL=t@t; git init -q -b main w; cd w; echo one >f; "
                           "git add f; git commit -qm one; echo two >f; git commit -qam two; "
                           "git clone -q --bare . ../src.git; git rev-parse HEAD~1",
                           dir), 0);
    sscanf(out, "%40s", first);
    snprintf(src, sizeof(src), "%s/src.git", dir);
    snprintf(ma, sizeof(ma), "%s/ws/a", dir);
    snprintf(mb, sizeof(mb), "%s/ws/b", dir);
    json_t *repos = json_pack("[{s:s, s:s, s:{s:s, s:s}}, {s:s, s:s, s:{s:s, s:s}}]", "remote", src,
                              "mount_path", ma, "checkout", "type", "branch", "name", "main",
                              "remote", src, "mount_path", mb, "checkout", "type", "commit", "sha",
                              first);
    struct wp_buf sh;
    wp_buf_init(&sh, 1 << 20);
    assert_int_equal(sched__repo_clone_script(repos, &sh), 0);
    char script[700];
    struct wp_err err;
    snprintf(script, sizeof(script), "%s/clone.sh", dir);
    assert_int_equal(wp_write_file(script, sh.data, sh.len, 0600, &err), 0);
    /* No identity anywhere but what the script gives. */
    assert_int_equal(th_sh(out, sizeof(out),
                           "env -i PATH=/usr/bin:/bin HOME=%s GIT_CONFIG_NOSYSTEM=1 "
                           "GIT_CONFIG_GLOBAL=/dev/null bash %s",
                           dir, script), 0);
    if (!strstr(out, "WPREPO 0 ok") || !strstr(out, "WPREPO 1 ok"))
        fail_msg("the clone script failed: %s", out);
    th_sh(out, sizeof(out), "git -C %s rev-parse HEAD", mb);
    assert_true(!strncmp(out, first, strlen(first)));
    for (int i = 0; i < 2; i++) {
        th_sh(out, sizeof(out), "env GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git -C %s "
              "log -g --format=%%ge HEAD", i ? mb : ma);
        if (strncmp(out, "warmpool@localhost\n", 19) ||
            (i == 1 && !strstr(out + 19, "warmpool@localhost")))
            fail_msg("repository %d's reflog was written with another identity: %s", i, out);
    }
    wp_buf_free(&sh);
    json_decref(repos);
    th_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parser_simple_and_split),
        cmocka_unit_test(parser_pipelining_and_chunked),
        cmocka_unit_test(parser_limits_and_errors),
        cmocka_unit_test(routing),
        cmocka_unit_test(validation_helpers),
        cmocka_unit_test(event_validation),
        cmocka_unit_test(sealing),
        cmocka_unit_test(config_parsing),
        cmocka_unit_test(error_mapping),
        cmocka_unit_test(env_pool_names_and_templates),
        cmocka_unit_test(repo_clone_script_runs_without_the_host_identity),
    };
    return cmocka_run_group_tests_name("sched_unit", tests, NULL, NULL);
}
