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
#include <errno.h>
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

/* r could not be mounted (or taken away): said, and not tried again in
 * this sandbox (the tool runs anyway; what it reads at the path tells). */
static void skip(struct brain *b, json_t *r, const char *why)
{
    const char *rid = json_string_value(json_object_get(r, "id")) ?: "";
    const char *fid = json_string_value(json_object_get(r, "file_id")) ?: "";
    const char *mp = json_string_value(json_object_get(r, "mount_path")) ?: "";
    log_warn("session=%s file resource %s (%s): %s", b->sid, rid, fid, why);
    if (json_is_true(json_object_get(r, "unmount")))
        json_object_del(b->files_mounted, rid);
    else
        json_object_set_new(b->files_mounted, rid, json_string(mp));
    json_array_remove(b->files_todo, 0);
}

/* Put the first resource's content (stolen; NULL: take it away). True
 * when it went (put_cb follows); else it was skipped. */
static bool put_first(struct brain *b, char *data, size_t len)
{
    json_t *r = json_array_get(b->files_todo, 0);
    const char *mp = json_string_value(json_object_get(r, "mount_path")) ?: "";
    struct wp_err err = { 0 };
    if (pool_file_put(b->srv->loop, &b->claim, b->pool_env, mp, data, len, put_cb, b, &err) ==
        0) {
        b->refs++;
        return true;
    }
    skip(b, r, err.msg);
    return false;
}

static void file_read_cb(void *ctx, int rc, const struct wp_err *err, char *data, size_t len)
{
    struct brain *b = ctx;
    b->refs--;
    if (b->stopped) {
        free(data);
    } else if (b->sbx != SBX_READY) { /* the sandbox went: the next check starts over */
        free(data);
        check_done(b);
    } else if (rc < 0) {
        skip(b, json_array_get(b->files_todo, 0), err->msg);
        next_mount(b);
    } else if (!put_first(b, data, len)) {
        next_mount(b);
    }
    sched__brain_maybe_free(b);
}

/* Mount the resources to do one at a time: a file's content is read by
 * the files worker (fileio.c: the store may be slow, the loop must not
 * wait), then put through the sandbox's node. */
static void next_mount(struct brain *b)
{
    for (;;) {
        json_t *r = json_array_get(b->files_todo, 0);
        if (!r || b->sbx != SBX_READY) { /* done, or the sandbox went */
            check_done(b);
            return;
        }
        b->files_put_t0 = wp_now_ns();
        if (json_is_true(json_object_get(r, "unmount"))) {
            if (put_first(b, NULL, 0))
                return;
            continue;
        }
        const char *fid = json_string_value(json_object_get(r, "file_id")) ?: "";
        int rc = sched__fio_get(b->srv->fio, fid, file_read_cb, b);
        if (rc == 0) {
            b->refs++;
            return;
        }
        skip(b, r, rc == -ENOMEM ? "out of memory" : "not a file id");
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
