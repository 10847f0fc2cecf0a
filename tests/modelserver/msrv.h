/* msrv.h - wp-modelserver: a local stand-in for Anthropic's Messages API.
 *
 * Test infrastructure, not part of the product. One process, one libev
 * loop, no threads: every stream is a chain of ev_timer steps. The pieces
 * are exposed here so the parser and the reply builder can be tested and
 * fuzzed without sockets:
 *
 *   msrv_parser_*   HTTP/1.1 request parsing over llhttp (bounded)
 *   msrv_config_*   flags + JSON script: distributions, turns, faults
 *   msrv_msgreq_*   validation of a POST /v1/messages body
 *   msrv_plan_*     the reply as timed SSE segments (and the JSON message)
 *   msrv_server_*   the libev server
 *
 * Errors follow base/err.h: int return, struct wp_err *err last.
 * All functions run on the loop thread (there is no other).
 */
#ifndef MSRV_H
#define MSRV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/buf.h"

struct wp_err;

/* ---- HTTP request parsing ------------------------------------------- */

#define MSRV_HEAD_MAX (16 * 1024)
#define MSRV_BODY_MAX (8 * 1024 * 1024)

struct msrv_req {
    char method[16];
    char path[256];       /* without the query string */
    bool has_api_key;     /* x-api-key present and non-empty */
    bool has_auth;        /* Authorization present and non-empty */
    bool has_version;     /* anthropic-version present */
    bool expect_continue; /* Expect: 100-continue */
    bool keep_alive;      /* valid once complete */
    struct wp_buf body;   /* bounded by the parser's max_body */
};

struct msrv_parser; /* opaque: holds an llhttp_t */

/* Caller owns the result (free with msrv_parser_free). NULL on ENOMEM. */
struct msrv_parser *msrv_parser_new(size_t max_body);
void msrv_parser_free(struct msrv_parser *p);

/* Feed bytes. Parsing stops after one complete request (pipelining is
 * served one request at a time). Returns:
 *   >= 0          bytes consumed; *done set when a request is complete
 *                 (msrv_parser_req() then borrows it until msrv_parser_next)
 *   WP_EPROTO     malformed request (answer 400 and close)
 *   WP_ETOOBIG    head over MSRV_HEAD_MAX (431) or body over max (413);
 *                 err->msg says which. */
int msrv_parser_feed(struct msrv_parser *p, const char *data, size_t len, bool *done,
                     struct wp_err *err);
/* Headers are complete and the client waits for "100 Continue": true once
 * per request (the flag is cleared by the call). */
bool msrv_parser_take_continue(struct msrv_parser *p);
/* Borrowed until msrv_parser_next / msrv_parser_free. */
struct msrv_req *msrv_parser_req(struct msrv_parser *p);
/* Forget the current request and accept the next one. */
void msrv_parser_next(struct msrv_parser *p);

/* ---- configuration and script --------------------------------------- */

enum msrv_dist_kind { MSRV_DIST_FIXED, MSRV_DIST_UNIFORM, MSRV_DIST_LOGNORMAL };

/* Milliseconds. fixed: a. uniform: [a, b]. lognormal: median a, p95 b. */
struct msrv_dist {
    enum msrv_dist_kind kind;
    double a, b;
};

/* A small deterministic generator (splitmix64). */
struct msrv_rng {
    uint64_t s;
};

enum msrv_block_kind { MSRV_BLOCK_TEXT, MSRV_BLOCK_THINKING, MSRV_BLOCK_TOOL_USE };

struct msrv_block {
    enum msrv_block_kind kind;
    char *text; /* text, thinking, or the tool input as compact JSON; owned */
    char *name; /* tool name; owned */
    char *id;   /* tool_use id, NULL = generated; owned */
};

enum msrv_fault_kind {
    MSRV_FAULT_NONE,
    MSRV_FAULT_STATUS,       /* HTTP error status before any stream */
    MSRV_FAULT_STREAM_ERROR, /* `event: error` mid-stream */
    MSRV_FAULT_DROP,         /* connection closed mid-stream */
    MSRV_FAULT_STALL,        /* nothing more sent mid-stream, the connection kept open */
};

struct msrv_turn {
    struct msrv_block *blocks; /* owned */
    size_t n_blocks;
    char stop_reason[32]; /* "" = tool_use if a tool_use block, else end_turn */
    bool has_ttft;
    struct msrv_dist ttft;
    enum msrv_fault_kind fault;
    int fault_status; /* for MSRV_FAULT_STATUS; 0 = the config's */
    int fault_after;  /* for mid-stream faults: segments sent first */
};

struct msrv_conv {
    char *match; /* substring of the first user message; NULL = any; owned */
    struct msrv_turn *turns;
    size_t n_turns;
};

/* "first N requests, then a fraction of the rest". */
struct msrv_fault_rule {
    int first;
    double rate;
};

struct msrv_config {
    char host[64];
    int port;
    uint64_t seed;
    struct msrv_dist ttft;
    double tokens_per_s; /* <= 0: no delay between deltas */
    int chunk_tokens;    /* tokens per content_block_delta */
    char *text;          /* default reply text; owned */
    bool require_auth;
    bool ev_timer;   /* libev timers instead of timerfds (ms-rounded) */
    size_t max_body;
    /* Faults. Each rule counts only the requests that reach it. */
    int fault_status;      /* 529 default */
    int retry_after;       /* seconds, for the retry-after header; < 0 = none */
    struct msrv_fault_rule status_rule, error_rule, drop_rule, stall_rule;
    int fault_after;       /* segments sent before a mid-stream fault */
    struct msrv_conv *convs; /* owned */
    size_t n_convs;
};

void msrv_config_init(struct msrv_config *cfg);
void msrv_config_free(struct msrv_config *cfg);
/* Parse "fixed:MS", "uniform:MIN:MAX" or "lognormal:MEDIAN:P95". */
int msrv_dist_parse(const char *spec, struct msrv_dist *out, struct wp_err *err);
/* Merge a JSON script (format in tests/modelserver/README.md) into cfg;
 * keys present override what is there. */
int msrv_config_load_json(struct msrv_config *cfg, const char *json, size_t len,
                          struct wp_err *err);
int msrv_config_load_file(struct msrv_config *cfg, const char *path, struct wp_err *err);

void msrv_rng_seed(struct msrv_rng *r, uint64_t seed, uint64_t stream);
uint64_t msrv_rng_next(struct msrv_rng *r);
double msrv_rng_double(struct msrv_rng *r); /* [0, 1) */
/* A sample in milliseconds, never negative. */
double msrv_dist_sample(const struct msrv_dist *d, struct msrv_rng *r);

/* ---- the request ----------------------------------------------------- */

struct msrv_msgreq {
    json_t *root;              /* owned */
    const char *model;         /* borrowed from root */
    long max_tokens;
    bool stream;
    size_t n_assistant;        /* assistant messages: selects the turn */
    size_t n_tool_results;
    const char *first_user;    /* first user text, borrowed; "" if none */
    long input_tokens;         /* an estimate: body bytes / 4 */
    long cache_read;           /* of those, read from the prompt cache (msrv_cache_bill) */
    long cache_created;        /* of those, written to it */
};

/* ---- prompt caching (msrv_cache.c) ---------------------------------- */

#define MSRV_CACHE_SLOTS 4096
#define MSRV_CACHE_MAX_BLOCKS 4096
struct msrv_cache_entry {
    uint64_t key;        /* hash of a prompt prefix ending at a breakpoint */
    uint64_t expires_ms;
};
struct msrv_cache {
    struct msrv_cache_entry e[MSRV_CACHE_SLOTS];
};
/* Bill a request body's prompt against the cache (and record what it
 * writes): *read tokens read from it, *created written; both 0 without
 * cache_control. */
void msrv_cache_bill(struct msrv_cache *c, json_t *root, uint64_t now_ms, long *read,
                     long *created);

/* Validate a Messages API body. On failure returns WP_EINVAL_INPUT with
 * err->msg the message for an invalid_request_error. out owns root on
 * success (free with msrv_msgreq_free). */
int msrv_msgreq_parse(const char *body, size_t len, struct msrv_msgreq *out,
                      struct wp_err *err);
void msrv_msgreq_free(struct msrv_msgreq *r);

/* The turn to play for a request: the first conversation whose match is
 * in the first user message, turn n_assistant; NULL past its end (the
 * default text reply is played then). Borrowed from cfg. */
const struct msrv_turn *msrv_config_pick(const struct msrv_config *cfg,
                                         const struct msrv_msgreq *req);

/* ---- the reply plan -------------------------------------------------- */

struct msrv_seg {
    double delay_ms; /* after the previous segment (the first: the TTFT) */
    char *data;      /* SSE text of one or more events; owned */
    size_t len;
};

struct msrv_plan {
    struct msrv_seg *segs; /* owned */
    size_t n, cap;
    double ttft_ms;        /* planned */
    double total_ms;       /* planned, sum of delays */
    long output_tokens;
    char stop_reason[32];
    char msg_id[40];
    json_t *message;       /* the final Message object; owned */
};

/* Build the reply to req: turn, or the default text if NULL. Returns 0 or
 * -ENOMEM. plan is caller-owned (msrv_plan_free). */
int msrv_plan_build(const struct msrv_config *cfg, const struct msrv_turn *turn,
                    const struct msrv_msgreq *req, struct msrv_rng *rng,
                    struct msrv_plan *plan, struct wp_err *err);
void msrv_plan_free(struct msrv_plan *plan);

/* {"type":"error","error":{"type":TYPE,"message":MSG},"request_id":ID}.
 * Caller owns the string (free()). NULL on ENOMEM. */
char *msrv_error_body(const char *type, const char *msg, const char *request_id);
/* The API's error type for an HTTP status. Static string. */
const char *msrv_error_type(int status);
/* "<prefix>_" + 24 alphanumerics from rng into out. */
void msrv_make_id(char *out, size_t cap, const char *prefix, struct msrv_rng *rng);

/* ---- the server ------------------------------------------------------ */

struct msrv_server;

/* Listen on cfg->host:cfg->port (borrowed for the server's life) on the
 * default loop. Caller owns the server (msrv_server_free). */
int msrv_server_new(const struct msrv_config *cfg, struct msrv_server **out,
                    struct wp_err *err);
/* The port listened on (the kernel's choice when cfg->port is 0). */
int msrv_server_port(const struct msrv_server *srv);
/* Stop listening, close every connection. Call after ev_run returns. */
void msrv_server_free(struct msrv_server *srv);

#endif
