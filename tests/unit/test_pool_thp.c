/* test_pool_thp.c - the node's THP handling (pool/thp.c) against a file of
 * its own standing in for /sys/kernel/mm/transparent_hugepage/enabled, and
 * the refill choice it drives. The host's real setting is left alone here;
 * test_pool's thp_always_refills_eagerly_with_huge_pages uses it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"
#include "pool/pool.h"
#include "pool/pool_int.h"

struct fix {
    char dir[64], sys[96], saved[96];
};

static int setup(void **state)
{
    struct fix *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/wp-thp-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->sys, sizeof(f->sys), "%s/enabled", f->dir);
    snprintf(f->saved, sizeof(f->saved), "%s/thp-saved", f->dir);
    pool__thp_set_path(f->sys);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fix *f = *state;
    unlink(f->sys);
    unlink(f->saved);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* The kernel's file marks the mode in brackets; the file we write holds a
 * bare word, as the kernel takes it. */
static void put(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static char *get(const char *path)
{
    char *text = NULL;
    if (wp_read_file(path, 256, &text, NULL, NULL) < 0)
        return NULL;
    return text;
}

static void parse_takes_the_bracketed_word(void **state)
{
    (void)state;
    assert_int_equal(pool__thp_parse("always [madvise] never\n"), POOL_THP_MADVISE);
    assert_int_equal(pool__thp_parse("[always] madvise never\n"), POOL_THP_ALWAYS);
    assert_int_equal(pool__thp_parse("always madvise [never]\n"), POOL_THP_NEVER);
    assert_int_equal(pool__thp_parse("always madvise never\n"), POOL_THP_UNKNOWN);
    assert_int_equal(pool__thp_parse("[sometimes]"), POOL_THP_UNKNOWN);
    assert_int_equal(pool__thp_parse("[always"), POOL_THP_UNKNOWN);
    assert_int_equal(pool__thp_parse(""), POOL_THP_UNKNOWN);
    assert_int_equal(pool__thp_parse(NULL), POOL_THP_UNKNOWN);
    assert_string_equal(pool__thp_name(POOL_THP_ALWAYS), "always");
    assert_string_equal(pool__thp_name((enum pool__thp)42), "unknown");
}

static void enable_saves_and_recover_puts_back(void **state)
{
    struct fix *f = *state;
    struct wp_err err;

    put(f->sys, "always [madvise] never\n");
    assert_int_equal(pool__thp_mode(), POOL_THP_MADVISE);
    assert_int_equal(pool__thp_enable(f->dir, &err), 1);
    char *t = get(f->sys);
    assert_string_equal(t, "always\n");
    free(t);
    t = get(f->saved);
    assert_string_equal(t, "madvise");
    free(t);
    /* A node killed here leaves the file; the next start puts it back. */
    assert_int_equal(pool__thp_recover(f->dir), 1);
    t = get(f->sys);
    assert_string_equal(t, "madvise\n");
    free(t);
    assert_int_not_equal(access(f->saved, F_OK), 0);
    assert_int_equal(pool__thp_recover(f->dir), 0); /* nothing left to put back */
}

static void already_always_changes_nothing(void **state)
{
    struct fix *f = *state;
    struct wp_err err;

    put(f->sys, "[always] madvise never\n");
    assert_int_equal(pool__thp_enable(f->dir, &err), 0);
    assert_int_not_equal(access(f->saved, F_OK), 0);
    char *t = get(f->sys);
    assert_string_equal(t, "[always] madvise never\n");
    free(t);
}

static void no_thp_is_a_config_error(void **state)
{
    struct fix *f = *state;
    struct wp_err err;

    unlink(f->sys);
    assert_int_equal(pool__thp_mode(), POOL_THP_UNKNOWN);
    assert_int_equal(pool__thp_enable(f->dir, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "not readable"));
    assert_int_not_equal(access(f->saved, F_OK), 0);
}

static void malformed_saved_file_is_dropped(void **state)
{
    struct fix *f = *state;

    put(f->sys, "always [madvise] never\n");
    put(f->saved, "bogus; rm -rf /\n");
    assert_int_equal(pool__thp_recover(f->dir), 0);
    char *t = get(f->sys);
    assert_string_equal(t, "always [madvise] never\n"); /* untouched */
    free(t);
    assert_int_not_equal(access(f->saved, F_OK), 0);
}

static int parse_node(int argc, const char **argv, struct pool_node_config *cfg,
                      struct wp_err *err)
{
    return pool_node_config_parse(cfg, argc, (char **)argv, err);
}

static void config_refill_and_thp(void **state)
{
    struct pool_node_config cfg;
    struct wp_err err;
    (void)state;

    const char *dflt[] = { "node", "--id", "n1" };
    assert_int_equal(parse_node(3, dflt, &cfg, &err), 0);
    assert_int_equal(cfg.refill, POOL_REFILL_AUTO);
    assert_false(cfg.thp_always);

    const char *set[] = { "node", "--refill", "lazy", "--thp", "always" };
    assert_int_equal(parse_node(5, set, &cfg, &err), 0);
    assert_int_equal(cfg.refill, POOL_REFILL_LAZY);
    assert_true(cfg.thp_always);

    const char *eager[] = { "node", "--eager" };
    assert_int_equal(parse_node(2, eager, &cfg, &err), 0);
    assert_int_equal(cfg.refill, POOL_REFILL_EAGER);

    const char *bad1[] = { "node", "--refill", "sometimes" };
    assert_int_equal(parse_node(3, bad1, &cfg, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "auto, eager or lazy"));
    const char *bad2[] = { "node", "--thp", "never" };
    assert_int_equal(parse_node(3, bad2, &cfg, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "always or leave"));

    /* Warm-up calls in new hot clones (node_warm.c): on unless told. */
    assert_int_equal(parse_node(3, dflt, &cfg, &err), 0);
    assert_false(cfg.warm_off);
    const char *off[] = { "node", "--warm-clones", "off" };
    assert_int_equal(parse_node(3, off, &cfg, &err), 0);
    assert_true(cfg.warm_off);
    const char *on[] = { "node", "--warm-clones", "on" };
    assert_int_equal(parse_node(3, on, &cfg, &err), 0);
    assert_false(cfg.warm_off);
    const char *bad3[] = { "node", "--warm-clones", "often" };
    assert_int_equal(parse_node(3, bad3, &cfg, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "on or off"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_takes_the_bracketed_word),
        cmocka_unit_test_setup_teardown(enable_saves_and_recover_puts_back, setup, teardown),
        cmocka_unit_test_setup_teardown(already_always_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(no_thp_is_a_config_error, setup, teardown),
        cmocka_unit_test_setup_teardown(malformed_saved_file_is_dropped, setup, teardown),
        cmocka_unit_test(config_refill_and_thp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
