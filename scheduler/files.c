/* files.c - the Files API (/v1/files: upload, list, retrieve, download,
 * delete) and the checks sessions make on `file` resources.
 *
 * Metadata is an object of the generic store (resources.c, kind "file",
 * per organization: another organization's id answers 404 everywhere).
 * Content never goes to Redis: it is a file named after the id in
 * files_dir (--files-dir), written whole to a temp file and renamed, so a
 * reader sees all of it or nothing. Uploads are held in memory while they
 * arrive (the HTTP layer buffers bodies), hence --files-max-bytes caps them
 * well below the connection's output limit. */
#define WP_LOG_COMPONENT "files"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

const struct sched_kind sched__kind_file = {"file", "file_", "file_deleted"};

#define MAX_PARTS 4

bool sched__file_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n < 6 || n > 64 || strncmp(id, "file_", 5))
        return false;
    for (size_t i = 5; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
              (id[i] >= 'A' && id[i] <= 'Z') || id[i] == '_' || id[i] == '-'))
            return false;
    return true;
}

static int content_path(const struct sched_config *cfg, const char *id, char *out, size_t cap)
{
    if (!sched__file_id_valid(id) ||
        snprintf(out, cap, "%s/%s", cfg->files_dir, id) >= (int)cap)
        return WP_EINVAL_INPUT;
    return 0;
}

/* ---- the store: files_dir, or the S3-compatible one when configured ---- */

static bool s3(const struct sched_config *cfg)
{
    return cfg->files_s3.endpoint[0] != '\0';
}

int sched__store_put(const struct sched_config *cfg, const char *id, const void *data,
                     size_t len, struct wp_err *err)
{
    char path[512];
    if (s3(cfg))
        return sched__s3_put(&cfg->files_s3, id, data, len, err);
    if (content_path(cfg, id, path, sizeof(path)) < 0)
        return wp_err_set(err, WP_EINVAL_INPUT, "bad file id %s", id);
    if (wp_mkdir_p(cfg->files_dir, 0700, err) < 0)
        return wp_err_wrap(err, "files dir");
    return wp_write_file(path, data, len, 0600, err);
}

int sched__store_get(const struct sched_config *cfg, const char *id, char **out, size_t *len,
                     struct wp_err *err)
{
    char path[512];
    if (s3(cfg))
        return sched__s3_get(&cfg->files_s3, id, cfg->files_max_bytes + 1, out, len, err);
    if (content_path(cfg, id, path, sizeof(path)) < 0)
        return wp_err_set(err, WP_EINVAL_INPUT, "bad file id %s", id);
    int rc = wp_read_file(path, cfg->files_max_bytes + 1, out, len, err);
    if (rc == -ENOENT && err)
        err->code = rc = WP_ENOTFOUND;
    return rc;
}

int sched__store_del(const struct sched_config *cfg, const char *id, struct wp_err *err)
{
    char path[512];
    if (s3(cfg))
        return sched__s3_del(&cfg->files_s3, id, err);
    if (content_path(cfg, id, path, sizeof(path)) < 0)
        return wp_err_set(err, WP_EINVAL_INPUT, "bad file id %s", id);
    if (unlink(path) < 0 && errno != ENOENT)
        return wp_err_errno(err, "unlink %s", path);
    return 0;
}

/* What a client is told of a store error: the S3 store's message (method,
 * id, the store's answer), not the directory store's (a local path). */
const char *sched__store_why(const struct sched_config *cfg, const struct wp_err *err)
{
    return s3(cfg) ? err->msg : "the files directory failed";
}

/* ---- upload ---- */

/* A MIME type we can echo in a header: type/subtype with token characters
 * and simple parameters; else application/octet-stream. */
static const char *mime_or_default(const char *ct)
{
    size_t n = strlen(ct);
    if (n == 0 || n > 100 || !strchr(ct, '/'))
        return "application/octet-stream";
    for (size_t i = 0; i < n; i++) {
        char c = ct[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              strchr("!#$&^_.+-/;= ", c)))
            return "application/octet-stream";
    }
    return ct;
}

static bool filename_ok(const char *f)
{
    size_t n = strlen(f);
    if (n == 0 || n > 255 || !sched__utf8_valid(f, n))
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)f[i] < 0x20 || f[i] == 0x7f)
            return false;
    return true;
}

/* An upload while its content is being stored: what its metadata needs. */
struct upload {
    struct sched_req *req;
    char id[64], now[40], filename[256], mime[128];
    size_t len;
    json_t *expires; /* owned */
};

static void quiet_del_cb(void *ctx, int rc, const struct wp_err *err, char *data, size_t len)
{
    (void)data;
    (void)len;
    if (rc < 0)
        log_error("file %s: content left in the store: %s", (char *)ctx, err->msg);
    free(ctx);
}

/* Content stored with no metadata to find it by (the client went, or the
 * metadata could not be made): take it away again. */
static void drop_content(struct sched_server *srv, const char *id)
{
    char *copy = strdup(id);
    if (!copy || sched__fio_del(srv->fio, id, quiet_del_cb, copy) < 0) {
        log_error("file %s: content left in the store", id);
        free(copy);
    }
}

static void upload_stored(void *ctx, int rc, const struct wp_err *err, char *data, size_t len)
{
    struct upload *u = ctx;
    struct sched_req *req = u->req;
    struct sched_server *srv = req->srv;
    (void)data;
    (void)len;
    if (!sched__req_release(req)) { /* the client went while it was stored */
        if (rc == 0)
            drop_content(srv, u->id);
        json_decref(u->expires);
        free(u);
        return;
    }
    if (rc < 0) {
        log_error("file %s: %s", u->id, err->msg);
        sched__respond_error(req, 500, "api_error", NULL, "could not store the file (%s)",
                             sched__store_why(&srv->cfg, err));
        json_decref(u->expires);
        free(u);
        return;
    }
    json_t *obj = json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:b,s:o,s:n}", "id", u->id, "type", "file",
                            "filename", u->filename, "mime_type", u->mime, "size_bytes",
                            (json_int_t)u->len, "created_at", u->now, "downloadable", 1,
                            "expires_at", u->expires, "scope");
    u->expires = NULL; /* the object has it (or json_pack freed it) */
    if (!obj) {
        drop_content(srv, u->id);
        sched__respond_error(req, 500, "api_error", NULL, "could not build the file's metadata");
        free(u);
        return;
    }
    log_info("file %s stored: %zu bytes org=%s", u->id, u->len, req->org);
    const char *extra[] = {"file_id", u->id, NULL};
    sched__obj_create(req, &sched__kind_file, req->org, obj, extra);
    free(u);
}

void sched__h_file_upload(struct sched_req *req)
{
    const struct sched_config *cfg = &req->srv->cfg;
    const struct sched_http_req *h = req->http;
    struct sched_mp_part parts[MAX_PARTS];
    const struct sched_mp_part *file = NULL, *exp = NULL;
    const char *why = NULL;
    char id[64], now[40];

    int n = sched__mp_parse(sched_http_header(h, "content-type"), h->body.data, h->body.len,
                            parts, MAX_PARTS, &why);
    if (n < 0) {
        sched__bad_request(req, "%s", why);
        return;
    }
    for (int i = 0; i < n; i++) {
        const struct sched_mp_part **slot = !strcmp(parts[i].name, "file") ? &file
                                          : !strcmp(parts[i].name, "expires_in_seconds") ? &exp
                                          : NULL;
        if (!slot) {
            sched__bad_request(req, "%s: Extra inputs are not permitted", parts[i].name);
            return;
        }
        if (*slot) {
            sched__bad_request(req, "%s: given twice", parts[i].name);
            return;
        }
        *slot = &parts[i];
    }
    if (!file || !file->has_filename || !filename_ok(file->filename)) {
        sched__bad_request(req, "file is required: a multipart part named file with a filename "
                                "of 1-255 printable UTF-8 bytes");
        return;
    }
    if (file->len > cfg->files_max_bytes) {
        sched__respond_error(req, 413, "invalid_request_error", "file_too_large",
                             "file is %zu bytes; this server takes at most %zu", file->len,
                             cfg->files_max_bytes);
        return;
    }
    uint64_t t = wp_wall_ms();
    json_t *expires = json_null();
    if (exp) {
        char num[16], *end;
        long long s = -1;
        if (exp->len > 0 && exp->len < sizeof(num) && !exp->has_filename) {
            memcpy(num, exp->data, exp->len);
            num[exp->len] = '\0';
            s = strtoll(num, &end, 10);
            if (*end || num[0] == '-' || num[0] == '+')
                s = -1;
        }
        if (s < 3600 || s > 7776000) {
            sched__bad_request(req, "expires_in_seconds must be an integer from 3600 to 7776000");
            return;
        }
        char at[40];
        sched__rfc3339(t + (uint64_t)s * 1000, at, sizeof(at));
        expires = json_string(at);
    }
    sched__new_id("file_", id, sizeof(id));
    sched__rfc3339(t, now, sizeof(now));
    struct upload *u = calloc(1, sizeof(*u));
    if (!u) {
        json_decref(expires);
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    u->req = req;
    u->expires = expires;
    u->len = file->len;
    snprintf(u->id, sizeof(u->id), "%s", id);
    snprintf(u->now, sizeof(u->now), "%s", now);
    snprintf(u->filename, sizeof(u->filename), "%s", file->filename);
    snprintf(u->mime, sizeof(u->mime), "%s", mime_or_default(file->content_type));
    /* The body goes with the job, taken from the parser rather than copied
     * (up to --files-max-bytes); the next request on the connection starts
     * a buffer of its own. */
    struct wp_buf *body = (struct wp_buf *)&h->body;
    char *owned = body->data;
    body->data = NULL;
    body->len = body->cap = 0;
    sched__req_hold(req);
    if (sched__fio_put(req->srv->fio, id, owned, file->data, file->len, upload_stored, u) < 0) {
        json_decref(u->expires);
        free(u);
        if (sched__req_release(req))
            sched__respond_error(req, 500, "api_error", NULL, "could not store the file");
    }
}

/* ---- retrieve, download, list, delete ---- */

static bool expired(json_t *f)
{
    uint64_t at;
    const char *s = json_string_value(json_object_get(f, "expires_at"));
    return s && sched__parse_rfc3339(s, &at) == 0 && at <= wp_wall_ms();
}

/* Load file params[0] of req->org, as 404 when expired. */
static void load(struct sched_req *req, sched_obj_cb cb)
{
    if (!sched__file_id_valid(req->params[0])) {
        sched__not_found(req, "No file with id %s", req->params[0]);
        return;
    }
    sched__obj_load(req, &sched__kind_file, req->params[0], cb);
}

static void got(struct sched_req *req, json_t *f, long long rev)
{
    (void)rev;
    if (expired(f)) {
        json_decref(f);
        sched__not_found(req, "No file with id %s", req->params[0]);
        return;
    }
    sched__respond_json(req, 200, f);
}

void sched__h_file_get(struct sched_req *req)
{
    load(req, got);
}

/* A download while its content is read. */
struct download {
    struct sched_req *req;
    char id[64], ct[128];
};

static void content_read(void *ctx, int rc, const struct wp_err *err, char *data, size_t len)
{
    struct download *d = ctx;
    struct sched_req *req = d->req;
    if (!sched__req_release(req)) {
        free(data);
        free(d);
        return;
    }
    if (rc < 0) {
        log_error("file %s: content: %s", d->id, err->msg);
        if (rc == WP_ENOTFOUND)
            sched__not_found(req, "The content of file %s is missing from the store", d->id);
        else
            sched__respond_error(req, 500, "api_error", NULL,
                                 "the file's content is unreadable (%s)",
                                 sched__store_why(&req->srv->cfg, err));
    } else {
        sched__respond_body(req, 200, d->ct, data, len);
    }
    free(data);
    free(d);
}

static void content_loaded(struct sched_req *req, json_t *f, long long rev)
{
    (void)rev;
    if (expired(f)) {
        json_decref(f);
        sched__not_found(req, "No file with id %s", req->params[0]);
        return;
    }
    struct download *d = calloc(1, sizeof(*d));
    if (!d) {
        json_decref(f);
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    d->req = req;
    snprintf(d->id, sizeof(d->id), "%s", req->params[0]);
    snprintf(d->ct, sizeof(d->ct), "%s",
             mime_or_default(json_string_value(json_object_get(f, "mime_type")) ?: ""));
    json_decref(f);
    sched__req_hold(req);
    if (sched__fio_get(req->srv->fio, d->id, content_read, d) < 0) {
        free(d);
        if (sched__req_release(req))
            sched__respond_error(req, 500, "api_error", NULL, "out of memory");
    }
}

void sched__h_file_content(struct sched_req *req)
{
    load(req, content_loaded);
}

void sched__h_file_list(struct sched_req *req)
{
    const char *ids[101], *scope = sched__query(req, "scope_id");
    int n = sched__query_all(req, "ids", ids, 101);
    char in[101 * 66] = "";
    size_t used = 0;
    if (n > 100) {
        sched__bad_request(req, "ids: at most 100");
        return;
    }
    if (n > 0 && (sched__query(req, "page") || sched__query(req, "limit"))) {
        sched__bad_request(req, "ids cannot be combined with page or limit");
        return;
    }
    for (int i = 0; i < n; i++) {
        if (!sched__file_id_valid(ids[i]))
            continue; /* no such file: it is simply not listed */
        used += (size_t)snprintf(in + used, sizeof(in) - used, "%s%s", used ? "," : "", ids[i]);
    }
    if (n > 0 && !used) {
        sched__respond_json(req, 200, json_pack("{s:[],s:n}", "data", "next_page"));
        return;
    }
    /* Files are never scoped to a session here (uploads through the API
     * have scope null), so a scope_id filter matches nothing. */
    const char *filter[7];
    int k = 0;
    if (n > 0) {
        filter[k++] = "file_id";
        filter[k++] = "in";
        filter[k++] = in;
    }
    if (scope) {
        filter[k++] = "scope_id";
        filter[k++] = "eq";
        filter[k++] = scope;
    }
    filter[k] = NULL;
    sched__obj_list(req, &sched__kind_file, req->org, false, false, filter, false);
}

/* A delete while its content is taken away (the metadata already is). */
struct removal {
    struct sched_req *req;
    char id[64];
    json_t *answer; /* owned */
};

static void content_deleted(void *ctx, int rc, const struct wp_err *err, char *data, size_t len)
{
    struct removal *m = ctx;
    (void)data;
    (void)len;
    if (rc < 0)
        log_error("file %s: metadata deleted, content not: %s", m->id, err->msg);
    else
        log_info("file %s deleted org=%s", m->id, m->req->org);
    if (sched__req_release(m->req))
        sched__respond_json(m->req, 200, m->answer);
    else
        json_decref(m->answer);
    free(m);
}

static void deleted(struct sched_req *req, json_t *answer)
{
    req->after = NULL;
    struct removal *m = calloc(1, sizeof(*m));
    if (!m) {
        log_error("file %s: metadata deleted, content not: out of memory", req->params[0]);
        sched__respond_json(req, 200, answer);
        return;
    }
    m->req = req;
    m->answer = answer;
    snprintf(m->id, sizeof(m->id), "%s", req->params[0]);
    sched__req_hold(req);
    if (sched__fio_del(req->srv->fio, m->id, content_deleted, m) < 0) {
        log_error("file %s: metadata deleted, content not: out of memory", m->id);
        free(m);
        if (sched__req_release(req))
            sched__respond_json(req, 200, answer);
        else
            json_decref(answer);
    }
}

void sched__h_file_delete(struct sched_req *req)
{
    if (!sched__file_id_valid(req->params[0])) {
        sched__not_found(req, "No file with id %s", req->params[0]);
        return;
    }
    req->after = deleted;
    sched__obj_delete(req, &sched__kind_file, req->org, req->params[0]);
}

/* ---- sessions' file resources ---- */

const char *sched__file_mount_path(json_t *fid, json_t *mp, char *out, size_t cap)
{
    const char *id = json_string_value(fid);
    if (!sched__file_id_valid(id))
        return "file_id must be a file id (file_...)";
    if (!mp || json_is_null(mp)) {
        snprintf(out, cap, "/mnt/session/uploads/%s", id);
        return NULL;
    }
    const char *p = json_string_value(mp);
    size_t n = p ? strlen(p) : 0;
    if (!p || n < 2 || n >= cap || n > 255 || p[0] != '/' || p[n - 1] == '/' ||
        !sched__utf8_valid(p, n))
        return "mount_path must be an absolute file path of at most 255 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
            return "mount_path has a control character";
    if (strstr(p, "//") || strstr(p, "/./") || strstr(p, "/../") ||
        (n >= 2 && !strcmp(p + n - 2, "/.")) || (n >= 3 && !strcmp(p + n - 3, "/..")))
        return "mount_path must be a normalized path (no //, . or ..)";
    static const char *const system[] = {"/proc", "/sys", "/dev", "/.wp", "/run/warmpool", NULL};
    for (int i = 0; system[i]; i++) {
        size_t sl = strlen(system[i]);
        if (!strncmp(p, system[i], sl) && (p[sl] == '/' || !p[sl]))
            return "mount_path may not be under /proc, /sys, /dev, /.wp or /run/warmpool";
    }
    snprintf(out, cap, "%s", p);
    return NULL;
}

#include "lua/scheduler/files.h" /* its Lua scripts: lua/scheduler/files/ (Makefile) */

static void owned_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    void (*next)(struct sched_req *) = req->files_next;
    json_t *ids = req->tmp;
    req->tmp = NULL;
    if (reply->type != REDIS_REPLY_INTEGER) {
        json_decref(ids);
        sched__respond_error(req, 500, "api_error", NULL, "file check failed");
        return;
    }
    if (reply->integer > 0) {
        sched__not_found(req, "No file with id %s",
                         json_string_value(json_array_get(ids, (size_t)reply->integer - 1)));
        json_decref(ids);
        return;
    }
    json_decref(ids);
    next(req);
}

void sched__files_owned(struct sched_req *req, json_t *resources,
                        void (*next)(struct sched_req *req))
{
    size_t i;
    json_t *r, *ids = json_array();
    json_array_foreach(resources, i, r) {
        const char *ty = json_string_value(json_object_get(r, "type"));
        if (ty && !strcmp(ty, "file"))
            json_array_append(ids, json_object_get(r, "file_id"));
    }
    size_t n = json_array_size(ids);
    if (n == 0 || n > 100) {
        json_decref(ids);
        if (n > 100)
            sched__bad_request(req, "at most 100 file resources");
        else
            next(req);
        return;
    }
    char (*keys)[200] = calloc(n, sizeof(*keys));
    const char **argv = calloc(n + 1, sizeof(*argv));
    if (!keys || !argv) {
        free(keys);
        free(argv);
        json_decref(ids);
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    for (i = 0; i < n; i++) {
        sched__key_obj(keys[i], sizeof(keys[i]), req->org, json_string_value(json_array_get(ids, i)));
        argv[i] = keys[i];
    }
    argv[n] = req->org;
    req->files_next = next;
    json_decref(req->tmp);
    req->tmp = ids;
    sched__req_script(req, lua_owned, owned_cb, (int)n, (int)n + 1, argv, NULL);
    free(keys);
    free(argv);
}
