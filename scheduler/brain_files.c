/* brain_files.c - a session's `file` resources in its sandbox.
 *
 * Before a tool call starts, every file resource the session lists must be
 * mounted (read-only, by the node: pool_file_put) in the sandbox it runs
 * in, and every one deleted since taken away. A check reads the session's
 * resources from Redis and does that, one file at a time. A tool call waits
 * for a check that started no earlier than the model request that asked
 * for it; the brain starts one with each model request (and one as soon as
 * the sandbox is attached), so it is normally done while the model streams
 * and a tool call waits for nothing. The model call never waits for it. A
 * resource added with POST /v1/sessions/{id}/resources is in Redis before
 * the client sees 200, so a model request started after that sees it. */
#define WP_LOG_COMPONENT "brain"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool.h"
#include "scheduler/brain_int.h"
#include "scheduler/sched_int.h"

static void next_mount(struct brain *b);

static void check_done(struct brain *b)
{
    json_decref(b->files_todo);
    b->files_todo = NULL;
    b->files_busy = false;
    b->files_t0 = b->files_check_t0;
    sched__brain_tools_run(b);
}

static void put_cb(void *ctx, int status, const struct wp_err *err)
{
    struct brain *b = ctx;
    b->refs--;
    if (!b->stopped) {
        json_t *r = json_array_get(b->files_todo, 0);
        const char *rid = json_string_value(json_object_get(r, "id")) ?: "";
        const char *mp = json_string_value(json_object_get(r, "mount_path")) ?: "";
        bool un = json_is_true(json_object_get(r, "unmount"));
        if (status == 0) {
            log_info("session=%s file resource %s %s %s in %s (%.2f ms)", b->sid, rid,
                     un ? "taken away from" : "mounted at", mp, b->claim.sandbox,
                     sched__brain_since(b->files_put_t0) * 1e3);
        } else {
            /* The tool runs anyway; what it reads at mp tells the model. */
            log_warn("session=%s file resource %s at %s: %s", b->sid, rid, mp,
                     err ? err->msg : "mount failed");
        }
        if (un)
            json_object_del(b->files_mounted, rid);
        else
            json_object_set_new(b->files_mounted, rid, json_string(mp));
        json_array_remove(b->files_todo, 0);
        next_mount(b);
    }
    sched__brain_maybe_free(b);
}

static void next_mount(struct brain *b)
{
    struct wp_err err = { 0 };
    char *data = NULL;
    size_t len = 0;
    for (;;) {
        json_t *r = json_array_get(b->files_todo, 0);
        if (!r) {
            check_done(b);
            return;
        }
        const char *rid = json_string_value(json_object_get(r, "id")) ?: "";
        const char *fid = json_string_value(json_object_get(r, "file_id")) ?: "";
        const char *mp = json_string_value(json_object_get(r, "mount_path")) ?: "";
        if (b->sbx != SBX_READY) { /* the sandbox went: the next check starts over */
            check_done(b);
            return;
        }
        bool un = json_is_true(json_object_get(r, "unmount"));
        data = NULL;
        b->files_put_t0 = wp_now_ns();
        if ((un || sched__file_read(&b->srv->cfg, fid, &data, &len, &err) == 0) &&
            pool_file_put(b->srv->loop, &b->claim, b->pool_env, mp, un ? NULL : data,
                          un ? 0 : len, put_cb, b, &err) == 0) {
            b->refs++;
            return;
        }
        log_warn("session=%s file resource %s (%s): %s", b->sid, rid, fid, err.msg);
        if (un)
            json_object_del(b->files_mounted, rid);
        else
            json_object_set_new(b->files_mounted, rid, json_string(mp));
        json_array_remove(b->files_todo, 0);
    }
}

static void session_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    if (b->stopped) {
        sched__brain_maybe_free(b);
        return;
    }
    json_t *s = reply && reply->type == REDIS_REPLY_STRING
                    ? json_loadb(reply->str, reply->len, 0, NULL)
                    : NULL;
    size_t i;
    json_t *r, *listed = json_object();
    const char *rid;
    b->files_todo = json_array();
    json_array_foreach(json_object_get(s, "resources"), i, r) {
        if ((rid = json_string_value(json_object_get(r, "id"))))
            json_object_set_new(listed, rid, json_true());
    }
    /* Deleted resources go first: another may take their path. */
    json_object_foreach(b->files_mounted, rid, r) {
        if (s && !json_object_get(listed, rid))
            json_array_append_new(b->files_todo, json_pack("{s:s,s:O,s:b}", "id", rid,
                                                           "mount_path", r, "unmount", 1));
    }
    json_decref(listed);
    json_array_foreach(json_object_get(s, "resources"), i, r) {
        const char *ty = json_string_value(json_object_get(r, "type"));
        const char *id = json_string_value(json_object_get(r, "id"));
        if (ty && !strcmp(ty, "file") && id && !json_object_get(b->files_mounted, id))
            json_array_append(b->files_todo, r);
    }
    if (!s)
        log_warn("session=%s: could not read its resources", b->sid);
    json_decref(s);
    next_mount(b);
    sched__brain_maybe_free(b);
}

bool sched__brain_files_ready(struct brain *b, uint64_t due)
{
    if (b->self_hosted || b->sbx != SBX_READY)
        return false;
    if (strcmp(b->files_sbx, b->claim.sandbox)) { /* another sandbox: nothing in it yet */
        snprintf(b->files_sbx, sizeof(b->files_sbx), "%s", b->claim.sandbox);
        json_decref(b->files_mounted);
        b->files_mounted = json_object();
        b->files_t0 = 0;
    }
    if (b->files_t0 && b->files_t0 >= due)
        return true;
    if (b->files_busy)
        return false;
    const char *argv[] = {"HGET", b->key_obj, "json"};
    if (wp_redis_argv(b->srv->rds, session_cb, b, 3, argv, NULL) < 0) {
        log_warn("session=%s: could not read its resources", b->sid);
        return true; /* Redis is gone: the tools fail on their own */
    }
    b->refs++;
    b->files_busy = true;
    b->files_check_t0 = wp_now_ns();
    return false;
}

void sched__brain_files_free(struct brain *b)
{
    json_decref(b->files_mounted);
    json_decref(b->files_todo);
    b->files_mounted = b->files_todo = NULL;
}
