/* envs.c - /v1/environments. The config maps to a warmpool environment
 * template (cloud: envtpl.c derives the template and pool policy and
 * publishes them for the nodes) or to a self-hosted work queue. */
#define WP_LOG_COMPONENT "envs"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"
#include "snapshot/snapshot.h"

static const char *const create_fields[] = {"name", "config", "description", "metadata",
                                            "scope", NULL};
static const char *const pkg_managers[] = {"apt", "cargo", "gem", "go", "npm", "pip", NULL};

static const char *str_array(json_t *v, const char *what)
{
    size_t i;
    json_t *e;
    if (!json_is_array(v))
        return what;
    json_array_foreach(v, i, e) if (!json_is_string(e)) return what;
    return NULL;
}

/* Merge cloud config params p onto stored (response form). */
static const char *merge_cloud(json_t *stored, json_t *p)
{
    static const char *const f[] = {"type", "networking", "packages", NULL};
    const char *msg;
    if (sched__unknown_field(p, f))
        return "config: unknown field";
    json_t *net = json_object_get(p, "networking");
    if (net && !json_is_null(net)) {
        const char *ty = json_string_value(json_object_get(net, "type"));
        if (ty && !strcmp(ty, "unrestricted")) {
            json_object_set_new(stored, "networking", json_pack("{s:s}", "type", "unrestricted"));
        } else if (ty && !strcmp(ty, "limited")) {
            json_t *hosts = json_object_get(net, "allowed_hosts");
            json_t *mcp = json_object_get(net, "allow_mcp_servers");
            json_t *pm = json_object_get(net, "allow_package_managers");
            if (hosts && !json_is_null(hosts) && (msg = str_array(hosts, "allowed_hosts must be strings")))
                return msg;
            if ((mcp && !json_is_null(mcp) && !json_is_boolean(mcp)) ||
                (pm && !json_is_null(pm) && !json_is_boolean(pm)))
                return "allow_mcp_servers and allow_package_managers must be booleans";
            json_object_set_new(stored, "networking",
                                json_pack("{s:s,s:o,s:b,s:b}", "type", "limited", "allowed_hosts",
                                          json_is_array(hosts) ? json_deep_copy(hosts) : json_array(),
                                          "allow_mcp_servers", json_is_true(mcp),
                                          "allow_package_managers", json_is_true(pm)));
        } else {
            return "networking.type must be unrestricted or limited";
        }
    } else if (!json_object_get(stored, "networking")) {
        json_object_set_new(stored, "networking", json_pack("{s:s}", "type", "unrestricted"));
    }
    json_t *pk = json_object_get(p, "packages");
    json_t *spk = json_object_get(stored, "packages");
    if (!spk) {
        spk = json_pack("{s:s}", "type", "packages");
        for (int i = 0; pkg_managers[i]; i++)
            json_object_set_new(spk, pkg_managers[i], json_array());
        json_object_set_new(stored, "packages", spk);
    }
    if (pk && !json_is_null(pk)) {
        if (!json_is_object(pk))
            return "packages must be an object";
        const char *k;
        json_t *kv;
        json_object_foreach(pk, k, kv) {
            bool known = !strcmp(k, "type");
            for (int i = 0; pkg_managers[i]; i++)
                known = known || !strcmp(k, pkg_managers[i]);
            if (!known)
                return "packages: unknown package manager (apt, cargo, gem, go, npm, pip)";
        }
        json_t *pt = json_object_get(pk, "type");
        if (pt && !json_is_null(pt) && !(json_is_string(pt) && !strcmp(json_string_value(pt), "packages")))
            return "packages.type must be \"packages\"";
        for (int i = 0; pkg_managers[i]; i++) {
            json_t *l = json_object_get(pk, pkg_managers[i]);
            if (!l)
                continue;
            if (json_is_null(l)) {
                json_object_set_new(spk, pkg_managers[i], json_array());
                continue;
            }
            if ((msg = str_array(l, "package lists must be arrays of strings")))
                return msg;
            json_object_set(spk, pkg_managers[i], l);
        }
    }
    /* Packages behind limited networking need the package managers allowed. */
    json_t *n = json_object_get(stored, "networking");
    bool any = false;
    for (int i = 0; pkg_managers[i]; i++)
        any = any || json_array_size(json_object_get(spk, pkg_managers[i])) > 0;
    if (any && !strcmp(json_string_value(json_object_get(n, "type")), "limited") &&
        !json_is_true(json_object_get(n, "allow_package_managers")))
        return "packages with limited networking need allow_package_managers: true";
    return NULL;
}

static const char *apply(json_t *env, json_t *body, bool create, bool *type_change)
{
    const char *msg;
    json_t *v = json_object_get(body, "name");
    if (create || (v && !json_is_null(v))) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256)
            return "name must be a non-empty string";
        json_object_set(env, "name", v);
    }
    v = json_object_get(body, "description");
    if (v && !json_is_null(v) && !json_is_string(v))
        return "description must be a string or null";
    if (create || v)
        json_object_set_new(env, "description", v ? json_incref(v) : json_null());
    v = json_object_get(body, "scope");
    if (v && !json_is_null(v)) {
        const char *s = json_string_value(v);
        if (!s || (strcmp(s, "organization") && strcmp(s, "account")))
            return "scope must be organization or account";
        json_object_set(env, "scope", v);
    } else if (create) {
        json_object_set_new(env, "scope", json_string("organization"));
    }
    v = json_object_get(body, "config");
    json_t *cfg = json_object_get(env, "config");
    if (v && !json_is_null(v)) {
        const char *ty = json_string_value(json_object_get(v, "type"));
        if (!json_is_object(v) || !ty || (strcmp(ty, "cloud") && strcmp(ty, "self_hosted")))
            return "config.type must be cloud or self_hosted";
        if (cfg && strcmp(ty, json_string_value(json_object_get(cfg, "type")))) {
            *type_change = true;
            return "config.type cannot change after creation";
        }
        if (!strcmp(ty, "self_hosted")) {
            if (json_object_size(v) != 1)
                return "self_hosted config has no other fields";
            json_object_set_new(env, "config", json_pack("{s:s}", "type", "self_hosted"));
        } else {
            json_t *c = cfg ? cfg : json_pack("{s:s}", "type", "cloud");
            if (!cfg)
                json_object_set_new(env, "config", c);
            if ((msg = merge_cloud(c, v)))
                return msg;
        }
    } else if (create) {
        json_t *c = json_pack("{s:s}", "type", "cloud");
        json_object_set_new(env, "config", c);
        json_t *empty = json_object();
        msg = merge_cloud(c, empty);
        json_decref(empty);
        if (msg)
            return msg;
    }
    v = json_object_get(body, "metadata");
    if (create) {
        if (v && (msg = sched__check_metadata(v, false)))
            return msg;
        json_object_set_new(env, "metadata", v ? json_deep_copy(v) : json_object());
    } else if (v && !json_is_null(v)) {
        if ((msg = sched__check_metadata(v, true)))
            return msg;
        sched__apply_metadata_patch(json_object_get(env, "metadata"), v, true);
        if (json_object_size(json_object_get(env, "metadata")) > 16)
            return "metadata may have at most 16 keys";
    }
    /* What the pool needs (policy and limits in metadata, packages it can
     * provide): refused here, so nothing unservable is stored. */
    return sched__envtpl_check(env);
}

static void create_checked(struct sched_req *req, json_t *e, long long rev)
{
    (void)rev;
    const char *extra[] = {"config_type",
                           json_string_value(json_object_get(json_object_get(e, "config"), "type")),
                           NULL};
    req->after = sched__envtpl_publish; /* cloud: nodes learn it from Redis */
    sched__obj_create(req, &sched__kind_env, req->org, e, extra);
}

static void update_checked(struct sched_req *req, json_t *e, long long rev)
{
    req->after = sched__envtpl_publish; /* a changed template rebuilds on the nodes */
    sched__obj_store(req, &sched__kind_env, req->org, e, rev, false, NULL, NULL);
}

void sched__h_env_create(struct sched_req *req)
{
    char id[64], now[40];
    bool tc = false;
    const char *bad = sched__unknown_field(req->body, create_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    json_t *e = json_object();
    const char *msg = apply(e, req->body, true, &tc);
    if (msg) {
        json_decref(e);
        sched__bad_request(req, "%s", msg);
        return;
    }
    sched__new_id("env_", id, sizeof(id));
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(e, "id", json_string(id));
    json_object_set_new(e, "type", json_string("environment"));
    json_object_set_new(e, "created_at", json_string(now));
    json_object_set_new(e, "updated_at", json_string(now));
    json_object_set_new(e, "archived_at", json_null());
    /* Its hot clones within the org's quotas (or the operator's pool it
     * names open to the org), then stored. */
    sched__quota_env(req, e, 0, create_checked);
}

static void got(struct sched_req *req, json_t *obj, long long rev)
{
    (void)rev;
    sched__respond_json(req, 200, obj);
}

void sched__h_env_get(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_env, req->params[0], got);
}

static void update_loaded(struct sched_req *req, json_t *e, long long rev)
{
    char now[40];
    bool tc = false;
    if (!json_is_null(json_object_get(e, "archived_at"))) {
        json_decref(e);
        sched__respond_error(req, 400, "invalid_request_error", "environment_archived",
                             "environment %s is archived and cannot be updated", req->params[0]);
        return;
    }
    const char *msg = apply(e, req->body, false, &tc);
    if (msg) {
        json_decref(e);
        sched__respond_error(req, 400, "invalid_request_error",
                             tc ? "invalid_config_type_change" : NULL, "%s", msg);
        return;
    }
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(e, "updated_at", json_string(now));
    sched__quota_env(req, e, rev, update_checked);
}

void sched__h_env_update(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, create_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    sched__obj_load(req, &sched__kind_env, req->params[0], update_loaded);
}

static void archive_loaded(struct sched_req *req, json_t *e, long long rev)
{
    char now[40];
    if (!json_is_null(json_object_get(e, "archived_at"))) {
        sched__respond_json(req, 200, e);
        return;
    }
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(e, "archived_at", json_string(now));
    json_object_set_new(e, "updated_at", json_string(now));
    req->after = sched__envtpl_withdraw; /* nodes stop serving it */
    sched__obj_store(req, &sched__kind_env, req->org, e, rev, true, NULL, NULL);
}

void sched__h_env_archive(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_env, req->params[0], archive_loaded);
}

void sched__h_env_delete(struct sched_req *req)
{
    sched__envtpl_delete(req);
}

void sched__h_env_list(struct sched_req *req)
{
    bool bad = false;
    bool arch = sched__query_bool(req, "include_archived", false, &bad);
    if (bad) {
        sched__bad_request(req, "include_archived must be true or false");
        return;
    }
    sched__obj_list(req, &sched__kind_env, req->org, arch, false, NULL, false);
}
