/* vaults.c - /v1/vaults and their credentials. A credential's secrets
 * (tokens, client secrets, secret values) are sealed with AES-256-GCM into
 * the hash field "sealed" of its object and never appear in its JSON, so
 * no read path can return them. */
#define WP_LOG_COMPONENT "vaults"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool.h"
#include "scheduler/sched_int.h"

static const char *const vault_fields[] = {"display_name", "metadata", NULL};
static const char *const cred_fields[] = {"auth", "display_name", "metadata", NULL};

static const char *check_name(json_t *v, bool required)
{
    if (!v || json_is_null(v))
        return required ? "display_name is required" : NULL;
    if (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > 255)
        return "display_name must be 1 to 255 characters";
    return NULL;
}

static void stamp_new(json_t *o, const char *prefix, const char *type)
{
    char id[64], now[40];
    sched__new_id(prefix, id, sizeof(id));
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "created_at", json_string(now));
    json_object_set_new(o, "updated_at", json_string(now));
    json_object_set_new(o, "archived_at", json_null());
}

static void touch(json_t *o, bool archive)
{
    char now[40];
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(o, "updated_at", json_string(now));
    if (archive)
        json_object_set_new(o, "archived_at", json_string(now));
}

static const char *apply_common(json_t *o, json_t *body, bool create)
{
    const char *msg;
    json_t *v = json_object_get(body, "display_name");
    if ((msg = check_name(v, create && !strcmp(json_string_value(json_object_get(o, "type")) ?: "vault", "vault"))))
        return msg;
    if (v)
        json_object_set(o, "display_name", v);
    else if (create)
        json_object_set_new(o, "display_name", json_null());
    v = json_object_get(body, "metadata");
    if (create) {
        if (v && (msg = sched__check_metadata(v, false)))
            return msg;
        json_object_set_new(o, "metadata", v ? json_deep_copy(v) : json_object());
    } else if (v) {
        if (json_is_null(v)) {
            json_object_set_new(o, "metadata", json_object());
        } else {
            if ((msg = sched__check_metadata(v, true)))
                return msg;
            sched__apply_metadata_patch(json_object_get(o, "metadata"), v, false);
            if (json_object_size(json_object_get(o, "metadata")) > 16)
                return "metadata may have at most 16 keys";
        }
    }
    return NULL;
}

static void cred_scope(struct sched_req *req, char *out, size_t cap);

/* ---- vaults ---- */

void sched__h_vault_create(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, vault_fields), *msg;
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    json_t *v = json_pack("{s:s}", "type", "vault");
    if ((msg = apply_common(v, req->body, true))) {
        json_decref(v);
        sched__bad_request(req, "%s", msg);
        return;
    }
    stamp_new(v, "vlt_", "vault");
    sched__obj_create(req, &sched__kind_vault, req->org, v, NULL);
}

static void got(struct sched_req *req, json_t *obj, long long rev)
{
    (void)rev;
    sched__respond_json(req, 200, obj);
}

void sched__h_vault_get(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_vault, req->params[0], got);
}

static void vault_update_loaded(struct sched_req *req, json_t *v, long long rev)
{
    const char *msg = apply_common(v, req->body, false);
    if (msg) {
        json_decref(v);
        sched__bad_request(req, "%s", msg);
        return;
    }
    touch(v, false);
    sched__obj_store(req, &sched__kind_vault, req->org, v, rev, false, NULL, NULL);
}

void sched__h_vault_update(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, vault_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    sched__obj_load(req, &sched__kind_vault, req->params[0], vault_update_loaded);
}

static void vault_archive_loaded(struct sched_req *req, json_t *v, long long rev)
{
    if (!json_is_null(json_object_get(v, "archived_at"))) {
        sched__respond_json(req, 200, v);
        return;
    }
    touch(v, true);
    sched__obj_store(req, &sched__kind_vault, req->org, v, rev, true, NULL, NULL);
}

void sched__h_vault_archive(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_vault, req->params[0], vault_archive_loaded);
}

#include "lua/scheduler/vaults.h" /* its Lua scripts: lua/scheduler/vaults/ (Makefile) */

static void creds_dropped(void *ctx, redisReply *reply)
{
    (void)ctx;
    (void)reply; /* the vault delete queued right behind reports the outcome */
}

void sched__h_vault_delete(struct sched_req *req)
{
    char kobj[200], scope[200], kall[200], kact[200];
    sched__key_obj(kobj, sizeof(kobj), req->org, req->params[0]);
    cred_scope(req, scope, sizeof(scope));
    sched__key_idx(kall, sizeof(kall), req->org, scope, &sched__kind_cred, false);
    sched__key_idx(kact, sizeof(kact), req->org, scope, &sched__kind_cred, true);
    char kpre[160];
    snprintf(kpre, sizeof(kpre), "wp:obj:{%s}:", req->org);
    const char *argv[] = {kobj, kall, kact, req->org, kpre};
    /* Same connection, so it runs before the delete below. */
    if (sched__req_script(req, lua_drop_creds, creds_dropped, 3, 5, argv, NULL) < 0)
        return;
    sched__obj_delete(req, &sched__kind_vault, req->org, req->params[0]);
}

void sched__h_vault_list(struct sched_req *req)
{
    bool bad = false;
    bool arch = sched__query_bool(req, "include_archived", false, &bad);
    if (bad) {
        sched__bad_request(req, "include_archived must be true or false");
        return;
    }
    sched__obj_list(req, &sched__kind_vault, req->org, arch, false, NULL, false);
}

/* ---- credentials ---- */

static void cred_scope(struct sched_req *req, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%s", req->org, req->params[0]);
}

/* Move secret fields of auth into secrets; validate the public part. */
/* secret_name becomes a variable in the sandbox's environment. */
static bool env_name_ok(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > 255 || (n[0] >= '0' && n[0] <= '9'))
        return false;
    return strspn(n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") == len;
}

static const char *const inj_fields[] = {"body", "header", NULL};

static const char *split_auth(json_t *auth, json_t *secrets, bool create, const char *stored_type)
{
    const char *ty = json_string_value(json_object_get(auth, "type"));
    if (!json_is_object(auth) || !ty)
        return "auth must be an object with a type";
    if (stored_type && strcmp(ty, stored_type))
        return "auth.type cannot change";
#define TAKE(obj, name)                                                        \
    do {                                                                       \
        json_t *t_ = json_object_get((obj), (name));                           \
        if (t_ && !json_is_null(t_)) {                                         \
            if (!json_is_string(t_))                                           \
                return name " must be a string";                               \
            json_object_set(secrets, (name), t_);                              \
        }                                                                      \
        json_object_del((obj), (name));                                        \
    } while (0)
    if (!strcmp(ty, "static_bearer")) {
        static const char *const f[] = {"type", "mcp_server_url", "token", NULL};
        if (sched__unknown_field(auth, f))
            return "auth: unknown field for static_bearer";
        if (create && (!json_is_string(json_object_get(auth, "mcp_server_url")) ||
                       !json_is_string(json_object_get(auth, "token"))))
            return "static_bearer needs mcp_server_url and token";
        if (!create && json_object_get(auth, "mcp_server_url"))
            return "mcp_server_url is immutable";
        TAKE(auth, "token");
        return NULL;
    }
    if (!strcmp(ty, "mcp_oauth")) {
        static const char *const f[] = {"type", "mcp_server_url", "access_token", "expires_at",
                                        "refresh", NULL};
        if (sched__unknown_field(auth, f))
            return "auth: unknown field for mcp_oauth";
        if (create && (!json_is_string(json_object_get(auth, "mcp_server_url")) ||
                       !json_is_string(json_object_get(auth, "access_token"))))
            return "mcp_oauth needs mcp_server_url and access_token";
        if (!create && json_object_get(auth, "mcp_server_url"))
            return "mcp_server_url is immutable";
        json_t *exp = json_object_get(auth, "expires_at");
        uint64_t ms;
        if (exp && !json_is_null(exp) &&
            (!json_is_string(exp) || sched__parse_rfc3339(json_string_value(exp), &ms) < 0 ||
             ms <= wp_wall_ms()))
            return "expires_at must be a future RFC 3339 timestamp";
        TAKE(auth, "access_token");
        json_t *r = json_object_get(auth, "refresh");
        if (r && json_is_object(r)) {
            TAKE(r, "refresh_token");
            json_t *tea = json_object_get(r, "token_endpoint_auth");
            if (tea && json_is_object(tea))
                TAKE(tea, "client_secret");
        }
        return NULL;
    }
    if (!strcmp(ty, "environment_variable")) {
        static const char *const f[] = {"type", "secret_name", "secret_value", "networking",
                                        "injection_location", NULL};
        if (sched__unknown_field(auth, f))
            return "auth: unknown field for environment_variable";
        if (create && (!json_is_string(json_object_get(auth, "secret_name")) ||
                       !json_is_string(json_object_get(auth, "secret_value")) ||
                       !json_is_object(json_object_get(auth, "networking"))))
            return "environment_variable needs secret_name, secret_value and networking";
        if (!create && json_object_get(auth, "secret_name"))
            return "secret_name is immutable";
        if (create && !env_name_ok(json_string_value(json_object_get(auth, "secret_name"))))
            return "secret_name must be an environment variable name (letters, digits, _; "
                   "not starting with a digit; up to 255)";
        json_t *net = json_object_get(auth, "networking");
        if (net && !json_is_null(net)) {
            const char *nt = json_string_value(json_object_get(net, "type"));
            json_t *hosts = json_object_get(net, "allowed_hosts"), *h;
            size_t i;
            if (!nt || (strcmp(nt, "unrestricted") && strcmp(nt, "limited")) ||
                (!strcmp(nt, "limited") && (!json_is_array(hosts) || json_array_size(hosts) > 16)))
                return "networking must be unrestricted or limited with up to 16 allowed_hosts";
            /* The egress proxy matches these (pool/egress.c): what it
             * could not match is refused here, not ignored there. */
            json_array_foreach(hosts, i, h)
                if (!json_is_string(h) || pool_egress_host_pattern_check(json_string_value(h)))
                    return "networking.allowed_hosts: each entry is a bare host name, an IPv4 "
                           "address or a *. wildcard (no URL, port, path or IPv6)";
        }
        json_t *inj = json_object_get(auth, "injection_location");
        if (inj && !json_is_null(inj)) {
            json_t *b = json_object_get(inj, "body"), *hd = json_object_get(inj, "header");
            if (!json_is_object(inj) || sched__unknown_field(inj, inj_fields) ||
                (b && !json_is_boolean(b)) || (hd && !json_is_boolean(hd)))
                return "injection_location: {\"body\"?: boolean, \"header\"?: boolean}";
            if (create && !json_is_true(b) && !json_is_true(hd))
                return "injection_location: at least one of body and header must be enabled";
        }
        TAKE(auth, "secret_value");
        if (create && !json_object_get(auth, "injection_location"))
            json_object_set_new(auth, "injection_location",
                                json_pack("{s:b,s:b}", "body", 0, "header", 1));
        return NULL;
    }
#undef TAKE
    return "auth.type must be mcp_oauth, static_bearer or environment_variable";
}

static char *seal_secrets(struct sched_req *req, json_t *secrets)
{
    char *plain = json_dumps(secrets, JSON_COMPACT);
    char *sealed = plain ? sched__vault_seal(&req->srv->vk, plain, strlen(plain)) : NULL;
    if (plain) {
        memset(plain, 0, strlen(plain));
        free(plain);
    }
    return sealed;
}

static void cred_vault_loaded(struct sched_req *req, json_t *vault, long long rev)
{
    (void)rev;
    char scope[200];
    bool archived = !json_is_null(json_object_get(vault, "archived_at"));
    json_decref(vault);
    if (archived) {
        sched__bad_request(req, "vault %s is archived", req->params[0]);
        return;
    }
    json_t *c = req->tmp2;
    req->tmp2 = NULL;
    char *sealed = seal_secrets(req, req->tmp);
    if (!sealed) {
        json_decref(c);
        sched__respond_error(req, 500, "api_error", NULL, "could not seal the secret");
        return;
    }
    const char *extra[] = {"sealed", sealed, NULL};
    cred_scope(req, scope, sizeof(scope));
    sched__obj_create(req, &sched__kind_cred, scope, c, extra);
    free(sealed);
}

void sched__h_cred_create(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, cred_fields), *msg;
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    json_t *c = json_pack("{s:s,s:s}", "type", "vault_credential", "vault_id", req->params[0]);
    json_t *auth = json_deep_copy(json_object_get(req->body, "auth"));
    json_t *secrets = json_object();
    if (!auth)
        msg = "auth is required";
    else
        msg = split_auth(auth, secrets, true, NULL);
    if (!msg)
        msg = apply_common(c, req->body, true);
    if (msg) {
        json_decref(c);
        json_decref(auth);
        json_decref(secrets);
        sched__bad_request(req, "%s", msg);
        return;
    }
    json_object_set_new(c, "auth", auth);
    stamp_new(c, "vcrd_", "vault_credential");
    req->tmp = secrets;
    req->tmp2 = c;
    sched__obj_load(req, &sched__kind_vault, req->params[0], cred_vault_loaded);
}

static void cred_load(struct sched_req *req, sched_obj_cb cb)
{
    char scope[200];
    cred_scope(req, scope, sizeof(scope));
    sched__obj_load_scoped(req, &sched__kind_cred, req->params[1], scope, cb);
}

void sched__h_cred_get(struct sched_req *req)
{
    cred_load(req, got);
}

static void cred_sealed_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    char scope[200];
    json_t *c = req->tmp2;
    req->tmp2 = NULL;
    /* written back below with the current key anyway */
    json_t *secrets = sched__req_cred_secrets(req, reply);
    if (!secrets) {
        json_decref(c);
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(req->tmp, k, v) json_object_set(secrets, k, v);
    char *sealed = seal_secrets(req, secrets);
    json_decref(secrets);
    if (!sealed) {
        json_decref(c);
        sched__respond_error(req, 500, "api_error", NULL, "could not seal the secret");
        return;
    }
    const char *extra[] = {"sealed", sealed, NULL};
    cred_scope(req, scope, sizeof(scope));
    sched__obj_store(req, &sched__kind_cred, scope, c, (long long)req->step, false, extra, NULL);
    free(sealed);
}

static void cred_update_loaded(struct sched_req *req, json_t *c, long long rev)
{
    const char *msg = apply_common(c, req->body, false);
    json_t *auth = json_object_get(req->body, "auth");
    json_t *secrets = json_object();
    char kobj[200];
    if (!msg && auth) {
        json_t *a = json_deep_copy(auth);
        json_t *stored = json_object_get(c, "auth");
        msg = split_auth(a, secrets, false, json_string_value(json_object_get(stored, "type")));
        if (!msg) {
            const char *k;
            json_t *v;
            json_object_foreach(a, k, v) {
                if (!strcmp(k, "injection_location") && json_is_object(v))
                    json_object_update(json_object_get(stored, k), v);
                else if (!json_is_null(v) || strcmp(k, "networking"))
                    json_object_set(stored, k, v);
            }
            json_t *inj = json_object_get(stored, "injection_location");
            if (inj && !json_is_true(json_object_get(inj, "body")) &&
                !json_is_true(json_object_get(inj, "header")))
                msg = "injection_location: at least one of body and header must stay enabled";
        }
        json_decref(a);
    }
    if (msg) {
        json_decref(c);
        json_decref(secrets);
        sched__bad_request(req, "%s", msg);
        return;
    }
    touch(c, false);
    req->tmp = secrets;
    req->tmp2 = c;
    req->step = (int)rev;
    sched__key_obj(kobj, sizeof(kobj), req->org, req->params[1]);
    const char *argv[] = {"HGET", kobj, "sealed"};
    sched__req_redis(req, cred_sealed_cb, 3, argv, NULL);
}

void sched__h_cred_update(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, cred_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    cred_load(req, cred_update_loaded);
}

static void cred_archive_loaded(struct sched_req *req, json_t *c, long long rev)
{
    char scope[200];
    if (!json_is_null(json_object_get(c, "archived_at"))) {
        sched__respond_json(req, 200, c);
        return;
    }
    touch(c, true);
    cred_scope(req, scope, sizeof(scope));
    sched__obj_store(req, &sched__kind_cred, scope, c, rev, true, NULL, NULL);
}

void sched__h_cred_archive(struct sched_req *req)
{
    cred_load(req, cred_archive_loaded);
}

static void cred_delete_loaded(struct sched_req *req, json_t *c, long long rev)
{
    (void)rev;
    char scope[200];
    json_decref(c);
    cred_scope(req, scope, sizeof(scope));
    sched__obj_delete(req, &sched__kind_cred, scope, req->params[1]);
}

void sched__h_cred_delete(struct sched_req *req)
{
    cred_load(req, cred_delete_loaded);
}

void sched__h_cred_list(struct sched_req *req)
{
    bool bad = false;
    char scope[200];
    bool arch = sched__query_bool(req, "include_archived", false, &bad);
    if (bad) {
        sched__bad_request(req, "include_archived must be true or false");
        return;
    }
    cred_scope(req, scope, sizeof(scope));
    sched__obj_list(req, &sched__kind_cred, scope, arch, false, NULL, false);
}
