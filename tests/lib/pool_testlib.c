/* pool_testlib.c - see pool_testlib.h. */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_testlib.h"
#include "snaplib.h"
#include "testlib.h"
#include "base/err.h"
#include "base/fs.h"

void th_claim_cb(void *ctx, int status, const struct pool_claim_result *res,
                 const struct wp_err *err)
{
    struct th_claim_out *o = ctx;
    o->done = 1;
    o->status = status;
    o->res = *res;
    if (err)
        snprintf(o->msg, sizeof(o->msg), "%s", err->msg);
}

void th_done_cb(void *ctx, int status, const struct wp_err *err)
{
    struct th_claim_out *o = ctx;
    o->done = 1;
    o->status = status;
    if (err)
        snprintf(o->msg, sizeof(o->msg), "%s", err->msg);
}

void th_run_until(struct ev_loop *loop, struct th_claim_out *o, int n)
{
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += o[i].done;
        if (done == n)
            return;
        ev_run(loop, EVRUN_ONCE);
    }
}

struct pool_client *th_pool_client(struct ev_loop *loop, int port)
{
    struct pool_client *c;
    struct wp_err err;
    assert_int_equal(pool_client_new(loop, "127.0.0.1", port, &c, &err), 0);
    for (int i = 0; i < 400 && !pool_client_ready(c); i++)
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT), th_msleep(5);
    assert_true(pool_client_ready(c));
    th_msleep(50); /* the reply channel's SUBSCRIBE goes through */
    ev_run(loop, EVRUN_NOWAIT);
    return c;
}

int th_mounts_left(const char *dir)
{
    char out[64];
    th_sh(out, sizeof(out), "mount | grep -c '%s/' || true", dir);
    int mounts = atoi(out);
    if (mounts)
        fprintf(stderr, "leak: %d mounts under %s\n", mounts, dir);
    return mounts;
}

int th_pool_template(const char *path, const char *name, const char *wp)
{
    char json[2048];
    struct wp_err err;
    snprintf(json, sizeof(json),
             "{\"name\":\"%s\",\"rootfs\":\"host\",\"workdir\":\"/work\","
             "\"init_sets_hostname\":true,\"init\":[\"/.wp/warmpool-hands\",\"--socket\","
             "\"/run/warmpool/hands.sock\",\"--workdir\",\"/work\",\"--ready-file\","
             "\"/run/warmpool/hands.ready\"],\"ready_file\":\"/run/warmpool/hands.ready\","
             "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
             "\"limits\":{\"memory_mb\":64,\"pids\":32}}",
             name, wp);
    return wp_write_file(path, json, strlen(json), 0644, &err);
}
