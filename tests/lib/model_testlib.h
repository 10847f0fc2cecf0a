/* model_testlib.h - the model stand-in (tests/modelserver) as scheduler
 * tests start it. Header-only like modelserver/msrv_spawn.h, which it
 * includes (tests are built with -Itests; the tests/lib objects are not). */
#ifndef WP_MODEL_TESTLIB_H
#define WP_MODEL_TESTLIB_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/fs.h"
#include "modelserver/msrv_spawn.h"

/* Write script (the stand-in's JSON) to DIR/script.json, start
 * wp-modelserver on it (--log-level warn, then extra: NULL-terminated, may
 * be NULL), put its base URL in url and export ANTHROPIC_API_KEY for the
 * schedulers the test starts next. Returns 0, or -1 with nothing left
 * running. Stop it with msrv_stop. */
static inline int th_model_spawn_script(struct msrv_proc *m, const char *dir, const char *script,
                                        const char *const *extra, char *url, size_t cap)
{
    char path[1100];
    const char *args[32] = { "--script", path, "--log-level", "warn" };
    int n = 4;
    struct wp_err err;

    snprintf(path, sizeof(path), "%s/script.json", dir);
    if (wp_write_file(path, script, strlen(script), 0644, &err) < 0)
        return -1;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    if (msrv_spawn(m, args) < 0)
        return -1;
    snprintf(url, cap, "http://127.0.0.1:%d", m->port);
    setenv("ANTHROPIC_API_KEY", "sk-test-model", 1);
    return 0;
}

#endif
