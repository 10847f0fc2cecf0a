/* sched_int.h - shared between the files of scheduler/ only (sched__*). */
#ifndef SCHED_INT_H
#define SCHED_INT_H

#include <ev.h>
#include <hiredis/async.h>

#include "base/redis.h"
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "scheduler/sched.h"

/* ---- HTTP request parsing (http_parse.c; the only user of llhttp.h) ---- */

#define SCHED_HTTP_MAX_HEADERS 64

struct sched_http_header {
    size_t name;  /* offsets into head; NUL-terminated; name lowercased */
    size_t value;
};

struct sched_http_req {
    char method[16];
    struct wp_buf head;  /* url, header names and values, NUL-separated */
    size_t url;          /* offset of the url in head */
    int nheaders;
    struct sched_http_header headers[SCHED_HTTP_MAX_HEADERS];
    struct wp_buf body;
    bool keep_alive;
    bool has_content_length;
};

struct sched_http_parser {
    void *llhttp;          /* llhttp_t, opaque outside http_parse.c */
    void *settings;        /* llhttp_settings_t */
    struct sched_http_req req;
    int err_status;        /* HTTP status to answer with after an error */
    const char *err_reason;
    bool in_message;       /* a request has started (for the header timeout) */
    bool headers_done;
    /* Called once the head is complete, before any body byte is kept: 0
     * to go on, or an HTTP status to refuse the request with (reason in
     * *why); may lower req.body.max for this request (an unverified key)
     * or raise it (an upload, route.c). */
    int (*on_head)(void *arg, struct sched_http_req *req, const char **why);
    void *on_head_arg;
    size_t max_body;       /* configured; each request starts with it */
    bool piece_open;       /* a header name/value piece is being accumulated */
};

enum {
    SCHED_HTTP_MORE = 0, /* all input consumed, request incomplete */
    SCHED_HTTP_DONE = 1, /* one request complete; *consumed says how far */
};

/* Init with limits on the head (url + headers) and body. Returns 0 or -ENOMEM. */
int sched_http_parser_init(struct sched_http_parser *p, size_t max_head, size_t max_body);
void sched_http_parser_free(struct sched_http_parser *p);
/* Feed bytes. Returns SCHED_HTTP_MORE, SCHED_HTTP_DONE (one full request is
 * in p->req; bytes after *consumed belong to the next, pipelined request;
 * call sched_http_parser_next before feeding them) or WP_EPROTO with
 * p->err_status (400, 413, 431, 501, 505) and p->err_reason set. */
int sched_http_parser_feed(struct sched_http_parser *p, const char *data, size_t len,
                           size_t *consumed);
/* Forget the finished request and get ready for the next one. */
void sched_http_parser_next(struct sched_http_parser *p);
/* Header value by lowercase name, or NULL. Borrowed until next(). */
const char *sched_http_header(const struct sched_http_req *r, const char *name);
const char *sched_http_url(const struct sched_http_req *r);

/* ---- multipart/form-data (multipart.c) ---- */

#define SCHED_MP_BOUNDARY_MAX 70

struct sched_mp_part {
    char name[64];
    char filename[256];     /* meaningful when has_filename */
    bool has_filename;
    char content_type[128]; /* "" when the part has none */
    const char *data;       /* borrowed from the body */
    size_t len;
};
/* The boundary of a multipart/form-data content type into out. 0, or -1
 * with *why (static text). */
int sched__mp_boundary(const char *content_type, char out[SCHED_MP_BOUNDARY_MAX + 1],
                       const char **why);
/* Split a whole multipart/form-data body into at most max parts (data
 * borrowed from body). Returns the count, or -1 with *why (static). */
int sched__mp_parse(const char *content_type, const char *body, size_t len,
                    struct sched_mp_part *parts, int max, const char **why);

/* ---- Redis: base/redis.h (wp_redis, shared with the node daemon) ---- */

/* ---- Server, connections, requests (server.c) ---- */

struct sched_conn;
struct sched_req;
struct sched_sse;
struct sse_reader;
struct sched_hub;

/* vault_key.c: the key that seals vault secrets (never derived from API
 * keys), the one before a rotation, and the first format's derived key. */
struct sched_vault_keys {
    unsigned char cur[32], prev[32], legacy[32];
    bool has_prev;
    char cur_kid[17], prev_kid[17]; /* hex of sha256(key)[0..8) */
    char source[256];               /* where the current key came from */
};
int sched__vault_keys_load(const struct sched_config *cfg, struct sched_vault_keys *k,
                           struct wp_err *err);
/* "v2:<kid>:<sealed>"; caller frees; NULL on failure. */
char *sched__vault_seal(const struct sched_vault_keys *k, const char *plain, size_t n);
/* The plain text (caller frees, *n its length), *stale when it was not
 * sealed with the current key (write it back sealed again); NULL when no
 * key opens it, why then says which key it needs. */
char *sched__vault_unseal(const struct sched_vault_keys *k, const char *sealed, size_t *n,
                          bool *stale, char *why, size_t cap);
/* --rotate-vault-key: re-seal every stored value; prints a JSON summary. */
int sched__vault_rotate(const struct sched_config *cfg, struct wp_err *err);

/* The process's MCP client, made on first use (NULL when out of memory);
 * freed by sched__mcp_hub_free at the drain's end. mcp_validate.c. */
struct mcp_hub *sched__mcp_hub(struct sched_server *srv);
void sched__mcp_hub_free(struct sched_server *srv);
/* A credential's sealed secrets opened as JSON (caller owns; release with
 * sched__json_wipe); NULL with why when no key opens them. */
json_t *sched__cred_secrets(const struct sched_vault_keys *vk, const char *sealed, char *why, size_t cap);
/* The same from an HGET reply for a request: on failure answers 500
 * vault_key_mismatch and returns NULL. */
json_t *sched__req_cred_secrets(struct sched_req *req, redisReply *reply);
/* repos.c: github_repository resources. check: NULL when url (https,
 * a host name or IPv4 address, an optional port, a path), checkout (null,
 * {type: branch, name} or {type: commit, sha}) and mount_path (null or an
 * absolute path of [A-Za-z0-9._/-] without "..") are usable, else why not;
 * mount gets the mount path (default /workspace/<repo name>). host:
 * url's host name (cap bytes). */
#define SCHED_MAX_REPOS 8
const char *sched__repo_check(const char *url, json_t *checkout, json_t *mount_path, char *mount,
                              size_t cap);
int sched__repo_host(const char *url, char *host, size_t cap);
/* The shell that clones repos ([{remote, mount_path, checkout}]) in the
 * sandbox, one "WPREPO <i> ok|failed <why>" line each; 0 or -1. The error
 * type (events.md) for a failure's text. */
struct wp_buf;
int sched__repo_clone_script(json_t *repos, struct wp_buf *out);
const char *sched__repo_error_type(const char *why);

/* Zero every string in j (objects and arrays recursively), then drop the
 * reference. */
void sched__json_wipe(json_t *j);
/* The refresh request of a stored mcp_oauth credential (cred: its JSON,
 * secrets: its unsealed secrets; out borrows from both); false when it
 * has no refresh configuration or no refresh token. */
struct mcp_refresh;
bool sched__cred_refresh_req(json_t *cred, json_t *secrets, struct mcp_refresh *out);
/* A token endpoint's answer tok into the credential: secrets and cred
 * (auth.expires_at, updated_at) updated in place, then sealed and stored
 * unless the credential's rev moved on (*rev follows). Fire and forget. */
int sched__cred_store_token(struct sched_server *srv, const char *org, const char *cred_id,
                            long long *rev, json_t *cred, json_t *secrets, json_t *tok);


struct sched_server {
    struct ev_loop *loop;
    struct sched_config cfg;
    int listen_fd;
    int port;
    void *tls;            /* SSL_CTX when --tls-cert/--tls-key are set, else NULL */
    ev_io listen_io;
    ev_signal sigterm, sigint;
    ev_prepare prepare;   /* before-sleep: frees closed connections */
    ev_timer drain_timer;
    ev_timer accept_pause; /* re-enables accepting after EMFILE */
    struct sched_conn *conns;       /* live connections */
    int nconns;
    struct sched_conn *close_list;  /* closed, freed in prepare */
    struct wp_redis *rds;        /* request/response traffic */
    struct sched_fio *fio;       /* the files store's worker (fileio.c) */
    struct sched_hub *hubs;         /* sse.c: one live tail per streamed session */
    struct sse_reader *readers;     /* sse.c: the Redis connections tailing the hubs */
    struct pool_client *pool;       /* sandboxes.c: claims for /v1/sandboxes */
    struct sched_sbx *sbxs;         /* sandboxes.c: sandboxes this process links to */
    struct sched_brains *brains;    /* brain.c: sessions whose loop this process runs */
    struct mcp_hub *mcp;            /* MCP client (brains, mcp_oauth_validate); sched__mcp_hub() */
    struct sched_metrics *metrics;  /* metrics.c */
    struct sched_mcache *mcache;    /* metrics_pool.c: the last pool scrape, shared */
    bool draining;
    bool drain_forced;              /* the drain timeout passed: stop regardless */
    uint64_t req_seq;
    uint64_t boot_id;
    struct sched_vault_keys vk;
};

struct sched_req {
    struct sched_server *srv;
    struct sched_conn *conn;  /* NULL once the client is gone */
    const struct sched_http_req *http;
    char request_id[40];
    char org[64];
    const struct sched_route *route;
    int nparams;
    char params[3][128];      /* decoded path parameters */
    int nquery;
    char *qkeys[64], *qvals[64]; /* decoded query, owned */
    json_t *body;             /* parsed JSON body or NULL; owned */
    json_t *tmp;              /* scratch owned by handlers (freed at end) */
    json_t *tmp2;
    int step;                 /* handler-defined state */
    int pending;              /* Redis commands in flight */
    bool answered;
    ev_timer timeout;
    char extra_headers[256]; /* "name: value\r\n" lines added to the response */
    _Alignas(16) unsigned char load_state[512]; /* resources.c scratch */
    /* quota.c: what runs once a quota check passed */
    void (*quota_next)(struct sched_req *, json_t *env, long long rev);
    void (*quota_sbx_next)(struct sched_req *, const char *pool, const char *id, json_t *record);
    void (*files_next)(struct sched_req *); /* files.c: after the file resources' check */
    void (*work_next)(struct sched_req *);  /* work.c: once the environment is the caller's */
    char scratch[256];       /* handler scratch (ids, cursors) */
    /* Set by a handler: called with the stored object (owned) instead of
     * answering 200 when an object create/store succeeds. */
    void (*after)(struct sched_req *req, json_t *obj);
    char env_key[128];        /* set when authenticated by an environment key: its env */
    char tok_session[64];     /* set when authenticated by a work item's sessions token */
    char tok_work[64];
    /* events.c: an append's caller and session, while a self_hosted
     * session's work item is queued after the append */
    wp_redis_cb append_cb;
    char append_sid[64];
    int block_ms, reclaim_ms; /* work poll */
    double started_ms;
    ev_timer retry;           /* work poll re-check */
};

/* Write a complete response (status, JSON body) and finish req. */
void sched__respond_json(struct sched_req *req, int status, json_t *body /* steals */);
void sched__respond_raw(struct sched_req *req, int status, const char *json, size_t len);
/* The same with another content type (e.g. Prometheus text). */
void sched__respond_body(struct sched_req *req, int status, const char *content_type,
                         const char *body, size_t len);
/* API error: {"type":"error","error":{"type","message",details?},"request_id"}.
 * error_code may be NULL. */
void sched__respond_error(struct sched_req *req, int status, const char *type,
                          const char *error_code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The API's error.type for an HTTP status (400 invalid_request_error, 401
 * authentication_error, 404 not_found_error, 429 rate_limit_error, ...). */
const char *sched__error_type_for(int status);
/* Convenience wrappers. */
#define sched__bad_request(req, ...) \
    sched__respond_error((req), 400, "invalid_request_error", NULL, __VA_ARGS__)
#define sched__not_found(req, ...) \
    sched__respond_error((req), 404, "not_found_error", NULL, __VA_ARGS__)
/* NOT YET BUILT (issue 16; sessions.c): answers 400 "not supported yet"
 * and returns true when vault_ids or resources is a non-empty array. */
bool sched__refuse_unbuilt(struct sched_req *req, json_t *vault_ids, json_t *resources);

/* Issue a Redis command for req; on a NULL reply answers 503 and frees
 * req, so cb only ever sees a live reply and a live req. */
int sched__req_redis(struct sched_req *req, wp_redis_cb cb, int argc, const char **argv,
                     const size_t *lens);
int sched__req_script(struct sched_req *req, const char *script, wp_redis_cb cb,
                      int nkeys, int argc, const char **argv, const size_t *lens);

/* Turn a connection into an SSE stream: sends the 200 headers, returns
 * the connection (borrowed; it outlives req). */
struct sched_conn *sched__conn_take_for_sse(struct sched_req *req);
/* Queue bytes on a connection; returns 0 or WP_ETOOBIG (hard limit). */
int sched__conn_write(struct sched_conn *c, const char *p, size_t n);
size_t sched__conn_queued(const struct sched_conn *c);
void sched__conn_close(struct sched_conn *c);
bool sched__conn_closing(const struct sched_conn *c);
void sched__conn_set_sse(struct sched_conn *c, struct sched_sse *s);
/* For streams that are not a session's (a streamed execute): cb(ctx) runs
 * once when c closes, for whatever reason (NULL cb: no longer). */
void sched__conn_on_close(struct sched_conn *c, void (*cb)(void *ctx), void *ctx);
/* Close c once everything queued is written (the end of a stream). */
void sched__conn_end(struct sched_conn *c);
/* sse.c, called by server.c: the connection closed (free the stream state)
 * or its output queue drained (read more of the log). */
void sched__sse_conn_closed(struct sched_sse *s);
void sched__sse_conn_drained(struct sched_sse *s);
void sched__req_finish(struct sched_req *req);
/* Keep req alive across asynchronous work that is not a Redis command (a
 * tool call, a wait for a sandbox). release returns false when the client
 * went away meanwhile (req is then freed once nothing holds it): do not
 * touch req after a false. */
void sched__req_hold(struct sched_req *req);
bool sched__req_release(struct sched_req *req);

/* ---- Routing (route.c) ---- */

typedef void (*sched_handler_cb)(struct sched_req *req);

enum {
    SCHED_R_CREATE = 1 << 0, /* counts against the create rate limit */
    SCHED_R_BODY = 1 << 1,   /* a JSON object body is required */
    SCHED_R_NOAUTH = 1 << 2,
    SCHED_R_ENVKEY = 1 << 3, /* an environment key is accepted too */
    SCHED_R_UPLOAD = 1 << 5, /* multipart body of up to --files-max-bytes, not JSON */
    SCHED_R_SBX = 1 << 4,    /* /v1/sandboxes: its own rate limits (with
                                SCHED_R_CREATE: --rate-sandbox-create) */
};

struct sched_route {
    const char *method;
    const char *pattern; /* "/v1/agents/:id/versions" */
    sched_handler_cb handler;
    int flags;
    const char *name;
};

/* Match method+path; returns the route or NULL. *path_matched is set when
 * some route matches the path with another method (405). Fills params. */
/* Before the body is read: 0, or 401 when the request has no credential
 * that could be valid (a configured API key, or the shape of an
 * environment key or sessions token, which Redis checks later). Those get
 * a smaller body allowance (*max_body lowered) until they are checked. */
int sched__early_auth(struct sched_server *srv, const struct sched_http_req *h, size_t *max_body,
                      const char **why);
const struct sched_route *sched__route_match(const char *method, const char *path,
                                             bool *path_matched, int *nparams,
                                             char params[3][128]);
/* Dispatch a parsed request (server.c calls this). */
void sched__dispatch(struct sched_req *req);
const char *sched__query(const struct sched_req *req, const char *key);
/* All values of key, accepting "key[]" and "key". Returns count. */
int sched__query_all(const struct sched_req *req, const char *key, const char **out, int max);
/* Decode %XX in place; returns -1 on a bad escape. plus: '+' means ' '. */
int sched__pct_decode(char *s, bool plus);

/* ---- Utilities (util.c) ---- */

/* "agent_" + 24 random base62 characters into out (>= 40 bytes). */
void sched__new_id(const char *prefix, char *out, size_t cap);
/* RFC 3339 UTC with milliseconds. */
void sched__rfc3339(uint64_t ms, char *out, size_t cap);
int sched__parse_rfc3339(const char *s, uint64_t *ms);
bool sched__utf8_valid(const char *s, size_t n);
/* Metadata validation: object of strings, 16 keys / 64 / 512. patch: allow
 * null values (and "" when empty_deletes). Returns NULL or a message. */
const char *sched__check_metadata(json_t *m, bool patch);
/* Apply a metadata patch onto stored (a borrowed object). */
void sched__apply_metadata_patch(json_t *stored, json_t *patch, bool empty_deletes);
/* Reject fields of obj not in the NULL-terminated allowed list; returns the
 * first unknown key or NULL. */
const char *sched__unknown_field(json_t *obj, const char *const *allowed);
/* Pagination: limit (1..1000, default 20) and page cursor. Returns 0 or
 * answers 400 and returns -1. */
int sched__page_params(struct sched_req *req, int *limit, const char **page);
bool sched__query_bool(struct sched_req *req, const char *key, bool def, bool *bad);
void sched__sha256(const void *p, size_t n, unsigned char out[32]);
/* SHA-256 as 64 hex digits + NUL into out (>= 65 bytes). */
void sched__sha256_hex(const char *s, char *out);
/* base64url without padding into out (cap >= 4 * n / 3 + 4). */
void sched__b64url(const void *p, size_t n, char *out, size_t cap);
/* AES-256-GCM; out is base64 of nonce|tag|ciphertext. Caller frees. */
char *sched__seal(const unsigned char key[32], const char *plain, size_t n);
char *sched__unseal(const unsigned char key[32], const char *sealed, size_t *n);

/* ---- Handlers (one per route; agents.c, envs.c, sessions.c, events.c,
 * sse.c, vaults.c) ---- */
#define SCHED_HANDLERS(X)                                                   \
    X(agent_create) X(agent_list) X(agent_get) X(agent_update)              \
    X(agent_archive) X(agent_versions)                                      \
    X(env_create) X(env_list) X(env_get) X(env_update) X(env_delete)        \
    X(env_archive)                                                          \
    X(session_create) X(session_list) X(session_get) X(session_update)      \
    X(session_delete) X(session_archive)                                    \
    X(events_list) X(events_send) X(events_stream)                          \
    X(vault_create) X(vault_list) X(vault_get) X(vault_update)              \
    X(vault_delete) X(vault_archive)                                        \
    X(cred_create) X(cred_list) X(cred_get) X(cred_update) X(cred_delete)   \
    X(cred_archive) X(cred_validate)                                        \
    X(work_poll) X(work_ack) X(work_heartbeat) X(work_stop) X(work_list)    \
    X(work_get) X(work_update) X(work_stats) X(env_key_create)               \
    X(sres_add) X(sres_list) X(sres_get) X(sres_update) X(sres_delete)     \
    X(sbx_create) X(sbx_get) X(sbx_execute) X(sbx_delete)                  \
    X(file_upload) X(file_list) X(file_get) X(file_content) X(file_delete)  \
    X(metrics) X(dashboard)
#define SCHED_HANDLER_DECL(name) void sched__h_##name(struct sched_req *req);
SCHED_HANDLERS(SCHED_HANDLER_DECL)
#undef SCHED_HANDLER_DECL
/* metrics_pool.c: frees the shared pool scrape (server teardown). */
void sched__metrics_cache_free(struct sched_server *srv);

/* Generic resources (resources.c), used by agents, environments, sessions,
 * vaults, credentials. */
struct sched_kind {
    const char *name;       /* "agent" */
    const char *id_prefix;  /* "agent_" */
    const char *deleted_type;
};
extern const struct sched_kind sched__kind_agent, sched__kind_env, sched__kind_session,
    sched__kind_vault, sched__kind_cred, sched__kind_work, sched__kind_file;

/* ---- files.c: the Files API's store and sessions' file resources ---- */
/* "file_" + id characters, at most 64 bytes. */
bool sched__file_id_valid(const char *id);
/* A file resource's mount path from its file_id and mount_path (absent or
 * null: /mnt/session/uploads/<file_id>) into out. NULL, or a message
 * (static) for a bad id or path. */
const char *sched__file_mount_path(json_t *fid, json_t *mp, char *out, size_t cap);
/* Check that every file resource in resources names a live file of
 * req->org, then next(req); else 404 (or 500) answered. */
void sched__files_owned(struct sched_req *req, json_t *resources,
                        void (*next)(struct sched_req *req));
/* The store itself (files_dir, or S3 when configured): blocking, so only
 * the files worker (fileio.c) calls them. get: *out caller-owned. */
int sched__store_put(const struct sched_config *cfg, const char *id, const void *data,
                     size_t len, struct wp_err *err);
int sched__store_get(const struct sched_config *cfg, const char *id, char **out, size_t *len,
                     struct wp_err *err);
int sched__store_del(const struct sched_config *cfg, const char *id, struct wp_err *err);
/* What a client is told of a store error: the S3 store's message, not the
 * directory store's (a local path). */
const char *sched__store_why(const struct sched_config *cfg, const struct wp_err *err);

/* The files worker (fileio.c): the store's blocking work on a thread of
 * its own, one job at a time in order; cb runs on the loop with rc (0, or
 * < 0 and err), and for a GET data/len (the callback's to free; NULL
 * otherwise). -ECANCELED when the scheduler stops first. The submit calls
 * return 0 (cb will run once) or < 0 (it will not). */
struct sched_fio;
typedef void (*sched_fio_cb)(void *ctx, int rc, const struct wp_err *err, char *data,
                             size_t len);
struct sched_fio *sched__fio_new(struct ev_loop *loop, const struct sched_config *cfg,
                                 struct wp_err *err);
/* Waits for the job running; the rest are called back with -ECANCELED. */
void sched__fio_free(struct sched_fio *f);
/* Jobs submitted and not yet called back. */
int sched__fio_queued(const struct sched_fio *f);
/* Stores data (len bytes); owned (may be NULL) is the buffer it lies in,
 * freed once stored (also when this fails). */
int sched__fio_put(struct sched_fio *f, const char *id, char *owned, const void *data,
                   size_t len, sched_fio_cb cb, void *ctx);
int sched__fio_get(struct sched_fio *f, const char *id, sched_fio_cb cb, void *ctx);
int sched__fio_del(struct sched_fio *f, const char *id, sched_fio_cb cb, void *ctx);

/* The S3-compatible files store (files_s3.c). Blocking requests on the
 * object <endpoint>/<bucket>/<id>; a missing object is WP_ENOTFOUND (GET)
 * or success (DELETE). Error messages name the method, id and the store's
 * answer, never the endpoint or credentials (clients may see them). */
int sched__s3_put(const struct sched_files_s3 *c, const char *id, const void *data, size_t len,
                  struct wp_err *err);
int sched__s3_get(const struct sched_files_s3 *c, const char *id, size_t max, char **out,
                  size_t *len, struct wp_err *err);
int sched__s3_del(const struct sched_files_s3 *c, const char *id, struct wp_err *err);
/* --files-s3-NAME VAL: 0 taken, 1 not an S3 option, or WP_ECONFIG. */
int sched__s3_option(struct sched_files_s3 *c, const char *name, const char *val,
                     struct wp_err *err);
/* After all options: both endpoint and bucket or neither; the credentials
 * from the environment, which is then cleared of them. 0 or WP_ECONFIG. */
int sched__s3_check(struct sched_files_s3 *c, struct wp_err *err);

/* Queue a session work item in a self_hosted environment (work.c), unless
 * the session's latest item there is live (not stopped): at creation, and
 * for input to a dormant session (events.c). cb gets the script's reply:
 * the item's sequence, or 0 when one was live. */
void sched__work_enqueue(struct sched_req *req, const char *env, const char *session_id,
                         wp_redis_cb cb);
/* The same for org, outside a request's bookkeeping; 0, or < 0 (not
 * connected: cb is never called). */
int sched__work_enqueue_for(struct sched_server *srv, const char *org, const char *env,
                            const char *session_id, wp_redis_cb cb, void *ctx);

/* Redis key helpers (ARCHITECTURE.md, Redis keys): an object is
 * "wp:obj:{<sid>}" (a session) or "wp:obj:{<org>}:<id>" (agent, environment,
 * vault, credential, file: sched__kind_org_tagged); org is ignored but for
 * the org-tagged kinds. A work item is "wp:wq:{<env>}:item:<id>" (the
 * generic object calls find it from its scope "<org>:<env>"), with the
 * queue's other keys "wp:wq:{<env>}:<which>". An index is
 * "wp:idx:{<org>}[:<parent>]:<kind>[:active]" for org-tagged kinds,
 * "wp:wq:{<env>}:<org>:work[:active]" for work items, else
 * "wp:idx:<scope>:<kind>[:active]" (scope "<org>[:<parent>]"); the creation
 * sequence "wp:seq:{<org>}" for org-tagged kinds, else "wp:seq" (work
 * items: "wp:wq:{<env>}:seq"). */
void sched__key_work(char *out, size_t cap, const char *env, const char *id);
void sched__key_wq(char *out, size_t cap, const char *env, const char *which);
bool sched__kind_org_tagged(const struct sched_kind *k);
void sched__key_obj(char *out, size_t cap, const char *org, const char *id);
void sched__key_idx(char *out, size_t cap, const char *org, const char *scope,
                    const struct sched_kind *k, bool active);
void sched__key_seq(char *out, size_t cap, const char *org, const struct sched_kind *k);
/* "wp:agentver:{<org>}:<agent id>": an agent's version snapshots. */
void sched__key_agentver(char *out, size_t cap, const char *org, const char *agent_id);
void sched__key_events(char *out, size_t cap, const char *session_id);
/* "wp:brain:{<sid>}": the session's brain lease; "wp:brain:fence:{<sid>}":
 * its token counter. Every key of one session is in one hash slot. */
void sched__key_lease(char *out, size_t cap, const char *session_id);
void sched__key_fence(char *out, size_t cap, const char *session_id);

/* Store a new object (json, steals) and answer 200 with it. extra: flat
 * list of name/value pairs also kept as hash fields (for list filters),
 * NULL-terminated. scope: index owner ("<org>" or "<org>:<parent>"). */
void sched__obj_create(struct sched_req *req, const struct sched_kind *k, const char *scope,
                       json_t *obj, const char *const *extra);
/* Load an object owned by req->org; cb gets it (owned) or the request was
 * answered 404. */
typedef void (*sched_obj_cb)(struct sched_req *req, json_t *obj, long long rev);
void sched__obj_load(struct sched_req *req, const struct sched_kind *k, const char *id,
                     sched_obj_cb cb);
/* Compare-and-set the stored object at rev; answers 200 with obj or 409.
 * archive: also remove from the active index of scope. Steals obj. */
void sched__obj_store(struct sched_req *req, const struct sched_kind *k, const char *scope,
                      json_t *obj, long long rev, bool archive, const char *const *extra,
                      const char *push_version_key);
/* Variants: live is a JSON fragment ("\"status\":\"idle\"") kept apart
 * from json and spliced in on every read; scope (may be NULL) must match
 * the object's scope on load. */
void sched__obj_create_live(struct sched_req *req, const struct sched_kind *k,
                            const char *scope, json_t *obj, const char *live,
                            const char *const *extra);
void sched__obj_store_live(struct sched_req *req, const struct sched_kind *k,
                           const char *scope, json_t *obj, long long rev, bool archive,
                           const char *live, const char *const *extra,
                           const char *push_version_key);
/* Store and, in the same script, RPUSH (auxmode "rpush") or XADD ("xadd":
 * fields t=auxtype, e=auxval) onto auxkey. */
void sched__obj_store_aux(struct sched_req *req, const struct sched_kind *k,
                          const char *scope, json_t *obj, long long rev, bool archive,
                          const char *live, const char *const *extra, const char *auxmode,
                          const char *auxkey, const char *auxval, const char *auxtype);
void sched__obj_load_scoped(struct sched_req *req, const struct sched_kind *k, const char *id,
                            const char *scope, sched_obj_cb cb);
/* Parse a stored object with its live fragment. Caller owns the result. */
json_t *sched__obj_parse(const char *json, size_t jl, const char *live, size_t ll);
/* Delete; answers {id, type: deleted_type}, or hands that answer (owned)
 * to req->after when set. */
void sched__obj_delete(struct sched_req *req, const struct sched_kind *k, const char *scope,
                       const char *id);
/* List one page of scope's index; filter: Lua-evaluated hash field equality
 * pairs (NULL-terminated). next_page and (sessions) prev_page cursors. */
void sched__obj_list(struct sched_req *req, const struct sched_kind *k, const char *scope,
                     bool include_archived, bool asc, const char *const *filter,
                     bool bidirectional);

/* Session events (events.c). */
extern const char sched__lua_append[];
/* Validate one client event; NULL or a message (static). */
const char *sched__event_validate(json_t *e, bool initial);
/* Validate an events array and build the stored forms (*out, owned).
 * Returns 0, or -1 with *msg. */
int sched__events_prepare(json_t *events, bool initial, int max, json_t **out,
                          const char **msg);
/* Append prepared events to session sid (status machine included). */
void sched__events_append(struct sched_req *req, const char *sid, json_t *prepared,
                          wp_redis_cb cb);
/* Write one event as served: stored json + id + processed_at from the
 * stream id. */
/* Same, with an explicit event id (the entry's i field) when non-empty. */
void sched__event_splice_id(struct wp_buf *b, const char *stream_id, const char *xid,
                            const char *json, size_t len);
void sched__event_splice(struct wp_buf *b, const char *stream_id, const char *json,
                         size_t len);

/* /v1/sandboxes (sandboxes.c): the pool client and the links this
 * process holds. */
struct sched_sbx;
/* ---- TLS (tls.c): the SSL_CTX and SSL objects as void * so that only
 * tls.c includes OpenSSL's headers. ---- */
#define SCHED_TLS_WANT_READ (-100001)
#define SCHED_TLS_WANT_WRITE (-100002)
int sched__tls_ctx_new(const char *cert, const char *key, void **out, struct wp_err *err);
void sched__tls_ctx_free(void *ctx);
void *sched__tls_conn_new(void *ctx, int fd);
/* notify: send close_notify first (a clean end of the response). */
void sched__tls_conn_free(void *ssl, bool notify);
ssize_t sched__tls_read(void *ssl, void *buf, size_t n);
ssize_t sched__tls_write(void *ssl, const void *buf, size_t n);

/* ---- the brain (brain.c) ---- */
/* Start the brain if configured (srv->cfg.brain). */
int sched__brain_init(struct sched_server *srv, struct wp_err *err);
/* The drain begins: every brain stops and its lease is released at once,
 * announced on the wake channel, so another scheduler continues each
 * session without waiting for the lease to expire; no brain is taken here
 * from then on (input is announced for the others). */
void sched__brain_handover(struct sched_server *srv);
/* Lease releases not answered yet (the drain waits for them). */
int sched__brain_handovers(const struct sched_server *srv);
/* Before srv->rds goes: brains left stop (their leases expire, so other
 * schedulers take their sessions over). */
void sched__brain_shutdown(struct sched_server *srv);
/* After srv->rds is gone (its callbacks have run). */
void sched__brain_free(struct sched_server *srv);
/* Client input was appended to session sid: run its loop here, or wake
 * the scheduler that does. */
void sched__brain_kick(struct sched_server *srv, const char *sid);
/* Puts sid in its shard of the brain's active set (or bumps its score):
 * before and after an append with input (events.c). Works without a brain
 * in this process: another scheduler's sweep reads the set. */
void sched__brain_active_add(struct sched_server *srv, const char *sid);
/* "wp:brain:active:{<shard>}": the active-set shard sid belongs to. */
void sched__brain_active_key(char *out, size_t cap, const char *sid);

/* migrate.c: move an older store's session keys to this layout (see
 * there). Synchronous, single Redis. 0 or an error. */
int sched__keys_migrate(const struct sched_config *cfg, struct wp_err *err);
/* Session sid is being archived or deleted: its sandbox goes back to the
 * pool and its brain stops. Call before the delete is sent. */
void sched__brain_session_end(struct sched_server *srv, const char *org, const char *sid);

int sched__sbx_init(struct sched_server *srv, struct wp_err *err);
void sched__sbx_shutdown(struct sched_server *srv);

/* GET /metrics (metrics_pool.c): append the pool snapshot the scrape
 * script returns (parsed JSON, borrowed) as Prometheus text. Returns 0,
 * WP_EPROTO (not a snapshot), WP_ETOOBIG or -ENOMEM. */
int sched__metrics_render_pool(json_t *snap, struct wp_buf *out);
/* API environments -> pool environments (envtpl.c). */
/* The pool environment that serves API environment env_id (its id as it
 * is: "env_..." is a valid pool name). Returns 0, WP_EINVAL_INPUT for
 * anything that is not an environment id, WP_ETOOBIG when cap is short. */
int sched__env_pool_name(const char *env_id, char *out, size_t cap);
/* The pool environment that serves API environment env (its stored
 * object): metadata warmpool.pool when set (an operator's pool), else
 * sched__env_pool_name of its id. */
int sched__env_pool_of(json_t *env, char *out, size_t cap);
/* What a cloud environment keeps hot on the nodes (quota.c): warmpool.min_hot
 * and each clone's memory_mb, cpu and disk_mb (0 when the node's default). */
void sched__envtpl_size(json_t *env, double *min_hot, double *memory_mb, double *cpu,
                        double *disk_mb);

/* ---- quota.c: per-organization quotas, operator pools' organizations ---- */
/* wp:quota:{<org>} (what NULL) or wp:quotause:{<org>}:<what>. */
void sched__key_quota(char *out, size_t cap, const char *what, const char *org);
/* Whether an operator pool whose policy says orgs (NULL: never set) serves
 * org: "*" or unset, every organization; else a comma list. */
bool sched__pool_org_allowed(const char *orgs, const char *org);
/* sandboxes.c: wp:sbx:{<org>}:<id>, a /v1/sandboxes record. */
void sched__key_sbx(char *out, size_t cap, const char *org, const char *id);
/* Answer a script's QUOTA / POOL error (429 quota_exceeded, 403
 * pool_not_allowed); false when lua_err is neither. */
bool sched__quota_refused(struct sched_req *req, const char *lua_err);
/* Check (and record) what env keeps hot against the org's quotas, or that
 * the org may use the operator pool it names; then next(req, env, rev), or
 * an error answer. Takes env. */
void sched__quota_env(struct sched_req *req, json_t *env, long long rev,
                      void (*next)(struct sched_req *, json_t *, long long));
/* Count sandbox id as one more live sandbox of the org (and check it may
 * use pool) and, in the same script, write its record wp:sbx:{org}:id from
 * record (an object of strings; taken), so the create's answer needs no
 * round trip of its own (issue 20); then next(req, pool, id, record
 * (borrowed for the call)), or an error answer (nothing written). */
void sched__quota_sbx(struct sched_req *req, const char *pool, const char *id, json_t *record,
                      void (*next)(struct sched_req *, const char *pool, const char *id,
                                   json_t *record));
/* Check what the pool needs of a (merged) environment: warmpool.* metadata
 * keys and values, supported package managers, apt names. NULL or a
 * message valid until the next call. */
const char *sched__envtpl_check(json_t *env);
/* The snapshot template (caller owns) and the policy of a stored cloud
 * environment, or NULL. */
/* The operator's cap on what API environments' networking becomes
 * (--api-network): none drops it, limited turns unrestricted into limited
 * with no hosts. Returns a new reference (caller owns): env itself when
 * the cap changes nothing, else a changed copy; env is never modified. */
json_t *sched__envtpl_cap_network(json_t *env, int cap);
json_t *sched__envtpl_template(json_t *env, const char *hands_dir, double *min_hot,
                               double *max_hot);
/* req->after hooks: publish a stored cloud environment (template +
 * policy) / withdraw an archived one, then answer 200 with env (steals). */
void sched__envtpl_publish(struct sched_req *req, json_t *env);
void sched__envtpl_withdraw(struct sched_req *req, json_t *env);
/* DELETE /v1/environments/:id: withdraw, then delete the object. */
void sched__envtpl_delete(struct sched_req *req);

/* Rate limit (route.c). */
extern const char sched__lua_ratelimit[];

#endif
