/* test_modelserver_sdk.c - the official Anthropic TypeScript SDK, pinned in
 * tests/sdk-msrv/package-lock.json, against wp-modelserver: its message
 * stream must parse our output without error (text, thinking + tool_use,
 * the tool-result turn, non-streaming, a 529 it retries, a mid-stream
 * error event, a 400). The SDK is installed with `npm ci` into
 * BUILD/sdk-msrv/ (once; again when the lock file changes). The checks
 * themselves are tests/sdk-msrv/check.mjs; its TAP lines are echoed as
 * comments so the runner counts this binary's own result only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "tests/modelserver/msrv_spawn.h"

static struct msrv_proc srv;
static char sdk_dir[1024];

static int teardown(void **state)
{
    (void)state;
    if (srv.pid > 0)
        msrv_stop(&srv);
    return 0;
}

static void echo_as_comments(const char *out)
{
    const char *p = out;

    while (*p) {
        size_t n = strcspn(p, "\n");
        printf("# %.*s\n", (int)n, p);
        p += n + (p[n] == '\n');
    }
    fflush(stdout);
}

/* Install the pinned SDK into BUILD/sdk-msrv unless already there. */
static int sdk_install(void)
{
    char build[900], out[8192];
    int rc;

    if (msrv_build_dir(build, sizeof(build)) < 0)
        return -1;
    snprintf(sdk_dir, sizeof(sdk_dir), "%s/sdk-msrv", build);
    rc = th_sh(out, sizeof(out),
               "set -e; d='%s'; mkdir -p \"$d\"; cp tests/sdk-msrv/check.mjs \"$d\"/; "
               "if ! cmp -s tests/sdk-msrv/package-lock.json \"$d\"/package-lock.json || "
               "   [ ! -f \"$d\"/node_modules/@anthropic-ai/sdk/package.json ]; then "
               "  cp tests/sdk-msrv/package.json tests/sdk-msrv/package-lock.json \"$d\"/; "
               "  cd \"$d\" && npm ci --no-audit --no-fund --loglevel=error 2>&1; "
               "fi",
               sdk_dir);
    if (rc != 0)
        echo_as_comments(out);
    return rc;
}

static void official_sdk_parses_streams(void **state)
{
    const char *args[] = { "--script", "tests/sdk-msrv/script.json", NULL };
    char out[32768] = "";
    int rc;
    (void)state;

    if (th_sh(NULL, 0, "node --version >/dev/null 2>&1") != 0 ||
        access("tests/sdk-msrv/package.json", R_OK) != 0) {
        printf("# node or tests/sdk-msrv missing (run from the repository root)\n");
        skip();
    }
    assert_int_equal(sdk_install(), 0);
    assert_int_equal(msrv_spawn(&srv, args), 0);
    rc = th_sh(out, sizeof(out), "cd '%s' && node check.mjs %d 2>&1", sdk_dir, srv.port);
    echo_as_comments(out);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "not ok"));
    assert_non_null(strstr(out, "ok 6 - "));
    assert_int_equal(msrv_stop(&srv), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(official_sdk_parses_streams, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
