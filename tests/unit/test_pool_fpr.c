/* test_pool_fpr.c - the node's free page reporting switch (pool/fpr.c) and
 * the saved-setting helper under it (pool/hostset.c), against files of its
 * own standing in for the kernel's page_reporting_order, the virtio
 * devices and /proc/buddyinfo. The host's real setting is left alone here;
 * test_pool's free_page_reporting_off_keeps_freed_memory uses it. */
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

/* Orders 0 to 10, as x86-64 has them. */
#define BUDDY                                                                         \
    "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n" \
    "Node 0, zone   Normal   5122   3444   3087   2117   1242   1217    742    342    242    184   1457 \n"

struct fix {
    char dir[64], order[96], virtio[96], buddy[96], saved[120];
};

/* Files stand in for the kernel's; what a test reads back it frees. */
static void put(const char *path, const char *text)
{
    assert_int_equal(wp_write_file(path, text, strlen(text), 0644, NULL), 0);
}

static char *get(const char *path)
{
    char *text = NULL;
    return wp_read_file(path, 256, &text, NULL, NULL) < 0 ? NULL : text;
}

/* A virtio device: its id and its features, one '0'/'1' per bit. */
static void device(struct fix *f, const char *name, const char *id, const char *features)
{
    char p[200];
    snprintf(p, sizeof(p), "%s/%s", f->virtio, name);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/%s/device", f->virtio, name);
    put(p, id);
    snprintf(p, sizeof(p), "%s/%s/features", f->virtio, name);
    put(p, features);
}

static int setup(void **state)
{
    struct fix *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/wp-fpr-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->order, sizeof(f->order), "%s/page_reporting_order", f->dir);
    snprintf(f->virtio, sizeof(f->virtio), "%s/virtio", f->dir);
    snprintf(f->buddy, sizeof(f->buddy), "%s/buddyinfo", f->dir);
    snprintf(f->saved, sizeof(f->saved), "%s/page-reporting-saved", f->dir);
    mkdir(f->virtio, 0755);
    put(f->order, "9\n");
    put(f->buddy, BUDDY);
    device(f, "virtio1", "0x0002\n", "0010001001100100000000000000010010000000\n");
    pool__fpr_set_paths(f->order, f->virtio, f->buddy);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fix *f = *state;
    char cmd[120];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void orders_are_buddyinfos_columns(void **state)
{
    struct fix *f = *state;
    assert_int_equal(pool__fpr_orders(), 11);
    put(f->buddy, "Node 0, zone   Normal   1 2 3 4\n");
    assert_int_equal(pool__fpr_orders(), 4);
    put(f->buddy, "garbage\n");
    assert_int_equal(pool__fpr_orders(), 0);
    unlink(f->buddy);
    assert_int_equal(pool__fpr_orders(), 0);
}

/* A kernel with reporting but no balloon that reports: nothing to do, and
 * nothing is written or saved. */
static void no_reporting_device_changes_nothing(void **state)
{
    struct fix *f = *state;
    struct wp_err err;

    assert_int_equal(pool__fpr_state(), POOL_FPR_NONE);
    /* A balloon without the reporting feature (bit 5) is no different. */
    device(f, "virtio0", "0x0005\n", "0110000100000000000000000000000010000000\n");
    assert_int_equal(pool__fpr_state(), POOL_FPR_NONE);
    assert_int_equal(pool__fpr_disable(f->dir, &err), 0);
    char *t = get(f->order);
    assert_string_equal(t, "9\n");
    free(t);
    assert_int_not_equal(access(f->saved, F_OK), 0);
    assert_string_equal(pool__fpr_name(POOL_FPR_NONE), "none");
}

static void disable_saves_and_recover_puts_back(void **state)
{
    struct fix *f = *state;
    struct wp_err err;

    device(f, "virtio0", "0x0005\n", "0110010100000000000000000000000010000000\n");
    assert_int_equal(pool__fpr_state(), POOL_FPR_ON);
    assert_int_equal(pool__fpr_disable(f->dir, &err), 1);
    /* Past the largest order (10): no free block qualifies. */
    char *t = get(f->order);
    assert_string_equal(t, "11\n");
    free(t);
    t = get(f->saved);
    assert_string_equal(t, "9");
    free(t);
    assert_int_equal(pool__fpr_state(), POOL_FPR_OFF);
    assert_string_equal(pool__fpr_name(POOL_FPR_OFF), "off");
    /* Off already: a second call changes nothing and keeps the saved 9. */
    assert_int_equal(pool__fpr_disable(f->dir, &err), 0);
    t = get(f->saved);
    assert_string_equal(t, "9");
    free(t);
    /* A node killed here leaves the file; the next start puts it back. */
    assert_int_equal(pool__fpr_recover(f->dir), 1);
    t = get(f->order);
    assert_string_equal(t, "9\n");
    free(t);
    assert_int_not_equal(access(f->saved, F_OK), 0);
    assert_int_equal(pool__fpr_state(), POOL_FPR_ON);
    assert_int_equal(pool__fpr_recover(f->dir), 0); /* nothing left to put back */
}

static void malformed_saved_file_is_dropped(void **state)
{
    struct fix *f = *state;

    put(f->order, "11\n");
    const char *bad[] = { "9; reboot\n", "-1\n", "\n", "99999999999999999999\n", "4x\n" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put(f->saved, bad[i]);
        assert_int_equal(pool__fpr_recover(f->dir), 0);
        char *t = get(f->order);
        assert_string_equal(t, "11\n"); /* untouched */
        free(t);
        assert_int_not_equal(access(f->saved, F_OK), 0);
    }
}

/* A malformed order file reads as no reporting: never written over. */
static void malformed_order_is_left_alone(void **state)
{
    struct fix *f = *state;
    struct wp_err err;

    device(f, "virtio0", "0x0005\n", "0110010100000000000000000000000010000000\n");
    put(f->order, "nine\n");
    assert_int_equal(pool__fpr_state(), POOL_FPR_NONE);
    assert_int_equal(pool__fpr_disable(f->dir, &err), 0);
    char *t = get(f->order);
    assert_string_equal(t, "nine\n");
    free(t);
}

static void config_free_page_reporting(void **state)
{
    struct pool_node_config cfg;
    struct wp_err err;
    (void)state;

    const char *dflt[] = { "node", "--id", "n1" };
    assert_int_equal(pool_node_config_parse(&cfg, 3, (char **)dflt, &err), 0);
    assert_false(cfg.fpr_off);
    const char *off[] = { "node", "--free-page-reporting", "off" };
    assert_int_equal(pool_node_config_parse(&cfg, 3, (char **)off, &err), 0);
    assert_true(cfg.fpr_off);
    const char *leave[] = { "node", "--free-page-reporting", "leave" };
    assert_int_equal(pool_node_config_parse(&cfg, 3, (char **)leave, &err), 0);
    assert_false(cfg.fpr_off);
    const char *bad[] = { "node", "--free-page-reporting", "on" };
    assert_int_equal(pool_node_config_parse(&cfg, 3, (char **)bad, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "off or leave"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(orders_are_buddyinfos_columns, setup, teardown),
        cmocka_unit_test_setup_teardown(no_reporting_device_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(disable_saves_and_recover_puts_back, setup, teardown),
        cmocka_unit_test_setup_teardown(malformed_saved_file_is_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(malformed_order_is_left_alone, setup, teardown),
        cmocka_unit_test(config_free_page_reporting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
