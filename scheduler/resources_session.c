/* resources_session.c - /v1/sessions/{id}/resources: the resources array
 * of a stored session, addressed by resource id (memory_store entries
 * have no id in the API and cannot be addressed). */
#define WP_LOG_COMPONENT "sessions"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

static json_t *find(json_t *s, const char *rid, size_t *index)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(s, "resources"), i, r) {
        const char *id = json_string_value(json_object_get(r, "id"));
        if (id && !strcmp(id, rid)) {
            if (index)
                *index = i;
            return r;
        }
    }
    return NULL;
}

static void respond_taken(struct sched_req *req, json_t *s)
{
    json_decref(s);
    json_t *r = req->tmp2;
    req->tmp2 = NULL;
    sched__respond_json(req, 200, r);
}

static bool writable(struct sched_req *req, json_t *s)
{
    if (!json_is_null(json_object_get(s, "archived_at")) ||
        !strcmp(json_string_value(json_object_get(s, "status")) ?: "", "terminated")) {
        json_decref(s);
        sched__bad_request(req, "session %s is terminated", req->params[0]);
        return false;
    }
    return true;
}

static void add_loaded(struct sched_req *req, json_t *s, long long rev)
{
    char id[64], now[40];
    json_t *b = req->body;
    json_t *fid = json_object_get(b, "file_id"), *mp = json_object_get(b, "mount_path");
    if (!writable(req, s))
        return;
    sched__new_id("sesrsc_", id, sizeof(id));
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    char mount[512];
    size_t i;
    json_t *o;
    sched__file_mount_path(fid, mp, mount, sizeof(mount)); /* checked in sres_add */
    json_array_foreach(json_object_get(s, "resources"), i, o) {
        if (!strcmp(mount, json_string_value(json_object_get(o, "mount_path")) ?: "")) {
            json_decref(s);
            sched__bad_request(req, "session %s already has a resource at %s", req->params[0],
                               mount);
            return;
        }
    }
    json_t *r = json_pack("{s:s,s:s,s:O,s:s,s:s,s:s}", "id", id, "type", "file", "file_id", fid,
                          "mount_path", mount, "created_at", now, "updated_at", now);
    json_array_append(json_object_get(s, "resources"), r);
    json_object_set_new(s, "updated_at", json_string(now));
    req->tmp2 = r;
    req->after = respond_taken;
    sched__obj_store(req, &sched__kind_session, req->org, s, rev, false, NULL, NULL);
}

static void add_file_owned(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_session, req->params[0], add_loaded);
}

void sched__h_sres_add(struct sched_req *req)
{
    static const char *const f[] = {"type", "file_id", "mount_path", NULL};
    json_t *b = req->body;
    const char *ty = json_string_value(json_object_get(b, "type"));
    json_t *mp = json_object_get(b, "mount_path");
    if (sched__unknown_field(b, f)) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", sched__unknown_field(b, f));
        return;
    }
    if (!ty || strcmp(ty, "file") || !json_is_string(json_object_get(b, "file_id")) ||
        (mp && !json_is_null(mp) && !json_is_string(mp))) {
        sched__bad_request(req, "only {type: file, file_id, mount_path?} resources can be added");
        return;
    }
    char mount[512];
    const char *msg = sched__file_mount_path(json_object_get(b, "file_id"), mp, mount,
                                             sizeof(mount));
    if (msg) {
        sched__bad_request(req, "%s", msg);
        return;
    }
    json_t *one = json_pack("[O]", b);
    sched__files_owned(req, one, add_file_owned);
    json_decref(one);
}

static void list_loaded(struct sched_req *req, json_t *s, long long rev)
{
    (void)rev;
    int limit;
    const char *page;
    json_t *all = json_object_get(s, "resources");
    if (sched__page_params(req, &limit, &page) < 0) {
        json_decref(s);
        return;
    }
    size_t from = page ? (size_t)strtoull(page + 5, NULL, 10) : 0;
    size_t n = json_array_size(all);
    json_t *data = json_array();
    for (size_t i = from; i < n && i < from + (size_t)limit; i++)
        json_array_append(data, json_array_get(all, i));
    json_t *out = json_pack("{s:o,s:n}", "data", data, "next_page");
    if (from + (size_t)limit < n) {
        char cur[32];
        snprintf(cur, sizeof(cur), "page_%zu", from + (size_t)limit);
        json_object_set_new(out, "next_page", json_string(cur));
    }
    json_decref(s);
    sched__respond_json(req, 200, out);
}

void sched__h_sres_list(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_session, req->params[0], list_loaded);
}

static void get_loaded(struct sched_req *req, json_t *s, long long rev)
{
    (void)rev;
    json_t *r = find(s, req->params[1], NULL);
    if (!r) {
        json_decref(s);
        sched__not_found(req, "No resource %s in session %s", req->params[1], req->params[0]);
        return;
    }
    json_incref(r);
    json_decref(s);
    sched__respond_json(req, 200, r);
}

void sched__h_sres_get(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_session, req->params[0], get_loaded);
}

static void update_loaded(struct sched_req *req, json_t *s, long long rev)
{
    char now[40];
    if (!writable(req, s))
        return;
    json_t *r = find(s, req->params[1], NULL);
    if (!r) {
        json_decref(s);
        sched__not_found(req, "No resource %s in session %s", req->params[1], req->params[0]);
        return;
    }
    if (strcmp(json_string_value(json_object_get(r, "type")) ?: "", "github_repository")) {
        json_decref(s);
        sched__bad_request(req, "only github_repository resources support token rotation");
        return;
    }
    /* The token is a secret: kept sealed beside the session object
     * (rtok:<resource id>), never in it. Sandboxes attached from now on
     * use it (the brain's next route to the node registers it). */
    json_t *tok = json_object_get(req->body, "authorization_token");
    char *sealed = sched__vault_seal(&req->srv->vk, json_string_value(tok), json_string_length(tok));
    if (!sealed) {
        json_decref(s);
        sched__respond_error(req, 500, "api_error", NULL, "could not seal the token");
        return;
    }
    char field[96];
    snprintf(field, sizeof(field), "rtok:%s", req->params[1]);
    const char *extra[] = {field, sealed, NULL};
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(r, "updated_at", json_string(now));
    req->tmp2 = json_incref(r);
    req->after = respond_taken;
    sched__obj_store(req, &sched__kind_session, req->org, s, rev, false, extra, NULL);
    free(sealed);
}

void sched__h_sres_update(struct sched_req *req)
{
    static const char *const f[] = {"authorization_token", NULL};
    json_t *tok = json_object_get(req->body, "authorization_token");
    if (sched__unknown_field(req->body, f) || !json_is_string(tok) ||
        json_string_length(tok) == 0 || json_string_length(tok) > 4096) {
        sched__bad_request(req, "update takes {\"authorization_token\": string}");
        return;
    }
    sched__obj_load(req, &sched__kind_session, req->params[0], update_loaded);
}

static void delete_loaded(struct sched_req *req, json_t *s, long long rev)
{
    size_t idx;
    char now[40];
    if (!writable(req, s))
        return;
    if (!find(s, req->params[1], &idx)) {
        json_decref(s);
        sched__not_found(req, "No resource %s in session %s", req->params[1], req->params[0]);
        return;
    }
    json_array_remove(json_object_get(s, "resources"), idx);
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(s, "updated_at", json_string(now));
    req->tmp2 = json_pack("{s:s,s:s}", "id", req->params[1], "type", "session_resource_deleted");
    req->after = respond_taken;
    sched__obj_store(req, &sched__kind_session, req->org, s, rev, false, NULL, NULL);
}

void sched__h_sres_delete(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_session, req->params[0], delete_loaded);
}
