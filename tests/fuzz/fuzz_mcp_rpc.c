/* fuzz_mcp_rpc.c - the MCP client's answer parsing over arbitrary bytes.
 *
 * Byte 0 picks the content type (JSON or event stream) and a split size,
 * byte 1 the request id (0..15); the rest is the body. The whole-body
 * parse and the incremental scan of the same bytes cut in pieces must
 * agree on whether a response was found and on which one; whatever is
 * found then goes through the result, tools page, call content and token
 * parsers, which must not crash. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "scheduler/mcp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    bool sse = data[0] & 1;
    size_t step = (size_t)(data[0] >> 1) + 1;
    int64_t id = data[1] & 15;
    const char *body = (const char *)data + 2;
    size_t len = size - 2;
    struct wp_err err;
    json_t *m = NULL;
    int rc = mcp_parse_body(sse ? "text/event-stream" : "application/json", body, len, id, &m, &err);
    if ((rc == 0) != (m != NULL))
        abort();
    if (sse) {
        struct mcp_sse_scan *s = mcp_sse_scan_new(id);
        bool found = false;
        int src = 0;
        if (!s)
            abort();
        for (size_t off = 0; off < len && src == 0 && !found; off += step)
            src = mcp_sse_scan_feed(s, body + off, len - off < step ? len - off : step, &found);
        if (src == 0 && !found)
            src = mcp_sse_scan_feed(s, "\n\n", 2, &found);
        json_t *m2 = mcp_sse_take(s);
        if (src == 0 && rc != WP_ETOOBIG && (m2 != NULL) != (m != NULL))
            abort();
        if (m && m2 && !json_equal(m, m2))
            abort();
        json_decref(m2);
        mcp_sse_scan_free(s);
    }
    json_t *res = NULL;
    if (m && mcp_rpc_result(m, &res, &err) == 0) {
        json_t *out = json_array();
        char *cursor = NULL;
        int skipped = 0;
        bool is_error;
        mcp_tools_page(res, out, &cursor, &skipped, &err);
        free(cursor);
        json_decref(out);
        json_decref(mcp_result_content(res, &is_error));
    }
    json_decref(m);
    char *a = NULL, *r = NULL;
    long exp;
    if (mcp_token_parse(body, len, &a, &exp, &r, &err) == 0 && !a)
        abort();
    free(a);
    free(r);
    return 0;
}
