/* test_alink_criu.c - warmpool-hands survive a CRIU checkpoint and restore
 * taken with no connection open: the persistent shell keeps its cwd and
 * variables, a background job keeps running, timers work, and the host
 * simply connects anew. The hands run as a plain process tree here (no
 * sandbox namespaces); the same inside a real sandbox is snapshot/'s test.
 * Needs root and a working criu (WARMPOOL_CRIU or WP_PREFIX/bin/criu);
 * skipped otherwise. */
#include "alink_harness.h"

#include <sys/prctl.h>

#include "snapshot/snapshot.h"

static const char *criu_path(void)
{
    const char *p = getenv("WARMPOOL_CRIU");
    return p && *p ? p : WP_PREFIX "/bin/criu";
}

static long count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    long n = 0;
    int ch;

    if (!f)
        return -1;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

/* Reap every child (we are the subreaper of what criu restores) until
 * none is left, so their pids are free for the next restore. */
static void reap_all(void)
{
    int status;

    for (int i = 0; i < 400; i++) {
        pid_t w = waitpid(-1, &status, WNOHANG);
        if (w < 0 && errno == ECHILD)
            return;
        if (w == 0)
            usleep(5000);
    }
}

/* criu as warmpool runs it on this host: in the mode its probe chose
 * (cached), and never without a deadline. */
static const char *criu_mode_env(void)
{
    static const char *env;
    if (!env) {
        struct snap_probe p;
        struct snap_probe_config pc = { .criu_bin = criu_path() };
        env = snap_criu_probe(&pc, &p, NULL) == 0 && p.mode == SNAP_CRIU_NOBP
                  ? "env CRIU_FAULT=130"
                  : "env -u CRIU_FAULT";
    }
    return env;
}

static void criu_run(const char *args, const char *img, const char *logname)
{
    char cmd[4096];

    snprintf(cmd, sizeof(cmd), "%s timeout -k 5 60 %s %s -D %s -o %s -v2 >/dev/null 2>&1",
             criu_mode_env(), criu_path(), args, img, logname);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof(cmd), "grep -E 'Error|Warn' %s/%s | tail -5 >&2", img, logname);
        (void)!system(cmd);
        fail_msg("criu %s failed", args);
    }
}

/* Start the hands detached from us (setsid, stdio to a file) so the whole
 * tree is dumpable. */
static void spawn_dumpable(struct hh *h, const char *tag)
{
    char hands[1024], log[700], img[700];

    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
    memset(h, 0, sizeof(*h));
    h->dir = th_tmpdir(tag);
    assert_non_null(h->dir);
    snprintf(h->sock, sizeof(h->sock), "%s/run/hands.sock", h->dir);
    snprintf(h->work, sizeof(h->work), "%s/work", h->dir);
    snprintf(log, sizeof(log), "%s/hands.log", h->dir);
    snprintf(img, sizeof(img), "%s/img", h->dir);
    assert_int_equal(mkdir(h->work, 0755), 0);
    assert_int_equal(mkdir(img, 0755), 0);
    hh_hands_path(hands, sizeof(hands));
    h->pid = fork();
    assert_true(h->pid >= 0);
    if (h->pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        setsid();
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        execl(hands, hands, "--socket", h->sock, "--workdir", h->work, "--log-level", "info",
              (char *)NULL);
        _exit(127);
    }
    hh_current = h;
    assert_int_equal(hh_wait_socket(h->sock), 0);
    hh_connect(h);
}

static bool can_criu(void)
{
    return geteuid() == 0 && access(criu_path(), X_OK) == 0;
}

static void checkpoint_restore_keeps_shell(void **state)
{
    struct hh h;
    struct hres r;
    char img[700], cmd[4096], bg[700], want[800];
    int status;
    (void)state;

    if (!can_criu()) {
        skip();
        return;
    }
    spawn_dumpable(&h, "alink-criu");
    snprintf(img, sizeof(img), "%s/img", h.dir);
    snprintf(bg, sizeof(bg), "%s/bg.txt", h.dir);
    snprintf(cmd, sizeof(cmd),
             "{\"command\":\"cd %s && export KEPT=yes; "
             "(while :; do echo x >> %s; sleep 0.05; done) >/dev/null 2>&1 &\"}",
             h.dir, bg);
    hh_call(&h, "bash", cmd, &r);
    assert_false(r.is_error);
    hres_free(&r);
    /* The contract: no connection open while the checkpoint is taken. */
    alink_client_close(h.c);

    snprintf(cmd, sizeof(cmd), "dump -t %d", (int)h.pid);
    criu_run(cmd, img, "dump.log");
    /* criu killed the tree; reap it all so every pid is free again. */
    assert_int_equal(waitpid(h.pid, &status, 0), h.pid);
    reap_all();
    long before = count_lines(bg);
    usleep(300000);
    assert_int_equal(count_lines(bg), before); /* frozen: the job is in the image */

    criu_run("restore -d", img, "restore.log");
    assert_int_equal(kill(h.pid, 0), 0); /* same pid, running again */
    /* Nothing to re-create: connect anew, the shell is as it was. */
    hh_connect(&h);
    snprintf(want, sizeof(want), "yes %s", h.dir);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $KEPT $PWD\"}", false, want);
    /* The background job runs on. */
    before = count_lines(bg);
    usleep(300000);
    assert_true(count_lines(bg) > before);
    /* Timers work after the restore. */
    hh_call_start(&h, "bash", "{\"command\":\"sleep 5\"}", 200, false, &r);
    hh_wait(&h, &r);
    assert_string_equal(r.text, "bash: bash command timed out after 200ms");
    hres_free(&r);
    /* The timeout killed the old shell's tree, the job included. */
    usleep(100000);
    before = count_lines(bg);
    usleep(300000);
    assert_int_equal(count_lines(bg), before);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo fresh\"}", false, "fresh");
    hh_stop(&h);
}


static void attach_env(struct hh *h, const char *session, const char *val, const uint8_t *seed)
{
    struct alink_env_var env[] = {{"CLONE_VAR", val}};
    struct alink_attach a = {.session_id = session, .env = env, .n_env = 1, .seed = seed,
                             .seed_len = seed ? 16 : 0};
    struct wp_err err;
    struct hres r;

    memset(&r, 0, sizeof(r));
    assert_true(alink_client_attach(h->c, &a, hh_result_cb, &r, &err) > 0);
    hh_wait(h, &r);
    assert_false(r.is_error);
    hres_free(&r);
}

/* Restore a clone of img, connect, optionally attach, read two $RANDOMs
 * and CLONE_VAR into out, then end the clone. */
static void run_clone(struct hh *h, const char *img, const char *val, const uint8_t *seed,
                      char *out, size_t cap)
{
    struct hres r;
    int status;

    criu_run("restore -d", img, "restore.log");
    hh_connect(h);
    if (val)
        attach_env(h, val, val, seed);
    hh_call(h, "bash", "{\"command\":\"echo $RANDOM $RANDOM ${CLONE_VAR:-none} $TEMPLATE\"}", &r);
    assert_false(r.is_error);
    snprintf(out, cap, "%s", r.text);
    hres_free(&r);
    alink_client_close(h->c);
    kill(h->pid, SIGTERM); /* the hands end their shell tree */
    waitpid(h->pid, &status, 0);
    reap_all();
}

static void clones_of_one_image_attach_apart(void **state)
{
    struct hh h;
    char img[700], cmd[800], a[128], b[128], c[128], d[128];
    const uint8_t seed_a[16] = {1, 2, 3}, seed_b[16] = {9, 8, 7};
    int status;
    (void)state;

    if (!can_criu()) {
        skip();
        return;
    }
    spawn_dumpable(&h, "alink-clones");
    snprintf(img, sizeof(img), "%s/img", h.dir);
    /* A warm template: the shell is already running. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"export TEMPLATE=t\"}", false, "(no output)");
    alink_client_close(h.c);
    snprintf(cmd, sizeof(cmd), "dump -t %d", (int)h.pid);
    criu_run(cmd, img, "dump.log");
    assert_int_equal(waitpid(h.pid, &status, 0), h.pid);
    reap_all();
    /* Without attach two clones are the same machine, randomness included. */
    run_clone(&h, img, NULL, NULL, a, sizeof(a));
    run_clone(&h, img, NULL, NULL, b, sizeof(b));
    assert_string_equal(a, b);
    assert_non_null(strstr(a, " none t"));
    /* attach: each sees its own variable and its own randomness. */
    run_clone(&h, img, "alpha", seed_a, c, sizeof(c));
    run_clone(&h, img, "beta", seed_b, d, sizeof(d));
    printf("# clones: no attach [%s] [%s]; attached [%s] [%s]\n", a, b, c, d);
    assert_non_null(strstr(c, " alpha t"));
    assert_non_null(strstr(d, " beta t"));
    assert_null(strstr(c, "beta"));
    assert_string_not_equal(c, d);
    assert_string_not_equal(c, a);
    hh_current = NULL;
    alink_client_free(h.c);
    ev_loop_destroy(h.loop);
    th_rmtree(h.dir);
    free(h.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(checkpoint_restore_keeps_shell),
        HH_TEST(clones_of_one_image_attach_apart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
