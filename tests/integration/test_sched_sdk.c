/* test_sched_sdk.c - the official Anthropic SDK (npm @anthropic-ai/sdk,
 * pinned in tests/sdk/package.json + package-lock.json) as a real client:
 * starts redis-server and warmpool-scheduler, installs the SDK with
 * `npm ci` into tests/sdk/node_modules when missing, runs
 * tests/sdk/sdk_test.mjs under node and checks every step passed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "lib/sched_testlib.h"

static void sdk_drives_the_api(void **state)
{
    (void)state;
    struct th_redis r;
    struct th_sched s;
    static char out[1 << 16];
    if (access("tests/sdk/node_modules/@anthropic-ai/sdk/package.json", R_OK) != 0) {
        int rc = th_sh(out, sizeof(out),
                       "cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error 2>&1");
        if (rc != 0)
            fprintf(stderr, "npm ci: %s\n", out);
        assert_int_equal(rc, 0);
    }
    assert_int_equal(th_redis_start(&r, 0), 0);
    assert_int_equal(th_sched_start(&s, r.port, "--rate-create", "0", "--rate-read", "0",
                                    (char *)NULL), 0);
    int rc = th_sh(out, sizeof(out),
                   "cd tests/sdk && WP_BASE_URL=http://127.0.0.1:%d WP_API_KEY=sk-acme "
                   "timeout 120 node sdk_test.mjs 2>&1",
                   s.port);
    printf("%s", out);
    /* Stop both before any assertion, so a failure leaves no process behind. */
    int st = th_sched_stop(&s);
    th_redis_stop(&r);
    /* Report each SDK step as a diagnostic; the verdict is this test's. */
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "FAILED"));
    assert_non_null(strstr(out, "sdk: SDK EnvironmentWorker"));
    assert_int_equal(st, 0); /* clean exit: no sanitizer report, no leak */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sdk_drives_the_api),
    };
    return cmocka_run_group_tests_name("sched_sdk", tests, NULL, NULL);
}
