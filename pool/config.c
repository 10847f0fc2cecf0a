/* config.c - warmpool-node's flags and config file. */
#define WP_LOG_COMPONENT "node"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "snapshot/snapshot.h"

static const char usage[] =
    "usage: warmpool-node [options]\n"
    "\n"
    "The warm pool's node daemon: one per machine. Builds each environment's\n"
    "image, keeps hot clones ready, serves claims coordinated through Redis.\n"
    "\n"
    "  --id ID                 node id (default: the host name)\n"
    "  --redis HOST:PORT       Redis (default 127.0.0.1:6379)\n"
    "  --state-dir DIR         sandboxes and images (default /var/lib/warmpool)\n"
    "  --listen HOST:PORT      agentlink relay for schedulers (default 127.0.0.1:0,\n"
    "                          any free port; use a private interface for other machines)\n"
    "  --relay-advertise HOST  the relay's address as claims carry it to schedulers\n"
    "                          (default: the --listen host; needed when that is a\n"
    "                          wildcard such as 0.0.0.0, or NAT stands between)\n"
    "  --env TEMPLATE[:MIN[:MAX]]  serve an environment (repeatable); MIN/MAX\n"
    "                          hot clones on this node until `pool set` changes them\n"
    "  --no-api-envs           serve only --env environments, not those the scheduler\n"
    "                          publishes for API environments (default: serve them too)\n"
    "  --refill auto|eager|lazy  how clones are restored: auto (default) is\n"
    "                          eager while the host's THP is \"always\" (a 200 MB clone\n"
    "                          ~0.75x the CPU of a lazy one), lazy pages otherwise.\n"
    "                          --eager = --refill eager\n"
    "  --thp always|leave      always: set the host's transparent huge pages to\n"
    "                          \"always\" while the node runs, put back at exit\n"
    "                          (host-wide; default leave: the host's setting)\n"
    "  --free-page-reporting off|leave  off: while the node runs, memory freed in\n"
    "                          this VM is not handed back to the hypervisor, whose\n"
    "                          next touch of it faults on the host too (a 200 MB\n"
    "                          clone 3 s after the last: p95 451 ms against 124);\n"
    "                          put back at exit (host-wide; default leave)\n"
    "  --warm-clones on|off    on (default): run a no-op bash call in each new hot\n"
    "                          clone, so a session's first call finds the shell's\n"
    "                          code mapped (~2 ms of CPU per clone, ~1.6 ms less on\n"
    "                          the first call)\n"
    "  --restore-slots N       restores at once (default: one per CPU)\n"
    "  --claim-wait-max MS     a warm/cold claim that would wait longer than this\n"
    "                          for a restore slot is refused at once as overloaded\n"
    "                          (retryable; default 5000, 0 = queue without bound)\n"
    "  --heartbeat-ttl SEC     dead this long after the last heartbeat (default 5)\n"
    "  --lease-ms MS           lease time handed out with claims (default 60000)\n"
    "  --hot-memory-mb N       memory for this node's clones (default: 80%% of\n"
    "                          MemAvailable at start); caps hot targets by what fits,\n"
    "                          measured (one shared copy per image + private bytes)\n"
    "  --insecure-allow-unconfined  run sandboxes WITHOUT capability drop, seccomp, /proc\n"
    "                          masks, device list and disk limits (benchmark baseline);\n"
    "                          a user namespace is still used where the host has them,\n"
    "                          else sandboxes run as the host's root (logged); without\n"
    "                          this flag a host without user namespaces refuses to serve\n"
    "  --multi-tenant          the node serves several organizations: environments\n"
    "                          with \"ksm\" run without merging (a timing side channel)\n"
    "  --ksm-multi-tenant-override  merge anyway on a multi-tenant node\n"
    "  --redis-password-file PATH  AUTH to Redis with the password on its first line\n"
    "  --redis-user NAME       ...as this ACL user (default: Redis's default user)\n"
    "  --redis-sentinels HOST:PORT,...  find Redis through these sentinels (--redis\n"
    "                          is then unused), asked again on every reconnect\n"
    "  --redis-master NAME     the master's name at the sentinels\n"
    "  --redis-sentinel-password-file PATH  AUTH to the sentinels (their\n"
    "                          requirepass) with the password on its first line\n"
    "  --redis-cluster HOST:PORT,...  Redis Cluster: any of its nodes (--redis is then\n"
    "                          unused; not with --redis-sentinels)\n"
    "  --criu-mode MODE        auto (default: probe this host, cached), default,\n"
    "                          no-breakpoints (CRIU_FAULT=130 for every criu run),\n"
    "                          none (no images: the pool is cold-booted sandboxes)\n"
    "  --criu-timeout SEC      deadline of each dump and restore (default 120)\n"
    "  --drain-timeout SEC     SIGTERM drains: no new claims, idle clones go, leased\n"
    "                          sandboxes stay until released or this deadline\n"
    "                          (default 30; 0: stop at once, leases become lost).\n"
    "                          A second SIGTERM, or SIGINT, stops at once\n"
    "  --egress on|off         start the egress proxy (warmpool-egress): a session\n"
    "                          whose vaults hold environment_variable credentials\n"
    "                          gets a sandbox confined to it, which puts the secrets\n"
    "                          in place of placeholders (default on; off: such\n"
    "                          sessions get no sandbox)\n"
    "  --egress-port PORT      the proxy's port on each confined sandbox's host end\n"
    "                          (default 3129)\n"
    "  --egress-bin PATH       warmpool-egress (default: beside warmpool-node)\n"
    "  --egress-ca-dir DIR     the node's CA for the proxy (default STATE_DIR/egress)\n"
    "  --egress-upstream-ca FILE  trust these CAs upstream too (besides the system's)\n"
    "  --egress-pin NAME=IPV4  the proxy resolves NAME to IPV4 (repeatable, 8 at most)\n"
    "  --config FILE           options from FILE, one `option value` per line, the\n"
    "                          flags' names (`env` repeatable, a switch alone or\n"
    "                          on/off), # comments; flags win. Also: ksm-slow-pages,\n"
    "                          ksm-fast-pages, ksm-sleep-ms. A JSON file (earlier\n"
    "                          releases) is still read, with a warning\n"
    "  --log-level LEVEL       error, warn, info, debug (default info)\n"
    "\n"
    "Relay TLS (mutual; also used to dial other nodes' relays in worker mode):\n"
    "%s"
    "\n"
    "Worker mode: the node also serves a self-hosted environment's work queue\n"
    "(any Managed Agents control plane: warmpool's scheduler or the hosted API),\n"
    "running its sessions' tool calls in sandboxes of its pool:\n"
    "  --worker                serve the work queue (the key comes from the\n"
    "                          WARMPOOL_ENVIRONMENT_KEY environment variable)\n"
    "  --control-plane URL     the API's base URL, e.g. https://api.anthropic.com\n"
    "  --environment ID        the self-hosted environment (env_...)\n"
    "  --worker-pool ENV       pool environment of the sandboxes (default: the first --env)\n"
    "  --worker-id ID          Anthropic-Worker-ID (default: <hostname>-<uuid4>)\n"
    "  --worker-max-idle MS    detach from a session this long after a turn (default 60000)\n"
    "  --worker-lease-ttl SEC  ask for this lease TTL on heartbeats (default: the server's)\n"
    "  -h, --help\n";

static int parse_hostport(const char *s, char *host, size_t cap, int *port, bool allow_zero,
                          struct wp_err *err)
{
    const char *colon = strrchr(s, ':');
    char *end;
    long p;

    if (!colon || colon == s || (size_t)(colon - s) >= cap)
        return wp_err_set(err, WP_ECONFIG, "wanted HOST:PORT, got '%s'", s);
    p = strtol(colon + 1, &end, 10);
    if (*end || p < (allow_zero ? 0 : 1) || p > 65535)
        return wp_err_set(err, WP_ECONFIG, "bad port in '%s'", s);
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}

static int set_str(char *dst, size_t cap, const char *v, const char *flag, struct wp_err *err)
{
    if (strlen(v) >= cap)
        return wp_err_set(err, WP_ECONFIG, "%s: too long", flag);
    snprintf(dst, cap, "%s", v);
    return 0;
}

/* Worker mode: the URL goes into every request, the key into a header;
 * the key is read from the environment (never a flag: `ps` shows flags)
 * and removed from it, so helpers and sandboxes never inherit it. */
static int worker_check(struct pool_worker_config *w, struct wp_err *err)
{
    const char *key = getenv("WARMPOOL_ENVIRONMENT_KEY");
    size_t n = strlen(w->url);

    if (strncmp(w->url, "http://", 7) != 0 && strncmp(w->url, "https://", 8) != 0)
        return wp_err_set(err, WP_ECONFIG, "--control-plane must be an http:// or https:// URL");
    for (const char *p = w->url; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || *p == '?' || *p == '#')
            return wp_err_set(err, WP_ECONFIG, "--control-plane: no spaces, query or fragment");
    while (n > 8 && w->url[n - 1] == '/')
        w->url[--n] = '\0';
    if (!w->environment[0])
        return wp_err_set(err, WP_ECONFIG, "--worker needs --environment ENV_ID");
    for (const char *p = w->environment; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '-'))
            return wp_err_set(err, WP_ECONFIG, "--environment: letters, digits, _ and - only");
    if (!key || !*key)
        return wp_err_set(err, WP_ECONFIG, "--worker needs the environment key in WARMPOOL_ENVIRONMENT_KEY");
    if (strlen(key) >= sizeof(w->key))
        return wp_err_set(err, WP_ECONFIG, "WARMPOOL_ENVIRONMENT_KEY: too long");
    for (const char *p = key; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return wp_err_set(err, WP_ECONFIG, "WARMPOOL_ENVIRONMENT_KEY: printable ASCII without spaces only");
    snprintf(w->key, sizeof(w->key), "%s", key);
    unsetenv("WARMPOOL_ENVIRONMENT_KEY");
    if (w->max_idle_ms < 100 || w->max_idle_ms > 86400000)
        return wp_err_set(err, WP_ECONFIG, "--worker-max-idle must be 100..86400000 ms");
    if (w->lease_ttl_s < 0 || w->lease_ttl_s > 3600)
        return wp_err_set(err, WP_ECONFIG, "--worker-lease-ttl must be 0..3600 s");
    return 0;
}

static int add_env(struct pool_node_config *cfg, const char *spec, struct wp_err *err)
{
    struct pool_env_config *e;
    char buf[600], *mn, *mx;

    if (cfg->n_envs == POOL_MAX_ENVS)
        return wp_err_set(err, WP_ECONFIG, "at most %d environments per node", POOL_MAX_ENVS);
    if (strlen(spec) >= sizeof(buf))
        return wp_err_set(err, WP_ECONFIG, "--env: too long");
    strcpy(buf, spec);
    e = &cfg->envs[cfg->n_envs];
    memset(e, 0, sizeof(*e));
    e->min_hot = 2;
    e->max_hot = 8;
    mn = strchr(buf, ':');
    if (mn) {
        *mn++ = '\0';
        mx = strchr(mn, ':');
        if (mx)
            *mx++ = '\0';
        char *end;
        long v = strtol(mn, &end, 10);
        if (*end || v < 0 || v > 10000)
            return wp_err_set(err, WP_ECONFIG, "--env %s: bad MIN", spec);
        e->min_hot = (int)v;
        if (mx) {
            v = strtol(mx, &end, 10);
            if (*end || v < 0 || v > 10000)
                return wp_err_set(err, WP_ECONFIG, "--env %s: bad MAX", spec);
            e->max_hot = (int)v;
        } else if (e->max_hot < e->min_hot) {
            e->max_hot = e->min_hot;
        }
    }
    if (e->max_hot < e->min_hot)
        return wp_err_set(err, WP_ECONFIG, "--env %s: MAX below MIN", spec);
    if (access(buf, R_OK) < 0)
        return wp_err_errno(err, "--env %s", buf);
    snprintf(e->template_path, sizeof(e->template_path), "%s", buf);
    cfg->n_envs++;
    return 0;
}

/* 0 keeps the default (derived from MemAvailable at start). */
static int set_memory_mb(struct pool_node_config *cfg, long long mb, struct wp_err *err)
{
    if (mb < 0 || mb > (64ll << 20)) /* 64 TiB */
        return wp_err_set(err, WP_ECONFIG, "hot_memory_mb must be 0..%lld", 64ll << 20);
    cfg->hot_memory_bytes = (uint64_t)mb << 20;
    return 0;
}

static int set_criu_mode(struct pool_node_config *cfg, const char *v, struct wp_err *err)
{
    enum snap_criu_mode m;
    if (snap_criu_mode_parse(v, &m) < 0)
        return wp_err_set(err, WP_ECONFIG,
                          "criu mode '%s': auto, default, no-breakpoints or none", v);
    snprintf(cfg->criu_mode, sizeof(cfg->criu_mode), "%s", v);
    return 0;
}

static int set_refill(struct pool_node_config *cfg, const char *v, struct wp_err *err)
{
    static const char *const words[] = { "auto", "eager", "lazy" };
    for (int i = 0; i < 3; i++)
        if (strcmp(v, words[i]) == 0) {
            cfg->refill = (enum pool_refill)i;
            return 0;
        }
    return wp_err_set(err, WP_ECONFIG, "refill '%s': auto, eager or lazy", v);
}

static int set_thp(struct pool_node_config *cfg, const char *v, struct wp_err *err)
{
    if (strcmp(v, "always") != 0 && strcmp(v, "leave") != 0)
        return wp_err_set(err, WP_ECONFIG, "thp '%s': always or leave", v);
    cfg->thp_always = v[0] == 'a';
    return 0;
}

static int set_fpr(struct pool_node_config *cfg, const char *v, struct wp_err *err)
{
    if (strcmp(v, "off") != 0 && strcmp(v, "leave") != 0)
        return wp_err_set(err, WP_ECONFIG, "free-page-reporting '%s': off or leave", v);
    cfg->fpr_off = v[0] == 'o';
    return 0;
}

static const struct option lo[] = {
    { "id", required_argument, NULL, 'i' },          { "redis", required_argument, NULL, 'r' },
    { "state-dir", required_argument, NULL, 's' },   { "env", required_argument, NULL, 'e' },
    { "eager", no_argument, NULL, 'E' },             { "refill", required_argument, NULL, 1025 },
    { "thp", required_argument, NULL, 1026 },             { "warm-clones", required_argument, NULL, 1027 },
    { "free-page-reporting", required_argument, NULL, 1028 }, { "restore-slots", required_argument, NULL, 'S' },
    { "heartbeat-ttl", required_argument, NULL, 't' }, { "lease-ms", required_argument, NULL, 'L' },
    { "config", required_argument, NULL, 'c' },      { "log-level", required_argument, NULL, 'l' },
    { "listen", required_argument, NULL, 'H' },      { "no-api-envs", no_argument, NULL, 'A' },
    { "hot-memory-mb", required_argument, NULL, 'M' },
    { "multi-tenant", no_argument, NULL, 'T' },
    { "insecure-allow-unconfined", no_argument, NULL, 'U' },
    { "ksm-multi-tenant-override", no_argument, NULL, 'O' },
    { "worker", no_argument, NULL, 'W' },            { "control-plane", required_argument, NULL, 'C' },
    { "environment", required_argument, NULL, 'N' }, { "worker-pool", required_argument, NULL, 'P' },
    { "worker-id", required_argument, NULL, 'I' },   { "worker-max-idle", required_argument, NULL, 'X' },
    { "worker-lease-ttl", required_argument, NULL, 'Y' },
    { "redis-password-file", required_argument, NULL, 'Q' }, { "redis-user", required_argument, NULL, 'V' },
    { "criu-mode", required_argument, NULL, 'K' },   { "criu-timeout", required_argument, NULL, 'D' },
    { "drain-timeout", required_argument, NULL, 'G' }, { "claim-wait-max", required_argument, NULL, 'q' },
    { "ksm-slow-pages", required_argument, NULL, 1001 }, { "ksm-fast-pages", required_argument, NULL, 1002 },
    { "ksm-sleep-ms", required_argument, NULL, 1003 },
    { "egress", required_argument, NULL, 1004 },     { "egress-port", required_argument, NULL, 1005 },
    { "egress-bin", required_argument, NULL, 1006 }, { "egress-ca-dir", required_argument, NULL, 1007 },
    { "egress-upstream-ca", required_argument, NULL, 1008 },
    { "egress-pin", required_argument, NULL, 1009 },
    { "relay-advertise", required_argument, NULL, 1024 },
    { "relay-tls", required_argument, NULL, 1020 }, { "relay-tls-cert", required_argument, NULL, 1021 },
    { "relay-tls-key", required_argument, NULL, 1022 }, { "relay-tls-ca", required_argument, NULL, 1023 },
    { "redis-sentinels", required_argument, NULL, 1010 }, { "redis-master", required_argument, NULL, 1011 },
    { "redis-cluster", required_argument, NULL, 1012 },
    { "redis-sentinel-password-file", required_argument, NULL, 1013 },
    { "help", no_argument, NULL, 'h' },              { NULL, 0, NULL, 0 },
};

static const char *lo_name(int val)
{
    for (const struct option *o = lo; o->name; o++)
        if (o->val == val)
            return o->name;
    return "?";
}

/* getopt over argv (the command line, or a config file's lines made into
 * one): 0, 1 when --help was printed, or < 0 with err set. */
static int apply_args_in(struct pool_node_config *cfg, int argc, char **argv, bool from_file,
                         struct wp_err *err)
{
    int c, rc;

    optind = 0; /* a full rescan: the config file's lines came first */
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case 'i': snprintf(cfg->id, sizeof(cfg->id), "%s", optarg); break;
        case 'r':
            rc = parse_hostport(optarg, cfg->redis_host, sizeof(cfg->redis_host), &cfg->redis_port,
                                false, err);
            break;
        case 's': snprintf(cfg->state_dir, sizeof(cfg->state_dir), "%s", optarg); break;
        case 'H':
            rc = parse_hostport(optarg, cfg->listen_host, sizeof(cfg->listen_host),
                                &cfg->listen_port, true, err);
            break;
        case 1024: rc = set_str(cfg->advertise_host, sizeof(cfg->advertise_host), optarg,
                                "--relay-advertise", err); break;
        case 'e': rc = add_env(cfg, optarg, err); break;
        case 'E': cfg->refill = POOL_REFILL_EAGER; break;
        case 1025: rc = set_refill(cfg, optarg, err); break;
        case 1026: rc = set_thp(cfg, optarg, err); break;
        case 1027:
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0)
                rc = wp_err_set(err, WP_ECONFIG, "warm-clones '%s': on or off", optarg);
            cfg->warm_off = optarg[1] == 'f';
            break;
        case 1028: rc = set_fpr(cfg, optarg, err); break;
        case 'A': cfg->api_envs = false; break;
        case 'S': cfg->restore_slots = atoi(optarg); break;
        case 't': cfg->heartbeat_ttl_s = atof(optarg); break;
        case 'L': cfg->lease_ms = atof(optarg); break;
        case 'c':
            if (from_file)
                return wp_err_set(err, WP_ECONFIG, "config files do not nest (config)");
            break;
        case 'M': {
            char *end;
            long long mb = strtoll(optarg, &end, 10);
            rc = *end || end == optarg ? wp_err_set(err, WP_ECONFIG, "bad --hot-memory-mb '%s'", optarg)
                                       : set_memory_mb(cfg, mb, err);
            break;
        }
        case 'T': cfg->multi_tenant = true; break;
        case 'U': cfg->unconfined = true; break;
        case 'O': cfg->ksm_multi_tenant = true; break;
        case 'W': cfg->worker.enabled = true; break;
        case 'C': rc = set_str(cfg->worker.url, sizeof(cfg->worker.url), optarg, "--control-plane", err); break;
        case 'N': rc = set_str(cfg->worker.environment, sizeof(cfg->worker.environment), optarg, "--environment", err); break;
        case 'P': rc = set_str(cfg->worker.pool_env, sizeof(cfg->worker.pool_env), optarg, "--worker-pool", err); break;
        case 'I': rc = set_str(cfg->worker.worker_id, sizeof(cfg->worker.worker_id), optarg, "--worker-id", err); break;
        case 'X': cfg->worker.max_idle_ms = atoi(optarg); break;
        case 'Y': cfg->worker.lease_ttl_s = atoi(optarg); break;
        case 'K': rc = set_criu_mode(cfg, optarg, err); break;
        case 'Q': rc = set_str(cfg->redis_password_file, sizeof(cfg->redis_password_file), optarg, "--redis-password-file", err); break;
        case 'V': rc = set_str(cfg->redis_user, sizeof(cfg->redis_user), optarg, "--redis-user", err); break;
        case 1010: rc = set_str(cfg->redis_sentinels, sizeof(cfg->redis_sentinels), optarg, "--redis-sentinels", err); break;
        case 1011: rc = set_str(cfg->redis_master, sizeof(cfg->redis_master), optarg, "--redis-master", err); break;
        case 1012: rc = set_str(cfg->redis_cluster, sizeof(cfg->redis_cluster), optarg, "--redis-cluster", err); break;
        case 1013: rc = set_str(cfg->redis_sentinel_password_file, sizeof(cfg->redis_sentinel_password_file), optarg, "--redis-sentinel-password-file", err); break;
        case 'D': {
            char *end;
            cfg->criu_timeout_s = strtod(optarg, &end);
            if (*end || end == optarg)
                cfg->criu_timeout_s = -1; /* refused below */
            break;
        }
        case 1001: case 1002: case 1003: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg)
                v = -1; /* refused below */
            *(c == 1001 ? &cfg->ksm_slow_pages : c == 1002 ? &cfg->ksm_fast_pages : &cfg->ksm_sleep_ms) = v;
            break;
        }
        case 1004:
            if (!strcmp(optarg, "on") || !strcmp(optarg, "off"))
                cfg->egress_off = !strcmp(optarg, "off");
            else
                rc = wp_err_set(err, WP_ECONFIG, "--egress on|off");
            break;
        case 1005: {
            char *end;
            long v = strtol(optarg, &end, 10);
            cfg->egress_port = *end || end == optarg || v < 1 || v > 65535 ? -1 : (int)v;
            if (cfg->egress_port < 0)
                rc = wp_err_set(err, WP_ECONFIG, "--egress-port must be 1..65535");
            break;
        }
        case 1006: rc = set_str(cfg->egress_bin, sizeof(cfg->egress_bin), optarg, "--egress-bin", err); break;
        case 1007: rc = set_str(cfg->egress_ca_dir, sizeof(cfg->egress_ca_dir), optarg, "--egress-ca-dir", err); break;
        case 1008:
            rc = set_str(cfg->egress_upstream_ca, sizeof(cfg->egress_upstream_ca), optarg,
                         "--egress-upstream-ca", err);
            break;
        case 1009: {
            const char *eq = strchr(optarg, '=');
            struct in_addr a;
            if (cfg->n_egress_pins == 8 || !eq || eq == optarg || inet_pton(AF_INET, eq + 1, &a) != 1)
                rc = wp_err_set(err, WP_ECONFIG, "--egress-pin NAME=IPV4 (8 at most)");
            else
                rc = set_str(cfg->egress_pins[cfg->n_egress_pins++], sizeof(cfg->egress_pins[0]),
                             optarg, "--egress-pin", err);
            break;
        }
        case 1020: case 1021: case 1022: case 1023: /* relay TLS: a range of its own */
            rc = pool_relay_tls_option(&cfg->relay_tls, lo_name(c), optarg, err);
            break;
        case 'q': {
            char *end;
            cfg->claim_wait_max_ms = strtod(optarg, &end);
            if (*end || end == optarg)
                cfg->claim_wait_max_ms = -1; /* refused below */
            break;
        }
        case 'G': {
            char *end;
            cfg->drain_timeout_s = strtod(optarg, &end);
            if (*end || end == optarg)
                cfg->drain_timeout_s = -1; /* refused below */
            break;
        }
        case 'l':
            if (wp_log_set_level(optarg) < 0)
                rc = wp_err_set(err, WP_ECONFIG, "bad --log-level '%s'", optarg);
            break;
        case 'h':
            if (from_file)
                return wp_err_set(err, WP_ECONFIG, "help is not a config option");
            printf(usage, pool_relay_tls_usage);
            return 1;
        default: return wp_err_set(err, WP_ECONFIG, "bad arguments (see --help)");
        }
        if (rc < 0)
            return rc;
    }
    if (optind < argc)
        return wp_err_set(err, WP_ECONFIG, "unexpected argument '%s'", argv[optind]);
    return 0;
}

static int apply_args(struct pool_node_config *cfg, int argc, char **argv, struct wp_err *err)
{
    return apply_args_in(cfg, argc, argv, false, err);
}

/* The old JSON config (read for one more release, with a warning). */
static int load_json(struct pool_node_config *cfg, const char *path, struct wp_err *err)
{
    json_error_t jerr;
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr), *v;
    const char *k;
    size_t i;
    int rc = 0;

    if (!o)
        return wp_err_set(err, WP_ECONFIG, "%s:%d: %s", path, jerr.line, jerr.text);
    json_object_foreach(o, k, v) {
        if (strcmp(k, "id") == 0 && json_is_string(v))
            snprintf(cfg->id, sizeof(cfg->id), "%s", json_string_value(v));
        else if (strcmp(k, "redis") == 0 && json_is_string(v))
            rc = parse_hostport(json_string_value(v), cfg->redis_host, sizeof(cfg->redis_host),
                                &cfg->redis_port, false, err);
        else if (strcmp(k, "state_dir") == 0 && json_is_string(v))
            snprintf(cfg->state_dir, sizeof(cfg->state_dir), "%s", json_string_value(v));
        else if (strcmp(k, "heartbeat_ttl_s") == 0 && json_is_number(v))
            cfg->heartbeat_ttl_s = json_number_value(v);
        else if (strcmp(k, "lease_ms") == 0 && json_is_number(v))
            cfg->lease_ms = json_number_value(v);
        else if (strcmp(k, "restore_slots") == 0 && json_is_integer(v))
            cfg->restore_slots = (int)json_integer_value(v);
        else if (strcmp(k, "claim_wait_max_ms") == 0 && json_is_number(v))
            cfg->claim_wait_max_ms = json_number_value(v);
        else if (strcmp(k, "ksm_slow_pages") == 0 && json_is_integer(v))
            cfg->ksm_slow_pages = (long)json_integer_value(v);
        else if (strcmp(k, "ksm_fast_pages") == 0 && json_is_integer(v))
            cfg->ksm_fast_pages = (long)json_integer_value(v);
        else if (strcmp(k, "api_envs") == 0 && json_is_boolean(v))
            cfg->api_envs = json_is_true(v);
        else if (strcmp(k, "ksm_sleep_ms") == 0 && json_is_integer(v))
            cfg->ksm_sleep_ms = (long)json_integer_value(v);
        else if (strcmp(k, "hot_memory_mb") == 0 && json_is_integer(v))
            rc = set_memory_mb(cfg, json_integer_value(v), err);
        else if (strcmp(k, "redis_password_file") == 0 && json_is_string(v))
            rc = set_str(cfg->redis_password_file, sizeof(cfg->redis_password_file),
                         json_string_value(v), "redis_password_file", err);
        else if (strcmp(k, "redis_sentinels") == 0 && json_is_string(v))
            rc = set_str(cfg->redis_sentinels, sizeof(cfg->redis_sentinels),
                         json_string_value(v), "redis_sentinels", err);
        else if (strcmp(k, "redis_cluster") == 0 && json_is_string(v))
            rc = set_str(cfg->redis_cluster, sizeof(cfg->redis_cluster), json_string_value(v),
                         "redis_cluster", err);
        else if (strcmp(k, "redis_sentinel_password_file") == 0 && json_is_string(v))
            rc = set_str(cfg->redis_sentinel_password_file,
                         sizeof(cfg->redis_sentinel_password_file), json_string_value(v),
                         "redis_sentinel_password_file", err);
        else if (strcmp(k, "redis_master") == 0 && json_is_string(v))
            rc = set_str(cfg->redis_master, sizeof(cfg->redis_master), json_string_value(v),
                         "redis_master", err);
        else if (strcmp(k, "redis_user") == 0 && json_is_string(v))
            rc = set_str(cfg->redis_user, sizeof(cfg->redis_user), json_string_value(v),
                         "redis_user", err);
        else if (strcmp(k, "criu_mode") == 0 && json_is_string(v))
            rc = set_criu_mode(cfg, json_string_value(v), err);
        else if (strcmp(k, "criu_timeout_s") == 0 && json_is_number(v))
            cfg->criu_timeout_s = json_number_value(v);
        else if (strcmp(k, "drain_timeout_s") == 0 && json_is_number(v))
            cfg->drain_timeout_s = json_number_value(v);
        else if (strcmp(k, "multi_tenant") == 0 && json_is_boolean(v))
            cfg->multi_tenant = json_is_true(v);
        else if (strcmp(k, "ksm_multi_tenant_override") == 0 && json_is_boolean(v))
            cfg->ksm_multi_tenant = json_is_true(v);
        else if (strcmp(k, "insecure_allow_unconfined") == 0 && json_is_boolean(v))
            cfg->unconfined = json_is_true(v);
        else if (strcmp(k, "envs") == 0 && json_is_array(v)) {
            json_t *item;
            json_array_foreach(v, i, item) {
                if (!json_is_string(item)) {
                    rc = wp_err_set(err, WP_ECONFIG, "%s: envs[%zu] must be a string", path, i);
                    break;
                }
                if ((rc = add_env(cfg, json_string_value(item), err)) < 0)
                    break;
            }
        } else
            rc = wp_err_set(err, WP_ECONFIG, "%s: unknown or mistyped key \"%s\"", path, k);
        if (rc < 0)
            break;
    }
    json_decref(o);
    return rc;
}

/* The config file: one `option value` per line, the options being the
 * flags' long names (`redis 10.0.0.5:6379`, `env /etc/warmpool/py.json:2:8`,
 * repeatable where the flag is), `#` comments, the same format as
 * warmpool-scheduler's --config. A switch takes no value, or on/off (yes,
 * no, true, false). A file starting with `{` is the JSON of earlier
 * releases: read, with a warning. */
static int load_file(struct pool_node_config *cfg, const char *path, struct wp_err *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc, lineno = 0, argc = 1, cap = 64;
    char **argv = NULL;

    if ((rc = wp_read_file(path, 1 << 20, &data, &len, err)) < 0)
        return wp_err_wrap(err, "config");
    const char *p = data;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p == '{') {
        free(data);
        log_warn("%s: a JSON config file is deprecated and read for this release only; write "
                 "`option value` lines (the flags' names, see /etc/warmpool/node.conf)", path);
        return load_json(cfg, path, err);
    }
    argv = calloc((size_t)cap, sizeof(*argv));
    if (!argv) {
        free(data);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    static char arg0[] = "config";
    argv[0] = arg0;
    rc = 0;
    for (char *line = data, *next; line && rc == 0; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        while (*line == ' ' || *line == '\t')
            line++;
        size_t ll = strlen(line);
        while (ll > 0 && (line[ll - 1] == ' ' || line[ll - 1] == '\t' || line[ll - 1] == '\r'))
            line[--ll] = '\0';
        if (!*line || *line == '#')
            continue;
        char *val = line + strcspn(line, " \t=");
        if (*val) {
            *val++ = '\0';
            while (*val == ' ' || *val == '\t' || *val == '=')
                val++;
        }
        const char *name = strncmp(line, "--", 2) == 0 ? line + 2 : line;
        const struct option *o = lo;
        while (o->name && strcmp(o->name, name) != 0)
            o++;
        if (!o->name) {
            rc = wp_err_set(err, WP_ECONFIG, "%s:%d: unknown option \"%.60s\" (see warmpool-node --help)",
                            path, lineno, name);
            break;
        }
        if (argc + 3 > cap) {
            char **more = realloc(argv, (size_t)(cap *= 2) * sizeof(*argv));
            if (!more) {
                rc = wp_err_set(err, -ENOMEM, "out of memory");
                break;
            }
            argv = more;
        }
        char flag[80];
        snprintf(flag, sizeof(flag), "--%s", name);
        if (o->has_arg == no_argument) {
            bool on = !*val || !strcmp(val, "on") || !strcmp(val, "yes") || !strcmp(val, "true");
            bool off = !strcmp(val, "off") || !strcmp(val, "no") || !strcmp(val, "false");
            if (!on && !off) {
                rc = wp_err_set(err, WP_ECONFIG, "%s:%d: %s is a switch: nothing, on or off", path,
                                lineno, name);
                break;
            }
            if (on)
                argv[argc++] = strdup(flag);
        } else {
            if (!*val) {
                rc = wp_err_set(err, WP_ECONFIG, "%s:%d: %s wants a value", path, lineno, name);
                break;
            }
            argv[argc++] = strdup(flag);
            argv[argc++] = strdup(val);
        }
        if (!argv[argc - 1]) {
            rc = wp_err_set(err, -ENOMEM, "out of memory");
            break;
        }
    }
    argv[argc] = NULL;
    if (rc == 0) {
        rc = apply_args_in(cfg, argc, argv, true, err);
        if (rc < 0)
            wp_err_wrap(err, "%s", path);
    }
    for (int i = 1; i < argc; i++)
        free(argv[i]);
    free(argv);
    free(data);
    return rc;
}

int pool_node_config_parse(struct pool_node_config *cfg, int argc, char **argv,
                           struct wp_err *err)
{
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    gethostname(cfg->id, sizeof(cfg->id) - 1);
    snprintf(cfg->redis_host, sizeof(cfg->redis_host), "127.0.0.1");
    cfg->redis_port = 6379;
    snprintf(cfg->state_dir, sizeof(cfg->state_dir), "/var/lib/warmpool");
    snprintf(cfg->listen_host, sizeof(cfg->listen_host), "127.0.0.1");
    cfg->heartbeat_ttl_s = 5;
    cfg->lease_ms = 60000;
    cfg->claim_wait_max_ms = 5000;
    cfg->ksm_slow_pages = 100;
    cfg->ksm_fast_pages = 5000;
    cfg->ksm_sleep_ms = 20;
    cfg->api_envs = true;
    cfg->worker.max_idle_ms = 60000;
    cfg->drain_timeout_s = 30;
    cfg->egress_port = 3129;
    /* The config file first, so flags override it. */
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--config") == 0 && (rc = load_file(cfg, argv[i + 1], err)) < 0)
            return rc;
    rc = apply_args(cfg, argc, argv, err);
    if (rc != 0)
        return rc;
    for (const char *p = cfg->id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return wp_err_set(err, WP_ECONFIG, "node id '%s': letters, digits, - _ . only", cfg->id);
    if (!cfg->id[0])
        return wp_err_set(err, WP_ECONFIG, "node id is empty");
    if (cfg->heartbeat_ttl_s < 0.5 || cfg->heartbeat_ttl_s > 600)
        return wp_err_set(err, WP_ECONFIG, "--heartbeat-ttl must be 0.5..600 s");
    if (cfg->lease_ms < 1000 || cfg->lease_ms > 86400000)
        return wp_err_set(err, WP_ECONFIG, "--lease-ms must be 1000..86400000");
    if (cfg->ksm_slow_pages < 1 || cfg->ksm_fast_pages < cfg->ksm_slow_pages ||
        cfg->ksm_fast_pages > 1000000 || cfg->ksm_sleep_ms < 1 || cfg->ksm_sleep_ms > 100000)
        return wp_err_set(err, WP_ECONFIG, "ksm: 1 <= slow pages <= fast pages <= 1000000, sleep 1..100000 ms");
    if (cfg->criu_timeout_s != 0 && !(cfg->criu_timeout_s >= 1 && cfg->criu_timeout_s <= 3600))
        return wp_err_set(err, WP_ECONFIG, "--criu-timeout must be 1..3600 s");
    if (!(cfg->drain_timeout_s >= 0 && cfg->drain_timeout_s <= 86400))
        return wp_err_set(err, WP_ECONFIG, "--drain-timeout must be 0..86400 s");
    if (!(cfg->claim_wait_max_ms >= 0 && cfg->claim_wait_max_ms <= 600000))
        return wp_err_set(err, WP_ECONFIG, "--claim-wait-max must be 0..600000 ms");
    if (cfg->restore_slots < 0 || cfg->restore_slots > 256)
        return wp_err_set(err, WP_ECONFIG, "--restore-slots must be 0..256");
    if ((rc = pool_relay_tls_check(&cfg->relay_tls, err)) < 0)
        return rc;
    /* Beyond loopback the relay is mutual TLS: no material is a start-up
     * error, not a plaintext relay (`relay-tls off` accepts that). */
    if (cfg->relay_tls.mode == POOL_RELAY_TLS_AUTO && !cfg->relay_tls.cert[0] &&
        !pool_addr_is_loopback(cfg->listen_host))
        return wp_err_set(err, WP_ECONFIG,
                          "the relay listens on %s, not loopback: give relay-tls-cert, "
                          "relay-tls-key and relay-tls-ca (mutual TLS), or relay-tls off to "
                          "accept a plaintext relay", cfg->listen_host);
    /* What schedulers dial: a wildcard listen address is not an address. */
    const char *adv = cfg->advertise_host[0] ? cfg->advertise_host : cfg->listen_host;
    if (!strcmp(adv, "0.0.0.0") || !strcmp(adv, "::") || !strcmp(adv, "[::]") || !adv[0] ||
        strpbrk(adv, " \t") != NULL)
        return wp_err_set(err, WP_ECONFIG,
                          cfg->advertise_host[0]
                              ? "--relay-advertise '%s' is not an address schedulers can dial"
                              : "the relay listens on every address (%s): give --relay-advertise "
                                "HOST, the address schedulers dial", adv);
    if (cfg->n_envs == 0 && !cfg->api_envs)
        return wp_err_set(err, WP_ECONFIG, "no environment to serve (--env TEMPLATE, or drop --no-api-envs)");
    if (cfg->worker.enabled && cfg->n_envs == 0 && !cfg->worker.pool_env[0])
        return wp_err_set(err, WP_ECONFIG, "--worker needs --worker-pool ENV (or an --env whose sandboxes run the tools)");
    return cfg->worker.enabled ? worker_check(&cfg->worker, err) : 0;
}
