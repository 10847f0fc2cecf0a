/* mcp.h - the brain's MCP client (prefix mcp_): the streamable HTTP
 * transport (JSON-RPC 2.0 over POST; answers as application/json or as a
 * text/event-stream), initialize + notifications/initialized, tools/list
 * with its pages, tools/call, and the OAuth refresh-token grant. Every
 * request runs on a libcurl multi driven by the caller's libev loop
 * (base/curlev.c); nothing blocks. Callbacks never run inside curl.
 *
 * The pure half (mcp_parse_*, mcp_tools_page, mcp_result_content,
 * mcp_token_parse) takes bytes or JSON and gives JSON; it is unit-tested
 * (tests/unit/test_mcp.c) and fuzzed (tests/fuzz/fuzz_mcp_rpc.c). */
#ifndef SCHED_MCP_H
#define SCHED_MCP_H

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "base/err.h"

#define MCP_PROTOCOL_VERSION "2025-06-18"
#define MCP_MAX_BODY ((size_t)8 << 20) /* one answer, JSON or SSE */

/* ---- pure --------------------------------------------------------------- */

/* The JSON-RPC response to request id in an answer's body. ctype is its
 * Content-Type ("application/json", "text/event-stream"; parameters
 * ignored). A JSON body may be one message or a batch; an SSE body is a
 * stream of events whose data is one message each (requests and
 * notifications from the server are skipped). Returns 0 and *msg (caller
 * owns) when found; WP_ENOTFOUND when the body holds no response to id;
 * WP_EPROTO for a body that is not what ctype says; WP_ETOOBIG. */
int mcp_parse_body(const char *ctype, const char *body, size_t len, int64_t id, json_t **msg,
                   struct wp_err *err);

/* An SSE answer read as it arrives: feed bytes; *found turns true once
 * the response to id has come (then *msg of mcp_sse_take). */
struct mcp_sse_scan;
struct mcp_sse_scan *mcp_sse_scan_new(int64_t id);
void mcp_sse_scan_free(struct mcp_sse_scan *s);
/* 0 (go on), or the parser's sticky error (WP_ETOOBIG, -ENOMEM). */
int mcp_sse_scan_feed(struct mcp_sse_scan *s, const char *data, size_t len, bool *found);
/* The response (caller owns) or NULL; once. */
json_t *mcp_sse_take(struct mcp_sse_scan *s);

/* Whether a Content-Type ("type/sub; params") is want, case-insensitively. */
bool mcp_ctype_is(const char *ctype, const char *want);

/* The result of a response message (borrowed from msg), or the JSON-RPC
 * error as WP_EPROTO with its code and message in err. */
int mcp_rpc_result(json_t *msg, json_t **result, struct wp_err *err);

/* A tools/list result: appends each valid tool as {name, description?,
 * input_schema} to out (names 1..64 of [A-Za-z0-9_-], what the Messages
 * API accepts; others are skipped and counted in *skipped), and sets
 * *cursor (caller frees) to nextCursor or NULL. WP_EPROTO when result has
 * no tools array. */
int mcp_tools_page(json_t *result, json_t *out, char **cursor, int *skipped, struct wp_err *err);

/* A tools/call result as the API's tool result content (text, image and
 * document blocks; embedded resources and links as text), caller owns;
 * *is_error from isError. */
json_t *mcp_result_content(json_t *result, bool *is_error);

/* An OAuth token endpoint's JSON answer (RFC 6749 5.1). Returns 0 with
 * *access (caller frees), *expires_in (seconds, -1 when absent) and
 * *refresh (caller frees; NULL when the server kept the old one);
 * WP_EPROTO otherwise, with the server's error in err when it sent one. */
int mcp_token_parse(const char *body, size_t len, char **access, long *expires_in,
                    char **refresh, struct wp_err *err);

/* ---- the client ----------------------------------------------------------- */

struct mcp_hub;    /* one curl multi on a loop */
struct mcp_client; /* one MCP server (url, token, its session) */
struct mcp_op;     /* one operation in flight */

enum mcp_fail {
    MCP_OK = 0,
    MCP_CONN,   /* could not reach the server, or it failed (5xx, bad answers) */
    MCP_AUTH,   /* 401 or 403: the credential was refused */
    MCP_RPC,    /* the server answered with a JSON-RPC error */
};

struct mcp_status {
    enum mcp_fail kind;
    long http_status;       /* 0 when none */
    char content_type[64];  /* of the last answer */
    char body[512];         /* its start (for mcp_oauth_validate), control bytes replaced */
    bool body_truncated;
    char method[32];        /* the MCP step that failed ("initialize", ...) */
    char message[256];
};

/* value: for tools/list the tools (array, borrowed), for tools/call the
 * result (borrowed), for a token request the parsed answer {access_token,
 * expires_in?, refresh_token?} (borrowed); NULL on failure. */
typedef void (*mcp_done_cb)(void *ctx, const struct mcp_status *st, json_t *value);

/* allow_private: connections to loopback, private (RFC 1918, CGNAT,
 * IPv6 unique-local), link-local and unspecified addresses are allowed;
 * otherwise refused when curl opens the socket, after name resolution, so
 * a name that resolves to such an address is refused too. */
int mcp_hub_new(struct ev_loop *loop, bool allow_private, struct mcp_hub **out, struct wp_err *err);
/* Whether addr may be connected to under allow_private = false. */
bool mcp_addr_public(const struct sockaddr *addr);
/* Cancels every operation (no callbacks). Not from inside an mcp callback. */
void mcp_hub_free(struct mcp_hub *h);

/* url: http(s) only. timeout_s: the deadline of each HTTP request of an
 * operation (initialize, tools/list; tools/call has its own). */
int mcp_client_new(struct mcp_hub *h, const char *url, double timeout_s, struct mcp_client **out,
                   struct wp_err *err);
/* The bearer token sent from the next request on (NULL: none). Copied;
 * refused (WP_EINVAL_INPUT) when it has CR/LF or is over 8 KiB. Another
 * token than before drops the server session (the next operation
 * initializes). */
int mcp_client_set_token(struct mcp_client *c, const char *token);
/* Cancels its operations (no callbacks); the token is wiped. */
void mcp_client_free(struct mcp_client *c);

/* Initialize when the client has no session yet (or the server forgot
 * it: a 404 answer re-initializes once), then the request. *op (may be
 * NULL) is valid until cb runs or mcp_op_cancel. */
int mcp_list_tools(struct mcp_client *c, mcp_done_cb cb, void *ctx, struct mcp_op **op,
                   struct wp_err *err);
int mcp_call_tool(struct mcp_client *c, const char *name, json_t *arguments, double timeout_s,
                  mcp_done_cb cb, void *ctx, struct mcp_op **op, struct wp_err *err);

/* The refresh_token grant at a token endpoint. auth: "none" (client_id in
 * the form), "client_secret_basic" (HTTP Basic) or "client_secret_post"
 * (both in the form). resource and scope may be NULL. */
struct mcp_refresh {
    const char *token_endpoint, *client_id, *client_secret, *auth;
    const char *refresh_token, *resource, *scope;
};
int mcp_oauth_refresh(struct mcp_hub *h, const struct mcp_refresh *r, double timeout_s,
                      mcp_done_cb cb, void *ctx, struct mcp_op **op, struct wp_err *err);

/* No callback after this. Safe from any callback, mcp's included. */
void mcp_op_cancel(struct mcp_op *op);

/* Normalized form of an MCP server URL, for matching credentials to
 * servers: scheme and host lower-cased, the scheme's default port
 * dropped, an empty path made "/", one trailing "/" of a longer path
 * dropped, the fragment dropped; query kept as is. WP_EINVAL_INPUT for
 * what is not an http(s) URL with a host. */
int mcp_url_normalize(const char *url, char *out, size_t cap);

#endif
