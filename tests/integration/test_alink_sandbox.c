/* test_alink_sandbox.c - the hands as PID 1 of real sandboxes: tools in a
 * booted sandbox, a shell's state across checkpoint and restore, clones
 * attached with different settings. */
#include "alink_harness.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "base/fs.h"

static struct th_snap S;
static struct snap_template *T;
static const char *IMG = "hands";

static int group_setup(void **state)
{
    char dir[1024];
    (void)state;

    if (th_snap_open(&S) < 0)
        return -1;
    /* A host dir holding only the hands binary, bound read-only at /.wp. */
    if (th_hands_copy(S.state, dir, sizeof(dir)) < 0) {
        fprintf(stderr, "setup: cannot copy warmpool-hands into %s\n", S.state);
        return -1;
    }
    T = th_template("{\"name\":\"hands\",\"rootfs\":\"host\",\"workdir\":\"/work\","
                    "\"init_sets_hostname\":true,\"init\":[\"/.wp/warmpool-hands\",\"--socket\",\"/run/warmpool/hands.sock\","
                    "\"--workdir\",\"/work\",\"--ready-file\",\"/run/warmpool/hands.ready\"],"
                    "\"ready_file\":\"/run/warmpool/hands.ready\","
                    "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
                    "\"limits\":{\"memory_mb\":256,\"pids\":128}}",
                    dir);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    snap_template_free(T);
    th_snap_close(&S);
    return 0;
}

/* Point the harness at a sandbox's socket (the harness owns no process). */
static void connect_to(struct hh *h, const struct snap_sandbox *sb)
{
    hh_connect_root(h, sb->root);
}

static void tools_work_in_a_booted_sandbox(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    struct hh h;
    struct hres r;
    (void)state;

    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    connect_to(&h, sb);
    hh_attach_env(&h, "sess-a", "GREETING", "hello");
    /* The hands are PID 1; the shell runs in the sandbox's namespaces. */
    hh_call(&h, "bash", "{\"command\":\"cat /proc/1/comm; hostname; echo $GREETING; pwd\"}", &r);
    assert_false(r.is_error);
    assert_string_equal(r.text, "warmpool-hands\nsess-a\nhello\n/work");
    hres_free(&r);
    EXPECT_CALL(&h, "write", "{\"file_path\":\"/work/a/b.txt\",\"content\":\"one\\ntwo\\n\"}", false,
                "wrote 8 bytes to /work/a/b.txt");
    hh_call(&h, "read", "{\"file_path\":\"/work/a/b.txt\"}", &r);
    assert_false(r.is_error);
    assert_non_null(strstr(r.text, "two"));
    hres_free(&r);
    hh_call(&h, "edit", "{\"file_path\":\"/work/a/b.txt\",\"old_string\":\"two\",\"new_string\":\"2\"}", &r);
    assert_false(r.is_error);
    hres_free(&r);
    hh_call(&h, "grep", "{\"pattern\":\"^2$\",\"path\":\"/work\"}", &r);
    assert_false(r.is_error);
    assert_non_null(strstr(r.text, "b.txt"));
    hres_free(&r);
    hh_call(&h, "glob", "{\"pattern\":\"**/*.txt\",\"path\":\"/work\"}", &r);
    assert_false(r.is_error);
    assert_non_null(strstr(r.text, "/work/a/b.txt"));
    hres_free(&r);
    /* Paths outside the workdir are refused; nothing of the host's /etc is
     * there to read anyway. */
    hh_call(&h, "read", "{\"file_path\":\"/etc/passwd\"}", &r);
    assert_true(r.is_error);
    hres_free(&r);
    /* A write in the sandbox landed in its own layer. */
    char *txt = th_read_in(sb, "/work/a/b.txt");
    assert_string_equal(txt, "one\n2\n");
    free(txt);
    hh_stop(&h);
    th_destroy_gone(&S, sb);
}

static void shell_state_survives_checkpoint_and_restore(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    struct hh h;
    struct hres r;
    (void)state;

    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    connect_to(&h, sb);
    hh_attach_env(&h, "template", NULL, NULL);
    hh_call(&h, "bash", "{\"command\":\"mkdir -p /work/deep; cd /work/deep; export KEPT=yes; "
                        "(sleep 0.3; echo background-finished > /work/bg.txt) &\"}", &r);
    assert_false(r.is_error);
    hres_free(&r);
    /* No connection may be open while the checkpoint is taken. */
    hh_stop(&h);
    if (snap_checkpoint(S.ctx, sb, T, IMG, 0, NULL, &err) < 0)
        fail_msg("checkpoint: %s", err.msg);
    struct snap_restore_opts ro = { .lazy = true };
    if (snap_restore(S.ctx, IMG, &ro, &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    connect_to(&h, sb);
    hh_attach_env(&h, "after-restore", NULL, NULL);
    th_msleep(500);
    hh_call(&h, "bash", "{\"command\":\"pwd; echo $KEPT; cat /work/bg.txt\"}", &r);
    assert_false(r.is_error);
    assert_string_equal(r.text, "/work/deep\nyes\nbackground-finished");
    hres_free(&r);
    hh_stop(&h);
    assert_int_equal(snap_destroy(S.ctx, sb, &err), 0);
}

static void clones_attached_differently_see_only_their_own(void **state)
{
    struct snap_sandbox *sb[2];
    struct wp_err err;
    struct hh h[2];
    struct hres r[2];
    (void)state;

    /* Both alive at once, from the image the previous test made. */
    for (int i = 0; i < 2; i++) {
        struct snap_restore_opts ro = { .lazy = i == 1 };
        if (snap_restore(S.ctx, IMG, &ro, &sb[i], &err) < 0)
            fail_msg("restore: %s", err.msg);
    }
    for (int i = 0; i < 2; i++) {
        char session[32], value[8];
        snprintf(session, sizeof(session), "session-%d", i);
        snprintf(value, sizeof(value), "v%d", i);
        connect_to(&h[i], sb[i]);
        hh_attach_env(&h[i], session, "MINE", value);
    }
    for (int i = 0; i < 2; i++)
        hh_call(&h[i], "bash", "{\"command\":\"echo $MINE $(hostname) $RANDOM$RANDOM; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\\\n'\"}", &r[i]);
    char mine0[64], host0[64], rnd0[64], mine1[64], host1[64], rnd1[64];
    assert_int_equal(sscanf(r[0].text, "%63s %63s %63s", mine0, host0, rnd0), 3);
    assert_int_equal(sscanf(r[1].text, "%63s %63s %63s", mine1, host1, rnd1), 3);
    assert_string_equal(mine0, "v0");
    assert_string_equal(mine1, "v1");
    assert_string_equal(host0, "session-0");
    assert_string_equal(host1, "session-1");
    /* The shells were one process in the image; reseeded, they part. */
    assert_string_not_equal(rnd0, rnd1);
    for (int i = 0; i < 2; i++) {
        hres_free(&r[i]);
        hh_stop(&h[i]);
        assert_int_equal(snap_destroy(S.ctx, sb[i], &err), 0);
    }
}

/* Host pids of the bash processes in a sandbox (up to cap). */
static int shells_in(const struct snap_sandbox *sb, pid_t *out, int cap)
{
    pid_t pids[64];
    struct wp_err err;
    int n = snap_sandbox_pids(S.ctx, sb->id, pids, 64, &err), found = 0;

    assert_true(n >= 0);
    for (int i = 0; i < n && found < cap; i++) {
        char path[64], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/%d/comm", (int)pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f) && strcmp(comm, "bash\n") == 0)
            out[found++] = pids[i];
        fclose(f);
    }
    return found;
}

/* The image of a sandbox nobody has used holds its shell: a clone's first
 * call runs in that restored shell (no shell started), with the clone's own
 * attach settings. */
static void a_clone_holds_its_shell_before_the_first_call(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    struct hh h;
    pid_t sh[4], after[4];
    (void)state;

    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    assert_int_equal(shells_in(sb, sh, 4), 1); /* ready means the shell runs */
    if (snap_checkpoint(S.ctx, sb, T, "hands-fresh", 0, NULL, &err) < 0)
        fail_msg("checkpoint: %s", err.msg);
    for (int lazy = 0; lazy < 2; lazy++) {
        struct snap_restore_opts ro = { .lazy = lazy };
        if (snap_restore(S.ctx, "hands-fresh", &ro, &sb, &err) < 0)
            fail_msg("restore: %s", err.msg);
        assert_int_equal(shells_in(sb, sh, 4), 1);
        connect_to(&h, sb);
        hh_attach_env(&h, "fresh", "MINE", lazy ? "lazy" : "eager");
        EXPECT_CALL(&h, "bash", "{\"command\":\"echo $MINE; pwd\"}", false,
                    lazy ? "lazy\n/work" : "eager\n/work");
        assert_int_equal(shells_in(sb, after, 4), 1);
        assert_int_equal(after[0], sh[0]); /* the same, restored shell */
        hh_stop(&h);
        assert_int_equal(snap_destroy(S.ctx, sb, &err), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(tools_work_in_a_booted_sandbox),
        HH_TEST(shell_state_survives_checkpoint_and_restore),
        HH_TEST(clones_attached_differently_see_only_their_own),
        HH_TEST(a_clone_holds_its_shell_before_the_first_call),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
