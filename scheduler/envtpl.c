/* envtpl.c - an API environment's config becomes a warmpool environment
 * template and its pool policy, published in Redis for the nodes.
 *
 *   wp:tpls            HASH  pool env name -> template digest (what nodes serve;
 *                            written after, removed before the two below)
 *   wp:tpl:{E}         HASH  template (JSON), digest, org, env (API id),
 *                            updated_ms; nodes add build:<node>
 *   wp:env:{E}:policy  HASH  api_min_hot, api_max_hot (from metadata); the
 *                            operator's fields (`warmpool pool set`) win
 *
 * The pool name of an API environment is its id. Only cloud environments
 * are published; self_hosted ones queue work for external workers.
 *
 * Networking: config.networking becomes the template's "network":
 * unrestricted -> unrestricted, limited -> limited with allowed_hosts (plus
 * the package hosts below when allow_package_managers is true). Hosts the
 * sandbox filter cannot enforce (wildcards, URLs, ports, IPv6) are refused
 * at create time with the template parser's own message.
 *
 * Packages: sandboxes of rootfs "host" see the host's /usr read-only, so
 * nothing can be installed into it. apt packages are accepted and checked
 * at build time on each node against the host's package database (bound
 * read-only at /var/lib/dpkg): a missing package or another version is a
 * build failure naming it. npm packages are installed during the image
 * build from the registry (npm -g into /opt/pkgs, on PATH) when the
 * environment's networking reaches it. pip, cargo, gem, go need an index
 * the nodes do not reach or a toolchain they lack: refused at create time
 * rather than accepted and silently not installed. */
#define WP_LOG_COMPONENT "envtpl"
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"
#include "snapshot/snapshot.h"

#define HANDS_SOCKET "/run/warmpool/hands.sock"
#define HANDS_READY "/run/warmpool/hands.ready"
#define WORKDIR "/work"
#define MAX_APT 64
#define MAX_NPM 64
#define PKG_PREFIX "/opt/pkgs"
#define CA_DIR "/etc/ssl/certs"
#define CA_BUNDLE CA_DIR "/ca-certificates.crt"
#define MAX_NPM_TEXT 3500 /* the install command is one setup step (< 4096) */
#define POOL_TPLS "wp:tpls" /* the nodes' list (pool/pool_int.h: POOL__K_TPLS) */

/* Hosts added to a limited environment's allowed_hosts by
 * allow_package_managers: Debian's archive and security mirror, and the
 * registries of the managers the API names (those a node cannot resolve
 * stay unreachable; only npm installs run during the build today). */
static const char *const pkg_hosts[] = { "deb.debian.org", "security.debian.org",
                                         "registry.npmjs.org", "pypi.org",
                                         "files.pythonhosted.org", NULL };

/* Defaults of the policy and limits an environment's metadata may change. */
#define DEF_MIN_HOT 1
#define DEF_MAX_HOT 4
#define DEF_MEMORY_MB 512
#define DEF_PIDS 256
#define DEF_CPU "1"

struct meta_key {
    const char *name;
    double min, max;
    bool integer;
};

static const struct meta_key meta_keys[] = {
    { "warmpool.min_hot", 0, 10000, true },
    { "warmpool.max_hot", 0, 10000, true },
    { "warmpool.memory_mb", 8, 1024 * 1024, true },
    { "warmpool.pids", 1, 1 << 22, true },
    { "warmpool.cpu", 0.01, 1024, false },
    /* Size of the sandbox's writable layer and /dev/shm (tmpfs); absent =
     * the node's defaults (snapshot/confine.c). */
    { "warmpool.disk_mb", 1, 1024 * 1024, true },
    { "warmpool.shm_mb", 1, 64 * 1024, true },
    { NULL, 0, 0, false },
};

/* Messages built here live in this buffer until the next call (loop
 * thread only), like the static strings apply() returns. */
static char msgbuf[320];

int sched__env_pool_name(const char *env_id, char *out, size_t cap)
{
    /* Ids are "env_" + base62, which snap_name_valid accepts as they are:
     * the identity keeps pool keys, images and logs readable. */
    if (!env_id || strncmp(env_id, "env_", 4) != 0 || !snap_name_valid(env_id))
        return WP_EINVAL_INPUT;
    if (strlen(env_id) >= cap)
        return WP_ETOOBIG;
    memcpy(out, env_id, strlen(env_id) + 1);
    return 0;
}

/* "warmpool.pool" names an operator's pool environment (a template in a
 * node's config, e.g. one with packages the API cannot describe) that
 * serves this API environment instead of one derived from its config.
 * Names of API environments ("env_...") are refused: an organization must
 * not reach another's environment by naming it. */
static const char *pool_override(json_t *env)
{
    const char *p = json_string_value(json_object_get(json_object_get(env, "metadata"),
                                                      "warmpool.pool"));
    return p && snap_name_valid(p) && strncmp(p, "env_", 4) != 0 ? p : NULL;
}

int sched__env_pool_of(json_t *env, char *out, size_t cap)
{
    const char *p = pool_override(env);
    if (!p)
        return sched__env_pool_name(json_string_value(json_object_get(env, "id")), out, cap);
    if (strlen(p) >= cap)
        return WP_ETOOBIG;
    memcpy(out, p, strlen(p) + 1);
    return 0;
}

/* A metadata value as a number within its key's bounds; *ok false when the
 * key is set to something else. Absent keys give def. */
static double meta_num(json_t *md, const struct meta_key *k, double def, bool *ok)
{
    const char *s = json_string_value(json_object_get(md, k->name));
    char *end;
    if (!s)
        return def;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || isspace((unsigned char)*s) || *end || errno || v < k->min || v > k->max ||
        (k->integer && v != (double)(long long)v) || (k->integer && strpbrk(s, ".eExX")))
        *ok = false;
    return v;
}

static const struct meta_key *meta_key(const char *name)
{
    for (const struct meta_key *k = meta_keys; k->name; k++)
        if (!strcmp(k->name, name))
            return k;
    return NULL;
}

void sched__envtpl_size(json_t *env, double *min_hot, double *memory_mb, double *cpu,
                        double *disk_mb)
{
    bool ok = true; /* checked at create and update (sched__envtpl_check) */
    json_t *md = json_object_get(env, "metadata");
    *min_hot = meta_num(md, &meta_keys[0], DEF_MIN_HOT, &ok);
    *memory_mb = meta_num(md, &meta_keys[2], DEF_MEMORY_MB, &ok);
    *cpu = meta_num(md, &meta_keys[4], atof(DEF_CPU), &ok);
    *disk_mb = meta_num(md, &meta_keys[5], 0, &ok);
}

/* The template's "network" for the environment's config.networking (the
 * stored, response form: always set on cloud environments). Caller owns. */
static json_t *network_of(json_t *cfg)
{
    json_t *n = json_object_get(cfg, "networking");
    const char *ty = json_string_value(json_object_get(n, "type"));

    if (!ty)
        return json_pack("{s:s}", "mode", "none");
    if (strcmp(ty, "limited") != 0)
        return json_pack("{s:s}", "mode", "unrestricted");
    json_t *hosts = json_array(), *e;
    size_t i;
    json_array_foreach(json_object_get(n, "allowed_hosts"), i, e)
        json_array_append(hosts, e);
    if (json_is_true(json_object_get(n, "allow_package_managers")))
        for (const char *const *h = pkg_hosts; *h; h++)
            json_array_append_new(hosts, json_string(*h));
    return json_pack("{s:s, s:o}", "mode", "limited", "allowed_hosts", hosts);
}

/* Whether the environment's network reaches the package registries. */
static bool reaches_registries(json_t *cfg)
{
    json_t *n = json_object_get(cfg, "networking");
    const char *ty = json_string_value(json_object_get(n, "type"));
    return ty && (strcmp(ty, "unrestricted") == 0 ||
                  json_is_true(json_object_get(n, "allow_package_managers")));
}

/* The network settings through the snapshot template parser, so the API
 * refuses exactly what a node would. NULL when fine, else a message. */
static const char *network_check(json_t *cfg)
{
    json_t *t = json_pack("{s:s, s:s, s:[s], s:o}", "name", "x", "rootfs", "host", "init",
                          "/x", "network", network_of(cfg));
    char *s = t ? json_dumps(t, JSON_COMPACT) : NULL;
    struct snap_template *st = NULL;
    struct wp_err err;
    const char *msg = NULL;

    json_decref(t);
    if (!s)
        return "could not check networking";
    if (snap_template_parse(s, strlen(s), &st, &err) < 0) {
        const char *m = strncmp(err.msg, "template: network.", 18) == 0 ? err.msg + 18 : err.msg;
        snprintf(msgbuf, sizeof(msgbuf), "networking.%s", m);
        msg = msgbuf;
    }
    snap_template_free(st);
    free(s);
    return msg;
}

/* npm specs: [@scope/]name[@version-or-range], registry names only (no
 * URLs, paths or git specs), nothing a shell would read. */
static bool npm_spec_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 214 || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) ||
              strchr("@/._-^~=<>*+", s[i])))
            return false;
    return !strstr(s, "..") && !strstr(s, "//");
}

/* Debian package names (policy 5.6.1), optionally "=version". */
static bool apt_spec_valid(const char *s)
{
    const char *eq = strchr(s, '=');
    size_t n = eq ? (size_t)(eq - s) : strlen(s);
    if (n < 2 || n > 100 || !(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0])))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '+' ||
              s[i] == '-' || s[i] == '.'))
            return false;
    if (!eq)
        return true;
    const char *v = eq + 1;
    if (!*v || strlen(v) > 100 || !isdigit((unsigned char)*v))
        return false;
    for (; *v; v++)
        if (!(isalnum((unsigned char)*v) || strchr(".+~:-", *v)))
            return false;
    return true;
}

const char *sched__envtpl_check(json_t *env)
{
    json_t *md = json_object_get(env, "metadata"), *v;
    const char *k;
    bool ok = true;

    json_object_foreach(md, k, v) {
        if (strncmp(k, "warmpool.", 9) != 0)
            continue;
        if (!strcmp(k, "warmpool.pool")) {
            if (!pool_override(env))
                return "metadata.warmpool.pool must name a pool environment of the nodes' "
                       "configuration ([A-Za-z0-9][A-Za-z0-9._-]{0,62}, not env_...)";
            continue;
        }
        const struct meta_key *mk = meta_key(k);
        if (!mk) {
            snprintf(msgbuf, sizeof(msgbuf),
                     "metadata.%s: unknown warmpool key (warmpool.min_hot, warmpool.max_hot, "
                     "warmpool.memory_mb, warmpool.pids, warmpool.cpu, warmpool.pool)", k);
            return msgbuf;
        }
        meta_num(md, mk, 0, &ok);
        if (!ok) {
            snprintf(msgbuf, sizeof(msgbuf), "metadata.%s must be %s from %g to %g, got \"%s\"",
                     k, mk->integer ? "an integer" : "a number", mk->min, mk->max,
                     json_string_value(v) ? json_string_value(v) : "");
            return msgbuf;
        }
    }
    if (meta_num(md, &meta_keys[0], DEF_MIN_HOT, &ok) > meta_num(md, &meta_keys[1], DEF_MAX_HOT, &ok))
        return "metadata: warmpool.min_hot must not exceed warmpool.max_hot (default 4)";
    json_t *cfg = json_object_get(env, "config");
    const char *type = json_string_value(json_object_get(cfg, "type"));
    if (!type || strcmp(type, "cloud") != 0)
        return NULL;
    json_t *pk = json_object_get(cfg, "packages");
    json_object_foreach(pk, k, v) {
        if (!strcmp(k, "type"))
            continue;
        if (!json_is_array(v) || json_array_size(v) == 0)
            continue;
        size_t i;
        json_t *e;
        if (!strcmp(k, "npm")) {
            if (!reaches_registries(cfg))
                return "packages.npm: the registry is reached during the image build, which "
                       "needs networking unrestricted or limited with allow_package_managers";
            if (json_array_size(v) > MAX_NPM)
                return "packages.npm: at most 64 packages";
            size_t text = 0;
            json_array_foreach(v, i, e) {
                text += strlen(json_string_value(e)) + 1;
                if (text > MAX_NPM_TEXT)
                    return "packages.npm: the names add up to more than 3500 bytes";
                if (!npm_spec_valid(json_string_value(e))) {
                    snprintf(msgbuf, sizeof(msgbuf),
                             "packages.npm[%zu]: \"%.60s\" is not a registry package name "
                             "([@scope/]name[@version]; no URLs, paths or git specs)", i,
                             json_string_value(e));
                    return msgbuf;
                }
            }
            continue;
        }
        if (strcmp(k, "apt") != 0) {
            snprintf(msgbuf, sizeof(msgbuf),
                     "packages.%s: not supported: the nodes reach no %s index or lack its "
                     "toolchain; apt packages installed on the nodes' hosts and npm packages "
                     "can be provided", k, k);
            return msgbuf;
        }
        if (json_array_size(v) > MAX_APT)
            return "packages.apt: at most 64 packages";
        json_array_foreach(v, i, e) {
            if (!apt_spec_valid(json_string_value(e))) {
                snprintf(msgbuf, sizeof(msgbuf),
                         "packages.apt[%zu]: \"%.60s\" is not a Debian package name "
                         "(lowercase, digits, + - .; optionally =VERSION)", i, json_string_value(e));
                return msgbuf;
            }
        }
    }
    return network_check(cfg);
}

/* The setup step that checks one apt package on the node's host: short,
 * because a failing command is quoted in the build's error. */
static json_t *apt_step(const char *spec)
{
    char name[128], want[300], cmd[600];
    const char *eq = strchr(spec, '=');
    snprintf(name, sizeof(name), "%.*s", (int)(eq ? eq - spec : (long)strlen(spec)), spec);
    if (eq)
        snprintf(want, sizeof(want), "installed %s", eq + 1);
    else
        snprintf(want, sizeof(want), "installed");
    /* Names and versions were validated: nothing in them needs quoting. */
    snprintf(cmd, sizeof(cmd),
             "[ \"$(dpkg-query -W -f='${db:Status-Status}%s' %s 2>/dev/null)\" = '%s' ] || "
             "{ echo 'apt %s: not installed on this node (sandboxes use the host /usr)'; exit 1; }",
             eq ? " ${Version}" : "", name, want, spec);
    return json_string(cmd);
}

json_t *sched__envtpl_cap_network(json_t *env, int cap)
{
    json_t *n = json_object_get(json_object_get(env, "config"), "networking");
    const char *ty = json_string_value(json_object_get(n, "type"));
    if (cap >= SCHED_NET_UNRESTRICTED || !ty || !json_is_object(json_object_get(env, "config")))
        return json_incref(env);
    /* A copy: env is the stored object the client gets back unchanged. */
    env = json_deep_copy(env);
    json_t *cfg = json_object_get(env, "config");
    if (cap == SCHED_NET_NONE)
        json_object_set_new(cfg, "networking", json_object()); /* no type: no network */
    else if (strcmp(ty, "unrestricted") == 0)
        json_object_set_new(cfg, "networking", json_pack("{s:s, s:[], s:b, s:b}", "type", "limited",
                                                         "allowed_hosts", "allow_mcp_servers", 0,
                                                         "allow_package_managers", 0));
    return env;
}

json_t *sched__envtpl_template(json_t *env, const char *hands_dir, double *min_hot,
                               double *max_hot)
{
    char name[64];
    bool ok = true;
    json_t *md = json_object_get(env, "metadata");
    const char *id = json_string_value(json_object_get(env, "id"));

    if (sched__env_pool_name(id, name, sizeof(name)) < 0)
        return NULL;
    *min_hot = meta_num(md, &meta_keys[0], DEF_MIN_HOT, &ok);
    *max_hot = meta_num(md, &meta_keys[1], DEF_MAX_HOT, &ok);
    double mem = meta_num(md, &meta_keys[2], DEF_MEMORY_MB, &ok);
    double pids = meta_num(md, &meta_keys[3], DEF_PIDS, &ok);
    double cpu = meta_num(md, &meta_keys[4], atof(DEF_CPU), &ok);
    json_t *t = json_pack("{s:s, s:s, s:s, s:b, s:s, s:[s,s,s,s,s,s,s], s:s, s:{s:I, s:I, s:f}}",
                          "name", name, "rootfs", "host", "workdir", WORKDIR,
                          "init_sets_hostname", 1, "hostname",
                          "sandbox", "init", "/.wp/warmpool-hands", "--socket", HANDS_SOCKET,
                          "--workdir", WORKDIR, "--ready-file", HANDS_READY, "ready_file",
                          HANDS_READY, "limits", "memory_mb", (json_int_t)mem, "pids",
                          (json_int_t)pids, "cpu", cpu);
    /* Only the hands binary, not the directory it lives in (the operator's
     * bin or build dir): a sandbox sees nothing else of the host there. */
    char hands[600];
    snprintf(hands, sizeof(hands), "%s/warmpool-hands", hands_dir);
    json_t *binds = json_pack("[{s:s, s:s}]", "source", hands, "target", "/.wp/warmpool-hands");
    json_t *lim = json_object_get(t, "limits");
    for (int i = 5; i <= 6; i++) {
        double v = meta_num(md, &meta_keys[i], 0, &ok);
        if (v > 0)
            json_object_set_new(lim, meta_keys[i].name + 9, json_integer((json_int_t)v));
    }
    json_t *setup = json_array();
    if (!t || !binds || !setup || !ok) {
        json_decref(t);
        json_decref(binds);
        json_decref(setup);
        return NULL;
    }
    json_t *apt = json_object_get(json_object_get(json_object_get(env, "config"), "packages"), "apt");
    size_t i;
    json_t *e;
    json_array_foreach(apt, i, e)
        json_array_append_new(setup, apt_step(json_string_value(e)));
    if (json_array_size(setup) > 0)
        json_array_append_new(binds, json_pack("{s:s, s:s}", "source", "/var/lib/dpkg", "target",
                                               "/var/lib/dpkg"));
    json_t *cfg = json_object_get(env, "config");
    json_t *npm = json_object_get(json_object_get(cfg, "packages"), "npm");
    if (json_array_size(npm) > 0) {
        /* One npm run for all (validated names: no quoting needed); the
         * prefix is in the image's writable layer, on every clone's PATH. */
        char cmd[16384];
        size_t off = (size_t)snprintf(cmd, sizeof(cmd),
                                      "npm install -g --prefix " PKG_PREFIX
                                      " --no-audit --no-fund --no-update-notifier");
        json_array_foreach(npm, i, e)
            if (off < sizeof(cmd))
                off += (size_t)snprintf(cmd + off, sizeof(cmd) - off, " %s", json_string_value(e));
        json_array_append_new(setup, json_string(cmd));
        json_object_set_new(t, "env", json_pack("{s:s, s:s, s:s}", "PATH",
                                                PKG_PREFIX "/bin:/usr/local/sbin:/usr/local/bin:"
                                                "/usr/sbin:/usr/bin:/sbin:/bin",
                                                "NODE_PATH", PKG_PREFIX "/lib/node_modules",
                                                "NODE_EXTRA_CA_CERTS", CA_BUNDLE));
    }
    json_t *net = network_of(cfg);
    /* TLS from a networked sandbox needs the host's CA certificates (public
     * data; a node behind a TLS-inspecting proxy has its CA there too). */
    if (strcmp(json_string_value(json_object_get(net, "mode")), "none") != 0)
        json_array_append_new(binds, json_pack("{s:s, s:s}", "source", CA_DIR, "target", CA_DIR));
    json_object_set_new(t, "network", net);
    json_object_set_new(t, "binds", binds);
    json_object_set_new(t, "setup", setup);
    return t;
}

/* ---- publishing ---------------------------------------------------------- */

#include "lua/scheduler/envtpl.h" /* its Lua scripts: lua/scheduler/envtpl/ (Makefile) */

static void keys_of(const char *name, char *tpl, char *pol, size_t cap)
{
    snprintf(tpl, cap, "wp:tpl:{%s}", name);
    snprintf(pol, cap, "wp:env:{%s}:policy", name);
}

/* Publishing is two steps: the template and policy in the environment's
 * slot (publish.lua), then its entry in wp:tpls (a global hash the nodes
 * read, routed to its own master), so a node never lists a template that is
 * not there. A crash between leaves an environment stored and not served:
 * the client saw an error, and its next update publishes it. Withdrawing
 * runs the other way round (unpublish). req->scratch holds "<name> <digest>"
 * between the steps. */
static void listed(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *obj = req->tmp;
    req->tmp = NULL;
    if (reply->type == REDIS_REPLY_ERROR) {
        json_decref(obj);
        /* The environment is stored; its next update publishes again. */
        sched__respond_error(req, 500, "api_error", NULL,
                             "environment stored but not published to the pool: %s", reply->str);
        return;
    }
    sched__respond_json(req, 200, obj);
}

static void published(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    char name[64], digest[72];
    if (reply->type == REDIS_REPLY_ERROR) {
        listed(req, reply);
        return;
    }
    if (sscanf(req->scratch, "%63s %71s", name, digest) != 2) { /* cannot be: set above */
        json_decref(req->tmp);
        req->tmp = NULL;
        sched__respond_error(req, 500, "api_error", NULL, "lost the template's name");
        return;
    }
    const char *argv[] = { "HSET", POOL_TPLS, name, digest };
    sched__req_redis(req, listed, 4, argv, NULL);
}

void sched__envtpl_publish(struct sched_req *req, json_t *env)
{
    char name[64], tpl[128], pol[128], digest[65], mn[16], mx[16], now[32];
    double min_hot, max_hot;
    const char *type = json_string_value(json_object_get(json_object_get(env, "config"), "type"));

    if (!type || strcmp(type, "cloud") != 0 || !json_is_null(json_object_get(env, "archived_at"))) {
        sched__respond_json(req, 200, env);
        return;
    }
    if (pool_override(env)) {
        /* Served by an operator's pool: nothing of its own to publish (and
         * a template published before the override is withdrawn). */
        sched__envtpl_withdraw(req, env);
        return;
    }
    json_t *capped = sched__envtpl_cap_network(env, req->srv->cfg.api_network);
    json_t *t = capped ? sched__envtpl_template(capped, req->srv->cfg.hands_dir, &min_hot, &max_hot)
                       : NULL;
    json_decref(capped);
    char *s = t ? json_dumps(t, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(t);
    if (!s || sched__env_pool_name(json_string_value(json_object_get(env, "id")), name,
                                   sizeof(name)) < 0) {
        free(s);
        json_decref(env);
        sched__respond_error(req, 500, "api_error", NULL, "could not derive the template");
        return;
    }
    sched__sha256_hex(s, digest);
    keys_of(name, tpl, pol, sizeof(tpl));
    snprintf(mn, sizeof(mn), "%d", (int)min_hot);
    snprintf(mx, sizeof(mx), "%d", (int)max_hot);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    snprintf(req->scratch, sizeof(req->scratch), "%s %s", name, digest);
    const char *argv[] = { tpl, pol, s, digest, req->org, mn, mx, now,
                           json_string_value(json_object_get(env, "id")) };
    json_decref(req->tmp);
    req->tmp = env;
    sched__req_script(req, lua_publish, published, 2, 9, argv, NULL);
    log_info("publish env=%s digest=%.12s min_hot=%s max_hot=%s", name, digest, mn, mx);
    free(s);
}

/* ---- withdrawing ---------------------------------------------------------
 * In order, each step once the one before answered (req->step), so nodes
 * stop listing the template before it goes: the object's owner checked
 * (HGET, the organization's slot), the wp:tpls entry removed (its master),
 * template and policy fields (unpublish.lua, the environment's slot), the
 * environment's entry in its organization's quota use (quota_use_drop),
 * then the object deleted (a delete) or the archived object answered. A
 * crash between leaves the environment stored, possibly still counted in
 * its organization's quota use: the client saw an error and asks again. */

enum { WD_OWNER, WD_TPLS, WD_TPL, WD_QUOTA };

/* The one place here that touches a quota key (quota.c owns them). */
static void quota_use_drop(struct sched_req *req, const char *id, wp_redis_cb cb)
{
    char ku[160];
    sched__key_quota(ku, sizeof(ku), "envs", req->org);
    const char *argv[] = { "HDEL", ku, id };
    sched__req_redis(req, cb, 3, argv, NULL);
}

static void withdraw_step(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    char name[64], tpl[128], pol[128];
    const char *id = req->scratch; /* the environment's id (= its pool name) */
    if (reply->type == REDIS_REPLY_ERROR) {
        json_decref(req->tmp);
        req->tmp = NULL;
        sched__respond_error(req, 500, "api_error", NULL, "unpublish failed: %s", reply->str);
        return;
    }
    snprintf(name, sizeof(name), "%s", id);
    keys_of(name, tpl, pol, sizeof(tpl));
    switch (req->step++) {
    case WD_OWNER: {
        /* Only the owner's environment: another organization's is not
         * found here (and answered as such by the delete). */
        if (reply->type != REDIS_REPLY_STRING || strcmp(reply->str, req->org) != 0)
            break;
        const char *argv[] = { "HDEL", POOL_TPLS, name };
        sched__req_redis(req, withdraw_step, 3, argv, NULL);
        return;
    }
    case WD_TPLS: {
        const char *argv[] = { tpl, pol };
        sched__req_script(req, lua_unpublish, withdraw_step, 2, 2, argv, NULL);
        return;
    }
    case WD_TPL:
        quota_use_drop(req, id, withdraw_step);
        return;
    default:
        break;
    }
    json_t *obj = req->tmp;
    req->tmp = NULL;
    if (!obj) { /* delete: now the object itself */
        sched__obj_delete(req, &sched__kind_env, req->org, id);
        return;
    }
    sched__respond_json(req, 200, obj);
}

static void unpublish(struct sched_req *req, const char *id, json_t *obj)
{
    char name[64], kobj[200];
    if (sched__env_pool_name(id, name, sizeof(name)) < 0) {
        /* Never published (no such pool name): nothing to withdraw. */
        if (obj)
            sched__respond_json(req, 200, obj);
        else
            sched__obj_delete(req, &sched__kind_env, req->org, id);
        return;
    }
    snprintf(req->scratch, sizeof(req->scratch), "%s", id);
    sched__key_obj(kobj, sizeof(kobj), req->org, id);
    json_decref(req->tmp);
    req->tmp = obj;
    req->step = WD_OWNER;
    const char *argv[] = { "HGET", kobj, "org" };
    sched__req_redis(req, withdraw_step, 3, argv, NULL);
}

void sched__envtpl_withdraw(struct sched_req *req, json_t *env)
{
    unpublish(req, json_string_value(json_object_get(env, "id")), env);
}

void sched__envtpl_delete(struct sched_req *req)
{
    /* Withdraw first: a crash in between leaves a stored environment
     * nodes no longer serve (its next update publishes it again), never a
     * template served for an environment that is gone. */
    unpublish(req, req->params[0], NULL);
}
