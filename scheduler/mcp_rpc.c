/* mcp_rpc.c - the pure half of the MCP client (see mcp.h): JSON-RPC
 * answers in JSON and event-stream bodies, tools/list pages, tools/call
 * content, token endpoint answers, server URLs. No I/O: unit-tested
 * (tests/unit/test_mcp.c) and fuzzed (tests/fuzz/fuzz_mcp_rpc.c). */
#include "scheduler/mcp.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "base/sse.h"

/* ---- pure: JSON-RPC messages -------------------------------------------- */

/* A response to id: {"jsonrpc":"2.0","id":id, result | error}. */
static bool is_response_to(json_t *m, int64_t id)
{
    json_t *jid = json_object_get(m, "id");
    return json_is_object(m) && json_is_integer(jid) && json_integer_value(jid) == id &&
           !json_object_get(m, "method") &&
           (json_object_get(m, "result") != NULL) != (json_object_get(m, "error") != NULL);
}

/* One message or a batch: the response to id (new reference) or NULL. */
static json_t *pick(json_t *j, int64_t id)
{
    if (is_response_to(j, id))
        return json_incref(j);
    if (json_is_array(j)) {
        size_t i;
        json_t *m;
        json_array_foreach(j, i, m)
            if (is_response_to(m, id))
                return json_incref(m);
    }
    return NULL;
}

struct mcp_sse_scan {
    struct wp_sse_parser *p;
    int64_t id;
    json_t *found;
};

static int scan_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct mcp_sse_scan *s = ctx;
    if (s->found || strcmp(event, "message"))
        return 0;
    json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    s->found = j ? pick(j, s->id) : NULL;
    json_decref(j);
    return 0; /* other messages (server requests, notifications) are skipped */
}

struct mcp_sse_scan *mcp_sse_scan_new(int64_t id)
{
    struct mcp_sse_scan *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->id = id;
    s->p = wp_sse_parser_new(MCP_MAX_BODY, scan_event, s);
    if (!s->p) {
        free(s);
        return NULL;
    }
    return s;
}

void mcp_sse_scan_free(struct mcp_sse_scan *s)
{
    if (!s)
        return;
    wp_sse_parser_free(s->p);
    json_decref(s->found);
    free(s);
}

int mcp_sse_scan_feed(struct mcp_sse_scan *s, const char *data, size_t len, bool *found)
{
    int rc = s->found ? 0 : wp_sse_parser_feed(s->p, data, len);
    *found = s->found != NULL;
    return rc;
}

json_t *mcp_sse_take(struct mcp_sse_scan *s)
{
    json_t *m = s->found;
    s->found = NULL;
    return m;
}

/* "Type/Sub; params" equals want, case-insensitively. */
bool mcp_ctype_is(const char *ctype, const char *want)
{
    size_t n = strlen(want);
    while (*ctype == ' ')
        ctype++;
    return !strncasecmp(ctype, want, n) && (ctype[n] == '\0' || ctype[n] == ';' || ctype[n] == ' ');
}

int mcp_parse_body(const char *ctype, const char *body, size_t len, int64_t id, json_t **msg,
                   struct wp_err *err)
{
    *msg = NULL;
    if (len > MCP_MAX_BODY)
        return wp_err_set(err, WP_ETOOBIG, "answer over %zu bytes", MCP_MAX_BODY);
    if (mcp_ctype_is(ctype ? ctype : "", "application/json")) {
        json_error_t je;
        json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        if (!j)
            return wp_err_set(err, WP_EPROTO, "answer is not JSON: %s", je.text);
        *msg = pick(j, id);
        json_decref(j);
        return *msg ? 0 : wp_err_set(err, WP_ENOTFOUND, "no response to request %lld", (long long)id);
    }
    if (mcp_ctype_is(ctype ? ctype : "", "text/event-stream")) {
        struct mcp_sse_scan *s = mcp_sse_scan_new(id);
        bool found = false;
        if (!s)
            return wp_err_set(err, -ENOMEM, "out of memory");
        /* a last event without its blank line still counts */
        int rc = mcp_sse_scan_feed(s, body, len, &found);
        if (rc == 0 && !found)
            rc = mcp_sse_scan_feed(s, "\n\n", 2, &found);
        *msg = mcp_sse_take(s);
        mcp_sse_scan_free(s);
        if (rc < 0) {
            json_decref(*msg);
            *msg = NULL;
            return wp_err_set(err, rc, "event stream: %s", rc == WP_ETOOBIG ? "event too big" : "unreadable");
        }
        return *msg ? 0 : wp_err_set(err, WP_ENOTFOUND, "no response to request %lld", (long long)id);
    }
    return wp_err_set(err, WP_EPROTO, "unexpected content type");
}

int mcp_rpc_result(json_t *msg, json_t **result, struct wp_err *err)
{
    *result = NULL;
    json_t *e = json_object_get(msg, "error");
    if (e) {
        const char *m = json_string_value(json_object_get(e, "message"));
        return wp_err_set(err, WP_EPROTO, "JSON-RPC error %lld: %.200s",
                          (long long)json_integer_value(json_object_get(e, "code")),
                          m ? m : "(no message)");
    }
    *result = json_object_get(msg, "result");
    if (!json_is_object(*result)) {
        *result = NULL;
        return wp_err_set(err, WP_EPROTO, "result is not an object");
    }
    return 0;
}

/* Tool names the Messages API accepts. */
static bool tool_name_ok(const char *n)
{
    size_t l = n ? strlen(n) : 0;
    if (l < 1 || l > 64)
        return false;
    for (size_t i = 0; i < l; i++)
        if (!isalnum((unsigned char)n[i]) && n[i] != '_' && n[i] != '-')
            return false;
    return true;
}

int mcp_tools_page(json_t *result, json_t *out, char **cursor, int *skipped, struct wp_err *err)
{
    *cursor = NULL;
    json_t *tools = json_object_get(result, "tools");
    if (!json_is_array(tools))
        return wp_err_set(err, WP_EPROTO, "tools/list: no tools array");
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        json_t *schema = json_object_get(t, "inputSchema");
        json_t *desc = json_object_get(t, "description");
        if (!tool_name_ok(name) || !json_is_object(schema)) {
            (*skipped)++;
            continue;
        }
        json_t *d = json_pack("{s:s, s:O}", "name", name, "input_schema", schema);
        if (d && json_is_string(desc))
            json_object_set(d, "description", desc);
        if (d)
            json_array_append_new(out, d);
    }
    const char *nc = json_string_value(json_object_get(result, "nextCursor"));
    if (nc && *nc && !(*cursor = strdup(nc)))
        return wp_err_set(err, -ENOMEM, "out of memory");
    return 0;
}

json_t *mcp_result_content(json_t *result, bool *is_error)
{
    json_t *out = json_array();
    size_t i;
    json_t *c;
    *is_error = json_is_true(json_object_get(result, "isError"));
    json_array_foreach(json_object_get(result, "content"), i, c) {
        const char *ty = json_string_value(json_object_get(c, "type")) ?: "";
        json_t *b = NULL;
        if (!strcmp(ty, "text") && json_is_string(json_object_get(c, "text"))) {
            b = json_pack("{s:s, s:O}", "type", "text", "text", json_object_get(c, "text"));
        } else if (!strcmp(ty, "image") && json_is_string(json_object_get(c, "data")) &&
                   json_is_string(json_object_get(c, "mimeType"))) {
            b = json_pack("{s:s, s:{s:s, s:O, s:O}}", "type", "image", "source", "type", "base64",
                          "media_type", json_object_get(c, "mimeType"), "data",
                          json_object_get(c, "data"));
        } else if (!strcmp(ty, "resource") &&
                   json_is_string(json_object_get(json_object_get(c, "resource"), "text"))) {
            b = json_pack("{s:s, s:O}", "type", "text", "text",
                          json_object_get(json_object_get(c, "resource"), "text"));
        } else if (!strcmp(ty, "resource_link") && json_is_string(json_object_get(c, "uri"))) {
            b = json_pack("{s:s, s:s+}", "type", "text", "text", "resource: ",
                          json_string_value(json_object_get(c, "uri")));
        }
        if (b)
            json_array_append_new(out, b);
    }
    json_t *sc = json_object_get(result, "structuredContent");
    if (json_array_size(out) == 0 && json_is_object(sc)) {
        char *s = json_dumps(sc, JSON_COMPACT);
        if (s)
            json_array_append_new(out, json_pack("{s:s, s:s}", "type", "text", "text", s));
        free(s);
    }
    return out;
}

int mcp_token_parse(const char *body, size_t len, char **access, long *expires_in, char **refresh,
                    struct wp_err *err)
{
    *access = *refresh = NULL;
    *expires_in = -1;
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *at = json_string_value(json_object_get(j, "access_token"));
    const char *tt = json_string_value(json_object_get(j, "token_type"));
    json_t *ei = json_object_get(j, "expires_in");
    const char *rt = json_string_value(json_object_get(j, "refresh_token"));
    int rc = 0;
    if (!at || !*at || strpbrk(at, "\r\n") || (tt && strcasecmp(tt, "bearer"))) {
        const char *e = json_string_value(json_object_get(j, "error"));
        rc = wp_err_set(err, WP_EPROTO, "token endpoint: %.100s",
                        e ? e : at ? "token_type is not Bearer" : "no access_token");
    } else if (ei && !(json_is_integer(ei) && json_integer_value(ei) >= 0) &&
               !(json_is_real(ei) && json_real_value(ei) >= 0 && json_real_value(ei) < 1e12)) {
        rc = wp_err_set(err, WP_EPROTO, "token endpoint: bad expires_in");
    } else {
        *access = strdup(at);
        if (rt && *rt)
            *refresh = strdup(rt);
        if (ei)
            *expires_in = json_is_integer(ei) ? (long)json_integer_value(ei) : (long)json_real_value(ei);
        if (!*access || (rt && *rt && !*refresh)) {
            free(*access);
            free(*refresh);
            *access = *refresh = NULL;
            rc = wp_err_set(err, -ENOMEM, "out of memory");
        }
    }
    json_decref(j);
    return rc;
}

int mcp_url_normalize(const char *url, char *out, size_t cap)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL;
    int rc = WP_EINVAL_INPUT;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "http") && strcmp(scheme, "https")) ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        goto out;
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT);
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    for (char *p = host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    size_t pl = strlen(path);
    if (pl > 1 && path[pl - 1] == '/')
        path[pl - 1] = '\0';
    int n = snprintf(out, cap, "%s://%s%s%s%s%s%s", scheme, host, port ? ":" : "", port ? port : "",
                     *path ? path : "/", query ? "?" : "", query ? query : "");
    rc = n > 0 && (size_t)n < cap ? 0 : WP_ETOOBIG;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return rc;
}

