/* test_mcp.c - the pure half of the MCP client (scheduler/mcp_rpc.c): JSON-RPC
 * responses in JSON and event-stream bodies (batches, server requests in
 * between, every split point of a stream), results and errors, tools/list
 * pages, tools/call content, token endpoint answers, URL normalization. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "lib/testlib.h"
#include "scheduler/mcp.h"

static json_t *parse(const char *ct, const char *body, int64_t id, int want_rc)
{
    json_t *m = NULL;
    struct wp_err err;
    int rc = mcp_parse_body(ct, body, strlen(body), id, &m, &err);
    if (rc != want_rc)
        fail_msg("rc %d (%s), want %d", rc, err.msg, want_rc);
    return m;
}

static void json_answers(void **state)
{
    (void)state;
    json_t *m = parse("application/json", "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"x\":1}}", 3, 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "result"), "x")), 1);
    json_decref(m);
    /* parameters in the content type, a batch with another id first */
    m = parse("Application/JSON; charset=utf-8",
              "[{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}},{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":-32601,\"message\":\"nope\"}}]",
              7, 0);
    json_t *res = NULL;
    struct wp_err err;
    assert_int_equal(mcp_rpc_result(m, &res, &err), WP_EPROTO);
    assert_non_null(strstr(err.msg, "-32601"));
    assert_non_null(strstr(err.msg, "nope"));
    json_decref(m);
    parse("application/json", "{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{}}", 3, WP_ENOTFOUND);
    parse("application/json", "{\"jsonrpc\":", 3, WP_EPROTO);
    parse("text/html", "<html>", 3, WP_EPROTO);
    /* both result and error, or a request with our id, are not responses */
    parse("application/json", "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{},\"error\":{}}", 3, WP_ENOTFOUND);
    parse("application/json", "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\",\"result\":{}}", 3, WP_ENOTFOUND);
    /* duplicate keys are refused */
    parse("application/json", "{\"id\":3,\"id\":3,\"result\":{}}", 3, WP_EPROTO);
    /* a result that is not an object */
    m = parse("application/json", "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":5}", 3, 0);
    assert_int_equal(mcp_rpc_result(m, &res, &err), WP_EPROTO);
    json_decref(m);
}

static const char stream[] =
    ": comment\r\n"
    "event: message\r\n"
    "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\n"
    "data: {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}\n\n"
    "id: 1\n"
    "data: {\"jsonrpc\":\"2.0\",\n"
    "data:  \"id\":5,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n\n"
    "data: {\"jsonrpc\":\"2.0\",\"id\":6,\"result\":{}}\n\n";

static void sse_answers(void **state)
{
    (void)state;
    json_t *m = parse("text/event-stream", stream, 5, 0);
    assert_non_null(json_object_get(json_object_get(m, "result"), "content"));
    json_decref(m);
    m = parse("text/event-stream", stream, 6, 0);
    json_decref(m);
    parse("text/event-stream", stream, 9, WP_ENOTFOUND); /* a server request, not a response */
    /* the last event without its blank line still counts */
    m = parse("text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}", 1, 0);
    json_decref(m);
    /* other event types are not JSON-RPC messages */
    parse("text/event-stream", "event: other\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n", 1,
          WP_ENOTFOUND);
    /* every split point gives the same answer, found exactly once */
    size_t n = strlen(stream);
    for (size_t cut = 0; cut <= n; cut++) {
        struct mcp_sse_scan *s = mcp_sse_scan_new(5);
        bool f1 = false, f2 = false;
        assert_int_equal(mcp_sse_scan_feed(s, stream, cut, &f1), 0);
        assert_int_equal(mcp_sse_scan_feed(s, stream + cut, n - cut, &f2), 0);
        assert_true(f2);
        json_t *r = mcp_sse_take(s);
        assert_non_null(r);
        assert_int_equal(json_integer_value(json_object_get(r, "id")), 5);
        assert_null(mcp_sse_take(s));
        json_decref(r);
        mcp_sse_scan_free(s);
    }
}

static void tools_pages(void **state)
{
    (void)state;
    json_t *out = json_array();
    char *cursor = NULL;
    int skipped = 0;
    struct wp_err err;
    json_t *r = json_loads(
        "{\"tools\":[{\"name\":\"echo\",\"description\":\"Echo\",\"inputSchema\":{\"type\":\"object\"}},"
        "{\"name\":\"bad name\",\"inputSchema\":{\"type\":\"object\"}},"
        "{\"name\":\"noschema\"},"
        "{\"name\":\"x_1-2\",\"inputSchema\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}}}}],"
        "\"nextCursor\":\"page2\"}", 0, NULL);
    assert_int_equal(mcp_tools_page(r, out, &cursor, &skipped, &err), 0);
    assert_int_equal(json_array_size(out), 2);
    assert_int_equal(skipped, 2);
    assert_string_equal(cursor, "page2");
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 0), "description")), "Echo");
    assert_non_null(json_object_get(json_array_get(out, 1), "input_schema"));
    assert_null(json_object_get(json_array_get(out, 1), "description"));
    free(cursor);
    json_decref(r);
    r = json_loads("{\"tools\":[]}", 0, NULL);
    assert_int_equal(mcp_tools_page(r, out, &cursor, &skipped, &err), 0);
    assert_null(cursor);
    json_decref(r);
    r = json_loads("{\"tool\":[]}", 0, NULL);
    assert_int_equal(mcp_tools_page(r, out, &cursor, &skipped, &err), WP_EPROTO);
    json_decref(r);
    json_decref(out);
}

static void call_content(void **state)
{
    (void)state;
    bool is_error = true;
    json_t *r = json_loads(
        "{\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
        "{\"type\":\"image\",\"data\":\"QUJD\",\"mimeType\":\"image/png\"},"
        "{\"type\":\"resource\",\"resource\":{\"uri\":\"file:///x\",\"text\":\"body\"}},"
        "{\"type\":\"resource_link\",\"uri\":\"file:///y\",\"name\":\"y\"},"
        "{\"type\":\"audio\",\"data\":\"x\"}]}", 0, NULL);
    json_t *c = mcp_result_content(r, &is_error);
    assert_false(is_error);
    assert_int_equal(json_array_size(c), 4);
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(c, 1), "source"), "media_type")),
                        "image/png");
    assert_string_equal(json_string_value(json_object_get(json_array_get(c, 2), "text")), "body");
    assert_string_equal(json_string_value(json_object_get(json_array_get(c, 3), "text")), "resource: file:///y");
    json_decref(c);
    json_decref(r);
    r = json_loads("{\"content\":[],\"isError\":true,\"structuredContent\":{\"k\":1}}", 0, NULL);
    c = mcp_result_content(r, &is_error);
    assert_true(is_error);
    assert_string_equal(json_string_value(json_object_get(json_array_get(c, 0), "text")), "{\"k\":1}");
    json_decref(c);
    json_decref(r);
}

static void token_answers(void **state)
{
    (void)state;
    char *a, *rt;
    long exp;
    struct wp_err err;
    const char *ok = "{\"access_token\":\"AT\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"refresh_token\":\"RT2\"}";
    assert_int_equal(mcp_token_parse(ok, strlen(ok), &a, &exp, &rt, &err), 0);
    assert_string_equal(a, "AT");
    assert_string_equal(rt, "RT2");
    assert_int_equal(exp, 3600);
    free(a);
    free(rt);
    const char *noexp = "{\"access_token\":\"AT\",\"token_type\":\"bearer\"}";
    assert_int_equal(mcp_token_parse(noexp, strlen(noexp), &a, &exp, &rt, &err), 0);
    assert_int_equal(exp, -1);
    assert_null(rt);
    free(a);
    const char *bad[] = {
        "{\"error\":\"invalid_grant\"}", "{\"access_token\":\"\"}", "{\"access_token\":\"a\\r\\nX: y\"}",
        "{\"access_token\":\"a\",\"token_type\":\"mac\"}", "{\"access_token\":\"a\",\"expires_in\":-5}",
        "{\"access_token\":\"a\",\"expires_in\":\"10\"}", "not json",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(mcp_token_parse(bad[i], strlen(bad[i]), &a, &exp, &rt, &err), WP_EPROTO);
        assert_null(a);
    }
    assert_int_equal(mcp_token_parse(bad[0], strlen(bad[0]), &a, &exp, &rt, &err), WP_EPROTO);
    assert_non_null(strstr(err.msg, "invalid_grant"));
}

static void urls(void **state)
{
    (void)state;
    char out[512];
    static const char *const same[][2] = {
        { "HTTPS://Example.COM/mcp", "https://example.com/mcp" },
        { "https://example.com:443/mcp/", "https://example.com/mcp" },
        { "http://example.com:80", "http://example.com/" },
        { "http://example.com:8080/mcp#frag", "http://example.com:8080/mcp" },
        { "https://example.com/mcp?x=1", "https://example.com/mcp?x=1" },
        { "http://127.0.0.1:5000/", "http://127.0.0.1:5000/" },
    };
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        assert_int_equal(mcp_url_normalize(same[i][0], out, sizeof(out)), 0);
        assert_string_equal(out, same[i][1]);
    }
    /* different paths, ports and schemes stay different */
    char a[512], b[512];
    assert_int_equal(mcp_url_normalize("https://example.com/mcp", a, sizeof(a)), 0);
    assert_int_equal(mcp_url_normalize("https://example.com/MCP", b, sizeof(b)), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(mcp_url_normalize("http://example.com/mcp", b, sizeof(b)), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(mcp_url_normalize("ftp://example.com/", out, sizeof(out)), WP_EINVAL_INPUT);
    assert_int_equal(mcp_url_normalize("example.com/mcp", out, sizeof(out)), WP_EINVAL_INPUT);
    assert_int_equal(mcp_url_normalize("http://", out, sizeof(out)), WP_EINVAL_INPUT);
}

static bool pub(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    return mcp_addr_public((struct sockaddr *)&ss);
}

static void private_addresses(void **state)
{
    (void)state;
    static const char *const priv[] = { "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.0.1", "172.31.255.255",
                                        "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                                        "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00::1",
                                        "fc00::1", "::ffff:127.0.0.1", "::ffff:10.1.2.3", "ff02::1" };
    static const char *const publ[] = { "1.1.1.1", "8.8.8.8", "172.32.0.1", "172.15.255.255", "192.169.0.1",
                                        "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8" };
    for (size_t i = 0; i < sizeof(priv) / sizeof(priv[0]); i++)
        if (pub(priv[i]))
            fail_msg("%s counted as public", priv[i]);
    for (size_t i = 0; i < sizeof(publ) / sizeof(publ[0]); i++)
        if (!pub(publ[i]))
            fail_msg("%s counted as private", publ[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_answers), cmocka_unit_test(sse_answers),
        cmocka_unit_test(tools_pages),  cmocka_unit_test(call_content),
        cmocka_unit_test(token_answers), cmocka_unit_test(urls),
        cmocka_unit_test(private_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
