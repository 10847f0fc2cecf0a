/* test_sched_files.c - the Files API and `file` session resources end to
 * end: a real Redis, a scheduler with the brain on, the local model server
 * scripting bash tool calls, a real node with confined sandboxes.
 * Uploads go through libcurl's multipart encoder and through the official
 * SDK (tests/sdk/sdk_files.mjs); a model's bash calls read the mounted
 * files and try to change them. */
#include <curl/curl.h>
#include <dirent.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "scheduler/sched_int.h"
#include "sse_client.h"

#define KEY "sk-acme"
#define OTHER "sk-beta"
#define MAX_BYTES (6 << 20) /* above --max-body: uploads get their own limit */

static struct th_redis R;
static struct th_sched S;
static struct msrv_proc M;
static char *DIR_, FILES[1100];
static pid_t NODE;
static char ENV_ID[64], AGENT_ID[64];

/* The bash calls the model makes. "probe": read both mounts, then try
 * every way to change one, then read it again. "late": read a file added
 * while the session runs (twice: before and after the add). */
#define TRY(what, cmd) "(" cmd ") 2>/dev/null; echo " what "=$?; "
static const char script[] =
    "{\"seed\":1,\"ttft_ms\":5,\"tokens_per_s\":1000,\"chunk_tokens\":4,"
    "\"conversations\":["
    " {\"match\":\"probe\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
    "\"echo A=$(cat /data/in.txt); echo B=$(sha256sum < /mnt/session/uploads/file_*); "
    TRY("write", "echo evil > /data/in.txt")
    TRY("append", "echo evil >> /data/in.txt")
    TRY("chmod", "chmod 666 /data/in.txt")
    TRY("rm", "rm -f /data/in.txt")
    TRY("mv", "mv /data/in.txt /tmp/moved")
    TRY("remount", "mount -o remount,rw /data/in.txt")
    TRY("umount", "umount /data/in.txt")
    TRY("mvparent", "mv /data /data.old")
    "echo C=$(cat /data/in.txt)\"}}]},"
    "   {\"text\":\"probed\"}]},"
    " {\"match\":\"late\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
    "\"cat /late/x.txt || echo missing\"}}]},"
    "   {\"text\":\"one\"},"
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
    "\"cat /late/x.txt || echo missing\"}}]},"
    "   {\"text\":\"two\"},"
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
    "\"cat /late/x.txt || echo missing\"}}]},"
    "   {\"text\":\"three\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

/* ---- HTTP ---- */

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_t *call_as(const char *key, const char *method, const char *path, const char *body,
                       int want)
{
    json_t *j = th_call(S.port, key, method, path, body, want);
    assert_non_null(j);
    return j;
}

static json_t *call(const char *method, const char *path, const char *body, int want)
{
    return call_as(KEY, method, path, body, want);
}

struct curl_out {
    struct wp_buf body;
    char ctype[128];
};

static size_t on_body(char *p, size_t sz, size_t n, void *ctx)
{
    struct curl_out *o = ctx;
    return wp_buf_append(&o->body, p, sz * n) < 0 ? 0 : sz * n;
}

/* A request through libcurl; multipart when filename is set (the file
 * part, plus expires_in_seconds when exp). Returns the status; the body
 * (NUL-terminated) and its content type land in out. */
static long curl_req(const char *key, const char *method, const char *path, const char *filename,
                     const char *data, size_t len, const char *mime, const char *exp,
                     struct curl_out *out)
{
    char url[256], auth[128];
    long status = 0;
    CURL *c = curl_easy_init();
    curl_mime *form = NULL;
    struct curl_slist *h = NULL;
    wp_buf_init(&out->body, 64u << 20);
    out->ctype[0] = '\0';
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", S.port, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
    h = curl_slist_append(h, auth);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    if (filename) {
        form = curl_mime_init(c);
        curl_mimepart *part = curl_mime_addpart(form);
        curl_mime_name(part, "file");
        curl_mime_data(part, data, len);
        curl_mime_filename(part, filename);
        if (mime)
            curl_mime_type(part, mime);
        if (exp) {
            part = curl_mime_addpart(form);
            curl_mime_name(part, "expires_in_seconds");
            curl_mime_data(part, exp, CURL_ZERO_TERMINATED);
        }
        curl_easy_setopt(c, CURLOPT_MIMEPOST, form);
    }
    if (curl_easy_perform(c) == CURLE_OK) {
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(out->ctype, sizeof(out->ctype), "%s", ct ? ct : "");
    }
    wp_buf_append(&out->body, "", 1);
    out->body.len--;
    curl_mime_free(form);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static json_t *upload_as(const char *key, const char *filename, const char *data, size_t len,
                         const char *mime, long want)
{
    struct curl_out o;
    long st = curl_req(key, "POST", "/v1/files", filename, data, len, mime, NULL, &o);
    if (st != want)
        fail_msg("upload %s: status %ld, want %ld: %s", filename, st, want, o.body.data);
    json_t *j = json_loads(o.body.data, 0, NULL);
    wp_buf_free(&o.body);
    assert_non_null(j);
    return j;
}

/* A raw request with its own content type and body bytes. */
static int raw(const char *key, const char *path, const char *ctype, const char *body,
               size_t len, char *out, size_t cap)
{
    char head[1024];
    int fd = th_connect(S.port);
    assert_true(fd >= 0);
    int n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-api-key: %s\r\n"
                     "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                     path, key, ctype, len);
    assert_int_equal(th_send_all(fd, head, (size_t)n), 0);
    th_send_all(fd, body, len); /* the server may answer and close early */
    int got = th_read_all(fd, out, cap - 1, 10000);
    close(fd);
    out[got > 0 ? got : 0] = '\0';
    int status = 0;
    sscanf(out, "HTTP/1.1 %d", &status);
    return status;
}

static int files_on_disk(void)
{
    int n = 0;
    DIR *d = opendir(FILES);
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static int listed(const char *key)
{
    json_t *l = call_as(key, "GET", "/v1/files?limit=1000", NULL, 200);
    int n = (int)json_array_size(json_object_get(l, "data"));
    json_decref(l);
    return n;
}

/* ---- SSE (sse_client.h) ---- */

static void sse_open(struct sse *s, const char *sid)
{
    sse_open_as(s, S.port, KEY, sid, "");
}

/* The text of the first tool result of the turn that ends in end_turn. */
static char *turn_tool_result(struct sse *s)
{
    char *text = NULL;
    for (;;) {
        json_t *e = sse_next(s, 30000);
        if (!e)
            fail_msg("no end of turn within 30 s");
        const char *t = s_(e, "type");
        if (!strcmp(t, "agent.tool_result") && !text)
            text = strdup(s_(json_array_get(json_object_get(e, "content"), 0), "text") ?: "");
        bool end = !strcmp(t, "session.status_idle") &&
                   !strcmp(s_(json_object_get(e, "stop_reason"), "type") ?: "", "end_turn");
        json_decref(e);
        if (end)
            break;
    }
    assert_non_null(text);
    return text;
}

static void send_text(const char *sid, const char *text)
{
    char path[128], body[512];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
             text);
    json_decref(call("POST", path, body, 200));
}

/* ---- set-up ---- */

static int group_setup(void **state)
{
    char tmpl[1024], env[1200], url[128], scr[1100], lim[32];
    struct wp_err err;
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("files");
    snprintf(FILES, sizeof(FILES), "%s/files", DIR_);
    snprintf(scr, sizeof(scr), "%s/script.json", DIR_);
    if (wp_write_file(scr, script, strlen(script), 0644, &err) < 0)
        return -1;
    const char *margs[] = { "--script", scr, "--log-level", "warn", NULL };
    if (msrv_spawn(&M, margs) < 0)
        return -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", M.port);
    snprintf(lim, sizeof(lim), "%d", MAX_BYTES);
    setenv("ANTHROPIC_API_KEY", "sk-test-model", 1);
    if (th_sched_start(&S, R.port, "--model-url", url, "--files-dir", FILES, "--files-max-bytes",
                       lim, "--max-body", "1048576", "--rate-create", "0", "--rate-read", "0",
                       (char *)NULL) < 0)
        return -1;
    json_t *ag = call("POST", "/v1/agents",
                      "{\"name\":\"f\",\"model\":\"claude-test\",\"tools\":[{\"type\":"
                      "\"agent_toolset_20260401\"}]}", 200);
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = call("POST", "/v1/environments",
                      "{\"name\":\"files-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"filespool\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    if (th_hands_template(DIR_, "filespool", "box", tmpl, sizeof(tmpl)) < 0)
        return -1;
    snprintf(env, sizeof(env), "%s:1:2", tmpl);
    if ((NODE = th_node_spawn(DIR_, "n1", R.port, env)) < 0)
        return -1;
    return th_wait_hot(R.port, "filespool", 1, 30) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = th_sched_stop(&S) == 0 ? 0 : -1;
    if (NODE > 0) {
        kill(NODE, SIGTERM);
        waitpid(NODE, NULL, 0);
    }
    msrv_stop(&M);
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    curl_global_cleanup();
    return rc;
}

/* ---- the API ---- */

/* Upload (binary bytes that look like multipart framing), list, retrieve,
 * download byte for byte, delete: the content file goes with it. */
static void upload_list_retrieve_download_delete(void **state)
{
    (void)state;
    static const char data[] = "line\r\n--boundary\r\n\0\x01\xff--\r\n\r\nend";
    size_t len = sizeof(data) - 1;
    int disk0 = files_on_disk();
    json_t *f = upload_as(KEY, "report q.bin", data, len, "application/x-test", 200);
    const char *id = s_(f, "id");
    assert_non_null(id);
    assert_int_equal(strncmp(id, "file_", 5), 0);
    assert_string_equal(s_(f, "type"), "file");
    assert_string_equal(s_(f, "filename"), "report q.bin");
    assert_string_equal(s_(f, "mime_type"), "application/x-test");
    assert_int_equal(json_integer_value(json_object_get(f, "size_bytes")), len);
    assert_non_null(s_(f, "created_at"));
    assert_true(json_is_true(json_object_get(f, "downloadable")));
    assert_true(json_is_null(json_object_get(f, "expires_at")));
    /* The content is a file of its own on disk, and not in Redis. */
    char path[1300], *disk = NULL, out[4096];
    size_t dl = 0;
    snprintf(path, sizeof(path), "%s/%s", FILES, id);
    assert_int_equal(wp_read_file(path, 1 << 20, &disk, &dl, NULL), 0);
    assert_int_equal(dl, len);
    assert_memory_equal(disk, data, len);
    free(disk);
    assert_int_equal(files_on_disk(), disk0 + 1);
    th_sh(out, sizeof(out), "redis-cli -p %d --no-raw hgetall 'wp:obj:{acme}:%s'", R.port, id);
    assert_non_null(strstr(out, "\"json\"")); /* the metadata is there, */
    assert_null(strstr(out, "boundary"));      /* the content is not */

    char p[256];
    snprintf(p, sizeof(p), "/v1/files/%s", id);
    json_t *g = call("GET", p, NULL, 200);
    assert_true(json_equal(g, f));
    json_decref(g);
    json_t *l = call("GET", "/v1/files", NULL, 200);
    assert_string_equal(s_(json_array_get(json_object_get(l, "data"), 0), "id"), id);
    json_decref(l);
    snprintf(p, sizeof(p), "/v1/files?ids%%5B%%5D=%s&ids%%5B%%5D=file_nosuch", id);
    l = call("GET", p, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(l, "data")), 1);
    json_decref(l);
    l = call("GET", "/v1/files?scope_id=sesn_x", NULL, 200);
    assert_int_equal(json_array_size(json_object_get(l, "data")), 0);
    json_decref(l);

    struct curl_out o;
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    assert_int_equal(curl_req(KEY, "GET", p, NULL, NULL, 0, NULL, NULL, &o), 200);
    assert_int_equal(o.body.len, len);
    assert_memory_equal(o.body.data, data, len);
    assert_string_equal(o.ctype, "application/x-test");
    wp_buf_free(&o.body);

    snprintf(p, sizeof(p), "/v1/files/%s", id);
    json_t *d = call("DELETE", p, NULL, 200);
    assert_string_equal(s_(d, "id"), id);
    assert_string_equal(s_(d, "type"), "file_deleted");
    json_decref(d);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(files_on_disk(), disk0);
    json_decref(call("GET", p, NULL, 404));
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    json_decref(call("GET", p, NULL, 404));
    snprintf(p, sizeof(p), "/v1/files/%s", id);
    json_decref(call("DELETE", p, NULL, 404));
    json_decref(f);
}

/* Every call on another organization's file is 404, and it cannot be
 * mounted in that organization's sessions. */
static void other_org_sees_nothing(void **state)
{
    (void)state;
    char p[256], body[512];
    json_t *f = upload_as(KEY, "secret.txt", "acme only", 9, "text/plain", 200);
    const char *id = s_(f, "id");
    int before = listed(OTHER);
    snprintf(p, sizeof(p), "/v1/files/%s", id);
    json_t *e = call_as(OTHER, "GET", p, NULL, 404);
    assert_string_equal(s_(json_object_get(e, "error"), "type"), "not_found_error");
    json_decref(e);
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    json_decref(call_as(OTHER, "GET", p, NULL, 404));
    snprintf(p, sizeof(p), "/v1/files/%s", id);
    json_decref(call_as(OTHER, "DELETE", p, NULL, 404));
    snprintf(p, sizeof(p), "/v1/files?ids%%5B%%5D=%s", id);
    json_t *l = call_as(OTHER, "GET", p, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(l, "data")), 0);
    json_decref(l);
    assert_int_equal(listed(OTHER), before);
    /* Not as a session resource either: at create and added later. */
    json_t *ag = call_as(OTHER, "POST", "/v1/agents", "{\"name\":\"b\",\"model\":\"m\"}", 200);
    json_t *en = call_as(OTHER, "POST", "/v1/environments",
                         "{\"name\":\"b\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":\"file\","
             "\"file_id\":\"%s\"}]}", s_(ag, "id"), s_(en, "id"), id);
    e = call_as(OTHER, "POST", "/v1/sessions", body, 404);
    assert_non_null(strstr(s_(json_object_get(e, "error"), "message"), id));
    json_decref(e);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", s_(ag, "id"),
             s_(en, "id"));
    json_t *s = call_as(OTHER, "POST", "/v1/sessions", body, 200);
    snprintf(p, sizeof(p), "/v1/sessions/%s/resources", s_(s, "id"));
    snprintf(body, sizeof(body), "{\"type\":\"file\",\"file_id\":\"%s\"}", id);
    json_decref(call_as(OTHER, "POST", p, body, 404));
    json_t *rl = call_as(OTHER, "GET", p, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(rl, "data")), 0);
    json_decref(rl);
    /* The owner still has it, intact. */
    struct curl_out o;
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    assert_int_equal(curl_req(KEY, "GET", p, NULL, NULL, 0, NULL, NULL, &o), 200);
    assert_string_equal(o.body.data, "acme only");
    wp_buf_free(&o.body);
    json_decref(s);
    json_decref(ag);
    json_decref(en);
    json_decref(f);
}

/* Too large, malformed or incomplete uploads get the API's errors and
 * store nothing (no metadata, no content file). */
static void bad_uploads_store_nothing(void **state)
{
    (void)state;
    char out[8192];
    int disk0 = files_on_disk(), list0 = listed(KEY);
    char *big = malloc(MAX_BYTES + 1);
    memset(big, 'x', MAX_BYTES + 1);
    /* One byte over: the part is too large (413). */
    json_t *e = upload_as(KEY, "big.bin", big, MAX_BYTES + 1, NULL, 413);
    assert_string_equal(s_(e, "type"), "error");
    assert_string_equal(s_(json_object_get(e, "error"), "type"), "invalid_request_error");
    json_decref(e);
    /* Exactly the limit passes. */
    json_t *ok = upload_as(KEY, "edge.bin", big, MAX_BYTES, NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(ok, "size_bytes")), MAX_BYTES);
    char p[256];
    snprintf(p, sizeof(p), "/v1/files/%s", s_(ok, "id"));
    json_decref(call("DELETE", p, NULL, 200));
    json_decref(ok);
    free(big);
    /* A body declared far larger than the limit is refused up front. */
    int fd = th_connect(S.port);
    snprintf(out, sizeof(out),
             "POST /v1/files HTTP/1.1\r\nHost: x\r\nx-api-key: " KEY "\r\nContent-Type: "
             "multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n");
    th_send_all(fd, out, strlen(out));
    int n = th_read_all(fd, out, sizeof(out) - 1, 5000);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    assert_non_null(strstr(out, "HTTP/1.1 413"));
    /* The upload limit is the upload route's only: other bodies keep --max-body. */
    fd = th_connect(S.port);
    snprintf(out, sizeof(out),
             "POST /v1/agents HTTP/1.1\r\nHost: x\r\nx-api-key: " KEY "\r\nContent-Type: "
             "application/json\r\nContent-Length: 2097152\r\n\r\n");
    th_send_all(fd, out, strlen(out));
    n = th_read_all(fd, out, sizeof(out) - 1, 5000);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    assert_non_null(strstr(out, "HTTP/1.1 413"));

    static const char okpart[] = "--b\r\nContent-Disposition: form-data; name=\"file\"; "
                                 "filename=\"a.txt\"\r\n\r\nhello\r\n";
    struct {
        const char *ctype, *body;
    } bad[] = {
        {"application/json", "{\"file\":\"x\"}"},
        {"multipart/form-data", "--b\r\n\r\n"},
        {"multipart/form-data; boundary=b", "garbage"},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"file\"; "
                                            "filename=\"a.txt\"\r\n\r\nno closing boundary"},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; "
                                            "name=\"file\"\r\n\r\nno filename\r\n--b--"},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"other\"; "
                                            "filename=\"a\"\r\n\r\nx\r\n--b--"},
        {"multipart/form-data; boundary=b", "--b--"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int st = raw(KEY, "/v1/files", bad[i].ctype, bad[i].body, strlen(bad[i].body), out,
                     sizeof(out));
        if (st != 400)
            fail_msg("case %zu: %d %s", i, st, out);
        assert_non_null(strstr(out, "invalid_request_error"));
    }
    /* Two file parts; a bad expires_in_seconds. */
    char two[512], exp[512];
    snprintf(two, sizeof(two), "%s%s--b--", okpart, okpart);
    assert_int_equal(raw(KEY, "/v1/files", "multipart/form-data; boundary=b", two, strlen(two),
                         out, sizeof(out)), 400);
    snprintf(exp, sizeof(exp), "%s--b\r\nContent-Disposition: form-data; "
             "name=\"expires_in_seconds\"\r\n\r\n60\r\n--b--", okpart);
    assert_int_equal(raw(KEY, "/v1/files", "multipart/form-data; boundary=b", exp, strlen(exp),
                         out, sizeof(out)), 400);
    assert_int_equal(files_on_disk(), disk0);
    assert_int_equal(listed(KEY), list0);
    /* A good expiry is kept. */
    struct curl_out o;
    assert_int_equal(curl_req(KEY, "POST", "/v1/files", "t.txt", "t", 1, NULL, "3600", &o), 200);
    json_t *f = json_loads(o.body.data, 0, NULL);
    wp_buf_free(&o.body);
    assert_true(json_is_string(json_object_get(f, "expires_at")));
    snprintf(p, sizeof(p), "/v1/files/%s", s_(f, "id"));
    json_decref(call("DELETE", p, NULL, 200));
    json_decref(f);
}

/* Sessions: file resources are checked (id, mount path, duplicates) and
 * listed with the reference's default mount path; other types are still
 * refused; resources can be added and deleted. */
static void session_resources_api(void **state)
{
    (void)state;
    char body[1024], p[256];
    json_t *f = upload_as(KEY, "r.txt", "r", 1, NULL, 200);
    const char *id = s_(f, "id");
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":\"file\","
             "\"file_id\":\"%s\"},{\"type\":\"file\",\"file_id\":\"%s\",\"mount_path\":\"/a/b.txt\"}]}",
             AGENT_ID, ENV_ID, id, id);
    json_t *s = call("POST", "/v1/sessions", body, 200);
    json_t *rs = json_object_get(s, "resources");
    assert_int_equal(json_array_size(rs), 2);
    char want[128];
    snprintf(want, sizeof(want), "/mnt/session/uploads/%s", id);
    assert_string_equal(s_(json_array_get(rs, 0), "mount_path"), want);
    assert_string_equal(s_(json_array_get(rs, 0), "type"), "file");
    assert_string_equal(s_(json_array_get(rs, 1), "mount_path"), "/a/b.txt");
    const char *bad[] = {"\"mount_path\":\"relative\"", "\"mount_path\":\"/proc/x\"",
                         "\"mount_path\":\"/a/../b\"", "\"mount_path\":7", NULL};
    for (int i = 0; bad[i]; i++) {
        snprintf(body, sizeof(body),
                 "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":\"file\","
                 "\"file_id\":\"%s\",%s}]}", AGENT_ID, ENV_ID, id, bad[i]);
        json_decref(call("POST", "/v1/sessions", body, 400));
    }
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":\"file\","
             "\"file_id\":\"%s\",\"mount_path\":\"/x\"},{\"type\":\"file\",\"file_id\":\"%s\","
             "\"mount_path\":\"/x\"}]}", AGENT_ID, ENV_ID, id, id);
    json_decref(call("POST", "/v1/sessions", body, 400));
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":\"file\","
             "\"file_id\":\"file_nosuchfile\"}]}", AGENT_ID, ENV_ID);
    json_decref(call("POST", "/v1/sessions", body, 404));
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":"
             "\"memory_store\",\"memory_store_id\":\"memstore_1\"}]}", AGENT_ID, ENV_ID);
    json_t *e = call("POST", "/v1/sessions", body, 400);
    assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "details"), "error_code"),
                        "not_supported_yet");
    json_decref(e);

    /* Added later: same checks, then listed; a second at the same path is refused. */
    snprintf(p, sizeof(p), "/v1/sessions/%s/resources", s_(s, "id"));
    snprintf(body, sizeof(body), "{\"type\":\"file\",\"file_id\":\"%s\",\"mount_path\":\"/c\"}", id);
    json_t *r = call("POST", p, body, 200);
    assert_string_equal(s_(r, "file_id"), id);
    assert_string_equal(s_(r, "mount_path"), "/c");
    json_decref(call("POST", p, body, 400));
    json_decref(call("POST", p, "{\"type\":\"file\",\"file_id\":\"file_nosuchfile\"}", 404));
    json_decref(call("POST", p, "{\"type\":\"file\",\"file_id\":\"x\",\"mount_path\":\"/d\"}", 400));
    json_t *l = call("GET", p, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(l, "data")), 3);
    json_decref(l);
    snprintf(p, sizeof(p), "/v1/sessions/%s/resources/%s", s_(s, "id"), s_(r, "id"));
    json_t *d = call("DELETE", p, NULL, 200);
    assert_string_equal(s_(d, "type"), "session_resource_deleted");
    json_decref(d);
    json_decref(call("GET", p, NULL, 404));
    json_decref(r);
    json_decref(s);
    json_decref(f);
}

/* ---- in the sandbox ---- */

/* Mounted at session create: a model's bash reads both files; writing,
 * appending, chmod, rm, mv, remount, umount and moving the parent all
 * fail, and the content read afterwards is the uploaded one. */
static void mounted_read_only_in_sandbox(void **state)
{
    (void)state;
    char body[1024];
    json_t *a = upload_as(KEY, "in.txt", "alpha-content", 13, "text/plain", 200);
    /* Larger than one read of the relay: the bytes come in many pieces. */
    size_t blen = 300000;
    char *bdata = malloc(blen), want[80];
    unsigned char h[32];
    for (size_t i = 0; i < blen; i++)
        bdata[i] = (char)(i * 7 + i / 251);
    sched__sha256(bdata, blen, h);
    int w = snprintf(want, sizeof(want), "B=");
    for (int i = 0; i < 32; i++)
        w += snprintf(want + w, sizeof(want) - (size_t)w, "%02x", h[i]);
    json_t *b = upload_as(KEY, "up.bin", bdata, blen, NULL, 200);
    free(bdata);
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":["
             "{\"type\":\"file\",\"file_id\":\"%s\",\"mount_path\":\"/data/in.txt\"},"
             "{\"type\":\"file\",\"file_id\":\"%s\"}]}",
             AGENT_ID, ENV_ID, s_(a, "id"), s_(b, "id"));
    json_t *s = call("POST", "/v1/sessions", body, 200);
    struct sse ss;
    sse_open(&ss, s_(s, "id"));
    send_text(s_(s, "id"), "probe the files");
    char *text = turn_tool_result(&ss);
    sse_close(&ss);
    printf("# tool result: %s\n", text);
    assert_non_null(strstr(text, "A=alpha-content"));
    assert_non_null(strstr(text, want));
    const char *tries[] = {"write", "append", "chmod", "rm", "mv", "remount", "umount",
                           "mvparent", NULL};
    for (int i = 0; tries[i]; i++) {
        char zero[32];
        snprintf(zero, sizeof(zero), "\n%s=0\n", tries[i]);
        if (strstr(text, zero))
            fail_msg("%s succeeded in the sandbox: %s", tries[i], text);
        snprintf(zero, sizeof(zero), "%s=", tries[i]);
        assert_non_null(strstr(text, zero));
    }
    assert_non_null(strstr(text, "C=alpha-content"));
    free(text);
    /* Only the lease's holder may mount: the right token with another
     * relay key is refused by the node. */
    char sbx[128], relay[128], tok[64], frame[1024], ans[512];
    th_sh(sbx, sizeof(sbx), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_sandbox", R.port, s_(s, "id"));
    th_sh(relay, sizeof(relay), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_relay", R.port, s_(s, "id"));
    th_sh(tok, sizeof(tok), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_token", R.port, s_(s, "id"));
    sbx[strcspn(sbx, "\n")] = relay[strcspn(relay, "\n")] = tok[strcspn(tok, "\n")] = '\0';
    int n = snprintf(frame + 4, sizeof(frame) - 4,
                     "{\"t\":\"mount\",\"env\":\"filespool\",\"sandbox\":\"%s\",\"token\":\"%s\","
                     "\"key\":\"0123456789abcdef0123456789abcdef\",\"path\":\"/data/in.txt\","
                     "\"size\":4}evil", sbx, tok);
    uint32_t plen = (uint32_t)n - 4;
    frame[0] = (char)(plen >> 24), frame[1] = (char)(plen >> 16), frame[2] = (char)(plen >> 8),
    frame[3] = (char)plen;
    int fd = th_connect(atoi(strrchr(relay, ':') + 1));
    assert_true(fd >= 0);
    assert_int_equal(th_send_all(fd, frame, (size_t)n + 4), 0);
    int got = th_read_all(fd, ans, sizeof(ans) - 1, 5000);
    close(fd);
    ans[got > 4 ? got : 4] = '\0';
    assert_non_null(strstr(ans + 4, "stale_token"));
    /* With the lease's key the node mounts (what the brain does): each
     * answer is ok. The time each takes is printed for
     * bench/results/files.md, not judged here. */
    char rkey[64];
    th_sh(rkey, sizeof(rkey), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_rkey", R.port, s_(s, "id"));
    rkey[strcspn(rkey, "\n")] = '\0';
    static const size_t sizes[] = {4096, 1 << 20, 16 << 20};
    char *payload = calloc(1, 16 << 20);
    for (int k = 0; k < 3; k++) {
        double ms[20];
        for (int i = 0; i < 20; i++) {
            n = snprintf(frame + 4, sizeof(frame) - 4,
                         "{\"t\":\"mount\",\"env\":\"filespool\",\"sandbox\":\"%s\",\"token\":"
                         "\"%s\",\"key\":\"%s\",\"path\":\"/bench/%d-%d\",\"size\":%zu}",
                         sbx, tok, rkey, k, i, sizes[k]);
            plen = (uint32_t)n;
            frame[0] = (char)(plen >> 24), frame[1] = (char)(plen >> 16),
            frame[2] = (char)(plen >> 8), frame[3] = (char)plen;
            uint64_t t0 = wp_now_ns();
            fd = th_connect(atoi(strrchr(relay, ':') + 1));
            assert_true(fd >= 0);
            assert_int_equal(th_send_all(fd, frame, (size_t)n + 4), 0);
            assert_int_equal(th_send_all(fd, payload, sizes[k]), 0);
            got = th_read_all(fd, ans, sizeof(ans) - 1, 10000);
            ms[i] = (double)(wp_now_ns() - t0) / 1e6;
            close(fd);
            ans[got > 4 ? got : 4] = '\0';
            if (!strstr(ans + 4, "\"ok\":true"))
                fail_msg("mount %zu bytes: %s", sizes[k], ans + 4);
        }
        for (int i = 1; i < 20; i++) /* sort for the median and p95 */
            for (int j = i; j > 0 && ms[j - 1] > ms[j]; j--) {
                double t = ms[j];
                ms[j] = ms[j - 1], ms[j - 1] = t;
            }
        printf("# mount through the relay, %zu bytes: median %.2f ms, p95 %.2f ms (20 runs)\n",
               sizes[k], (ms[9] + ms[10]) / 2, ms[18]);
    }
    free(payload);
    json_decref(s);
    json_decref(a);
    json_decref(b);
}

/* A resource added while the session runs is in the sandbox for the next
 * tool call; once deleted, it is gone for the call after. */
static void added_during_session_appears(void **state)
{
    (void)state;
    char body[512], p[256];
    json_t *f = upload_as(KEY, "x.txt", "late-content", 12, NULL, 200);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT_ID,
             ENV_ID);
    json_t *s = call("POST", "/v1/sessions", body, 200);
    struct sse ss;
    sse_open(&ss, s_(s, "id"));
    send_text(s_(s, "id"), "late file");
    char *text = turn_tool_result(&ss);
    assert_non_null(strstr(text, "missing"));
    free(text);
    snprintf(p, sizeof(p), "/v1/sessions/%s/resources", s_(s, "id"));
    snprintf(body, sizeof(body), "{\"type\":\"file\",\"file_id\":\"%s\",\"mount_path\":"
             "\"/late/x.txt\"}", s_(f, "id"));
    json_t *r = call("POST", p, body, 200);
    send_text(s_(s, "id"), "and now");
    text = turn_tool_result(&ss);
    assert_string_equal(text, "late-content");
    free(text);
    /* Deleted: gone from the sandbox before the next call. */
    snprintf(p, sizeof(p), "/v1/sessions/%s/resources/%s", s_(s, "id"), s_(r, "id"));
    json_decref(call("DELETE", p, NULL, 200));
    json_decref(r);
    send_text(s_(s, "id"), "and after the delete");
    text = turn_tool_result(&ss);
    assert_non_null(strstr(text, "missing"));
    free(text);
    sse_close(&ss);
    json_decref(s);
    json_decref(f);
}

/* The official SDK (tests/sdk/sdk_files.mjs): upload, list, retrieve,
 * download, a session resource, another organization's 404, delete. */
static void sdk_files(void **state)
{
    (void)state;
    static char out[1 << 16];
    if (access("tests/sdk/node_modules/@anthropic-ai/sdk/package.json", R_OK) != 0) {
        int rc = th_sh(out, sizeof(out),
                       "cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error 2>&1");
        if (rc != 0)
            fprintf(stderr, "npm ci: %s\n", out);
        assert_int_equal(rc, 0);
    }
    int rc = th_sh(out, sizeof(out),
                   "cd tests/sdk && WP_BASE_URL=http://127.0.0.1:%d WP_API_KEY=" KEY
                   " WP_OTHER_KEY=" OTHER " WP_AGENT=%s WP_ENV=%s timeout 120 node sdk_files.mjs 2>&1",
                   S.port, AGENT_ID, ENV_ID);
    printf("%s", out);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "FAILED"));
    assert_non_null(strstr(out, "sdk: files.delete"));
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(upload_list_retrieve_download_delete),
        cmocka_unit_test(other_org_sees_nothing),
        cmocka_unit_test(bad_uploads_store_nothing),
        cmocka_unit_test(session_resources_api),
        cmocka_unit_test(mounted_read_only_in_sandbox),
        cmocka_unit_test(added_during_session_appears),
        cmocka_unit_test(sdk_files),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
