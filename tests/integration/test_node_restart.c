/* test_node_restart.c - a node that crashed starts clean (issue 19).
 *
 * A node killed with SIGKILL whose parent does not reap it (the node stays
 * a zombie, as under a PID 1 that reaps late or a parent that never does),
 * restarted at once with the same state dir: nothing of the dead run is
 * left after start-up (no process, mount, cgroup, sandbox dir), and what a
 * check could not remove is in the node's hash and `warmpool pool status`
 * with the reason. A node restarted after 1000 inbox entries reads none of
 * them again, and its inbox is trimmed.
 *
 * The test binary is a child subreaper that reaps what reparents to it:
 * the role the operator docs give the node's supervisor (systemd, or an
 * init such as tini in a container). */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"

#define ENV "crash"
#define NODE "crashnode"

static struct th_redis R;
static redisContext *RC;
static char *DIR_;
static char TMPL[1024], STATE[1200], SPEC[1200];
static pid_t KEEPER;  /* the node's parent that does not reap it */
static int KEEPER_GO; /* closing it lets the keeper reap and exit */
static pid_t NODE_PID; /* a node started by the test itself */

/* Reap whatever reparented to us (the dead node's sandbox inits, once its
 * restarted run killed them), but not the keeper before we say so. */
static void reap_orphans(void)
{
    for (;;) {
        siginfo_t si = { 0 };
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
            return;
        if (si.si_pid == KEEPER || si.si_pid == NODE_PID || si.si_pid == R.pid)
            return; /* ours to wait for by pid */
        waitpid(si.si_pid, NULL, 0);
    }
}

static void msleep_reaping(int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        reap_orphans();
        th_msleep(10);
    }
}

static long long rint_cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(RC, fmt, ap);
    va_end(ap);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static void rstr_cmd(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(RC, fmt, ap);
    va_end(ap);
    snprintf(out, cap, "%s", r && r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static void node_log(int run, char *out, size_t cap)
{
    snprintf(out, cap, "%s/node-run%d.log", DIR_, run);
}

/* Lines of a run's log holding needle. */
static int log_count(int run, const char *needle)
{
    char log[1200], out[64];
    node_log(run, log, sizeof(log));
    th_sh(out, sizeof(out), "grep -c -- '%s' '%s' || true", needle, log);
    return atoi(out);
}

static bool wait_log(int run, const char *needle, int n, int seconds)
{
    for (int i = 0; i < seconds * 10; i++) {
        if (log_count(run, needle) >= n)
            return true;
        msleep_reaping(100);
    }
    return false;
}

static pid_t node_start(int run)
{
    char log[1200];
    node_log(run, log, sizeof(log));
    return th_node_start(NODE, R.port, STATE, log, "--env", SPEC, "--heartbeat-ttl", "1",
                         "--log-level", "info", (char *)NULL);
}

/* The node as the child of a keeper process that does not reap it until
 * KEEPER_GO is closed. Returns the node's pid. */
static pid_t node_start_kept(int run)
{
    int pfd[2], go[2];
    pid_t node = 0;

    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(pipe(go), 0);
    KEEPER = fork();
    assert_true(KEEPER >= 0);
    if (KEEPER == 0) {
        char c;
        close(pfd[0]);
        close(go[1]);
        node = node_start(run);
        if (write(pfd[1], &node, sizeof(node)) < 0)
            _exit(1);
        while (read(go[0], &c, 1) < 0 && errno == EINTR)
            ;
        waitpid(node, NULL, 0);
        _exit(0);
    }
    close(pfd[1]);
    close(go[0]);
    assert_int_equal(read(pfd[0], &node, sizeof(node)), (ssize_t)sizeof(node));
    close(pfd[0]);
    KEEPER_GO = go[1];
    return node;
}

static void keeper_release(void)
{
    if (KEEPER <= 0)
        return;
    close(KEEPER_GO);
    waitpid(KEEPER, NULL, 0);
    KEEPER = 0;
}

static void node_stop(int sig)
{
    if (NODE_PID <= 0)
        return;
    kill(NODE_PID, sig);
    waitpid(NODE_PID, NULL, 0);
    NODE_PID = 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0 || th_redis_start(&R, 0) < 0)
        return -1;
    RC = redisConnect("127.0.0.1", R.port);
    if (!RC || RC->err)
        return -1;
    DIR_ = th_tmpdir("restart");
    if (!DIR_ || th_hands_template(DIR_, ENV, NULL, TMPL, sizeof(TMPL)) < 0)
        return -1;
    snprintf(STATE, sizeof(STATE), "%s/state", DIR_);
    snprintf(SPEC, sizeof(SPEC), "%s:3:3", TMPL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    node_stop(SIGTERM);
    keeper_release();
    msleep_reaping(200);
    if (RC)
        redisFree(RC);
    th_redis_stop(&R);
    char out[64];
    th_sh(out, sizeof(out), "mount | grep -c '%s/' || true", DIR_);
    int mounts = atoi(out);
    if (mounts)
        fprintf(stderr, "leak: %d mounts under %s\n", mounts, DIR_);
    th_rmtree(DIR_);
    free(DIR_);
    return mounts ? -1 : 0;
}

/* Start time of a process (field 22 of /proc/<pid>/stat), as gc reads it. */
static unsigned long long start_time(pid_t pid)
{
    char path[64], *text = NULL, *p;
    unsigned long long t = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (wp_read_file(path, 4096, &text, NULL, NULL) < 0)
        return 0;
    p = strrchr(text, ')');
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
                           "%*d %*d %llu", &t) != 1)
        t = 0;
    free(text);
    return t;
}

static void crashed_node_unreaped_leaves_nothing(void **state)
{
    char ids[3][64], path[1400], out[4096], fake[1300];
    pid_t inits[3] = { 0 };
    struct th_snap snap = { .state = STATE };
    (void)state;

    pid_t dead = node_start_kept(1);
    /* Built, then three hot clones. */
    for (int i = 0; i < 1200 && rint_cmd("LLEN wp:env:{" ENV "}:hot") < 3; i++)
        msleep_reaping(100);
    assert_int_equal(rint_cmd("LLEN wp:env:{" ENV "}:hot"), 3);
    redisReply *r = redisCommand(RC, "LRANGE wp:env:{" ENV "}:hot 0 -1");
    assert_true(r && r->type == REDIS_REPLY_ARRAY && r->elements == 3);
    for (int i = 0; i < 3; i++) {
        char *text = NULL;
        snprintf(ids[i], sizeof(ids[i]), "%s", r->element[i]->str);
        snprintf(path, sizeof(path), "%s/sandboxes/%s/init.pid", STATE, ids[i]);
        assert_int_equal(wp_read_file(path, 64, &text, NULL, NULL), 0);
        inits[i] = atoi(text);
        free(text);
        assert_true(inits[i] > 0 && kill(inits[i], 0) == 0);
    }
    freeReplyObject(r);

    /* A sandbox record of a live process that is not the node (as a CLI
     * sharing the state dir would leave): not removed, reported. */
    snprintf(fake, sizeof(fake), "%s/sandboxes/foreign-1", STATE);
    assert_int_equal(mkdir(fake, 0700), 0);
    snprintf(path, sizeof(path), "%s/meta.json", fake);
    snprintf(out, sizeof(out),
             "{\"id\":\"foreign-1\",\"kind\":\"boot\",\"image\":\"\",\"owner_pid\":%d,"
             "\"owner_start\":%llu,\"created_ms\":1,\"root\":\"%s/root\"}",
             (int)getpid(), start_time(getpid()), fake);
    assert_int_equal(wp_write_file(path, out, strlen(out), 0600, NULL), 0);

    /* SIGKILL; its parent does not reap it: a zombie. */
    assert_int_equal(kill(dead, SIGKILL), 0);
    for (int i = 0; i < 100; i++) {
        th_sh(out, sizeof(out), "ps -o stat= -p %d", (int)dead);
        if (out[0] == 'Z')
            break;
        th_msleep(10);
    }
    assert_int_equal(out[0], 'Z');

    /* Restarted at once with the same state dir. */
    NODE_PID = node_start(2);
    assert_true(NODE_PID > 0);
    assert_true(wait_log(2, "registered node=", 1, 30));
    if (log_count(2, "removed 3 sandboxes left by an earlier run") != 1) {
        char log[1200];
        node_log(2, log, sizeof(log));
        th_sh(out, sizeof(out), "grep -E 'removed|orphan|left by' %s | head -20; ls %s/sandboxes",
              log, STATE);
        fail_msg("the restarted node did not remove the 3 hot clones of the dead run:\n%s", out);
    }
    for (int i = 0; i < 3; i++) {
        bool gone = false;
        for (int t = 0; t < 100 && !gone; t++) {
            msleep_reaping(50);
            gone = th_sandbox_gone(&snap, ids[i], inits[i]);
        }
        assert_true(gone);
    }
    /* Still a zombie the whole time. */
    th_sh(out, sizeof(out), "ps -o stat= -p %d", (int)dead);
    assert_int_equal(out[0], 'Z');

    /* The foreign record: kept, in the node's hash and pool status. */
    for (int i = 0; i < 50 && rint_cmd("HEXISTS wp:node:" NODE " orphans_why") != 1; i++)
        msleep_reaping(100);
    rstr_cmd(out, sizeof(out), "HGET wp:node:" NODE " orphans");
    assert_string_equal(out, "1");
    rstr_cmd(out, sizeof(out), "HGET wp:node:" NODE " orphans_why");
    assert_non_null(strstr(out, "foreign-1: its owner pid"));
    assert_non_null(strstr(out, "is still running"));
    char cmdline[1600];
    snprintf(cmdline, sizeof(cmdline), "%s/warmpool --redis 127.0.0.1:%d pool status 2>&1",
             th_build_dir(), R.port);
    th_sh(out, sizeof(out), "%s", cmdline);
    assert_non_null(strstr(out, "1 sandbox of dead owners not cleaned"));
    assert_non_null(strstr(out, "foreign-1: its owner pid"));
    /* Gone from the report once gone from the disk (the re-checks). */
    th_rmtree(fake);
    bool cleared = false;
    for (int i = 0; i < 150 && !cleared; i++) {
        msleep_reaping(100);
        rstr_cmd(out, sizeof(out), "HGET wp:node:" NODE " orphans");
        cleared = strcmp(out, "0") == 0;
    }
    /* The re-checks run at 1, 2, 4 and 8 s; the last one sees it gone. */
    assert_true(cleared);
    keeper_release();
    /* The restarted node serves: three new hot clones. */
    for (int i = 0; i < 600 && rint_cmd("LLEN wp:env:{" ENV "}:hot") < 3; i++)
        msleep_reaping(100);
    assert_int_equal(rint_cmd("LLEN wp:env:{" ENV "}:hot"), 3);
}

/* XADD n "claimed" notes naming sandboxes the node does not have. Returns
 * the last id in last. */
static void add_claimed(int n, const char *tag, char *last, size_t cap)
{
    for (int i = 0; i < n; i++)
        redisAppendCommand(RC, "XADD wp:env:{" ENV "}:inbox:" NODE " MAXLEN ~ 10000 * type claimed "
                               "sandbox %s-%d token %d session s",
                           tag, i, i + 1);
    for (int i = 0; i < n; i++) {
        redisReply *r = NULL;
        assert_int_equal(redisGetReply(RC, (void **)&r), REDIS_OK);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        snprintf(last, cap, "%s", r->str);
        freeReplyObject(r);
    }
}

static void restart_reads_no_old_claim(void **state)
{
    char last[64], seen[64] = "";
    (void)state;

    if (NODE_PID <= 0) {
        NODE_PID = node_start(2);
        assert_true(wait_log(2, "registered node=", 1, 120));
    }
    /* Old history first: notes from 5 minutes ago that no one can need
     * (the trim removes them). */
    unsigned long long old = wp_wall_ms() - 300000;
    freeReplyObject(redisCommand(RC, "DEL wp:env:{" ENV "}:inbox:" NODE));
    for (int i = 1; i <= 5; i++)
        freeReplyObject(redisCommand(RC, "XADD wp:env:{" ENV "}:inbox:" NODE " %llu-%d type claimed "
                                         "sandbox ancient-%d token 1",
                                     old, i, i));
    int before = log_count(2, "is not an idle clone here");
    add_claimed(1000, "gone", last, sizeof(last));
    assert_true(wait_log(2, "is not an idle clone here", before + 1000, 60));
    assert_int_equal(log_count(2, "sandbox=ancient-"), 0);
    /* The position is written back within a tick of handling. */
    for (int i = 0; i < 50 && strcmp(seen, last) != 0; i++) {
        th_msleep(50);
        rstr_cmd(seen, sizeof(seen), "GET wp:env:{" ENV "}:seen:" NODE);
    }
    assert_string_equal(seen, last);
    /* Crash and restart at once: none of the 1000 is read again. */
    node_stop(SIGKILL);
    NODE_PID = node_start(3);
    assert_true(wait_log(3, "inbox env=" ENV " reading after", 1, 30));
    add_claimed(1, "fresh", last, sizeof(last));
    assert_true(wait_log(3, "claimed sandbox=fresh-0 is not an idle clone here", 1, 10));
    msleep_reaping(500);
    assert_int_equal(log_count(3, "is not an idle clone here"), 1);
    /* Trimmed: what is older than any claim's life goes (every 10 s). */
    bool trimmed = false;
    for (int i = 0; i < 150 && !trimmed; i++) {
        msleep_reaping(100);
        trimmed = rint_cmd("XLEN wp:env:{" ENV "}:inbox:" NODE) == 1001;
    }
    assert_true(trimmed);
    node_stop(SIGTERM);
    /* A saved position that is garbage, or not even a string: the node
     * says so and reads the last 30 s rather than nothing. */
    freeReplyObject(redisCommand(RC, "SET wp:env:{" ENV "}:seen:" NODE " 12abc"));
    NODE_PID = node_start(4);
    assert_true(wait_log(4, "inbox env=" ENV " reading after", 1, 30));
    assert_int_equal(log_count(4, "bad saved position"), 1);
    node_stop(SIGTERM);
    freeReplyObject(redisCommand(RC, "DEL wp:env:{" ENV "}:seen:" NODE));
    freeReplyObject(redisCommand(RC, "HSET wp:env:{" ENV "}:seen:" NODE " a b"));
    NODE_PID = node_start(5);
    assert_true(wait_log(5, "inbox env=" ENV " reading after", 1, 30));
    assert_int_equal(log_count(5, "saved position unreadable"), 1);
    node_stop(SIGTERM);
}

/* An image an older build made without a user namespace (as every image
 * was before issue 14) is on disk under the name this node will look for:
 * the node sets it aside and builds anew instead of failing restores, and
 * its clones run in a user namespace. */
static void image_without_userns_is_rebuilt(void **state)
{
    char state_dir[1300], log[1300], img[128], *json = NULL, man[1500], *mtext = NULL;
    struct snap_config cfg = { .insecure_allow_unconfined = true, .no_userns = true };
    struct snap_template *t = NULL;
    struct snap_sandbox *sb = NULL;
    struct snap_ctx *ctx = NULL;
    struct wp_err err;
    (void)state;

    snprintf(state_dir, sizeof(state_dir), "%s/state-old", DIR_);
    assert_int_equal(wp_read_file(TMPL, 1 << 20, &json, NULL, NULL), 0);
    assert_int_equal(snap_template_parse(json, strlen(json), &t, &err), 0);
    free(json);
    snprintf(img, sizeof(img), "%.40s-%.12s", ENV, t->digest);
    cfg.state_dir = state_dir;
    if (snap_ctx_open(&cfg, &ctx, &err) < 0 || snap_boot(ctx, t, NULL, NULL, NULL, &sb, &err) < 0 ||
        snap_checkpoint(ctx, sb, t, img, 0, NULL, &err) < 0)
        fail_msg("old image: %s", err.msg);
    snap_ctx_close(ctx);
    snap_template_free(t);

    snprintf(log, sizeof(log), "%s/node-old.log", DIR_);
    NODE_PID = th_node_start(NODE, R.port, state_dir, log, "--env", SPEC, "--heartbeat-ttl", "1",
                             "--log-level", "info", (char *)NULL);
    assert_true(NODE_PID > 0);
    /* Set aside at start-up, built again, served. */
    bool rebuilt = false;
    snprintf(man, sizeof(man), "%s/images/%s/manifest.json", state_dir, img);
    for (int i = 0; i < 1200 && !rebuilt; i++) {
        msleep_reaping(100);
        free(mtext);
        mtext = NULL;
        rebuilt = wp_read_file(man, 1 << 20, &mtext, NULL, NULL) == 0 && strstr(mtext, "userns_base");
    }
    free(mtext);
    char out[4096];
    th_sh(out, sizeof(out), "grep -c 'not usable' %s || true", log);
    if (!rebuilt || atoi(out) != 1) {
        th_sh(out, sizeof(out), "tail -20 %s", log);
        fail_msg("not rebuilt (or not said once): %s", out);
    }
    th_sh(out, sizeof(out), "ls -d %s/images/%s.stale-* | wc -l", state_dir, img);
    assert_int_equal(atoi(out), 1);
    node_stop(SIGTERM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crashed_node_unreaped_leaves_nothing),
        cmocka_unit_test(restart_reads_no_old_claim),
        cmocka_unit_test(image_without_userns_is_rebuilt),
    };
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    if (getenv("WP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("WP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
