/* sched.h - warmpool-scheduler: the HTTP API (Managed Agents-compatible)
 * and the session event log. Public interface used by main.c and tests.
 *
 * All state lives in Redis; a scheduler process holds only connections.
 * Every function here runs on the loop thread (EV_DEFAULT).
 */
#ifndef SCHED_H
#define SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "base/err.h"
#include "pool/pool.h"
#include "scheduler/model.h"

#define SCHED_MAX_ORGS 64

struct sched_org_key {
    char org[64];
    unsigned char key_sha256[32]; /* only the hash of the key is kept */
};

enum { SCHED_NET_NONE, SCHED_NET_LIMITED, SCHED_NET_UNRESTRICTED };

struct sched_config {
    char listen_host[64];
    int listen_port;
    char redis_host[128];
    char redis_user[128];          /* AUTH user ("" = default) */
    char redis_password_file[256]; /* AUTH password's file ("" = no AUTH) */
    char redis_sentinel_password_file[256]; /* the sentinels' own ("" = none) */
    char redis_sentinels[512];     /* "host:port,..." ("" = no Sentinel: redis_host) */
    char redis_master[128];        /* the master's name at the sentinels */
    char redis_cluster[1024];      /* "host:port,..." of Redis Cluster nodes ("" = none) */
    int redis_wait_replicas;       /* durable mode: WAIT this many replicas (0: off) */
    int redis_wait_ms;             /* ...for at most this long (1000) */
    int redis_port;
    int norgs;
    struct sched_org_key orgs[SCHED_MAX_ORGS];
    size_t max_head;         /* request line + headers, bytes (431 above) */
    size_t max_body;         /* request body, bytes (413 above) */
    double header_timeout;   /* seconds from the first byte to a complete request */
    double idle_timeout;     /* seconds a keep-alive connection may sit idle */
    double redis_timeout;    /* seconds a Redis command may take */
    double sse_keepalive;    /* seconds between SSE keepalive comments */
    size_t sse_soft_limit;   /* SSE output queued above this: stop reading the log */
    size_t sse_hard_limit;   /* SSE output queued above this: cut the client off */
    double sse_soft_seconds; /* over the soft limit this long: cut the client off */
    int sse_keys_per_conn;   /* streamed sessions tailed by one Redis connection (XREAD keys) */
    bool sse_slot_groups;    /* one XREAD's keys share a hash slot (Redis Cluster) */
    bool migrate_keys;       /* --migrate-keys: move old keys, exit */
    int rate_create;         /* per organization and minute; 0 = unlimited */
    int rate_read;
    int rate_sbx_create;     /* POST /v1/sandboxes, per organization and minute */
    int rate_sbx;            /* other /v1/sandboxes requests (execute, get, delete) */
    double drain_timeout;    /* seconds SIGTERM waits for in-flight requests */
    int max_conns;           /* connections (streams included) beyond this get 503 */
    int max_conns_per_addr;  /* ...and beyond this many from one client address */
    char vault_key_hex[65];  /* AES-256 key for vault secrets (hex); empty: env
                              * WARMPOOL_VAULT_KEY, else vault_key_file */
    char vault_key_file[256]; /* made on first start (default /etc/warmpool/vault.key) */
    char vault_prev_hex[65];  /* the key before a rotation (hex), or... */
    char vault_prev_file[256]; /* ...in a file; values it sealed still open */
    bool rotate_vault_key;   /* --rotate-vault-key: re-seal every stored value, exit */
    struct sched_model_config model; /* --model-*; the key from $ANTHROPIC_API_KEY only */
    bool metrics_token_set;  /* GET /metrics wants Authorization: Bearer <token> */
    char tls_cert[512];      /* --tls-cert: PEM chain; with tls_key, HTTPS only */
    char tls_key[512];       /* --tls-key: PEM private key */
    struct pool_relay_tls_conf relay_tls; /* --relay-tls*: mutual TLS to nodes' relays */
    bool metrics_open;       /* --metrics-open: no token although listening beyond loopback */
    double metrics_cache_s;  /* the pool part of /metrics is read from Redis at most this often */
    unsigned char metrics_token_sha256[32]; /* only the hash of the token is kept */
    bool mcp_private;        /* --mcp-private on: MCP servers and token endpoints may be on
                              * loopback or private networks (default: refused) */
    /* the brain (brain.c) */
    int brain;               /* 1 on, 0 off, -1 auto: on when a model is configured
                              * (--model-url given or ANTHROPIC_API_KEY set) */
    int brain_lease_ms;      /* a session's brain lease; renewed every third */
    double brain_linger_s;   /* an idle session keeps its brain and sandbox this long */
    double sandbox_idle_s;   /* a /v1/sandboxes sandbox without an execute this long is
                                released (its lease is renewed until then) */
    double sandbox_lease_s;  /* ...and its lease, renewed at a third (default 60) */
    bool relay_pipe;         /* a new link's route, hello and attach in one round trip
                              * (pool_connect_pipe; $WARMPOOL_RELAY_PIPE=off: one each) */
    int max_tokens;          /* max_tokens of each model request */
    bool prompt_cache;       /* cache_control on the end of each request's prompt */
    double archived_ttl_s;   /* an archived session's object and log expire after this (0: kept) */
    long session_log_max;    /* a session's log refuses client input beyond this many entries */
    int max_model_rounds;    /* model requests in one turn before it is stopped */
    int api_network;         /* most network an API environment gets: SCHED_NET_* */
    char files_dir[256];     /* the Files API's content, one file per id */
    size_t files_max_bytes;  /* largest upload (413 above); bodies are buffered */
    struct sched_files_s3 {  /* --files-s3-*: an S3-compatible store instead of files_dir */
        char endpoint[200];  /* http(s)://host[:port][/path], no trailing '/'; "" = off */
        char bucket[64];     /* path-style: <endpoint>/<bucket>/<file id> */
        char region[32];     /* SigV4's region (us-east-1) */
        char userpwd[384];   /* "keyid:secret" from $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY */
    } files_s3;
    char hands_dir[256];     /* directory holding warmpool-hands on the nodes (bound at
                                /.wp in API environments' templates) */
};

/* Defaults (listen 127.0.0.1:8080, redis 127.0.0.1:6379, limits 60/600). */
void sched_config_defaults(struct sched_config *cfg);

/* Parse argv into cfg (after defaults). Returns 0, 1 when --help was
 * printed (caller exits 0), or WP_ECONFIG with err filled. */
int sched_config_parse_args(struct sched_config *cfg, int argc, char **argv,
                            struct wp_err *err);

/* Add "ORG:KEY" to cfg (hashes KEY). Returns 0 or WP_ECONFIG. */
int sched_config_add_key(struct sched_config *cfg, const char *spec, struct wp_err *err);

struct sched_server;

/* Create the server on loop: binds the listener, starts connecting to
 * Redis. Caller owns the result (free with sched_server_free after the
 * loop returned). Returns NULL with err filled on failure. */
struct sched_server *sched_server_new(struct ev_loop *loop, const struct sched_config *cfg,
                                      struct wp_err *err);
/* Port actually bound (useful with --listen 127.0.0.1:0). */
int sched_server_port(const struct sched_server *srv);
/* Stop accepting, finish in-flight requests, close streams, then stop
 * every watcher so ev_run returns. Idempotent. */
void sched_server_drain(struct sched_server *srv);
void sched_server_free(struct sched_server *srv);

#endif
