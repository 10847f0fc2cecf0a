/* test_alink_criu.c - warmpool-hands survive a CRIU checkpoint and restore
 * taken with no connection open: the persistent shell keeps its cwd and
 * variables, a background job keeps running, timers work, and the host
 * simply connects anew. The hands run as a plain process tree here (no
 * sandbox namespaces); the same inside a real sandbox is snapshot/'s test.
 * Needs root and a working criu (WARMPOOL_CRIU or WP_PREFIX/bin/criu);
 * skipped otherwise. */
#include "alink_harness.h"

#include <sys/prctl.h>

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

static void checkpoint_restore_keeps_shell(void **state)
{
    struct hh h;
    struct hres r;
    char hands[1024], log[700], img[700], cmd[4096], bg[700], want[800];
    int status;
    (void)state;

    if (geteuid() != 0 || access(criu_path(), X_OK) != 0) {
        skip();
        return;
    }
    /* Restored trees are reparented to us once criu detaches. */
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
    memset(&h, 0, sizeof(h));
    h.dir = th_tmpdir("alink-criu");
    assert_non_null(h.dir);
    snprintf(h.sock, sizeof(h.sock), "%s/run/hands.sock", h.dir);
    snprintf(h.work, sizeof(h.work), "%s/work", h.dir);
    snprintf(log, sizeof(log), "%s/hands.log", h.dir);
    snprintf(img, sizeof(img), "%s/img", h.dir);
    snprintf(bg, sizeof(bg), "%s/bg.txt", h.dir);
    assert_int_equal(mkdir(h.work, 0755), 0);
    assert_int_equal(mkdir(img, 0755), 0);
    hh_hands_path(hands, sizeof(hands));
    /* Everything the tree holds must be dumpable: no pipes to us. */
    h.pid = fork();
    assert_true(h.pid >= 0);
    if (h.pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        setsid();
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        execl(hands, hands, "--socket", h.sock, "--workdir", h.work, "--log-level", "info",
              (char *)NULL);
        _exit(127);
    }
    hh_current = &h;
    assert_int_equal(hh_wait_socket(h.sock), 0);
    hh_connect(&h);
    snprintf(cmd, sizeof(cmd),
             "{\"command\":\"cd %s && export KEPT=yes; "
             "(while :; do echo x >> %s; sleep 0.05; done) >/dev/null 2>&1 &\"}",
             h.dir, bg);
    hh_call(&h, "bash", cmd, &r);
    assert_false(r.is_error);
    hres_free(&r);
    /* The contract: no connection open while the checkpoint is taken. */
    alink_client_close(h.c);

    snprintf(cmd, sizeof(cmd), "%s dump -t %d -D %s -o dump.log -v2 >/dev/null 2>&1",
             criu_path(), (int)h.pid, img);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof(cmd), "grep -E 'Error|Warn' %s/dump.log | tail -5 >&2", img);
        (void)!system(cmd);
        fail_msg("criu dump failed");
    }
    /* criu killed the tree; reap it all (we are its subreaper) so every
     * pid is free again for the restore. */
    assert_int_equal(waitpid(h.pid, &status, 0), h.pid);
    for (int i = 0; i < 200; i++) {
        pid_t w = waitpid(-1, &status, WNOHANG);
        if (w < 0 && errno == ECHILD)
            break;
        if (w == 0)
            usleep(5000);
    }
    long before = count_lines(bg);
    usleep(300000);
    assert_int_equal(count_lines(bg), before); /* frozen: the job is in the image */

    snprintf(cmd, sizeof(cmd), "%s restore -D %s -o restore.log -v2 -d >/dev/null 2>&1",
             criu_path(), img);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof(cmd), "grep -E 'Error|Warn' %s/restore.log | tail -5 >&2", img);
        (void)!system(cmd);
        fail_msg("criu restore failed");
    }
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(checkpoint_restore_keeps_shell),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
