/* alink_harness.h - start warmpool-hands as a plain child process (socket
 * in a temp dir) and drive it with the real libev client. Header-only
 * (static inline) so each agentlink integration test binary gets its own
 * copy; the Makefile builds each integration test file as one binary. */
#ifndef ALINK_HARNESS_H
#define ALINK_HARNESS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>

#include "lib/testlib.h"
#include "agentlink/agentlink.h"
#include "base/err.h"

struct hh {
    pid_t pid;
    char *dir;
    char sock[512];
    char work[512];
    char extra[512]; /* an allowed root besides the workdir */
    struct ev_loop *loop;
    struct alink_client *c;
    int closes; /* on_close calls */
};

/* The running harness, so a failed test's teardown can clean up (cmocka
 * longjmps out of a failing test, past its hh_stop). */
static struct hh *hh_current;

struct hres {
    bool done;
    int calls; /* times the result cb ran */
    int status;
    bool is_error;
    char *text;
    size_t len;
    size_t chunks, chunk_bytes;
    char first_chunk[256];
};

/* Path of the hands binary: BUILD/warmpool-hands, BUILD being three levels
 * above this test binary (BUILD/tests/integration/NAME). */
static inline void hh_hands_path(char *out, size_t cap)
{
    char exe[1024];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    assert_true(n > 0);
    exe[n] = '\0';
    char *d = dirname(dirname(dirname(exe)));
    snprintf(out, cap, "%s/warmpool-hands", d);
}

static inline void hh_on_close(void *ctx, const struct wp_err *err)
{
    struct hh *h = ctx;
    (void)err;
    h->closes++;
}

static inline void hh_connected(void *ctx, int status, const struct wp_err *err)
{
    int *st = ctx;
    (void)err;
    *st = status == 0 ? 1 : status;
}

static inline int hh_wait_socket(const char *path)
{
    for (int i = 0; i < 500; i++) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (strlen(path) >= sizeof(sa.sun_path))
            return -1;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(fd);
            return 0;
        }
        close(fd);
        usleep(10000);
    }
    return -1;
}

/* Start the hands with extra argv (NULL-terminated, may be NULL), run
 * through the command in prefix (e.g. unshare ...; NULL: none). */
static inline void hh_start_wrapped(struct hh *h, const char *const *prefix,
                                    const char *const *extra_args)
{
    char hands[1024];
    const char *argv[48];
    int n = 0;

    memset(h, 0, sizeof(*h));
    h->dir = th_tmpdir("alink");
    assert_non_null(h->dir);
    snprintf(h->sock, sizeof(h->sock), "%s/run/hands.sock", h->dir);
    snprintf(h->work, sizeof(h->work), "%s/work", h->dir);
    snprintf(h->extra, sizeof(h->extra), "%s/extra", h->dir);
    assert_int_equal(mkdir(h->work, 0755), 0);
    assert_int_equal(mkdir(h->extra, 0755), 0);
    hh_hands_path(hands, sizeof(hands));
    for (int i = 0; prefix && prefix[i] && n < 16; i++)
        argv[n++] = prefix[i];
    argv[n++] = hands;
    argv[n++] = "--socket";
    argv[n++] = h->sock;
    argv[n++] = "--workdir";
    argv[n++] = h->work;
    argv[n++] = "--allow-root";
    argv[n++] = h->extra;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (int i = 0; extra_args && extra_args[i] && n < 30; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;
    h->pid = fork();
    assert_true(h->pid >= 0);
    if (h->pid == 0) {
        /* A failed test longjmps past hh_stop: do not outlive us. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    hh_current = h;
    assert_int_equal(hh_wait_socket(h->sock), 0);
}

static inline void hh_start_args(struct hh *h, const char *const *extra_args)
{
    hh_start_wrapped(h, NULL, extra_args);
}

static inline void hh_connect(struct hh *h)
{
    struct alink_client_opts o = {.on_close = hh_on_close, .close_ctx = h};
    struct wp_err err;
    int st = 0;

    if (!h->loop)
        h->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(h->loop);
    if (!h->c)
        assert_int_equal(alink_client_new(h->loop, &o, &h->c, &err), 0);
    assert_int_equal(alink_client_connect_unix(h->c, h->sock, hh_connected, &st, &err), 0);
    while (!st)
        ev_run(h->loop, EVRUN_ONCE);
    assert_int_equal(st, 1);
}

static inline void hh_start(struct hh *h)
{
    hh_start_args(h, NULL);
    hh_connect(h);
}

static inline void hh_stop(struct hh *h)
{
    int status;

    hh_current = NULL;
    if (h->c) {
        alink_client_free(h->c);
        h->c = NULL;
    }
    if (h->loop) {
        /* Nothing of the client may be left on the loop. */
        assert_int_equal(ev_run(h->loop, EVRUN_NOWAIT), 0);
        ev_loop_destroy(h->loop);
        h->loop = NULL;
    }
    if (h->pid > 0) {
        /* SIGTERM, then SIGKILL after 2 s (unshare ignores SIGTERM; its
         * --kill-child then takes the hands down with it). */
        bool gone = false;
        kill(h->pid, SIGTERM);
        for (int i = 0; i < 200 && !gone; i++) {
            gone = waitpid(h->pid, &status, WNOHANG) == h->pid;
            if (!gone)
                usleep(10000);
        }
        if (!gone) {
            kill(h->pid, SIGKILL);
            waitpid(h->pid, &status, 0);
        }
        h->pid = 0;
    }
    th_rmtree(h->dir);
    free(h->dir);
}

/* cmocka teardown: after a failure, stop what the test left running. */
static inline int hh_teardown(void **state)
{
    struct hh *h = hh_current;
    int status;
    (void)state;

    if (!h)
        return 0;
    hh_current = NULL;
    if (h->c)
        alink_client_free(h->c);
    if (h->loop)
        ev_loop_destroy(h->loop);
    if (h->pid > 0) {
        kill(h->pid, SIGKILL);
        waitpid(h->pid, &status, 0);
    }
    th_rmtree(h->dir);
    free(h->dir);
    memset(h, 0, sizeof(*h));
    return 0;
}

#define HH_TEST(f) cmocka_unit_test_teardown(f, hh_teardown)

static inline void hres_free(struct hres *r)
{
    free(r->text);
    memset(r, 0, sizeof(*r));
}

static inline void hh_result_cb(void *ctx, int status, const struct alink_result *res,
                                const struct wp_err *err)
{
    struct hres *r = ctx;
    (void)err;

    r->calls++;
    r->done = true;
    r->status = status;
    r->is_error = res->is_error;
    free(r->text);
    r->text = strndup(res->content, res->len);
    r->len = res->len;
}

static inline void hh_chunk_cb(void *ctx, const char *data, size_t len)
{
    struct hres *r = ctx;

    if (r->chunks == 0)
        snprintf(r->first_chunk, sizeof(r->first_chunk), "%.*s", (int)len, data);
    r->chunks++;
    r->chunk_bytes += len;
}

/* Start a call (input as JSON text); returns its id. */
static inline int64_t hh_call_start(struct hh *h, const char *tool, const char *input_json,
                                    int64_t timeout_ms, bool stream, struct hres *r)
{
    json_error_t jerr;
    json_t *in = json_loads(input_json, 0, &jerr);
    struct alink_call_opts o = {.timeout_ms = timeout_ms, .on_chunk = stream ? hh_chunk_cb : NULL};
    struct wp_err err;
    int64_t id;

    if (!in)
        fail_msg("bad test input %s: %s", input_json, jerr.text);
    memset(r, 0, sizeof(*r));
    id = alink_client_call(h->c, tool, in, &o, hh_result_cb, r, &err);
    json_decref(in);
    if (id <= 0)
        fail_msg("call failed: %s", err.msg);
    return id;
}

static inline void hh_wait(struct hh *h, struct hres *r)
{
    while (!r->done)
        ev_run(h->loop, EVRUN_ONCE);
}

/* Run one call to completion. */
static inline void hh_call(struct hh *h, const char *tool, const char *input_json,
                           struct hres *r)
{
    hh_call_start(h, tool, input_json, 0, false, r);
    hh_wait(h, r);
    assert_int_equal(r->calls, 1);
}

/* Convenience: run, expect success/error, compare the text. */
#define EXPECT_CALL(h, tool, input, want_err, want_text)                                   \
    do {                                                                                   \
        struct hres r_;                                                                    \
        hh_call((h), (tool), (input), &r_);                                                \
        if (r_.is_error != (want_err) || strcmp(r_.text, (want_text)) != 0)                \
            fail_msg("%s %s: got is_error=%d text=[%s], want is_error=%d text=[%s]",       \
                     (tool), (input), r_.is_error, r_.text, (int)(want_err), (want_text)); \
        hres_free(&r_);                                                                    \
    } while (0)

/* Pids of processes with this string in their command line (up to cap). */
static inline int hh_pids_with(const char *needle, pid_t *pids, int cap)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;

    assert_non_null(d);
    while (found < cap && (e = readdir(d))) {
        char path[300], buf[4096];
        ssize_t n;
        int fd;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] == '\0')
                buf[i] = ' ';
        buf[n] = '\0';
        if (strstr(buf, needle))
            pids[found++] = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return found;
}

static inline bool hh_proc_with(const char *needle)
{
    pid_t p;
    return hh_pids_with(needle, &p, 1) > 0;
}

/* Zombie children of pid (nobody reaped them). */
static inline int hh_zombies_of(pid_t parent)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int z = 0;

    assert_non_null(d);
    while ((e = readdir(d))) {
        char path[300], buf[512], state;
        int ppid;
        FILE *f;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(buf, sizeof(buf), f)) {
            char *p = strrchr(buf, ')');
            if (p && sscanf(p + 1, " %c %d", &state, &ppid) == 2 && state == 'Z' &&
                ppid == (int)parent)
                z++;
        }
        fclose(f);
    }
    closedir(d);
    return z;
}

static inline long hh_vmhwm_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static inline void hh_write_file(struct hh *h, const char *rel, const char *data)
{
    char path[1024], cmd[2100];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", h->work, rel);
    snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
    assert_int_equal(system(cmd), 0);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(data, f);
    fclose(f);
}

/* The hands of a sandbox whose root is at root (PID 1 there, socket at
 * /run/warmpool/hands.sock): connect, then attach as session. */
static inline void hh_connect_root(struct hh *h, const char *root)
{
    memset(h, 0, sizeof(*h));
    snprintf(h->sock, sizeof(h->sock), "%s/run/warmpool/hands.sock", root);
    hh_connect(h);
}

/* Attach as session (also its hostname), with one environment variable
 * when var is not NULL. */
static inline void hh_attach_env(struct hh *h, const char *session, const char *var,
                                 const char *value)
{
    struct alink_env_var env = { var, value };
    struct alink_attach a = { .session_id = session, .env = &env, .n_env = var ? 1 : 0,
                              .hostname = session };
    struct hres r = { 0 };
    struct wp_err err;

    assert_true(alink_client_attach(h->c, &a, hh_result_cb, &r, &err) > 0);
    hh_wait(h, &r);
    if (r.status != 0 || r.is_error)
        fail_msg("attach: %s", r.text);
    hres_free(&r);
}

static inline void hh_attach(struct hh *h, const char *session)
{
    hh_attach_env(h, session, NULL, NULL);
}

/* Run command through the bash tool (60 s); returns its output (caller
 * frees). */
static inline char *hh_bash(struct hh *h, const char *command)
{
    json_t *in = json_pack("{s:s, s:i}", "command", command, "timeout_ms", 60000);
    char *js = json_dumps(in, JSON_COMPACT), *out;
    struct hres r;

    json_decref(in);
    hh_call(h, "bash", js, &r);
    free(js);
    out = strdup(r.text ? r.text : "");
    hres_free(&r);
    return out;
}

#endif
