/* test_sched_metrics.c - the /metrics registry and its Prometheus text:
 * cumulative buckets, +Inf, _sum/_count, label escaping, the label cap,
 * and the pool snapshot rendering. No sockets, no Redis. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hist.h"
#include "scheduler/metrics.h"
#include "scheduler/sched_int.h"

static char *render(struct sched_metrics *m)
{
    struct wp_buf b;
    wp_buf_init(&b, 8 << 20);
    assert_int_equal(sched_metrics_render(m, &b), 0);
    return wp_buf_steal(&b, NULL);
}

/* The value of the line starting with prefix (followed by a space). */
static double value_of(const char *text, const char *prefix)
{
    size_t pl = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, pl) == 0 && p[pl] == ' ')
            return atof(p + pl + 1);
    fail_msg("no line %s in:\n%s", prefix, text);
    return -1;
}

static void buckets_are_cumulative_with_inf_sum_count(void **state)
{
    (void)state;
    struct sched_metrics *m = sched_metrics_new();
    assert_non_null(m);
    sched_metrics_observe(m, SCHED_HIST_CLAIM, "hot", 0.00004);  /* <= 50 us */
    sched_metrics_observe(m, SCHED_HIST_CLAIM, "hot", 0.0007);   /* <= 1 ms */
    sched_metrics_observe(m, SCHED_HIST_CLAIM, "hot", 0.001);    /* exactly a bound: le */
    sched_metrics_observe(m, SCHED_HIST_CLAIM, "hot", 500);      /* past 120 s: +Inf only */
    sched_metrics_observe(m, SCHED_HIST_CLAIM, "warm", 0.03);
    char *t = render(m);
    assert_non_null(strstr(t, "# TYPE warmpool_claim_seconds histogram\n"));
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"5e-05\"}") == 1);
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"0.0005\"}") == 1);
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"0.001\"}") == 3);
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"120\"}") == 3);
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"+Inf\"}") == 4);
    assert_true(value_of(t, "warmpool_claim_seconds_count{tier=\"hot\"}") == 4);
    double sum = value_of(t, "warmpool_claim_seconds_sum{tier=\"hot\"}");
    assert_true(sum > 500.0017 && sum < 500.0018);
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"warm\",le=\"0.02\"}") == 0);
    assert_true(value_of(t, "warmpool_claim_seconds_bucket{tier=\"warm\",le=\"0.05\"}") == 1);
    /* Unlabelled histograms and counters show zeroes before any sample. */
    assert_true(value_of(t, "warmpool_tool_wait_seconds_bucket{le=\"+Inf\"}") == 0);
    assert_true(value_of(t, "warmpool_tool_wait_seconds_count") == 0);
    /* TTFT is by pool environment: its type line only, before a turn. */
    assert_non_null(strstr(t, "# TYPE warmpool_ttft_seconds histogram"));
    assert_true(value_of(t, "warmpool_turns_total") == 0);
    /* Restore latency is the nodes' (from Redis), not this registry's. */
    assert_null(strstr(t, "warmpool_restore_seconds"));
    /* Every bucket line of a series rises monotonically. */
    unsigned long long last = 0;
    for (size_t i = 0; i < WP_HIST_NB; i++) {
        char p[128];
        snprintf(p, sizeof(p), "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"%g\"}",
                 wp_hist_bound(i));
        unsigned long long v = (unsigned long long)value_of(t, p);
        assert_true(v >= last);
        last = v;
    }
    free(t);
    sched_metrics_free(m);
}

static void labels_are_escaped_and_capped(void **state)
{
    (void)state;
    struct sched_metrics *m = sched_metrics_new();
    sched_metrics_inc(m, SCHED_CTR_TOOL_CALLS, "we\"ird\\name\nx");
    for (int i = 0; i < 40; i++) {
        char tool[32];
        snprintf(tool, sizeof(tool), "tool%d", i);
        sched_metrics_inc(m, SCHED_CTR_TOOL_CALLS, tool);
        sched_metrics_observe(m, SCHED_HIST_TOOL, tool, 0.01);
    }
    sched_metrics_inc(m, SCHED_CTR_TOOL_CALLS, "tool0");
    sched_metrics_inc(m, SCHED_CTR_TURNS, "ignored: the metric has no label");
    char *t = render(m);
    assert_true(value_of(t, "warmpool_tool_calls_total{tool=\"we\\\"ird\\\\name\\nx\"}") == 1);
    assert_true(value_of(t, "warmpool_tool_calls_total{tool=\"tool0\"}") == 2);
    /* 32 distinct values kept (the odd one and tool0..tool30), the rest
     * folded into "other". */
    assert_true(value_of(t, "warmpool_tool_calls_total{tool=\"tool30\"}") == 1);
    assert_null(strstr(t, "warmpool_tool_calls_total{tool=\"tool31\"}"));
    assert_true(value_of(t, "warmpool_tool_calls_total{tool=\"other\"}") == 9);
    assert_true(value_of(t, "warmpool_tool_seconds_count{tool=\"other\"}") == 8);
    assert_true(value_of(t, "warmpool_turns_total") == 1);
    /* A long label is cut, never inside a UTF-8 sequence. */
    char longl[200];
    memset(longl, 'a', sizeof(longl));
    memcpy(longl + 62, "\xc3\xa9", 2); /* byte 63 would split it */
    longl[199] = '\0';
    struct sched_metrics *m2 = sched_metrics_new();
    sched_metrics_inc(m2, SCHED_CTR_MODEL_ERRORS, longl);
    char *t2 = render(m2);
    char want[128];
    snprintf(want, sizeof(want), "warmpool_model_errors_total{error_type=\"%.62s\"}", longl);
    assert_true(value_of(t2, want) == 1);
    free(t2);
    sched_metrics_free(m2);
    free(t);
    sched_metrics_free(m);
}

/* TTFT has two labels, env and tier: each pair its own series, the pairs
 * bounded like single labels (the rest: env and tier "other"). */
static void ttft_by_env_and_tier(void **state)
{
    (void)state;
    struct sched_metrics *m = sched_metrics_new();
    sched_metrics_observe2(m, SCHED_HIST_TTFT, "py", "hot", 0.04);
    sched_metrics_observe2(m, SCHED_HIST_TTFT, "py", "hot", 0.04);
    sched_metrics_observe2(m, SCHED_HIST_TTFT, "py", "pending", 0.3);
    sched_metrics_observe2(m, SCHED_HIST_TTFT, "node\x1fjs", "a-tier-name-far-too-long", 1);
    char *t = render(m);
    assert_true(value_of(t, "warmpool_ttft_seconds_count{env=\"py\",tier=\"hot\"}") == 2);
    assert_true(value_of(t, "warmpool_ttft_seconds_bucket{env=\"py\",tier=\"pending\",le=\"+Inf\"}") == 1);
    /* the separator inside a value does not move the split; a tier is cut */
    assert_true(value_of(t, "warmpool_ttft_seconds_count{env=\"node_js\",tier=\"a-tier-name-far\"}") == 1);
    free(t);
    for (int i = 0; i < 40; i++) {
        char env[16];
        snprintf(env, sizeof(env), "e%d", i);
        sched_metrics_observe2(m, SCHED_HIST_TTFT, env, "warm", 0.1);
    }
    t = render(m);
    assert_true(value_of(t, "warmpool_ttft_seconds_count{env=\"e28\",tier=\"warm\"}") == 1);
    assert_null(strstr(t, "env=\"e29\""));
    assert_true(value_of(t, "warmpool_ttft_seconds_count{env=\"other\",tier=\"other\"}") == 11);
    free(t);
    sched_metrics_free(m);
}

static void pool_snapshot_renders_gauges_and_restores(void **state)
{
    (void)state;
    char hist[1024];
    int l = snprintf(hist, sizeof(hist), "3 0.075");
    for (size_t i = 0; i <= WP_HIST_NB; i++) /* 1 at <= 20 ms, 2 at <= 50 ms */
        l += snprintf(hist + l, sizeof(hist) - (size_t)l, " %d",
                      i == 8 ? 1 : i == 9 ? 2 : 0);
    json_t *snap = json_pack(
        "{s:{s:{s:i, s:{s:s, s:s, s:s, s:s, s:s, s:s}, s:{s:{s:i, s:i}}}, s:{s:i, s:{s:s, s:s}, s:{}}},"
        " s:{s:{s:i, s:{s:s, s:s, s:s, s:s}, s:{s:s, s:s}, s:[s, s]}}}",
        "nodes",
        "n1", "alive", 1, "fields", "hist_le", WP_HIST_LE_TEXT, "restore_hist:warm", hist,
        "target:py", "4", "criu_mode", "no-breakpoints", "criu_lazy", "no", "warmed", "12", "sbs",
        "py", "idle", 2, "leased", 1,
        "n2", "alive", 0, "fields", "restore_hist:warm", hist, "warmed", "12x", "sbs",
        "envs",
        "py", "hot", 2, "policy", "min_hot", "2", "max_hot", "5", "max_hot:n1", "4", "tiers",
        "warm,cold", "stats", "claims_hot", "7", "claims_cold", "1", "nodes", "n1", "n2");
    assert_non_null(snap);
    struct wp_buf b;
    wp_buf_init(&b, 1 << 20);
    assert_int_equal(sched__metrics_render_pool(snap, &b), 0);
    const char *t = b.data;
    assert_true(value_of(t, "warmpool_node_up{node=\"n1\"}") == 1);
    assert_true(value_of(t, "warmpool_node_up{node=\"n2\"}") == 0);
    assert_true(value_of(t, "warmpool_node_criu_mode{node=\"n1\",mode=\"no-breakpoints\"}") == 1);
    assert_true(value_of(t, "warmpool_node_criu_lazy{node=\"n1\"}") == 0);
    assert_null(strstr(t, "warmpool_node_criu_mode{node=\"n2\"")); /* publishes none */
    assert_true(value_of(t, "warmpool_node_warmed_total{node=\"n1\"}") == 12);
    assert_null(strstr(t, "warmpool_node_warmed_total{node=\"n2\"")); /* "12x": not a count */
    assert_true(value_of(t, "warmpool_pool_hot{env=\"py\"}") == 2);
    assert_true(value_of(t, "warmpool_pool_sandboxes{env=\"py\",node=\"n1\",state=\"leased\"}") == 1);
    assert_true(value_of(t, "warmpool_pool_min_hot{env=\"py\",node=\"n2\"}") == 2);
    assert_true(value_of(t, "warmpool_pool_max_hot{env=\"py\",node=\"n1\"}") == 4);
    assert_true(value_of(t, "warmpool_pool_max_hot{env=\"py\",node=\"n2\"}") == 5);
    assert_true(value_of(t, "warmpool_pool_max_hot_total{env=\"py\"}") == 0);
    assert_true(value_of(t, "warmpool_pool_tier_enabled{env=\"py\",tier=\"hot\"}") == 0);
    assert_true(value_of(t, "warmpool_pool_tier_enabled{env=\"py\",tier=\"cold\"}") == 1);
    assert_true(value_of(t, "warmpool_pool_target_hot{env=\"py\",node=\"n1\"}") == 4);
    assert_true(value_of(t, "warmpool_pool_claims_total{env=\"py\",tier=\"hot\"}") == 7);
    assert_true(value_of(t, "warmpool_pool_claims_total{env=\"py\",tier=\"warm\"}") == 0);
    assert_non_null(strstr(t, "# TYPE warmpool_restore_seconds histogram\n"));
    assert_true(value_of(t, "warmpool_restore_seconds_bucket{tier=\"warm\",node=\"n1\",le=\"0.01\"}") == 0);
    assert_true(value_of(t, "warmpool_restore_seconds_bucket{tier=\"warm\",node=\"n1\",le=\"0.02\"}") == 1);
    assert_true(value_of(t, "warmpool_restore_seconds_bucket{tier=\"warm\",node=\"n1\",le=\"+Inf\"}") == 3);
    assert_true(value_of(t, "warmpool_restore_seconds_count{tier=\"warm\",node=\"n1\"}") == 3);
    /* A dead node's restores and data without the bucket layout are left out. */
    assert_null(strstr(t, "tier=\"warm\",node=\"n2\""));
    assert_null(strstr(t, "warmpool_node_claims_waiting{")); /* no node publishes a queue */
    wp_buf_free(&b);

    /* The claim queue a node publishes (issue 20): waiting, oldest wait in
     * seconds, refused as overloaded (a counter). */
    json_t *f1 = json_object_get(json_object_get(json_object_get(snap, "nodes"), "n1"), "fields");
    json_object_set_new(f1, "claims_waiting:py", json_string("3"));
    json_object_set_new(f1, "claim_wait_ms:py", json_string("2500"));
    json_object_set_new(f1, "claims_shed:py", json_string("17"));
    json_object_set_new(f1, "claims_shed:", json_string("5")); /* no env: skipped */
    wp_buf_init(&b, 1 << 20);
    assert_int_equal(sched__metrics_render_pool(snap, &b), 0);
    t = b.data;
    assert_true(value_of(t, "warmpool_node_claims_waiting{env=\"py\",node=\"n1\"}") == 3);
    assert_true(value_of(t, "warmpool_node_claim_wait_oldest_seconds{env=\"py\",node=\"n1\"}") == 2.5);
    assert_true(value_of(t, "warmpool_node_claims_shed_total{env=\"py\",node=\"n1\"}") == 17);
    assert_non_null(strstr(t, "# TYPE warmpool_node_claims_shed_total counter\n"));
    assert_null(strstr(t, "warmpool_node_claims_shed_total{env=\"\""));
    assert_true(value_of(t, "warmpool_pool_target_hot{env=\"py\",node=\"n1\"}") == 4);
    wp_buf_free(&b);

    /* What clones hold (memory.c's hash): gauges and the private-bytes
     * histogram with its bounds in order, ksmd CPU per node. */
    json_object_set_new(json_object_get(json_object_get(json_object_get(snap, "nodes"), "n1"), "fields"),
                        "ksmd_cpu_ms", json_string("12300"));
    json_object_set_new(json_object_get(json_object_get(snap, "envs"), "py"), "mem",
                        json_pack("{s:{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}}", "n1",
                                  "shared_bytes", "209715200", "hot_fit", "40", "private_le_2097152",
                                  "3", "private_le_1048576", "2", "private_le_bogus", "9",
                                  "private_le_inf", "4", "private_count", "4", "private_sum_bytes",
                                  "5000000", "merged_bytes", "100"));
    wp_buf_init(&b, 1 << 20);
    assert_int_equal(sched__metrics_render_pool(snap, &b), 0);
    t = b.data;
    assert_true(value_of(t, "warmpool_ksm_shared_bytes{env=\"py\",node=\"n1\"}") == 209715200);
    assert_true(value_of(t, "warmpool_pool_hot_fit{env=\"py\",node=\"n1\"}") == 40);
    assert_non_null(strstr(t, "# TYPE warmpool_sandbox_private_bytes histogram\n"));
    const char *b1 = strstr(t, "warmpool_sandbox_private_bytes_bucket{env=\"py\",node=\"n1\",le=\"1048576\"} 2");
    const char *b2 = strstr(t, "warmpool_sandbox_private_bytes_bucket{env=\"py\",node=\"n1\",le=\"2097152\"} 3");
    const char *bi = strstr(t, "warmpool_sandbox_private_bytes_bucket{env=\"py\",node=\"n1\",le=\"+Inf\"} 4");
    assert_true(b1 && b2 && bi && b1 < b2 && b2 < bi);
    assert_null(strstr(t, "bogus"));
    assert_true(value_of(t, "warmpool_sandbox_private_bytes_count{env=\"py\",node=\"n1\"}") == 4);
    assert_true(value_of(t, "warmpool_ksmd_cpu_seconds_total{node=\"n1\"}") == 12.3);
    wp_buf_free(&b);
    json_decref(snap);
    /* Not a snapshot: refused, nothing half-written matters. */
    json_t *bad = json_pack("{s:[]}", "nodes");
    wp_buf_init(&b, 1 << 20);
    assert_int_equal(sched__metrics_render_pool(bad, &b), WP_EPROTO);
    wp_buf_free(&b);
    json_decref(bad);
}

static void bucket_index_follows_le(void **state)
{
    (void)state;
    assert_int_equal(wp_hist_bucket(0), 0);
    assert_int_equal(wp_hist_bucket(0.00005), 0);
    assert_int_equal(wp_hist_bucket(0.000051), 1);
    assert_int_equal(wp_hist_bucket(120), WP_HIST_NB - 1);
    assert_int_equal(wp_hist_bucket(121), WP_HIST_NB);
    assert_int_equal(wp_hist_bucket(0.0 / 0.0), 0);
    assert_int_equal(WP_HIST_NB, 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buckets_are_cumulative_with_inf_sum_count),
        cmocka_unit_test(labels_are_escaped_and_capped),
        cmocka_unit_test(ttft_by_env_and_tier),
        cmocka_unit_test(pool_snapshot_renders_gauges_and_restores),
        cmocka_unit_test(bucket_index_follows_le),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
