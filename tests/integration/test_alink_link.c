/* test_alink_link.c - the agentlink protocol end to end: frames that are
 * malformed, oversized, truncated or interleaved; several calls in flight;
 * cancel; client timeouts; attach; a dead hands seen by the client. */
#include "alink_harness.h"

#include <poll.h>
#include <sched.h>

/* ---- raw socket helpers ------------------------------------------------------ */

static int raw_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void raw_write(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void raw_frame(int fd, const char *json)
{
    uint32_t n = (uint32_t)strlen(json);
    uint8_t h[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};

    raw_write(fd, h, 4);
    raw_write(fd, json, n);
}

static int read_full(int fd, void *p, size_t n)
{
    size_t got = 0;

    while (got < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) <= 0)
            return -1;
        ssize_t k = read(fd, (char *)p + got, n - got);
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

/* Next frame as JSON (caller decrefs), NULL on EOF/timeout. */
static json_t *raw_recv(int fd)
{
    uint8_t h[4];
    char *buf;
    json_t *j;

    if (read_full(fd, h, 4) < 0)
        return NULL;
    uint32_t n = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
    buf = malloc(n + 1);
    if (read_full(fd, buf, n) < 0) {
        free(buf);
        return NULL;
    }
    j = json_loadb(buf, n, 0, NULL);
    free(buf);
    return j;
}

static void expect_type(int fd, const char *t, const char *code)
{
    json_t *j = raw_recv(fd);

    if (!j)
        fail_msg("expected a %s frame, got EOF/timeout", t);
    if (strcmp(json_string_value(json_object_get(j, "t")), t) != 0 ||
        (code && strcmp(json_string_value(json_object_get(j, "code")), code) != 0)) {
        char *s = json_dumps(j, 0);
        fail_msg("expected t=%s code=%s, got %s", t, code ? code : "-", s);
    }
    json_decref(j);
}

static void expect_result(int fd, int64_t id, const char *content)
{
    json_t *j = raw_recv(fd);

    assert_non_null(j);
    if (strcmp(json_string_value(json_object_get(j, "t")), "result") != 0 ||
        json_integer_value(json_object_get(j, "id")) != id ||
        strcmp(json_string_value(json_object_get(j, "content")), content) != 0) {
        char *s = json_dumps(j, 0);
        fail_msg("expected result id=%lld content=%s, got %s", (long long)id, content, s);
    }
    json_decref(j);
}

/* ---- frames ------------------------------------------------------------------- */

static void frames_bad_and_survive(void **state)
{
    struct hh h;
    int fd;
    (void)state;

    hh_start_args(&h, NULL);
    fd = raw_connect(h.sock);
    /* Before hello. */
    raw_frame(fd, "{\"t\":\"call\",\"id\":1,\"tool\":\"read\",\"input\":{}}");
    expect_type(fd, "error", "hello_required");
    raw_frame(fd, "{\"t\":\"hello\",\"v\":1}");
    expect_type(fd, "hello", NULL);
    raw_frame(fd, "not json");
    expect_type(fd, "error", "bad_message");
    raw_frame(fd, "[1,2]");
    expect_type(fd, "error", "bad_message");
    raw_frame(fd, "{\"t\":\"teleport\"}");
    expect_type(fd, "error", "bad_message");
    raw_frame(fd, "{\"t\":\"call\",\"id\":-4,\"tool\":\"read\",\"input\":{}}");
    expect_type(fd, "error", "bad_message");
    raw_frame(fd, "{\"t\":\"call\",\"id\":5,\"tool\":\"read\",\"input\":[]}");
    {
        json_t *j = raw_recv(fd);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "code")), "bad_message");
        assert_int_equal(json_integer_value(json_object_get(j, "id")), 5); /* names the call */
        json_decref(j);
    }
    raw_frame(fd, "{\"t\":\"result\",\"id\":5,\"content\":\"x\"}");
    expect_type(fd, "error", "unexpected");
    raw_frame(fd, "{\"t\":\"hello\",\"v\":1,\"v\":2}"); /* duplicate keys */
    expect_type(fd, "error", "bad_message");
    /* Zero-length frame. */
    raw_write(fd, "\0\0\0\0", 4);
    expect_type(fd, "error", "bad_message");
    /* Oversized (the hands run with the default 1 MiB maximum): the payload
     * is skipped and the next frame is served. */
    {
        size_t n = ALINK_FRAME_MAX_DEFAULT + 10;
        uint8_t hd[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
        char *junk = malloc(n);
        memset(junk, '{', n);
        raw_write(fd, hd, 4);
        expect_type(fd, "error", "frame_too_big");
        raw_write(fd, junk, n);
        free(junk);
    }
    raw_frame(fd, "{\"t\":\"call\",\"id\":7,\"tool\":\"glob\",\"input\":{\"pattern\":\"*.none\"}}");
    expect_result(fd, 7, "no matches");
    /* Interleaved: three frames in one write, then one frame byte by byte. */
    {
        const char *a = "{\"t\":\"call\",\"id\":8,\"tool\":\"glob\",\"input\":{\"pattern\":\"a\"}}";
        const char *b = "{\"t\":\"bogus\"}";
        const char *c = "{\"t\":\"call\",\"id\":9,\"tool\":\"glob\",\"input\":{\"pattern\":\"b\"}}";
        char buf[512];
        size_t n = 0;
        const char *parts[] = {a, b, c};
        for (int i = 0; i < 3; i++) {
            uint32_t l = (uint32_t)strlen(parts[i]);
            buf[n++] = (char)(l >> 24);
            buf[n++] = (char)(l >> 16);
            buf[n++] = (char)(l >> 8);
            buf[n++] = (char)l;
            memcpy(buf + n, parts[i], l);
            n += l;
        }
        raw_write(fd, buf, n);
        expect_result(fd, 8, "no matches");
        expect_type(fd, "error", "bad_message");
        expect_result(fd, 9, "no matches");
        /* Truncated frame completed slowly. */
        uint32_t l = (uint32_t)strlen(a);
        n = 0;
        buf[n++] = 0, buf[n++] = 0, buf[n++] = (char)(l >> 8), buf[n++] = (char)l;
        memcpy(buf + n, a, l);
        n += l;
        for (size_t i = 0; i < n; i++) {
            raw_write(fd, buf + i, 1);
            if (i % 16 == 0)
                usleep(1000);
        }
        expect_result(fd, 8, "no matches");
    }
    close(fd);
    /* A truncated frame then EOF: the hands drop the connection and keep
     * serving others. */
    fd = raw_connect(h.sock);
    raw_write(fd, "\0\0\1\0{\"t\":", 9);
    close(fd);
    fd = raw_connect(h.sock);
    raw_frame(fd, "{\"t\":\"hello\",\"v\":1}");
    expect_type(fd, "hello", NULL);
    close(fd);
    /* Wrong version: error, then the hands close. */
    fd = raw_connect(h.sock);
    raw_frame(fd, "{\"t\":\"hello\",\"v\":99}");
    expect_type(fd, "error", "version");
    assert_null(raw_recv(fd));
    close(fd);
    hh_stop(&h);
}

/* ---- calls in flight, cancel, timeouts -------------------------------------- */

static void several_in_flight(void **state)
{
    struct hh h;
    struct hres slow, q, f1, f2;
    (void)state;

    hh_start(&h);
    hh_write_file(&h, "x.txt", "content\n");
    hh_call_start(&h, "bash", "{\"command\":\"sleep 0.3; echo slow\"}", 0, false, &slow);
    hh_call_start(&h, "bash", "{\"command\":\"echo queued\"}", 0, false, &q);
    hh_call_start(&h, "read", "{\"file_path\":\"x.txt\"}", 0, false, &f1);
    hh_call_start(&h, "glob", "{\"pattern\":\"*.txt\"}", 0, false, &f2);
    assert_int_equal(alink_client_inflight(h.c), 4);
    /* The file tools answer while bash is still sleeping. */
    while (!f1.done || !f2.done)
        ev_run(h.loop, EVRUN_ONCE);
    assert_false(slow.done);
    assert_string_equal(f1.text, "content\n");
    assert_string_equal(f2.text, "x.txt");
    hh_wait(&h, &q);
    assert_true(slow.done); /* bash calls run in order */
    assert_string_equal(slow.text, "slow");
    assert_string_equal(q.text, "queued");
    assert_int_equal(slow.calls + q.calls + f1.calls + f2.calls, 4);
    assert_int_equal(alink_client_inflight(h.c), 0);
    hres_free(&slow);
    hres_free(&q);
    hres_free(&f1);
    hres_free(&f2);
    hh_stop(&h);
}

static void cancel_kills(void **state)
{
    struct hh h;
    struct hres a, b, c;
    struct wp_err err;
    int64_t ia, ib;
    (void)state;

    hh_start(&h);
    ia = hh_call_start(&h, "bash", "{\"command\":\"echo started; sleep 4321.5\"}", 0, true, &a);
    ib = hh_call_start(&h, "bash", "{\"command\":\"echo never\"}", 0, false, &b);
    /* Wait until it runs (first chunk). */
    while (a.chunks == 0)
        ev_run(h.loop, EVRUN_ONCE);
    assert_string_equal(a.first_chunk, "started\n");
    assert_int_equal(alink_client_cancel(h.c, ib, &err), 0);
    assert_int_equal(alink_client_cancel(h.c, ia, &err), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, -ECANCELED);
    assert_true(a.is_error);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.status, -ECANCELED);
    assert_int_equal(alink_client_cancel(h.c, ia, &err), WP_ENOTFOUND);
    /* The hands killed it: no sleeper left, and the link still works. */
    hh_call(&h, "bash", "{\"command\":\"echo next\"}", &c);
    assert_string_equal(c.text, "next");
    for (int i = 0; i < 100 && hh_proc_with("sleep 4321.5"); i++)
        usleep(20000);
    assert_false(hh_proc_with("sleep 4321.5"));
    assert_int_equal(a.calls, 1); /* the late result was ignored */
    hres_free(&a);
    hres_free(&b);
    hres_free(&c);
    hh_stop(&h);
}

static void client_timeout(void **state)
{
    struct hh h;
    struct hres r;
    struct alink_call_opts o = {.timeout_ms = 100, .client_grace_s = 0.2};
    json_t *in = json_pack("{s:s}", "command", "echo hi");
    struct wp_err err;
    (void)state;

    hh_start(&h);
    /* A frozen hands: the client's own deadline fires. */
    kill(h.pid, SIGSTOP);
    memset(&r, 0, sizeof(r));
    assert_true(alink_client_call(h.c, "bash", in, &o, hh_result_cb, &r, &err) > 0);
    json_decref(in);
    hh_wait(&h, &r);
    assert_int_equal(r.status, WP_ETIMEDOUT);
    assert_true(r.is_error);
    assert_non_null(strstr(r.text, "timed out after 100 ms"));
    kill(h.pid, SIGCONT);
    hres_free(&r);
    /* Hands-enforced timeout through the call options (input has none). */
    hh_call_start(&h, "bash", "{\"command\":\"sleep 5\"}", 150, false, &r);
    hh_wait(&h, &r);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.text, "bash: bash command timed out after 150ms");
    hres_free(&r);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo ok\"}", false, "ok");
    hh_stop(&h);
}


/* ---- what a checkpoint needs ---------------------------------------------------- */

/* The hands keep nothing of whoever started them except the readiness
 * pipe, which they close after writing "ready". */
static void no_inherited_fds_and_ready_fd(void **state)
{
    struct hh h;
    int p[2], leak;
    char buf[16], num[16], marker[600];
    char rfile[700];
    const char *args[] = {"--ready-fd", num, "--ready-file", rfile, NULL};
    (void)state;

    char *tmp = th_tmpdir("leak");
    snprintf(marker, sizeof(marker), "%s/leak-marker", tmp);
    snprintf(rfile, sizeof(rfile), "%s/state/ready", tmp);
    leak = open(marker, O_CREAT | O_RDWR, 0600); /* no O_CLOEXEC: inherited */
    assert_true(leak >= 0);
    assert_int_equal(pipe(p), 0);
    snprintf(num, sizeof(num), "%d", p[1]);
    hh_start_args(&h, args);
    close(p[1]);
    assert_int_equal(read_full(p[0], buf, 6), 0);
    assert_memory_equal(buf, "ready\n", 6);
    assert_int_equal(read(p[0], buf, 1), 0); /* hands closed their end */
    assert_int_equal(access(rfile, F_OK), 0); /* written before the pipe */
    close(p[0]);
    close(leak);
    /* Nothing in the hands' fd table points at the host's files. */
    char dpath[64];
    snprintf(dpath, sizeof(dpath), "/proc/%d/fd", (int)h.pid);
    DIR *d = opendir(dpath);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        char lpath[400], target[1024];
        ssize_t n;
        if (e->d_name[0] == '.')
            continue;
        snprintf(lpath, sizeof(lpath), "%s/%s", dpath, e->d_name);
        n = readlink(lpath, target, sizeof(target) - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        if (strstr(target, "leak-marker"))
            fail_msg("hands hold the host's fd %s -> %s", e->d_name, target);
    }
    closedir(d);
    hh_connect(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo ok\"}", false, "ok");
    hh_stop(&h);
    th_rmtree(tmp);
    free(tmp);
}

/* Before a checkpoint the host closes its connection: a call still running
 * is killed, the shell's state otherwise survives, and the host simply
 * connects anew afterwards (as it will after a restore). */
static void reconnect_keeps_shell_state(void **state)
{
    struct hh h;
    struct hres a, r;
    (void)state;

    hh_start(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"cd / && export KEEP=yes\"}", false, "(no output)");
    alink_client_close(h.c);
    assert_int_equal(h.closes, 0); /* a host close is not reported as a loss */
    hh_connect(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $KEEP $PWD\"}", false, "yes /");
    /* A call running at close time is killed with its process tree. */
    hh_call_start(&h, "bash", "{\"command\":\"echo started; sleep 4321.8\"}", 0, true, &a);
    while (a.chunks == 0)
        ev_run(h.loop, EVRUN_ONCE);
    /* The close reaches the hands asynchronously: see the sleeper exist
     * first, or a slow fork makes "gone" true before it ever ran. */
    for (int i = 0; i < 500 && !hh_proc_with("sleep 4321.8"); i++)
        usleep(20000);
    assert_true(hh_proc_with("sleep 4321.8"));
    alink_client_close(h.c);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, -ECONNABORTED);
    /* (up to 10 s: under ASan on a loaded machine the kill takes its time) */
    for (int i = 0; i < 500 && hh_proc_with("sleep 4321.8"); i++)
        usleep(20000);
    assert_false(hh_proc_with("sleep 4321.8"));
    hh_connect(&h);
    hh_call(&h, "bash", "{\"command\":\"echo again\"}", &r);
    assert_string_equal(r.text, "again");
    hres_free(&a);
    hres_free(&r);
    hh_stop(&h);
}

/* ---- dead hands ------------------------------------------------------------- */

static void dead_hands_detected(void **state)
{
    struct hh h;
    struct hres a, b;
    struct wp_err err;
    int status;
    (void)state;

    hh_start(&h);
    hh_call_start(&h, "bash", "{\"command\":\"echo started; sleep 3\"}", 0, true, &a);
    hh_call_start(&h, "bash", "{\"command\":\"echo queued\"}", 0, false, &b);
    /* Wait until the shell runs it: killing the hands while it forks would
     * leave the listening socket open in the child for a moment. */
    while (a.chunks == 0)
        ev_run(h.loop, EVRUN_ONCE);
    kill(h.pid, SIGKILL);
    waitpid(h.pid, &status, 0);
    h.pid = 0;
    while (!a.done || !b.done)
        ev_run(h.loop, EVRUN_ONCE);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_true(a.status < 0 && b.status < 0);
    assert_true(a.is_error && b.is_error);
    assert_non_null(strstr(a.text, "sandbox connection lost"));
    assert_int_equal(h.closes, 1);
    assert_false(alink_client_connected(h.c));
    /* New calls are refused at once; the callback is never called. */
    json_t *in = json_pack("{s:s}", "command", "true");
    struct hres c = {0};
    assert_int_equal(alink_client_call(h.c, "bash", in, NULL, hh_result_cb, &c, &err),
                     WP_ESTATE);
    json_decref(in);
    assert_int_equal(c.calls, 0);
    /* Connecting to a socket nobody serves fails synchronously. */
    int st = 0;
    assert_true(alink_client_connect_unix(h.c, h.sock, hh_connected, &st, &err) < 0);
    assert_int_equal(st, 0);
    hres_free(&a);
    hres_free(&b);
    hh_stop(&h);
}

/* The client may be freed from inside its own result callback. */
static void free_in_callback_cb(void *ctx, int status, const struct alink_result *res,
                                const struct wp_err *err)
{
    struct hh *h = ctx;
    (void)status;
    (void)res;
    (void)err;
    alink_client_free(h->c);
    h->c = NULL;
}

static void free_inside_callback(void **state)
{
    struct hh h;
    struct hres other;
    struct wp_err err;
    json_t *in = json_pack("{s:s}", "pattern", "*");
    (void)state;

    hh_start(&h);
    assert_true(alink_client_call(h.c, "glob", in, NULL, free_in_callback_cb, &h, &err) > 0);
    json_decref(in);
    hh_call_start(&h, "bash", "{\"command\":\"sleep 1\"}", 0, false, &other);
    while (h.c)
        ev_run(h.loop, EVRUN_ONCE);
    /* The other call was failed by the free, exactly once. */
    assert_int_equal(other.calls, 1);
    assert_int_equal(other.status, -ECONNABORTED);
    hres_free(&other);
    hh_stop(&h);
}

/* ---- the shell is ready at attach ---------------------------------------------- */

/* Pids of the running bash children of parent (up to cap). */
static int bash_children(pid_t parent, pid_t *out, int cap)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while (n < cap && (e = readdir(d))) {
        char path[300], buf[512], *p;
        int ppid = 0;
        char state = 0;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[k] = '\0';
        p = strrchr(buf, ')');
        if (!p || !strstr(buf, "(bash)") || sscanf(p + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (ppid == parent && state != 'Z')
            out[n++] = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return n;
}

/* Starts the hands with --ready-fd (plus extra) and waits for "ready". */
static void start_ready(struct hh *h, const char *extra)
{
    int p[2];
    char num[16], buf[8];
    const char *args[] = {"--ready-fd", num, extra, NULL};

    assert_int_equal(pipe(p), 0);
    snprintf(num, sizeof(num), "%d", p[1]);
    hh_start_args(h, args);
    close(p[1]);
    assert_int_equal(read_full(p[0], buf, 6), 0);
    assert_memory_equal(buf, "ready\n", 6);
    close(p[0]);
}

/* By "ready" the shell is already running (a checkpoint taken then holds
 * it, so a clone's first call starts no shell); the first call runs in
 * that very shell; a killed shell is replaced at once, with fresh state. */
static void shell_ready_before_first_call(void **state)
{
    struct hh h;
    struct hres r;
    pid_t sh[4], sh2[4];
    char want[32];
    (void)state;

    start_ready(&h, NULL);
    assert_int_equal(bash_children(h.pid, sh, 4), 1);
    hh_connect(&h);
    snprintf(want, sizeof(want), "%d", (int)sh[0]);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $$\"}", false, want);
    EXPECT_CALL(&h, "bash", "{\"command\":\"WP_OLD=stale; echo set\"}", false, "set");
    /* A restart ends that shell and starts the next one before any call. */
    EXPECT_CALL(&h, "bash", "{\"restart\":true}", false, "bash session restarted");
    int n = 0;
    for (int i = 0; i < 200; i++) {
        n = bash_children(h.pid, sh2, 4);
        if (n == 1 && sh2[0] != sh[0])
            break;
        usleep(10000);
    }
    assert_int_equal(n, 1);
    assert_int_not_equal(sh2[0], sh[0]);
    snprintf(want, sizeof(want), "%d|", (int)sh2[0]);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo \\\"$$|$WP_OLD\\\"\"}", false, want);
    /* The same after a timeout kills the shell. */
    hh_call(&h, "bash", "{\"command\":\"sleep 30\",\"timeout_ms\":100}", &r);
    assert_true(r.is_error);
    hres_free(&r);
    for (int i = 0; i < 200 && bash_children(h.pid, sh, 4) != 1; i++)
        usleep(10000);
    assert_int_equal(bash_children(h.pid, sh, 4), 1);
    assert_int_not_equal(sh[0], sh2[0]);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo ok\"}", false, "ok");
    hh_stop(&h);

    /* --lazy-shell keeps the old behaviour: no shell until the first call. */
    start_ready(&h, "--lazy-shell");
    assert_int_equal(bash_children(h.pid, sh, 4), 0);
    hh_connect(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo ok\"}", false, "ok");
    assert_int_equal(bash_children(h.pid, sh, 4), 1);
    hh_stop(&h);
}

/* A shell that cannot start does not hold the hands back: ready comes,
 * and calls say why. */
static void shell_broken_still_ready(void **state)
{
    struct hh h;
    struct hres r;
    pid_t sh[4];
    (void)state;

    start_ready(&h, "--shell=/nonexistent/bash");
    hh_connect(&h);
    hh_call(&h, "bash", "{\"command\":\"echo ok\"}", &r);
    assert_true(r.is_error);
    hres_free(&r);
    assert_int_equal(bash_children(h.pid, sh, 4), 0);
    EXPECT_CALL(&h, "read", "{\"file_path\":\"nope\"}", true,
                "read: nope: cannot open: No such file or directory");
    hh_stop(&h);
}

/* ---- attach ------------------------------------------------------------------- */

static void attach_applies(void **state)
{
    struct hh h;
    struct hres r;
    struct wp_err err;
    char wd[1024], want[1200];
    struct alink_env_var env[] = {{"WP_A", "one two"}, {"WP_QUOTE", "it's"}};
    struct alink_attach a = {.session_id = "sess-1", .env = env, .n_env = 2};
    (void)state;

    hh_start(&h);
    /* A shell already running (a warm clone's): attach reaches it too. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $RANDOM > /dev/null\"}", false, "(no output)");
    snprintf(wd, sizeof(wd), "%s/session-wd", h.dir);
    a.workdir = wd;
    memset(&r, 0, sizeof(r));
    assert_true(alink_client_attach(h.c, &a, hh_result_cb, &r, &err) > 0);
    hh_wait(&h, &r);
    assert_int_equal(r.status, 0);
    assert_false(r.is_error);
    assert_string_equal(r.text, "attached sess-1");
    hres_free(&r);
    hh_call(&h, "bash", "{\"command\":\"echo \\\"$WP_A|$WP_QUOTE\\\"; pwd\"}", &r);
    snprintf(want, sizeof(want), "one two|it's\n");
    assert_true(strncmp(r.text, want, strlen(want)) == 0);
    assert_non_null(strstr(r.text, "/session-wd"));
    hres_free(&r);
    /* File tools now resolve against the new workdir. */
    EXPECT_CALL(&h, "write", "{\"file_path\":\"n.txt\",\"content\":\"x\"}", false,
                "wrote 1 bytes to n.txt");
    snprintf(want, sizeof(want), "%s/n.txt", wd);
    assert_int_equal(access(want, F_OK), 0);
    /* A fresh shell (after restart) inherits the settings as well. */
    EXPECT_CALL(&h, "bash", "{\"restart\":true}", false, "bash session restarted");
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $WP_A\"}", false, "one two");
    /* A reconnect sees which session the sandbox holds. */
    alink_client_close(h.c);
    int fd = raw_connect(h.sock);
    raw_frame(fd, "{\"t\":\"hello\",\"v\":1}");
    json_t *j = raw_recv(fd);
    assert_string_equal(json_string_value(json_object_get(j, "session")), "sess-1");
    json_decref(j);
    /* Bad attach input is an error result, not a dropped link. */
    raw_frame(fd, "{\"t\":\"attach\",\"id\":3,\"session\":\"s\",\"seed\":\"zz\"}");
    expect_result(fd, 3, "attach: seed is not hex");
    /* A call behind a failed attach (a host pipelines its first call) is
     * not run on this connection until an attach succeeds. */
    raw_frame(fd, "{\"t\":\"call\",\"id\":5,\"tool\":\"bash\",\"input\":{\"command\":\"echo ran\"}}");
    expect_result(fd, 5, "Error: not run: this connection's attach failed");
    raw_frame(fd, "{\"t\":\"attach\",\"id\":6,\"session\":\"s2\"}");
    expect_result(fd, 6, "attached s2");
    raw_frame(fd, "{\"t\":\"call\",\"id\":7,\"tool\":\"bash\",\"input\":{\"command\":\"echo ran\"}}");
    expect_result(fd, 7, "ran");
    raw_frame(fd, "{\"t\":\"attach\",\"id\":4,\"session\":\"s\",\"env\":{\"A=B\":\"x\"}}");
    expect_type(fd, "error", "bad_message");
    close(fd);
    hh_stop(&h);
}

/* Hostname is applied only where the hands own a UTS namespace (PID 1 or
 * --allow-hostname); here we make one for the child when we are root. */
static void attach_hostname_in_uts_ns(void **state)
{
    struct hh h;
    struct hres r;
    struct wp_err err;
    struct alink_attach a = {.session_id = "s-host", .hostname = "wp-clone-7"};
    const char *args[] = {"--allow-hostname", NULL};
    (void)state;

    if (geteuid() != 0 || unshare(CLONE_NEWUTS) < 0) {
        skip();
        return;
    }
    /* This test process now has its own UTS namespace; the hands child
     * inherits it, so the host's name is never touched. */
    hh_start_args(&h, args);
    hh_connect(&h);
    memset(&r, 0, sizeof(r));
    assert_true(alink_client_attach(h.c, &a, hh_result_cb, &r, &err) > 0);
    hh_wait(&h, &r);
    assert_false(r.is_error);
    hres_free(&r);
    EXPECT_CALL(&h, "bash", "{\"command\":\"hostname\"}", false, "wp-clone-7");
    hh_stop(&h);
}

/* The hands as PID 1 of a PID + UTS + mount namespace, as a sandbox boots
 * them (needs root and util-linux unshare). */
static void hands_as_pid1(void **state)
{
    static const char *const prefix[] = {"unshare", "--pid", "--uts", "--mount-proc",
                                         "--kill-child=SIGKILL", NULL};
    struct hh h;
    struct hres r;
    struct wp_err err;
    struct alink_attach a = {.session_id = "s-pid1", .hostname = "wp-pid1"};
    (void)state;

    if (geteuid() != 0 || access("/usr/bin/unshare", X_OK) != 0) {
        skip();
        return;
    }
    hh_start_wrapped(&h, prefix, NULL);
    hh_connect(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"cat /proc/1/comm\"}", false, "warmpool-hands");
    /* Hostname is allowed by default as PID 1 (its own UTS namespace). */
    memset(&r, 0, sizeof(r));
    assert_true(alink_client_attach(h.c, &a, hh_result_cb, &r, &err) > 0);
    hh_wait(&h, &r);
    assert_false(r.is_error);
    hres_free(&r);
    EXPECT_CALL(&h, "bash", "{\"command\":\"hostname; echo $HOSTNAME\"}", false,
                "wp-pid1\nwp-pid1");
    /* An agent cannot take the hands down with SIGTERM/SIGINT to PID 1. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"kill -TERM 1; kill -INT 1; sleep 0.1; echo survived\"}",
                false, "survived");
    /* Orphans are reaped by PID 1: no zombie in the namespace. */
    EXPECT_CALL(&h, "bash",
                "{\"command\":\"(sleep 0.05 &); (true &); sleep 0.3; "
                "grep -h ') Z ' /proc/[0-9]*/stat | wc -l\"}",
                false, "0");
    /* A timeout leaves nothing behind inside the namespace either. */
    hh_call_start(&h, "bash",
                  "{\"command\":\"sleep 7777.5 & (setsid sleep 7777.6 &); sleep 7777.7\","
                  "\"timeout_ms\":200}",
                  0, false, &r);
    hh_wait(&h, &r);
    assert_string_equal(r.text, "bash: bash command timed out after 200ms");
    hres_free(&r);
    for (int i = 0; i < 100 && hh_proc_with("sleep 7777."); i++)
        usleep(20000);
    assert_false(hh_proc_with("sleep 7777."));
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $$ > /dev/null; echo ok\"}", false, "ok");
    /* hh_stop sends SIGTERM to unshare, whose death SIGKILLs the hands. */
    hh_stop(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(frames_bad_and_survive),
        HH_TEST(several_in_flight),
        HH_TEST(cancel_kills),
        HH_TEST(client_timeout),
        HH_TEST(no_inherited_fds_and_ready_fd),
        HH_TEST(reconnect_keeps_shell_state),
        HH_TEST(dead_hands_detected),
        HH_TEST(free_inside_callback),
        HH_TEST(attach_applies),
        HH_TEST(shell_ready_before_first_call),
        HH_TEST(shell_broken_still_ready),
        HH_TEST(hands_as_pid1),
        HH_TEST(attach_hostname_in_uts_ns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
