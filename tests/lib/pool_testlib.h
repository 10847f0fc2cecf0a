/* pool_testlib.h - driving pool claims from a test's own event loop, and
 * the leak check the pool tests end with. */
#ifndef WP_POOL_TESTLIB_H
#define WP_POOL_TESTLIB_H

#include "pool/pool.h"

struct ev_loop;
struct wp_err;

/* One claim's or one release's/renewal's outcome. */
struct th_claim_out {
    int done, status;
    struct pool_claim_result res;
    char msg[256];
};
/* pool_claim_cb and pool_done_cb filling a struct th_claim_out (ctx). */
void th_claim_cb(void *ctx, int status, const struct pool_claim_result *res,
                 const struct wp_err *err);
void th_done_cb(void *ctx, int status, const struct wp_err *err);
/* Run loop until every one of o[0..n-1] is done. */
void th_run_until(struct ev_loop *loop, struct th_claim_out *o, int n);
/* A pool client on loop (Redis at 127.0.0.1:port, or the process's
 * cluster), connected and subscribed; asserts it is. */
struct pool_client *th_pool_client(struct ev_loop *loop, int port);
/* Mounts left under dir (said on stderr when there are any). */
int th_mounts_left(const char *dir);
/* Writes path: pool environment name whose sandboxes run the hands of wp
 * (th_hands_copy) as PID 1, 64 MB and 32 pids. 0 or < 0. */
int th_pool_template(const char *path, const char *name, const char *wp);

#endif
