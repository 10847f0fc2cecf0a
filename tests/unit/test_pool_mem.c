/* test_pool_mem.c - the node's memory figures: /proc parsers, the private
 * bytes summary, and how many hot clones fit a budget. */
#include <string.h>

#include "lib/testlib.h"
#include "base/err.h"
#include "pool/pool_int.h"

#define MiB (1ull << 20)

static const char rollup[] =
    "55f15a5ca000-7ffd74cf7000 ---p 00000000 00:00 0                          [rollup]\n"
    "Rss:                1744 kB\n"
    "Pss:                 415 kB\n"
    "Pss_Dirty:           112 kB\n"
    "Pss_Anon:            112 kB\n"
    "Shared_Clean:       1588 kB\n"
    "Private_Clean:        44 kB\n"
    "Private_Dirty:       112 kB\n"
    "Anonymous:           112 kB\n"
    "KSM:                   0 kB\n";

static void rollup_fields_in_bytes(void **state)
{
    struct pool__proc_mem m;
    (void)state;

    assert_int_equal(pool__mem_parse_rollup(rollup, &m), 0);
    assert_int_equal(m.rss, 1744 * 1024);
    assert_int_equal(m.pss, 415 * 1024); /* not Pss_Dirty's, which comes later */
    assert_int_equal(m.private_, (44 + 112) * 1024);
    assert_int_equal(m.anon, 112 * 1024);
}

static void rollup_garbage_is_refused(void **state)
{
    struct pool__proc_mem m;
    (void)state;

    assert_int_equal(pool__mem_parse_rollup("", &m), WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_rollup("Rss: 10 kB\nPss: 5 kB\n", &m), WP_EINVAL_INPUT);
    /* Not a number, a wrong unit, absurd sizes, private above rss. */
    assert_int_equal(pool__mem_parse_rollup("Rss: x kB\nPss: 1 kB\nPrivate_Clean: 0 kB\n"
                                            "Private_Dirty: 0 kB\n", &m), WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_rollup("Rss: 10 MB\nPss: 1 kB\nPrivate_Clean: 0 kB\n"
                                            "Private_Dirty: 0 kB\n", &m), WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_rollup("Rss: 99999999999999999999 kB\nPss: 1 kB\n"
                                            "Private_Clean: 0 kB\nPrivate_Dirty: 0 kB\n", &m),
                     WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_rollup("Rss: 10 kB\nPss: 1 kB\nPrivate_Clean: 8 kB\n"
                                            "Private_Dirty: 8 kB\n", &m), WP_EINVAL_INPUT);
}

static void ksm_stat_merging_pages(void **state)
{
    uint64_t pages;
    (void)state;

    assert_int_equal(pool__mem_parse_ksm_stat("ksm_rmap_items 10\nksm_zero_pages 0\n"
                                              "ksm_merging_pages 51200\nksm_process_profit 1\n"
                                              "ksm_merge_any: yes\n", &pages), 0);
    assert_int_equal(pages, 51200);
    assert_int_equal(pool__mem_parse_ksm_stat("ksm_rmap_items 10\n", &pages), WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_ksm_stat("xksm_merging_pages 5\n", &pages), WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_ksm_stat("ksm_merging_pages 5x\n", &pages), WP_EINVAL_INPUT);
}

static void cpu_ticks_after_the_last_paren(void **state)
{
    uint64_t t;
    (void)state;

    /* ksmd as this kernel shows it: utime 25, stime 5. */
    assert_int_equal(pool__mem_parse_cpu_ticks("37 (ksmd) S 2 0 0 0 -1 2097216 0 0 0 0 25 5 0 0 "
                                               "25 5 1 0 26 0 0\n", &t), 0);
    assert_int_equal(t, 30);
    /* A comm with spaces and parentheses does not shift the fields. */
    assert_int_equal(pool__mem_parse_cpu_ticks("9 (a) b (c) S 2 0 0 0 -1 0 0 0 0 0 7 3 0 0\n", &t), 0);
    assert_int_equal(t, 10);
    assert_int_equal(pool__mem_parse_cpu_ticks("9 (x S 2", &t), WP_EINVAL_INPUT);
    assert_int_equal(pool__mem_parse_cpu_ticks("9 (x) S 2 0", &t), WP_EINVAL_INPUT);
}

static void summary_percentiles_and_buckets(void **state)
{
    uint64_t v[] = { 3 * MiB, 1 * MiB, 2 * MiB + 1, 700 * MiB, 5ull << 30 };
    struct pool__env_mem m;
    (void)state;

    memset(&m, 0, sizeof(m));
    pool__mem_summary(v, 5, &m);
    assert_int_equal(m.p50, 3 * MiB);
    assert_int_equal(m.p95, 5ull << 30);
    assert_int_equal(m.hist[0], 1);              /* <= 1 MiB: the bound is inclusive */
    assert_int_equal(m.hist[2], 2);              /* (2, 4] MiB */
    assert_int_equal(m.hist[10], 1);             /* (512 MiB, 1 GiB] */
    assert_int_equal(m.hist[POOL__MEM_NB - 1], 1); /* +Inf */
    pool__mem_summary(v, 0, &m);
    assert_int_equal(m.p50, 0);
    assert_int_equal(m.hist[0], 0);
}

static void fit_counts_what_the_room_holds(void **state)
{
    (void)state;
    /* 1 GiB, one shared copy of 200 MiB plus 2 clones at 5 MiB: 814 MiB
     * left at 5 MiB per clone. */
    assert_int_equal(pool_mem_fit(1024 * MiB, 210 * MiB, 5 * MiB, 2), 2 + 162);
    /* Unmerged clones of 200 MiB each: the same budget holds 5. */
    assert_int_equal(pool_mem_fit(1024 * MiB, 0, 200 * MiB, 0), 5);
    /* Over budget: the surplus hot clones go, never below 0. */
    assert_int_equal(pool_mem_fit(1000 * MiB, 1200 * MiB, 100 * MiB, 5), 3);
    assert_int_equal(pool_mem_fit(100 * MiB, 5000 * MiB, 100 * MiB, 5), 0);
    /* Nothing measured: no cap. */
    assert_int_equal(pool_mem_fit(100 * MiB, 0, 0, 3), POOL_TARGET_UNBOUNDED);
    assert_int_equal(pool_mem_fit(UINT64_MAX / 2, 0, 1, 0), POOL_TARGET_UNBOUNDED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rollup_fields_in_bytes),
        cmocka_unit_test(rollup_garbage_is_refused),
        cmocka_unit_test(ksm_stat_merging_pages),
        cmocka_unit_test(cpu_ticks_after_the_last_paren),
        cmocka_unit_test(summary_percentiles_and_buckets),
        cmocka_unit_test(fit_counts_what_the_room_holds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
