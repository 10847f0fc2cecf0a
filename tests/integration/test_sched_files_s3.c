/* test_sched_files_s3.c - the Files API on the S3-compatible store: a real
 * Redis, s3rver (npm, pinned in tests/s3/package.json + package-lock.json,
 * installed with `npm ci` when missing) as the S3 stand-in, which checks
 * SigV4 signatures against its one account S3RVER:S3RVER, and a scheduler
 * started with --files-s3-*. Objects are checked in s3rver's directory
 * (<dir>/<bucket>/<key>._S3rver_object). s3rver 3.7 checks a SigV4
 * request's access key id but not its signature (its source: "Signature
 * version 4 calculation is unimplemented"), so wrong credentials here are a
 * wrong key id. */
#include <curl/curl.h>
#include <dirent.h>
#include <jansson.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/fs.h"
#include "base/net.h"
#include "lib/sched_testlib.h"
#include "lib/testlib.h"

#define KEY "sk-acme"
#define BUCKET "wp-files"

static struct th_redis R;
static struct th_sched S;
static char *DIR_, FILES[512], S3DIR[512], ENDPOINT[128];
static int S3PID = -1;

static size_t on_body(char *p, size_t sz, size_t n, void *ctx)
{
    return wp_buf_append(ctx, p, sz * n) < 0 ? 0 : sz * n;
}

/* POST /v1/files (multipart) to port; the status, the body in out. */
static long upload(int port, const char *data, size_t len, struct wp_buf *out)
{
    char url[128];
    long status = 0;
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Authorization: Bearer " KEY);
    curl_mime *form = curl_mime_init(c);
    curl_mimepart *part = curl_mime_addpart(form);
    curl_mime_name(part, "file");
    curl_mime_data(part, data, len);
    curl_mime_filename(part, "blob.bin");
    wp_buf_init(out, 1 << 20);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/files", port);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, form);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    wp_buf_append(out, "", 1);
    out->len--;
    curl_mime_free(form);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static void object_path(const char *id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s/%s._S3rver_object", S3DIR, BUCKET, id);
}

/* Entries in dir other than . and ..; 0 when it does not exist. */
static int entries(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

/* Start a scheduler on the S3 store with these credentials in its
 * environment (and only there: unset again here). */
static int start_s3_sched_at(struct th_sched *s, const char *endpoint, const char *keyid,
                             const char *secret)
{
    setenv("AWS_ACCESS_KEY_ID", keyid, 1);
    setenv("AWS_SECRET_ACCESS_KEY", secret, 1);
    int rc = th_sched_start(s, R.port, "--files-dir", FILES, "--files-s3-endpoint", endpoint,
                            "--files-s3-bucket", BUCKET, (char *)NULL);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    return rc;
}

static int start_s3_sched(struct th_sched *s, const char *keyid, const char *secret)
{
    return start_s3_sched_at(s, ENDPOINT, keyid, secret);
}

static int setup(void **state)
{
    (void)state;
    static char out[1 << 16];
    char log[600], port[16];
    if (access("tests/s3/node_modules/s3rver/package.json", R_OK) != 0 &&
        th_sh(out, sizeof(out), "cd tests/s3 && npm ci --no-audit --no-fund --loglevel=error 2>&1")) {
        fprintf(stderr, "npm ci: %s\n", out);
        return -1;
    }
    DIR_ = th_tmpdir("files-s3");
    snprintf(FILES, sizeof(FILES), "%s/files", DIR_);
    snprintf(S3DIR, sizeof(S3DIR), "%s/s3", DIR_);
    snprintf(log, sizeof(log), "%s/s3rver.log", DIR_);
    snprintf(port, sizeof(port), "%d", th_free_port());
    snprintf(ENDPOINT, sizeof(ENDPOINT), "http://127.0.0.1:%s/", port); /* '/' is trimmed */
    if (wp_mkdir_p(S3DIR, 0700, NULL) < 0)
        return -1;
    const char *argv[] = {"node", "tests/s3/node_modules/s3rver/bin/s3rver.js", "-d", S3DIR,
                          "-a", "127.0.0.1", "-p", port, "--no-vhost-buckets",
                          "--configure-bucket", BUCKET, NULL};
    S3PID = th_spawn(log, argv);
    if (S3PID < 0)
        return -1;
    /* Ready when the bucket's directory exists (made at start-up). */
    char bucket[600];
    snprintf(bucket, sizeof(bucket), "%s/%s", S3DIR, BUCKET);
    for (int i = 0; i < 200 && access(bucket, F_OK) != 0; i++)
        usleep(50 * 1000);
    int fd = -1;
    for (int i = 0; i < 100 && (fd = th_connect(atoi(port))) < 0; i++)
        usleep(50 * 1000);
    if (fd < 0)
        return -1;
    close(fd);
    if (th_redis_start(&R, 0) < 0)
        return -1;
    return start_s3_sched(&S, "S3RVER", "S3RVER");
}

static int teardown(void **state)
{
    (void)state;
    int st = th_sched_stop(&S);
    th_redis_stop(&R);
    if (S3PID > 0) {
        kill(S3PID, SIGTERM);
        waitpid(S3PID, NULL, 0);
    }
    th_rmtree(DIR_);
    free(DIR_);
    return st == 0 ? 0 : -1; /* clean exit: no sanitizer report, no leak */
}

/* Upload, the object in the bucket, download byte-exact, delete removes
 * it; nothing ever lands in --files-dir. */
static void round_trip_through_the_bucket(void **state)
{
    (void)state;
    size_t len = (3u << 20) + 17; /* over a megabyte: curl would send Expect */
    char *data = malloc(len), path[700], *stored = NULL;
    size_t stored_len = 0;
    struct wp_buf out;
    assert_non_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = (char)((i * 7919u) >> 3 ^ i);
    assert_int_equal(upload(S.port, data, len, &out), 200);
    json_t *f = json_loads(out.data, 0, NULL);
    wp_buf_free(&out);
    assert_non_null(f);
    const char *id = json_string_value(json_object_get(f, "id"));
    assert_non_null(id);
    assert_int_equal(json_integer_value(json_object_get(f, "size_bytes")), (json_int_t)len);

    object_path(id, path, sizeof(path));
    assert_int_equal(wp_read_file(path, len + 1, &stored, &stored_len, NULL), 0);
    assert_int_equal(stored_len, len);
    assert_memory_equal(stored, data, len);
    free(stored);
    assert_int_equal(entries(FILES), 0);

    char p[128];
    struct th_resp r;
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    assert_int_equal(th_http(S.port, "GET", p, KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, len);
    assert_memory_equal(r.body, data, len);
    th_resp_free(&r);

    snprintf(p, sizeof(p), "/v1/files/%s", id);
    json_decref(th_api(S.port, KEY, "DELETE", p, NULL, 200));
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    json_decref(th_api(S.port, KEY, "GET", p, NULL, 404));
    assert_int_equal(entries(FILES), 0);

    /* An empty file is an object too. */
    assert_int_equal(upload(S.port, "", 0, &out), 200);
    f = (json_decref(f), json_loads(out.data, 0, NULL));
    wp_buf_free(&out);
    id = json_string_value(json_object_get(f, "id"));
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    assert_int_equal(th_http(S.port, "GET", p, KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    th_resp_free(&r);
    json_decref(f);
    free(data);
}

/* An object gone from the store behind the scheduler's back: its download
 * is a 404 that says so, not a 500. */
static void missing_object_is_404(void **state)
{
    (void)state;
    struct wp_buf out;
    char path[700], p[128];
    assert_int_equal(upload(S.port, "hello", 5, &out), 200);
    json_t *f = json_loads(out.data, 0, NULL);
    wp_buf_free(&out);
    const char *id = json_string_value(json_object_get(f, "id"));
    object_path(id, path, sizeof(path));
    assert_int_equal(unlink(path), 0);
    snprintf(p, sizeof(p), "/v1/files/%s/content", id);
    json_t *e = th_api(S.port, KEY, "GET", p, NULL, 404);
    const char *msg = json_string_value(json_object_get(json_object_get(e, "error"), "message"));
    assert_non_null(msg);
    assert_non_null(strstr(msg, "missing from the store"));
    json_decref(e);
    json_decref(f);
}

/* Wrong credentials: s3rver refuses the key id, the upload is a 500
 * api_error naming the store's answer, and no file exists afterwards. */
static void wrong_credentials_fail_clearly(void **state)
{
    (void)state;
    struct th_sched bad;
    struct wp_buf out;
    json_t *l0 = th_api(S.port, KEY, "GET", "/v1/files?limit=100", NULL, 200);
    size_t listed = json_array_size(json_object_get(l0, "data"));
    json_decref(l0);
    char bucket[600];
    snprintf(bucket, sizeof(bucket), "%s/%s", S3DIR, BUCKET);
    int before = entries(bucket);
    assert_int_equal(start_s3_sched(&bad, "NOT-S3RVER", "not-the-secret"), 0);
    long st = upload(bad.port, "secret stuff", 12, &out);
    json_t *e = json_loads(out.data, 0, NULL);
    wp_buf_free(&out);
    json_t *list = th_call(bad.port, KEY, "GET", "/v1/files?limit=100", NULL, 200);
    int stopped = th_sched_stop(&bad);
    assert_int_equal(st, 500);
    assert_non_null(e);
    json_t *err = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(err, "type")), "api_error");
    const char *msg = json_string_value(json_object_get(err, "message"));
    printf("# %s\n", msg);
    assert_non_null(strstr(msg, "could not store the file"));
    assert_non_null(strstr(msg, "HTTP 403 InvalidAccessKeyId"));
    assert_null(strstr(msg, "not-the-secret"));
    assert_null(strstr(msg, "http://")); /* the endpoint stays the operator's */
    assert_non_null(list);
    assert_int_equal(json_array_size(json_object_get(list, "data")), listed);
    assert_int_equal(entries(bucket), before);
    json_decref(list);
    json_decref(e);
    assert_int_equal(stopped, 0);
}

/* A store nobody answers at: the upload is a 500 api_error saying the
 * connection failed, and no file is listed. */
static void unreachable_store_fails_clearly(void **state)
{
    (void)state;
    struct th_sched bad;
    struct wp_buf out;
    char ep[64];
    snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", th_free_port());
    assert_int_equal(start_s3_sched_at(&bad, ep, "S3RVER", "S3RVER"), 0);
    long st = upload(bad.port, "x", 1, &out);
    json_t *e = json_loads(out.data, 0, NULL);
    wp_buf_free(&out);
    json_t *list = th_call(bad.port, KEY, "GET", "/v1/files?limit=100", NULL, 200);
    json_t *mine = th_call(S.port, KEY, "GET", "/v1/files?limit=100", NULL, 200);
    int stopped = th_sched_stop(&bad);
    assert_int_equal(st, 500);
    assert_non_null(e);
    const char *msg = json_string_value(json_object_get(json_object_get(e, "error"), "message"));
    printf("# %s\n", msg);
    assert_non_null(strstr(msg, "could not store the file (S3 PUT"));
    assert_non_null(strstr(msg, "Couldn't connect to server"));
    assert_null(strstr(msg, "127.0.0.1")); /* the store's address stays in the log */
    assert_non_null(list);
    assert_non_null(mine);
    assert_int_equal(json_array_size(json_object_get(list, "data")),
                     json_array_size(json_object_get(mine, "data")));
    json_decref(list);
    json_decref(mine);
    json_decref(e);
    assert_int_equal(stopped, 0);
}

/* A store that takes its time: a stand-in that accepts the PUT and answers
 * only when the test says so. Meanwhile the scheduler answers other
 * requests (the store's work is off its loop); then the upload completes.
 * The stand-in is a child: it tells the test on `got` when the request is
 * in, and answers 200 when a byte arrives on `go`. */
static pid_t slow_store(int *port, int got[2], int go[2])
{
    int lfd = wp_tcp_listen("127.0.0.1", 0, 4, port, NULL);
    if (lfd < 0 || pipe(got) < 0 || pipe(go) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char buf[8192];
        size_t n = 0;
        fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) & ~O_NONBLOCK); /* wp_tcp_listen's is not blocking */
        int fd = accept(lfd, NULL, NULL);
        while (fd >= 0 && n < sizeof(buf) - 1) { /* the head and a 1-byte body */
            ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
            if (k <= 0)
                break;
            n += (size_t)k;
            buf[n] = '\0';
            char *end = strstr(buf, "\r\n\r\n");
            if (end && (size_t)(end + 4 - buf) < n)
                break;
        }
        (void)!write(got[1], "g", 1);
        char c;
        (void)!read(go[0], &c, 1);
        const char *ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        (void)!write(fd, ok, strlen(ok));
        _exit(0);
    }
    close(lfd);
    return pid;
}

struct bg_upload {
    int port;
    long status;
    struct wp_buf out;
};

static void *upload_thread(void *arg)
{
    struct bg_upload *u = arg;
    u->status = upload(u->port, "x", 1, &u->out);
    return NULL;
}

static void slow_store_does_not_stall_the_scheduler(void **state)
{
    (void)state;
    struct th_sched s;
    int port, got[2], go[2];
    char ep[64];
    pid_t store = slow_store(&port, got, go);
    assert_true(store > 0);
    snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", port);
    assert_int_equal(start_s3_sched_at(&s, ep, "S3RVER", "S3RVER"), 0);

    struct bg_upload u = { .port = s.port };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, upload_thread, &u), 0);
    struct pollfd p = { .fd = got[0], .events = POLLIN };
    int in = poll(&p, 1, 20000); /* the PUT reached the store, which holds it */
    /* While the store holds the PUT, the scheduler answers (th_http: 10 s). */
    struct th_resp r = { 0 };
    int rc = in == 1 ? th_http(s.port, "GET", "/v1/agents", KEY, NULL, &r) : -1;
    int status = rc == 0 ? r.status : -1;
    th_resp_free(&r);
    (void)!write(go[1], "g", 1);
    pthread_join(th, NULL);
    waitpid(store, NULL, 0);
    int stopped = th_sched_stop(&s);
    assert_int_equal(in, 1);
    assert_int_equal(status, 200);
    if (u.status != 200)
        printf("# upload: %ld %s\n", u.status, u.out.data);
    assert_int_equal(u.status, 200); /* the upload completed once the store answered */
    assert_non_null(strstr(u.out.data, "\"file_"));
    wp_buf_free(&u.out);
    assert_int_equal(stopped, 0);
    for (int i = 0; i < 2; i++) {
        close(got[i]);
        close(go[i]);
    }
}

/* Bad S3 configuration: the scheduler refuses to start, saying why. */
static void bad_config_refused_at_start(void **state)
{
    (void)state;
    static const struct {
        const char *env, *args, *says;
    } cases[] = {
        {"", "--files-s3-endpoint ftp://127.0.0.1:1 --files-s3-bucket wp-files",
         "--files-s3-endpoint wants an http:// or https:// URL"},
        {"", "--files-s3-endpoint 'http://127.0.0.1:1/?x=1' --files-s3-bucket wp-files",
         "--files-s3-endpoint wants"},
        {"", "--files-s3-endpoint http://127.0.0.1:1 --files-s3-bucket Bad_Bucket",
         "not a valid bucket name"},
        {"", "--files-s3-endpoint http://127.0.0.1:1 --files-s3-bucket -ab",
         "not a valid bucket name"},
        {"", "--files-s3-endpoint http://127.0.0.1:1", "needs both --files-s3-endpoint"},
        {"", "--files-s3-bucket wp-files", "needs both --files-s3-endpoint"},
        {"", "--files-s3-region 'us east'", "--files-s3-region wants"},
        {"-u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY",
         "--files-s3-endpoint http://127.0.0.1:1 --files-s3-bucket wp-files",
         "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"},
        {"AWS_ACCESS_KEY_ID=a:b", "--files-s3-endpoint http://127.0.0.1:1 --files-s3-bucket wp-files",
         "a ':' in the key id"},
    };
    static char out[4096];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = th_sh(out, sizeof(out),
                       "AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s env %s timeout 10 %s/warmpool-scheduler "
                       "--listen 127.0.0.1:0 --redis 127.0.0.1:%d %s 2>&1",
                       cases[i].env, th_build_dir(), R.port, cases[i].args);
        printf("# %s -> %d: %s", cases[i].args, rc, out);
        assert_int_equal(rc, 2);
        assert_non_null(strstr(out, cases[i].says));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_through_the_bucket),
        cmocka_unit_test(missing_object_is_404),
        cmocka_unit_test(wrong_credentials_fail_clearly),
        cmocka_unit_test(unreachable_store_fails_clearly),
        cmocka_unit_test(slow_store_does_not_stall_the_scheduler),
        cmocka_unit_test(bad_config_refused_at_start),
    };
    return cmocka_run_group_tests_name("sched_files_s3", tests, setup, teardown);
}
