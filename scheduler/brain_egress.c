/* brain_egress.c - a session's secrets, for its brain: the
 * environment_variable credentials of its vaults, used without entering
 * the sandbox (ARCHITECTURE.md, "The egress proxy").
 *
 * Before the sandbox is claimed, the session's vaults are read (one
 * script: vaults of the session's organization, not archived, their
 * credentials not archived, and the environment's networking) and each
 * environment_variable credential is opened. The sandbox's variable
 * <secret_name> holds a placeholder; the secret travels only in the
 * relay's route frame to the sandbox's node (TLS when the relay leaves
 * loopback), which confines the sandbox to its egress proxy and hands the
 * proxy the secret before any tool can run.
 *
 * Placeholders: HMAC-SHA256(vault key, session, credential), 128 bits,
 * "wpcred_" + hex. Never derived from the secret, unguessable from inside
 * the sandbox, and the same for every brain of the session (a resumed
 * session's sandbox keeps working) without being stored anywhere.
 *
 * Two credentials naming the same variable: the first in vault_ids
 * order, then creation order, wins (as for MCP servers). */
#define WP_LOG_COMPONENT "brain"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentlink/agentlink.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "base/wipe.h"
#include "scheduler/brain_int.h"
#include "scheduler/sched_int.h"

#define MAX_VAULTS 64

#include "lua/scheduler/brain_egress.h" /* its Lua scripts: lua/scheduler/brain_egress/ (Makefile) */

static const char *sget(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

int sched__egress_placeholder(const unsigned char key[32], const char *session, const char *cred,
                              char out[POOL_EGRESS_PLACEHOLDER_LEN])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char msg[256];
    int len = snprintf(msg, sizeof(msg), "wpcred%c%s%c%s", 0, session, 0, cred);
    if (len < 0 || (size_t)len >= sizeof(msg) ||
        !HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, (size_t)len, mac, &n) || n < 16)
        return -1;
    int o = snprintf(out, POOL_EGRESS_PLACEHOLDER_LEN, "wpcred_");
    for (int i = 0; i < 16; i++)
        o += snprintf(out + o, POOL_EGRESS_PLACEHOLDER_LEN - (size_t)o, "%02x", mac[i]);
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

/* Does a limited environment let the sandbox reach host pattern p (a
 * credential's allowed host)? Exact names must be in its list; a
 * wildcard is reachable when some listed name falls under it. */
static bool env_reaches(json_t *env_hosts, const char *p)
{
    size_t i;
    json_t *h;
    json_array_foreach(env_hosts, i, h) {
        const char *e = json_string_value(h);
        if (e && (strcasecmp(e, p) == 0 || pool_egress_host_match(p, e)))
            return true;
    }
    return false;
}

static void unreachable(struct brain *b, const char *cred, const char *vault, const char *host)
{
    char msg[400];
    snprintf(msg, sizeof(msg),
             "credential %s may be sent to %s, which the environment's network policy "
             "(limited) does not let the sandbox reach; requests there fail",
             cred, host);
    log_info("session=%s %s", b->sid, msg);
    sched__brain_emit(b, json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:{s:s}}}", "type",
                                   "session.error", "error", "type",
                                   "credential_host_unreachable_error", "message", msg,
                                   "credential_id", cred, "vault_id", vault, "retry_status",
                                   "type", "retrying"),
                      NULL);
}

/* One environment_variable credential into the route's list and the
 * sandbox's environment. Returns false to skip it. */
static bool add_cred(struct brain *b, json_t *env_net, const char *id, const char *vault,
                     json_t *c, const char *sealed, json_t *creds, json_t *vars)
{
    json_t *auth = json_object_get(c, "auth");
    const char *name = sget(auth, "secret_name");
    char why[256], ph[POOL_EGRESS_PLACEHOLDER_LEN];
    size_t i;
    json_t *v;

    if (!name)
        return false;
    json_array_foreach(vars, i, v)
        if (!strcmp(sget(v, "name") ?: "", name))
            return false; /* an earlier credential holds this variable */
    json_t *sec = sched__cred_secrets(&b->srv->vk, sealed, why, sizeof(why));
    const char *secret = sget(sec, "secret_value");
    if (!secret) {
        log_warn("session=%s credential %s cannot be opened: %s", b->sid, id,
                 sec ? "no secret_value" : why);
        if (sec)
            sched__json_wipe(sec);
        return false;
    }
    if (sched__egress_placeholder(b->srv->vk.cur, b->sid, id, ph) < 0) {
        sched__json_wipe(sec);
        return false;
    }
    json_t *net = json_object_get(auth, "networking");
    json_t *inj = json_object_get(auth, "injection_location");
    /* The reference leaves the default open: headers, where tokens go. */
    json_t *where = json_is_object(inj) ? json_incref(inj) : json_pack("{s:b, s:b}", "header", 1, "body", 0);
    json_array_append_new(creds, json_pack("{s:s, s:s, s:o, s:O}", "placeholder", ph, "secret",
                                           secret, "injection_location", where, "networking", net));
    json_array_append_new(vars, json_pack("{s:s, s:s}", "name", name, "value", ph));
    sched__json_wipe(sec);

    /* A host the environment's network never reaches: said once. */
    if (!b->egress_warned && !strcmp(sget(env_net, "type") ?: "", "limited") &&
        !strcmp(sget(net, "type") ?: "", "limited")) {
        json_array_foreach(json_object_get(net, "allowed_hosts"), i, v) {
            const char *h = json_string_value(v);
            if (h && !env_reaches(json_object_get(env_net, "allowed_hosts"), h)) {
                unreachable(b, id, vault, h);
                break; /* one error per credential */
            }
        }
    }
    return true;
}

/* The session's github_repository resources: each to clone at attach
 * (b->repos), and each token a credential for its host only. */
static void add_repos(struct brain *b, json_t *sess, json_t *toks, json_t *creds)
{
    size_t i;
    json_t *r;
    json_decref(b->repos);
    b->repos = json_array();
    json_array_foreach(json_object_get(sess, "resources"), i, r) {
        const char *id = sget(r, "id"), *url = sget(r, "url");
        char host[256], field[96], why[256], ph[POOL_EGRESS_PLACEHOLDER_LEN];
        if (strcmp(sget(r, "type") ?: "", "github_repository") || !id || !url ||
            sched__repo_host(url, host, sizeof(host)) < 0)
            continue;
        snprintf(field, sizeof(field), "rtok:%s", id);
        const char *sealed = json_string_value(json_object_get(toks, field));
        char *remote = NULL;
        if (sealed) {
            size_t n = 0;
            bool stale;
            char *tok = sched__vault_unseal(&b->srv->vk, sealed, &n, &stale, why, sizeof(why));
            if (tok && sched__egress_placeholder(b->srv->vk.cur, b->sid, id, ph) == 0) {
                json_t *c = json_pack("{s:s, s:s%, s:{s:b, s:b}, s:{s:s, s:[s]}}", "placeholder", ph,
                                      "secret", tok, n, "injection_location", "header", 1, "body", 0,
                                      "networking", "type", "limited", "allowed_hosts", host);
                if (c)
                    json_array_append_new(creds, c);
                /* git sends these as Basic credentials; the proxy injects
                 * inside them (egress_http.c). */
                if (asprintf(&remote, "https://x-access-token:%s@%s", ph, url + 8) < 0)
                    remote = NULL;
            } else {
                log_warn("session=%s repository %s: its token cannot be opened: %s", b->sid, id,
                         tok ? "no placeholder" : why);
            }
            if (tok) {
                OPENSSL_cleanse(tok, n);
                free(tok);
            }
        }
        json_array_append_new(b->repos, json_pack("{s:s, s:s, s:s, s:O}", "url", url, "remote",
                                                  remote ? remote : url, "mount_path",
                                                  sget(r, "mount_path") ?: "/workspace/repo",
                                                  "checkout", json_object_get(r, "checkout") ?: json_null()));
        free(remote);
    }
}

/* The session's part, in its own slot (HGETALL): its json and its
 * repositories' sealed tokens, kept for creds_cb, which comes right after
 * on the same connection. */
static void sess_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    json_decref(b->egress_sess);
    b->egress_sess = NULL;
    if (!b->stopped && reply && reply->type == REDIS_REPLY_ARRAY) {
        json_t *toks = json_object();
        const char *js = "";
        for (size_t k = 0; k + 1 < reply->elements; k += 2) {
            const char *f = reply->element[k]->str, *v = reply->element[k + 1]->str;
            if (!f || !v)
                continue;
            if (!strcmp(f, "json"))
                js = v;
            else if (!strncmp(f, "rtok:", 5))
                json_object_set_new(toks, f, json_string(v));
        }
        b->egress_sess = json_pack("{s:s, s:o}", "json", js, "rtok", toks);
    }
    sched__brain_maybe_free(b);
}

static void creds_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    if (b->stopped) {
        sched__brain_maybe_free(b);
        return;
    }
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 || !b->egress_sess) {
        if (b->egress_recheck) {
            /* Read again for a kept sandbox: what the node has stays in
             * force; the next turn tries again. */
            log_warn("session=%s its credentials could not be read again", b->sid);
            b->egress_recheck = false;
            b->egress_stale = true;
            b->egress_state = EGRESS_LOADED;
            sched__brain_maybe_free(b);
            return;
        }
        b->egress_state = EGRESS_NONE;
        sched__brain_sandbox_failed(b, "the session's vaults could not be read");
        sched__brain_maybe_free(b);
        return;
    }
    json_t *env = json_loads(reply->element[0]->str ?: "", 0, NULL);
    json_t *env_net = json_object_get(json_object_get(env, "config"), "networking");
    json_t *creds = json_array(), *vars = json_array();
    json_t *sess = json_loads(json_string_value(json_object_get(b->egress_sess, "json")), 0, NULL);
    add_repos(b, sess, json_object_get(b->egress_sess, "rtok"), creds);
    json_decref(sess);
    json_decref(b->egress_sess);
    b->egress_sess = NULL;
    for (size_t k = 1; k + 3 < reply->elements; k += 4) {
        redisReply **e = reply->element + k;
        json_t *c = json_loads(e[2]->str ?: "", 0, NULL);
        const char *ty = sget(json_object_get(c, "auth"), "type");
        if (ty && !strcmp(ty, "environment_variable"))
            add_cred(b, env_net, e[0]->str ?: "", e[1]->str ?: "", c, e[3]->str, creds, vars);
        json_decref(c);
    }
    json_decref(env);
    b->egress_warned = true; /* the check runs once per brain */
    if (json_array_size(creds) > 0) {
        b->egress = json_pack("{s:o}", "credentials", creds);
        b->egress_vars = vars;
        log_info("session=%s %zu secret(s) go through the egress proxy", b->sid,
                 json_array_size(vars));
    } else {
        json_decref(creds);
        json_decref(vars);
    }
    b->egress_state = EGRESS_LOADED;
    if (b->egress_recheck) { /* read again at a turn's start */
        b->egress_recheck = false;
        char *now = b->egress ? json_dumps(b->egress, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        bool changed = strcmp(now ? now : "", b->egress_routed ? b->egress_routed : "") != 0;
        wp_wipe_free_str(now);
        bool busy = false; /* a call running now would be cut: next turn, then */
        for (struct btool *t = b->tools; t; t = t->next)
            busy |= t->call_id > 0;
        if (changed && b->sbx == SBX_READY && busy) {
            b->egress_stale = true;
        } else if (changed && b->sbx == SBX_READY) {
            log_info("session=%s its credentials changed: routing to sandbox %s again", b->sid,
                     b->claim.sandbox);
            sched__brain_relink(b);
        }
    }
    sched__brain_claim_go(b);
    sched__brain_maybe_free(b);
}

bool sched__brain_egress_load(struct brain *b)
{
    size_t nv = json_array_size(b->vault_ids);
    if (b->egress_state == EGRESS_LOADED)
        return false;
    if (nv == 0 && !b->has_repos) {
        b->egress_state = EGRESS_LOADED;
        return false;
    }
    if (b->egress_state == EGRESS_LOADING)
        return true;
    /* Two slots: the session's own (its object), then the organization's
     * (environment, vaults, credentials), on one connection, in order. */
    const char *hg[] = {"HGETALL", b->key_obj};
    const char *argv[4 + MAX_VAULTS];
    char kseq[160];
    int argc = 0;
    sched__key_seq(kseq, sizeof(kseq), b->org, &sched__kind_cred); /* names the org's slot */
    argv[argc++] = kseq;
    argv[argc++] = b->org;
    argv[argc++] = sched__kind_cred.name;
    argv[argc++] = b->env_id;
    for (size_t i = 0; i < nv && i < MAX_VAULTS; i++)
        argv[argc++] = json_string_value(json_array_get(b->vault_ids, i)) ?: "";
    if (wp_redis_argv(b->srv->rds, sess_cb, b, 2, hg, NULL) < 0) {
        sched__brain_sandbox_failed(b, "the session's vaults could not be read");
        return true;
    }
    b->refs++;
    if (wp_redis_script(b->srv->rds, lua_egress_creds, creds_cb, b, 1, argc, argv, NULL) < 0) {
        sched__brain_sandbox_failed(b, "the session's vaults could not be read");
        return true;
    }
    b->refs++;
    b->egress_state = EGRESS_LOADING;
    return true;
}

int sched__brain_egress_env(struct brain *b, const char *proxy, struct alink_env_var *vars,
                            size_t cap, struct pool_egress_env *pe)
{
    size_t n = 0, i;
    json_t *v;
    const char *colon = proxy ? strrchr(proxy, ':') : NULL;

    pe->n = 0;
    if (colon && colon > proxy) {
        char host[32];
        snprintf(host, sizeof(host), "%.*s", (int)(colon - proxy), proxy);
        pool_egress_env(host, atoi(colon + 1), pe);
        for (i = 0; i < pe->n && n < cap; i++)
            vars[n++] = pe->vars[i];
    }
    json_array_foreach(b->egress_vars, i, v) {
        if (n < cap)
            vars[n++] = (struct alink_env_var){ sget(v, "name"), sget(v, "value") };
    }
    return (int)n;
}

void sched__brain_egress_turn_end(struct brain *b)
{
    if (b->egress_state == EGRESS_LOADED && (json_array_size(b->vault_ids) || b->has_repos))
        b->egress_stale = true;
}

void sched__brain_egress_turn_start(struct brain *b)
{
    if (!b->egress_stale || b->egress_state != EGRESS_LOADED || b->sbx != SBX_READY)
        return;
    b->egress_stale = false;
    if (b->egress)
        sched__json_wipe(b->egress);
    b->egress = NULL;
    json_decref(b->egress_vars);
    b->egress_vars = NULL;
    b->egress_state = EGRESS_NONE;
    b->egress_recheck = true;
    if (!sched__brain_egress_load(b))
        b->egress_recheck = false;
}

void sched__brain_egress_routed(struct brain *b)
{
    wp_wipe_free_str(b->egress_routed);
    b->egress_routed = b->egress ? json_dumps(b->egress, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
}

void sched__brain_egress_free(struct brain *b)
{
    wp_wipe_free_str(b->egress_routed);
    b->egress_routed = NULL;
    if (b->egress)
        sched__json_wipe(b->egress); /* drops the reference */
    b->egress = NULL;
    json_decref(b->egress_vars);
    b->egress_vars = NULL;
    json_decref(b->repos);
    b->repos = NULL;
    json_decref(b->egress_sess);
    b->egress_sess = NULL;
    b->egress_state = EGRESS_NONE;
}

/* ---- the repositories' clone, at attach ---------------------------------- */

static void repo_error(struct brain *b, const char *type, const char *url, const char *why)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "repository %s: %s", url, why);
    log_info("session=%s %s (%s)", b->sid, msg, type);
    sched__brain_emit(b, json_pack("{s:s, s:{s:s, s:s, s:s, s:{s:s}}}", "type", "session.error",
                                   "error", "type", type, "message", msg, "repository_url", url,
                                   "retry_status", "type", "retrying"),
                      NULL);
}

static void clone_done(void *ctx, int status, const struct alink_result *res,
                       const struct wp_err *err)
{
    struct brain *b = ctx;
    (void)err;
    b->refs--;
    if (b->stopped) {
        sched__brain_maybe_free(b);
        return;
    }
    b->repos_cloned = true;
    size_t i;
    json_t *r;
    json_array_foreach(b->repos, i, r) {
        char tag[32];
        snprintf(tag, sizeof(tag), "WPREPO %zu ", i);
        const char *at = status == 0 && res->content ? memmem(res->content, res->len, tag, strlen(tag)) : NULL;
        if (at && !strncmp(at + strlen(tag), "ok", 2))
            continue;
        char why[320] = "the clone did not finish";
        if (at && !strncmp(at + strlen(tag), "failed ", 7)) {
            const char *w = at + strlen(tag) + 7;
            const char *end = memchr(w, '\n', res->len - (size_t)(w - res->content));
            snprintf(why, sizeof(why), "%.*s", (int)(end ? end - w : (long)(res->len - (size_t)(w - res->content))), w);
        } else if (status != 0) {
            snprintf(why, sizeof(why), "%.*s", (int)res->len, res->content);
        }
        repo_error(b, sched__repo_error_type(why), sget(r, "url") ?: "", why);
    }
    log_info("session=%s repositories ready in %.1f ms", b->sid,
             sched__brain_since(b->clone_t0) * 1e3);
    sched__brain_sandbox_ready(b);
    sched__brain_maybe_free(b);
}

bool sched__brain_repos_clone(struct brain *b)
{
    if (b->repos_cloned || json_array_size(b->repos) == 0)
        return false;
    struct wp_buf sh;
    struct wp_err err;
    wp_buf_init(&sh, 1 << 20);
    if (sched__repo_clone_script(b->repos, &sh) < 0) {
        wp_buf_free(&sh);
        return false;
    }
    json_t *in = json_pack("{s:s, s:i}", "command", sh.data, "timeout_ms", 600000);
    wp_buf_free(&sh);
    struct alink_call_opts o = { 0 };
    b->clone_t0 = wp_now_ns();
    int64_t id = in ? alink_client_call(b->ac, "bash", in, &o, clone_done, b, &err) : -1;
    json_decref(in);
    if (id < 0) {
        b->repos_cloned = true;
        return false;
    }
    b->refs++;
    return true;
}
