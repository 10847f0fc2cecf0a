/* test_pool_autoscale.c - the autoscaler's arithmetic. */
#include <math.h>

#include "lib/testlib.h"
#include "pool/pool.h"

static void poisson_tail_matches_known_values(void **state)
{
    (void)state;
    assert_true(fabs(pool_poisson_tail(1.0, 0) - 1.0) < 1e-12);
    /* P[X >= 1] = 1 - e^-1 */
    assert_true(fabs(pool_poisson_tail(1.0, 1) - (1 - exp(-1))) < 1e-12);
    /* P[X >= 3] for m = 2: 1 - e^-2 (1 + 2 + 2) */
    assert_true(fabs(pool_poisson_tail(2.0, 3) - (1 - 5 * exp(-2))) < 1e-12);
    assert_true(pool_poisson_tail(0, 3) == 0);
}

static void erlang_c_matches_known_values(void **state)
{
    (void)state;
    /* One server: P(wait) = rho. */
    assert_true(fabs(pool_erlang_c(0.5, 1) - 0.5) < 1e-12);
    /* Two servers, a = 1: C = 1/3. */
    assert_true(fabs(pool_erlang_c(1.0, 2) - 1.0 / 3) < 1e-12);
    assert_true(pool_erlang_c(3.0, 2) == 1);
}

static void target_follows_littles_law_with_headroom(void **state)
{
    (void)state;
    assert_int_equal(pool_target_hot(0, 0.5, 0, 0.95), 0);
    /* 10 claims/s, 0.2 s refills: 2 in flight on average; P95 needs more. */
    int c = pool_target_hot(10, 0.2, 0, 0.95);
    assert_true(c > 2);
    assert_true(pool_poisson_tail(2.0, c) <= 0.05);
    assert_true(pool_poisson_tail(2.0, c - 1) > 0.05);
    /* More demand, more clones; a stricter target, more clones. */
    assert_true(pool_target_hot(50, 0.2, 0, 0.95) > c);
    assert_true(pool_target_hot(10, 0.2, 0, 0.999) > c);
    /* Bounded refill concurrency adds queueing and so clones... */
    assert_true(pool_target_hot(10, 0.2, 3, 0.95) >= c);
    /* ...and an overloaded refill queue cannot be sized. */
    assert_int_equal(pool_target_hot(100, 0.2, 2, 0.95), POOL_TARGET_UNBOUNDED);
}

static void rate_converges_to_arrival_rate(void **state)
{
    struct pool_rate r;
    (void)state;

    pool_rate_init(&r, 10);
    for (int i = 0; i < 2000; i++)
        pool_rate_event(&r, i * 0.1, 1); /* 10 per second */
    assert_true(fabs(pool_rate_get(&r, 200) - 10) < 0.5);
    /* Silence halves it per half life. */
    double later = pool_rate_get(&r, 210);
    assert_true(fabs(later - pool_rate_get(&r, 200) / 2) < 0.3);
}

static void scaler_goes_up_at_once_and_down_slowly(void **state)
{
    struct pool_scaler s;
    (void)state;

    pool_scaler_init(&s, 60);
    assert_int_equal(pool_scaler_step(&s, 0, 5, 1, 20), 5);
    assert_int_equal(pool_scaler_step(&s, 1, 12, 1, 20), 12); /* up at once */
    assert_int_equal(pool_scaler_step(&s, 2, 3, 1, 20), 12);  /* not yet */
    assert_int_equal(pool_scaler_step(&s, 62, 3, 1, 20), 11); /* one step */
    assert_int_equal(pool_scaler_step(&s, 70, 3, 1, 20), 11);
    assert_int_equal(pool_scaler_step(&s, 123, 3, 1, 20), 10);
    assert_int_equal(pool_scaler_step(&s, 124, 50, 1, 20), 20); /* clamped to max */
    assert_int_equal(pool_scaler_step(&s, 125, 0, 4, 20), 20);
    /* An operator lowering max applies at once. */
    assert_int_equal(pool_scaler_step(&s, 126, 0, 2, 6), 6);
}

static void ewma_tracks_samples(void **state)
{
    struct pool_ewma e;
    (void)state;

    pool_ewma_init(&e, 5);
    pool_ewma_add(&e, 0, 100);
    assert_true(e.value == 100);
    pool_ewma_add(&e, 5, 200); /* one half life later: halfway */
    assert_true(fabs(e.value - 150) < 1e-9);
}

/* The case: py200 refills cost ~0.6 s of CPU each, two slots on
 * two vCPUs: about 3.3 claims/s, so 10/s is past what any policy can keep
 * hot, and the target says so (unbounded) rather than a number. */
static void refill_capacity_says_when_cpu_is_the_limit(void **state)
{
    (void)state;
    assert_true(fabs(pool_refill_capacity(0.6, 2) - 3.333333) < 1e-5);
    assert_true(pool_refill_capacity(0, 2) == 0); /* unknown */
    assert_true(pool_refill_capacity(0.6, 0) == 0);
    assert_int_equal(pool_target_hot(10, 0.6, 2, 0.95), POOL_TARGET_UNBOUNDED);
    /* Below capacity the pool is sized, and grows with the rate. */
    int lo = pool_target_hot(1, 0.6, 2, 0.95), hi = pool_target_hot(3, 0.6, 2, 0.95);
    assert_true(lo >= 1 && lo < POOL_TARGET_UNBOUNDED);
    assert_true(hi > lo && hi < POOL_TARGET_UNBOUNDED);
    /* Faster refills (cheaper clones) raise the capacity past 10/s. */
    assert_true(pool_refill_capacity(0.1, 2) > 10);
    assert_true(pool_target_hot(10, 0.1, 2, 0.95) < POOL_TARGET_UNBOUNDED);
}

static void claim_wait_counts_what_is_ahead(void **state)
{
    (void)state;
    /* A free slot: no wait. */
    assert_true(pool_claim_wait_s(0, 0, 2, 0.6) == 0);
    assert_true(pool_claim_wait_s(0, 1, 2, 0.6) == 0);
    /* Both slots busy: the next completion, k per restore time. */
    assert_true(fabs(pool_claim_wait_s(0, 2, 2, 0.6) - 0.3) < 1e-9);
    /* Ten queued ahead on two slots: eleven completions at 0.3 s each. */
    assert_true(fabs(pool_claim_wait_s(10, 2, 2, 0.6) - 3.3) < 1e-9);
    /* Unknown restore time: no estimate (nothing is shed on a guess). */
    assert_true(pool_claim_wait_s(10, 2, 2, 0) == 0);
    /* No slots given: one. */
    assert_true(fabs(pool_claim_wait_s(1, 1, 0, 1.0) - 2.0) < 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(poisson_tail_matches_known_values),
        cmocka_unit_test(erlang_c_matches_known_values),
        cmocka_unit_test(target_follows_littles_law_with_headroom),
        cmocka_unit_test(rate_converges_to_arrival_rate),
        cmocka_unit_test(scaler_goes_up_at_once_and_down_slowly),
        cmocka_unit_test(ewma_tracks_samples),
        cmocka_unit_test(refill_capacity_says_when_cpu_is_the_limit),
        cmocka_unit_test(claim_wait_counts_what_is_ahead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
