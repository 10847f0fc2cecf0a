/* test_clone_private.c - clones of one image are private to each other
 * (issue 20: "a write in one is never seen in another"): two clones made
 * the same way (eager, or lazy as refills are, waiting on the lazy-pages
 * daemon's status fd), a write in the first, then a look from the second
 * and from a third made after the write:
 *   - memory: bytes written into the first clone's PID 1 (a private page
 *     that came from the image) are read back there and nowhere else;
 *   - files: what the first clone's bash writes to /work, /tmp and
 *     /dev/shm is not in the others.
 * A clone made by sharing the image's pages instead of copying them (or
 * from a running template) would have to keep passing this. */
#include "alink_harness.h"
#include "lib/snaplib.h"
#include "base/fs.h"

#include <sys/random.h>

static struct th_snap S;
static const char *IMG = "priv";

static int group_setup(void **state)
{
    char path[1024], *json = NULL;
    size_t len = 0;
    struct snap_template *t;
    struct snap_sandbox *tmpl;
    struct wp_err err;
    (void)state;

    if (th_snap_open(&S) < 0 || th_hands_template(S.state, "priv", NULL, path, sizeof(path)) < 0 ||
        wp_read_file(path, 1 << 16, &json, &len, &err) < 0)
        return -1;
    int rc = snap_template_parse(json, len, &t, &err);
    free(json);
    if (rc < 0 || snap_boot(S.ctx, t, NULL, NULL, NULL, &tmpl, &err) < 0 ||
        snap_checkpoint(S.ctx, tmpl, t, IMG, 0, NULL, &err) < 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    snap_template_free(t);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    th_snap_close(&S);
    return 0;
}

/* The start of pid's first writable private anonymous mapping (heap or
 * anonymous memory the image holds), 0 if none. */
static unsigned long private_rw_addr(pid_t pid)
{
    char path[64], line[512];
    unsigned long start = 0, lo, hi, ino;
    char perms[8];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (!start && fgets(line, sizeof(line), f))
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &ino) == 4 &&
            strcmp(perms, "rw-p") == 0 && ino == 0 && !strstr(line, "[stack]"))
            start = lo;
    fclose(f);
    return start;
}

static void mem_io(pid_t pid, unsigned long addr, char *buf, size_t n, bool write)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
    int fd = open(path, write ? O_RDWR : O_RDONLY);
    assert_true(fd >= 0);
    ssize_t r = write ? pwrite(fd, buf, n, (off_t)addr) : pread(fd, buf, n, (off_t)addr);
    close(fd);
    assert_int_equal(r, (ssize_t)n);
}

static struct snap_sandbox *clone_of(bool lazy)
{
    struct snap_restore_opts ro = { .lazy = lazy };
    struct snap_sandbox *sb;
    struct wp_err err;

    if (snap_restore(S.ctx, IMG, &ro, &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    /* A lazy clone restored eagerly (userfaultfd refused) would prove
     * nothing about lazy clones. */
    if (lazy && sb->lazy_pid <= 0)
        fail_msg("the lazy clone was restored eagerly: is vm.unprivileged_userfaultfd 1?");
    return sb;
}

/* Whether the sandbox's bash sees marker in any of the files. */
static bool files_have(struct snap_sandbox *sb, const char *session, const char *marker)
{
    struct hh h;
    hh_connect_root(&h, sb->root);
    hh_attach(&h, session);
    char *out = hh_bash(&h, "cat /work/p /tmp/p /dev/shm/p 2>/dev/null; echo end-of-files");
    assert_non_null(strstr(out, "end-of-files"));
    bool seen = strstr(out, marker) != NULL;
    free(out);
    hh_stop(&h);
    return seen;
}

static void writes_stay_in_their_clone(bool lazy)
{
    unsigned char rnd[8];
    char marker[64], cmd[256], got[32];
    struct snap_sandbox *a = clone_of(lazy), *b = clone_of(lazy), *c;

    assert_int_equal(getrandom(rnd, sizeof(rnd), 0), (ssize_t)sizeof(rnd));
    snprintf(marker, sizeof(marker), "private-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    size_t n = strlen(marker) < sizeof(got) ? strlen(marker) : sizeof(got);

    /* Memory: one page of the first clone's PID 1, at the same address in
     * every clone of the image. */
    unsigned long addr = private_rw_addr(a->init_pid);
    assert_true(addr != 0);
    assert_int_equal(private_rw_addr(b->init_pid), addr);
    mem_io(a->init_pid, addr, marker, n, true);
    mem_io(a->init_pid, addr, got, n, false);
    assert_memory_equal(got, marker, n);
    mem_io(b->init_pid, addr, got, n, false);
    assert_memory_not_equal(got, marker, n);

    /* Files, written by the first clone's own bash. */
    struct hh h;
    hh_connect_root(&h, a->root);
    hh_attach(&h, "writer");
    snprintf(cmd, sizeof(cmd), "for f in /work/p /tmp/p /dev/shm/p; do echo %s > $f; done; cat /work/p",
             marker);
    char *out = hh_bash(&h, cmd);
    assert_non_null(strstr(out, marker));
    free(out);
    hh_stop(&h);
    assert_true(files_have(a, "writer-again", marker));
    assert_false(files_have(b, "other", marker));

    /* A clone made after the writes: the image itself is untouched. */
    c = clone_of(lazy);
    assert_int_equal(private_rw_addr(c->init_pid), addr);
    mem_io(c->init_pid, addr, got, n, false);
    assert_memory_not_equal(got, marker, n);
    assert_false(files_have(c, "later", marker));
    printf("# %s clones: a write in one (memory at 0x%lx, /work, /tmp, /dev/shm) is not in the "
           "others\n", lazy ? "lazy" : "eager", addr);

    th_destroy_gone(&S, a);
    th_destroy_gone(&S, b);
    th_destroy_gone(&S, c);
}

static void eager_clones_are_private(void **state)
{
    (void)state;
    writes_stay_in_their_clone(false);
}

static void lazy_clones_are_private(void **state)
{
    (void)state;
    writes_stay_in_their_clone(true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(eager_clones_are_private),
        HH_TEST(lazy_clones_are_private),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
