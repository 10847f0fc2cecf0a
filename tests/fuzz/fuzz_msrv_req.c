/* fuzz_msrv_req.c - the model server's request parser (llhttp wrapper)
 * and the Messages body validation, over arbitrary bytes; valid bodies go
 * on to a reply plan. The first byte picks where the input is split into
 * two reads, so header pieces that straddle reads are exercised too. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "tests/modelserver/msrv.h"

/* A valid body is also turned into a reply plan, with the default config
 * (kept for the process: still reachable, so no leak report). */
static void serve(struct msrv_parser *p)
{
    static struct msrv_config cfg;
    static int cfg_ready;
    struct msrv_req *req = msrv_parser_req(p);
    struct msrv_msgreq mr;
    struct msrv_plan plan;
    struct msrv_rng rng;
    struct wp_err err;

    if (!cfg_ready) {
        msrv_config_init(&cfg);
        cfg.chunk_tokens = 3;
        cfg_ready = 1;
    }
    if (msrv_msgreq_parse(req->body.data ? req->body.data : "", req->body.len, &mr, &err) == 0) {
        msrv_rng_seed(&rng, 1, 0);
        if (msrv_plan_build(&cfg, msrv_config_pick(&cfg, &mr), &mr, &rng, &plan, &err) == 0)
            msrv_plan_free(&plan);
        msrv_msgreq_free(&mr);
    }
    msrv_parser_next(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct msrv_parser *p;
    const char *d = (const char *)data;
    size_t split, off = 0;

    if (size < 1)
        return 0;
    split = 1 + (size > 1 ? data[0] % (size - 1) : 0);
    d++;
    size--;
    p = msrv_parser_new(64 * 1024);
    if (!p)
        return 0;
    /* Two reads, each fed until consumed or failed; a complete request is
     * "served" and the rest of the read fed again, as the server does. */
    for (int part = 0; part < 2; part++) {
        size_t end = part == 0 ? (split < size ? split : size) : size;
        while (off < end) {
            bool done = false;
            struct wp_err err;
            int n = msrv_parser_feed(p, d + off, end - off, &done, &err);
            if (n < 0)
                goto out;
            off += (size_t)n;
            (void)msrv_parser_take_continue(p);
            if (done)
                serve(p);
            else if (n == 0)
                break;
        }
    }
out:
    msrv_parser_free(p);
    return 0;
}
