/* config.c - command-line flags and the optional config file. */
#define WP_LOG_COMPONENT "config"
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fs.h"
#include "base/log.h"
#include "scheduler/sched_int.h"

void sched_config_defaults(struct sched_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->listen_host, sizeof(cfg->listen_host), "127.0.0.1");
    cfg->listen_port = 8080;
    snprintf(cfg->redis_host, sizeof(cfg->redis_host), "127.0.0.1");
    cfg->redis_port = 6379;
    cfg->redis_wait_ms = 1000;
    cfg->max_head = 16 * 1024;
    cfg->max_body = 4 * 1024 * 1024;
    cfg->header_timeout = 10;
    cfg->idle_timeout = 75;
    cfg->redis_timeout = 5;
    cfg->sse_keepalive = 15;
    cfg->sse_soft_limit = 256 * 1024;
    cfg->sse_hard_limit = 4 * 1024 * 1024;
    cfg->sse_soft_seconds = 30;
    cfg->sse_keys_per_conn = 1000;
    cfg->rate_create = 60;
    cfg->rate_read = 600;
    /* Harnesses: 10 sandboxes a second, 100 tool calls a second. */
    cfg->rate_sbx_create = 600;
    cfg->rate_sbx = 6000;
    cfg->drain_timeout = 10;
    cfg->max_conns = 10000;
    cfg->max_conns_per_addr = 2000;
    sched_model_config_defaults(&cfg->model);
    cfg->api_network = SCHED_NET_UNRESTRICTED;
    cfg->brain = -1;
    cfg->brain_lease_ms = 6000;
    cfg->brain_linger_s = 300;
    cfg->sandbox_idle_s = 1800;
    cfg->relay_pipe = false; /* WARMPOOL_RELAY_PIPE=on turns it on */
    snprintf(cfg->vault_key_file, sizeof(cfg->vault_key_file), "/etc/warmpool/vault.key");
    cfg->metrics_cache_s = 1;
    cfg->sandbox_lease_s = 60;
    cfg->max_tokens = 8192;
    cfg->prompt_cache = true;
    cfg->session_log_max = 200000;
    cfg->max_model_rounds = 100;
    snprintf(cfg->files_dir, sizeof(cfg->files_dir), "/var/lib/warmpool/files");
    cfg->files_max_bytes = 32u << 20;
    snprintf(cfg->files_s3.region, sizeof(cfg->files_s3.region), "us-east-1");
    /* Next to our own binary, where `make` builds warmpool-hands. */
    char exe[256];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    char *slash = NULL;
    if (n > 0) {
        exe[n] = '\0';
        slash = strrchr(exe, '/');
    }
    if (slash && slash > exe) {
        *slash = '\0';
        snprintf(cfg->hands_dir, sizeof(cfg->hands_dir), "%s", exe);
    } else {
        snprintf(cfg->hands_dir, sizeof(cfg->hands_dir), "%s", WP_PREFIX "/bin");
    }
}

int sched_config_add_key(struct sched_config *cfg, const char *spec, struct wp_err *err)
{
    const char *colon = strchr(spec, ':');
    if (!colon || colon == spec || !colon[1] || (size_t)(colon - spec) >= sizeof(cfg->orgs[0].org))
        return wp_err_set(err, WP_ECONFIG, "--api-key wants ORG:KEY");
    if (cfg->norgs >= SCHED_MAX_ORGS)
        return wp_err_set(err, WP_ECONFIG, "at most %d API keys", SCHED_MAX_ORGS);
    struct sched_org_key *k = &cfg->orgs[cfg->norgs];
    for (const char *p = spec; p < colon; p++)
        if (*p == '{' || *p == '}' || *p == ' ')
            return wp_err_set(err, WP_ECONFIG, "organization names may not contain {, } or space");
    memcpy(k->org, spec, (size_t)(colon - spec));
    k->org[colon - spec] = '\0';
    sched__sha256(colon + 1, strlen(colon + 1), k->key_sha256);
    cfg->norgs++;
    return 0;
}

static int parse_hostport(const char *s, char *host, size_t cap, int *port, struct wp_err *err)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return wp_err_set(err, WP_ECONFIG, "%s: want HOST:PORT", s);
    size_t hl = (size_t)(colon - s);
    if (hl == 0 || hl >= cap)
        return wp_err_set(err, WP_ECONFIG, "%s: bad host", s);
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return wp_err_set(err, WP_ECONFIG, "%s: bad port", s);
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static void usage(void)
{
    printf("usage: warmpool-scheduler [options]\n"
           "  --listen HOST:PORT       HTTP listen address (default 127.0.0.1:8080; port 0 = any)\n"
           "  --redis HOST:PORT        Redis server (default 127.0.0.1:6379)\n"
           "  --api-key ORG:KEY        accept KEY for organization ORG (repeatable; only a\n"
           "                           SHA-256 of KEY is kept in memory)\n"
           "  --config FILE            read options from FILE, one 'option value' per line\n"
           "  --rate-create N          create requests per organization and minute (60; 0 = off)\n"
           "  --rate-read N            other requests per organization and minute (600; 0 = off)\n"
           "  --rate-sandbox-create N  POST /v1/sandboxes per organization and minute (600;\n"
           "                           0 = off); not counted in --rate-create\n"
           "  --rate-sandbox N         other /v1/sandboxes requests (execute, get, delete) per\n"
           "                           organization and minute (6000; 0 = off)\n"
           "  --max-body BYTES         request body limit (4194304)\n"
           "  --max-head BYTES         request line + headers limit (16384)\n"
           "  --header-timeout SECS    time to receive a whole request (10)\n"
           "  --idle-timeout SECS      keep-alive idle time (75)\n"
           "  --sse-keepalive SECS     keepalive comment interval on streams (15)\n"
           "  --sse-soft-limit BYTES   stop reading the log above this much queued output (262144)\n"
           "  --sse-hard-limit BYTES   cut a stream off above this much queued output (4194304)\n"
           "  --sse-soft-seconds SECS  cut a stream off after this long above the soft limit (30)\n"
           "  --sse-keys-per-conn N    streamed sessions one Redis connection tails (1000, 1..100000)\n"
           "  --sse-slot-groups on|off one tailing connection per hash slot's sessions (Redis\n"
           "                           Cluster refuses an XREAD across slots; off, on with\n"
           "                           --redis-cluster)\n"
           "  --max-conns N            open connections, streams included (10000); more get 503\n"
           "  --max-conns-per-addr N   ...of them from one client address (2000; 0: no cap)\n"
           "  --vault-key HEX          64 hex digits: AES-256 key for vault secrets (else\n"
           "                           $WARMPOOL_VAULT_KEY, else --vault-key-file)\n"
           "  --vault-key-file PATH    the key's file, made on first start; every scheduler of\n"
           "                           a deployment needs the same (/etc/warmpool/vault.key)\n"
           "  --vault-key-previous HEX, --vault-key-previous-file PATH\n"
           "                           the key before a rotation: what it sealed still opens\n"
           "  --rotate-vault-key       re-seal every stored secret with the current key, exit\n"
           "  --migrate-keys           move sessions and objects stored by an older version\n"
           "                           to this key layout (every scheduler stopped; single\n"
           "                           Redis), exit\n"
           "  --redis-password-file PATH  AUTH to Redis with the password on its first line\n"
           "  --redis-user NAME        ...as this ACL user (default: Redis's default user)\n"
           "  --redis-sentinels HOST:PORT,...  find Redis through these sentinels (--redis is\n"
           "                           then unused); every connection asks them again when it\n"
           "                           reconnects, following a failover\n"
           "  --redis-master NAME      the master's name at the sentinels (with --redis-sentinels)\n"
           "  --redis-sentinel-password-file PATH  AUTH to the sentinels (their requirepass)\n"
           "                           with the password on its first line\n"
           "  --redis-cluster HOST:PORT,...  Redis Cluster: any of its nodes (--redis is then\n"
           "                           unused; not with --redis-sentinels)\n"
           "  --redis-wait-replicas N  durable mode: answer a write (an appended event...) only\n"
           "                           once N replicas have it (WAIT), so a failover keeps it;\n"
           "                           fewer within --redis-wait-ms (1000): 503 (0 = off)\n"
           "  --redis-wait-ms MS       see --redis-wait-replicas\n"
           "  --model-url URL          Messages API base (https://api.anthropic.com); the key\n"
           "                           comes from $ANTHROPIC_API_KEY only (never a flag)\n"
           "  --model-version V        anthropic-version header (2023-06-01)\n"
           "  --model-timeout SECS     sets both --model-header-timeout and --model-idle-timeout\n"
           "  --model-connect-timeout SECS  connect (10)\n"
           "  --model-header-timeout SECS   request start to response headers (60)\n"
           "  --model-idle-timeout SECS     no byte from a stream for this long (120)\n"
           "  --model-max-retries N    retries before the first event (4)\n"
           "  --model-backoff SECS     first retry backoff, doubling, full jitter (0.5)\n"
           "  --model-backoff-max SECS backoff cap (8)\n"
           "  --tls-cert PATH          serve HTTPS: PEM certificate chain (with --tls-key);\n"
           "                           without both, plain HTTP (e.g. behind nginx/haproxy)\n"
           "  --tls-key PATH           the certificate's PEM private key\n"
           "  --metrics-token TOKEN    GET /metrics wants Authorization: Bearer TOKEN (default:\n"
           "                           open on loopback; required when listening beyond it)\n"
           "  --metrics-open           serve /metrics without a token beyond loopback too\n"
           "  --metrics-cache SECS     the pool part of /metrics is read from Redis at most\n"
           "                           this often; scrapes in between share it (1; 0..60)\n"
           "  --mcp-private on|off     let MCP servers and OAuth token endpoints be on loopback,\n"
           "                           private or link-local addresses (off: refused, so an\n"
           "                           agent cannot reach this host's network through them)\n"
           "  --brain on|off|auto      run sessions' agent loops (auto: when a model is configured)\n"
           "  --brain-lease-ms MS      a session's brain lease (6000); another scheduler takes\n"
           "                           the session over this long after its brain died\n"
           "  --brain-linger SECS      an idle session keeps its brain and sandbox (300)\n"
           "  --sandbox-idle-timeout SECS  a /v1/sandboxes sandbox is kept (its lease renewed)\n"
           "                           until this long after its last execute (1800; 1..604800)\n"
           "  --sandbox-lease SECS     the lease such a sandbox holds, renewed at a third (60;\n"
           "                           3..3600): how soon a node reclaims it if we die\n"
           "  --max-tokens N           max_tokens of model requests (8192)\n"
           "  --prompt-cache on|off    mark each model request's prompt for caching (on)\n"
           "  --archived-session-ttl S an archived session (object and log) expires after S\n"
           "                           seconds (0: kept; default 0)\n"
           "  --session-log-max N      a session whose log holds N entries refuses more input\n"
           "                           (200000; 0: no cap)\n"
           "  --max-model-rounds N     model requests in one turn (100)\n"
           "  --api-network MAX        the most network an API environment gets: unrestricted\n"
           "                           (default: as the API says), limited (unrestricted becomes\n"
           "                           limited with no hosts), none (loopback only)\n"
           "  --hands-dir DIR          directory with warmpool-hands on the nodes, bound at /.wp\n"
           "                           in API environments' templates (default: this binary's)\n"
"  --files-dir DIR          where uploaded files' content is kept, one file per id\n"
           "                           (/var/lib/warmpool/files; metadata is in Redis)\n"
           "  --files-max-bytes N      largest file upload (33554432; at most 50331648: an\n"
           "                           upload is held in memory while it arrives)\n"
           "  --files-s3-endpoint URL  keep files' content in an S3-compatible store instead:\n"
           "                           objects <URL>/<bucket>/<file id> (path-style); needs\n"
           "  --files-s3-bucket NAME   too, and AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in\n"
           "                           the environment (never flags; unset once read)\n"
           "  --files-s3-region NAME   the region requests are signed for (us-east-1)\n"
           "  --log-level LEVEL        error, warn, info (default), debug\n"
           "  --log-components SPEC    e.g. all,-redis\n"
           "  --help                   this text\n"
           "Relay TLS (the nodes' agentlink relays beyond loopback are mutual TLS):\n%s",
           pool_relay_tls_usage);
}

static int apply_opt(struct sched_config *cfg, const char *name, const char *val,
                     struct wp_err *err);

static int load_file(struct sched_config *cfg, const char *path, struct wp_err *err)
{
    char *data = NULL;
    size_t len = 0;
    if (wp_read_file(path, 1 << 20, &data, &len, err) < 0)
        return wp_err_wrap(err, "config");
    int rc = 0;
    char *save = NULL;
    for (char *line = strtok_r(data, "\n", &save); line && rc == 0;
         line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#')
            continue;
        char *sp = strpbrk(line, " \t=");
        char empty[1] = "", *val = empty;
        if (sp) {
            *sp = '\0';
            val = sp + 1;
            while (*val == ' ' || *val == '\t' || *val == '=')
                val++;
            size_t vl = strlen(val);
            while (vl > 0 && (val[vl - 1] == ' ' || val[vl - 1] == '\r'))
                val[--vl] = '\0';
        }
        if (line[0] == '-' && line[1] == '-')
            line += 2;
        rc = apply_opt(cfg, line, val, err);
    }
    free(data);
    return rc;
}

static int num(const char *v, double *out, struct wp_err *err, const char *name)
{
    char *end;
    double d = strtod(v, &end);
    if (!*v || *end || d < 0)
        return wp_err_set(err, WP_ECONFIG, "--%s wants a non-negative number", name);
    *out = d;
    return 0;
}

/* --model-* (the model client). NAME is without the "model-" prefix. */
static int apply_model_opt(struct sched_model_config *mc, const char *name, const char *val,
                           struct wp_err *err)
{
    double d = 0;

    if (!strcmp(name, "url") || !strcmp(name, "version")) {
        bool url = name[0] == 'u';
        char *dst = url ? mc->base_url : mc->version;
        size_t cap = url ? sizeof(mc->base_url) : sizeof(mc->version);
        if (!*val || strlen(val) >= cap || strpbrk(val, "\r\n "))
            return wp_err_set(err, WP_ECONFIG, "--model-%s: bad value", name);
        if (url && strncmp(val, "http://", 7) && strncmp(val, "https://", 8))
            return wp_err_set(err, WP_ECONFIG, "--model-url wants http:// or https://");
        snprintf(dst, cap, "%s", val);
        return 0;
    }
    char full[64];
    snprintf(full, sizeof(full), "model-%s", name);
    if (num(val, &d, err, full) < 0)
        return WP_ECONFIG;
    if (d > 1e6)
        return wp_err_set(err, WP_ECONFIG, "--%s: too large", full);
    if (!strcmp(name, "timeout"))
        mc->header_timeout_s = mc->idle_timeout_s = d;
    else if (!strcmp(name, "connect-timeout"))
        mc->connect_timeout_s = d;
    else if (!strcmp(name, "header-timeout"))
        mc->header_timeout_s = d;
    else if (!strcmp(name, "idle-timeout"))
        mc->idle_timeout_s = d;
    else if (!strcmp(name, "max-retries"))
        mc->max_retries = (int)d;
    else if (!strcmp(name, "backoff"))
        mc->backoff_base_s = d;
    else if (!strcmp(name, "backoff-max"))
        mc->backoff_max_s = d;
    else
        return wp_err_set(err, WP_ECONFIG, "unknown option --model-%s (see --help)", name);
    if (d <= 0 && strstr(name, "timeout"))
        return wp_err_set(err, WP_ECONFIG, "--model-%s must be > 0", name);
    return 0;
}

/* The key is read from the environment so it never shows in ps. */
static int model_key_from_env(struct sched_model_config *mc, struct wp_err *err)
{
    const char *k = getenv("ANTHROPIC_API_KEY");

    if (!k)
        return 0;
    if (strlen(k) >= sizeof(mc->api_key) || strpbrk(k, "\r\n"))
        return wp_err_set(err, WP_ECONFIG, "ANTHROPIC_API_KEY: too long or not one line");
    snprintf(mc->api_key, sizeof(mc->api_key), "%s", k);
    return 0;
}

/* WARMPOOL_RELAY_PIPE=on: a new /v1/sandboxes link sends its route, hello
 * and attach in one write, and a first execute right behind them (issue
 * 20). Off by default: a node older than this refuses bytes behind a
 * route (bad_route), so it is turned on once every node runs this version
 * (a rolling upgrade does nodes first). Off: each waits for the answer
 * before it, as before issue 20. */
static int relay_pipe_from_env(struct sched_config *cfg, struct wp_err *err)
{
    const char *v = getenv("WARMPOOL_RELAY_PIPE");

    cfg->relay_pipe = false;
    if (!v || !strcmp(v, "off"))
        return 0;
    if (strcmp(v, "on") != 0)
        return wp_err_set(err, WP_ECONFIG, "WARMPOOL_RELAY_PIPE: on or off, not \"%.40s\"", v);
    cfg->relay_pipe = true;
    return 0;
}

static int apply_opt(struct sched_config *cfg, const char *name, const char *val,
                     struct wp_err *err)
{
    double d = 0;
    if (!strncmp(name, "model-", 6))
        return apply_model_opt(&cfg->model, name + 6, val, err);
    if (!strcmp(name, "listen"))
        return parse_hostport(val, cfg->listen_host, sizeof(cfg->listen_host),
                              &cfg->listen_port, err);
    if (!strcmp(name, "redis"))
        return parse_hostport(val, cfg->redis_host, sizeof(cfg->redis_host), &cfg->redis_port,
                              err);
    if (!strcmp(name, "api-key"))
        return sched_config_add_key(cfg, val, err);
    if (!strcmp(name, "config"))
        return load_file(cfg, val, err);
    if (!strcmp(name, "log-level"))
        return wp_log_set_level(val) < 0 ? wp_err_set(err, WP_ECONFIG, "bad --log-level %s", val)
                                         : 0;
    if (!strcmp(name, "log-components"))
        return wp_log_set_components(val) < 0
                   ? wp_err_set(err, WP_ECONFIG, "bad --log-components %s", val)
                   : 0;
    if (!strcmp(name, "vault-key-previous")) {
        if (strlen(val) != 64 || strspn(val, "0123456789abcdefABCDEF") != 64)
            return wp_err_set(err, WP_ECONFIG, "--vault-key-previous wants 64 hex digits");
        snprintf(cfg->vault_prev_hex, sizeof(cfg->vault_prev_hex), "%s", val);
        return 0;
    }
    if (!strcmp(name, "vault-key-file") || !strcmp(name, "vault-key-previous-file")) {
        bool prev = name[10] == 'p'; /* vault-key-previous-file */
        if (val[0] != '/' || strlen(val) >= sizeof(cfg->vault_key_file))
            return wp_err_set(err, WP_ECONFIG, "--%s wants an absolute path", name);
        snprintf(prev ? cfg->vault_prev_file : cfg->vault_key_file, sizeof(cfg->vault_key_file),
                 "%s", val);
        return 0;
    }
    if (!strcmp(name, "redis-password-file") || !strcmp(name, "redis-user")) {
        bool file = name[6] == 'p';
        if ((file && val[0] != '/') || strlen(val) >= sizeof(cfg->redis_password_file))
            return wp_err_set(err, WP_ECONFIG, "--%s wants %s", name,
                              file ? "an absolute path" : "a user name");
        snprintf(file ? cfg->redis_password_file : cfg->redis_user, sizeof(cfg->redis_user), "%s",
                 val);
        return 0;
    }
    if (!strcmp(name, "redis-sentinel-password-file")) {
        if (val[0] != '/' || strlen(val) >= sizeof(cfg->redis_sentinel_password_file))
            return wp_err_set(err, WP_ECONFIG, "--%s wants an absolute path", name);
        snprintf(cfg->redis_sentinel_password_file, sizeof(cfg->redis_sentinel_password_file),
                 "%s", val);
        return 0;
    }
    if (!strcmp(name, "redis-sentinels") || !strcmp(name, "redis-master")) {
        bool list = name[6] == 's';
        char *dst = list ? cfg->redis_sentinels : cfg->redis_master;
        size_t cap = list ? sizeof(cfg->redis_sentinels) : sizeof(cfg->redis_master);
        if (!val[0] || strlen(val) >= cap)
            return wp_err_set(err, WP_ECONFIG, "--%s: empty or too long", name);
        snprintf(dst, cap, "%s", val);
        return 0;
    }
    if (!strcmp(name, "redis-cluster")) {
        if (!val[0] || strlen(val) >= sizeof(cfg->redis_cluster))
            return wp_err_set(err, WP_ECONFIG, "--%s: empty or too long", name);
        snprintf(cfg->redis_cluster, sizeof(cfg->redis_cluster), "%s", val);
        return 0;
    }
    if (!strcmp(name, "rotate-vault-key")) {
        cfg->rotate_vault_key = true;
        return 0;
    }
    if (!strcmp(name, "vault-key")) {
        if (strlen(val) != 64 || strspn(val, "0123456789abcdefABCDEF") != 64)
            return wp_err_set(err, WP_ECONFIG, "--vault-key wants 64 hex digits");
        snprintf(cfg->vault_key_hex, sizeof(cfg->vault_key_hex), "%s", val);
        return 0;
    }
    if (!strcmp(name, "mcp-private")) {
        if (strcmp(val, "on") && strcmp(val, "off"))
            return wp_err_set(err, WP_ECONFIG, "mcp-private wants on or off");
        cfg->mcp_private = !strcmp(val, "on");
        return 0;
    }
    if (!strcmp(name, "sse-slot-groups")) {
        if (strcmp(val, "on") && strcmp(val, "off"))
            return wp_err_set(err, WP_ECONFIG, "sse-slot-groups wants on or off");
        cfg->sse_slot_groups = !strcmp(val, "on");
        return 0;
    }
    if (!strcmp(name, "migrate-keys")) {
        cfg->migrate_keys = true;
        return 0;
    }
    if (!strcmp(name, "metrics-open")) {
        if (strcmp(val, "on") && strcmp(val, "off"))
            return wp_err_set(err, WP_ECONFIG, "metrics-open wants on or off");
        cfg->metrics_open = !strcmp(val, "on");
        return 0;
    }
    int rt = pool_relay_tls_option(&cfg->relay_tls, name, val, err);
    if (rt != 0)
        return rt < 0 ? rt : 0;
    if (!strcmp(name, "tls-cert") || !strcmp(name, "tls-key")) {
        char *dst = name[4] == 'c' ? cfg->tls_cert : cfg->tls_key;
        if (!*val || strlen(val) >= sizeof(cfg->tls_cert))
            return wp_err_set(err, WP_ECONFIG, "--%s wants a file path", name);
        snprintf(dst, sizeof(cfg->tls_cert), "%s", val);
        return 0;
    }
    if (!strcmp(name, "metrics-token")) {
        if (!*val || strlen(val) > 256)
            return wp_err_set(err, WP_ECONFIG, "--metrics-token wants 1-256 characters");
        sched__sha256(val, strlen(val), cfg->metrics_token_sha256);
        cfg->metrics_token_set = true;
        return 0;
    }
    if (!strcmp(name, "api-network")) {
        if (!strcmp(val, "none"))
            cfg->api_network = SCHED_NET_NONE;
        else if (!strcmp(val, "limited"))
            cfg->api_network = SCHED_NET_LIMITED;
        else if (!strcmp(val, "unrestricted"))
            cfg->api_network = SCHED_NET_UNRESTRICTED;
        else
            return wp_err_set(err, WP_ECONFIG, "--api-network wants none, limited or unrestricted");
        return 0;
    }
    if (!strcmp(name, "prompt-cache")) {
        if (strcmp(val, "on") && strcmp(val, "off"))
            return wp_err_set(err, WP_ECONFIG, "--prompt-cache wants on or off");
        cfg->prompt_cache = !strcmp(val, "on");
        return 0;
    }
    if (!strcmp(name, "brain")) {
        if (strcmp(val, "on") && strcmp(val, "off") && strcmp(val, "auto"))
            return wp_err_set(err, WP_ECONFIG, "--brain wants on, off or auto");
        cfg->brain = !strcmp(val, "on") ? 1 : !strcmp(val, "off") ? 0 : -1;
        return 0;
    }
    if (!strcmp(name, "files-dir")) {
        if (val[0] != '/' || strlen(val) >= sizeof(cfg->files_dir) - 80)
            return wp_err_set(err, WP_ECONFIG, "--files-dir wants an absolute path");
        snprintf(cfg->files_dir, sizeof(cfg->files_dir), "%s", val);
        return 0;
    }
    if (!strncmp(name, "files-s3-", 9)) {
        int rc = sched__s3_option(&cfg->files_s3, name, val, err);
        if (rc <= 0)
            return rc;
    }
    if (!strcmp(name, "hands-dir")) {
        if (val[0] != '/' || strlen(val) >= sizeof(cfg->hands_dir) || strchr(val, '"'))
            return wp_err_set(err, WP_ECONFIG, "--hands-dir wants an absolute path");
        snprintf(cfg->hands_dir, sizeof(cfg->hands_dir), "%s", val);
        return 0;
    }
    if (num(val, &d, err, name) < 0)
        return WP_ECONFIG;
    if (!strcmp(name, "rate-create"))
        cfg->rate_create = (int)d;
    else if (!strcmp(name, "rate-read"))
        cfg->rate_read = (int)d;
    else if (!strcmp(name, "rate-sandbox-create") && d <= 1e9)
        cfg->rate_sbx_create = (int)d;
    else if (!strcmp(name, "rate-sandbox") && d <= 1e9)
        cfg->rate_sbx = (int)d;
    else if (!strcmp(name, "files-max-bytes") && d >= 1 && d <= 48 * 1024 * 1024)
        cfg->files_max_bytes = (size_t)d;
    else if (!strcmp(name, "max-body"))
        cfg->max_body = (size_t)d;
    else if (!strcmp(name, "max-head"))
        cfg->max_head = (size_t)d;
    else if (!strcmp(name, "header-timeout"))
        cfg->header_timeout = d;
    else if (!strcmp(name, "idle-timeout"))
        cfg->idle_timeout = d;
    else if (!strcmp(name, "sse-keepalive"))
        cfg->sse_keepalive = d > 0.01 ? d : 0.01;
    else if (!strcmp(name, "sse-soft-limit"))
        cfg->sse_soft_limit = (size_t)d;
    else if (!strcmp(name, "sse-hard-limit"))
        cfg->sse_hard_limit = (size_t)d;
    else if (!strcmp(name, "sse-soft-seconds"))
        cfg->sse_soft_seconds = d;
    else if (!strcmp(name, "sse-keys-per-conn") && d >= 1 && d <= 100000)
        cfg->sse_keys_per_conn = (int)d;
    else if (!strcmp(name, "redis-timeout"))
        cfg->redis_timeout = d;
    else if (!strcmp(name, "redis-wait-replicas") && d >= 0 && d <= 16)
        cfg->redis_wait_replicas = (int)d;
    else if (!strcmp(name, "redis-wait-ms") && d >= 1 && d <= 60000)
        cfg->redis_wait_ms = (int)d;
    else if (!strcmp(name, "drain-timeout"))
        cfg->drain_timeout = d;
    else if (!strcmp(name, "max-conns"))
        cfg->max_conns = (int)d;
    else if (!strcmp(name, "max-conns-per-addr"))
        cfg->max_conns_per_addr = (int)d;
    else if (!strcmp(name, "brain-lease-ms") && d >= 300 && d <= 600000)
        cfg->brain_lease_ms = (int)d;
    else if (!strcmp(name, "brain-linger"))
        cfg->brain_linger_s = d;
    else if (!strcmp(name, "sandbox-idle-timeout") && d >= 1 && d <= 7 * 86400)
        cfg->sandbox_idle_s = d;
    else if (!strcmp(name, "sandbox-lease") && d >= 3 && d <= 3600)
        cfg->sandbox_lease_s = d;
    else if (!strcmp(name, "metrics-cache") && d >= 0 && d <= 60)
        cfg->metrics_cache_s = d;
    else if (!strcmp(name, "archived-session-ttl") && d >= 0 && d <= 10 * 365 * 86400.)
        cfg->archived_ttl_s = d;
    else if (!strcmp(name, "session-log-max") && d >= 0 && d <= 1e9)
        cfg->session_log_max = (long)d;
    else if (!strcmp(name, "max-tokens") && d >= 1 && d <= 1000000)
        cfg->max_tokens = (int)d;
    else if (!strcmp(name, "max-model-rounds") && d >= 1)
        cfg->max_model_rounds = (int)d;
    else
        return wp_err_set(err, WP_ECONFIG, "unknown option --%s (see --help)", name);
    return 0;
}

static bool loopback(const char *host)
{
    return pool_addr_is_loopback(host) || strcmp(host, "[::1]") == 0;
}

int sched_config_parse_args(struct sched_config *cfg, int argc, char **argv,
                            struct wp_err *err)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 1;
        }
        if (strncmp(a, "--", 2) != 0)
            return wp_err_set(err, WP_ECONFIG, "unexpected argument %s (see --help)", a);
        char name[64];
        const char *val;
        const char *eq = strchr(a + 2, '=');
        if (eq) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else if (!strcmp(a, "--metrics-open") || !strcmp(a, "--rotate-vault-key") ||
                   !strcmp(a, "--migrate-keys")) { /* flags */
            snprintf(name, sizeof(name), "%s", a + 2);
            val = "on";
        } else {
            snprintf(name, sizeof(name), "%s", a + 2);
            if (i + 1 >= argc)
                return wp_err_set(err, WP_ECONFIG, "--%s needs a value", name);
            val = argv[++i];
        }
        int rc = apply_opt(cfg, name, val, err);
        if (rc < 0)
            return rc;
    }
    if (model_key_from_env(&cfg->model, err) < 0 || relay_pipe_from_env(cfg, err) < 0)
        return WP_ECONFIG;
    if (sched__s3_check(&cfg->files_s3, err) < 0)
        return WP_ECONFIG;
    if (cfg->sse_hard_limit < cfg->sse_soft_limit)
        cfg->sse_hard_limit = cfg->sse_soft_limit;
    if (!cfg->tls_cert[0] != !cfg->tls_key[0])
        return wp_err_set(err, WP_ECONFIG, "HTTPS needs both --tls-cert and --tls-key");
    int rc = pool_relay_tls_check(&cfg->relay_tls, err);
    if (rc < 0)
        return rc;
    /* /metrics shows the whole pool (node names, environments, sizes):
     * beyond loopback only with a token, or by the operator's choice. */
    if (!cfg->metrics_token_set && !cfg->metrics_open && !loopback(cfg->listen_host))
        return wp_err_set(err, WP_ECONFIG,
                          "listening on %s, beyond loopback: /metrics needs --metrics-token "
                          "(or --metrics-open to serve it to anyone who can connect)",
                          cfg->listen_host);
    return 0;
}
