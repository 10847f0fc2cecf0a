/* fuzz_sched_http.c - sched_http_parser_feed() over arbitrary bytes.
 *
 * The first byte picks a feed size (1..256) so requests arrive split at
 * every position, as they do from read(); pipelined requests are consumed
 * one at a time exactly as server.c does. The route matcher and the query
 * decoder run on every parsed URL. Limits are small so 413/431 paths run. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/sched_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sched_http_parser p;
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] + 1;
    data++;
    size--;
    if (sched_http_parser_init(&p, 2048, 4096) < 0)
        return 0;
    char *pending = malloc(size + 1);
    size_t plen = 0, off = 0;
    int requests = 0;
    while ((off < size || plen > 0) && requests < 64) {
        size_t n = size - off < step ? size - off : step;
        memcpy(pending + plen, data + off, n);
        plen += n;
        off += n;
        size_t used = 0;
        int rc = sched_http_parser_feed(&p, pending, plen, &used);
        if (used > plen)
            abort();
        memmove(pending, pending + used, plen - used);
        plen -= used;
        if (rc < 0) {
            if (p.err_status < 400 || p.err_status > 599 || !p.err_reason)
                abort();
            break;
        }
        if (rc == SCHED_HTTP_DONE) {
            requests++;
            const char *url = sched_http_url(&p.req);
            char path[1024], params[3][128];
            int np;
            bool matched;
            (void)sched_http_header(&p.req, "content-type");
            (void)sched_http_header(&p.req, "authorization");
            if (p.req.body.len > p.req.body.max)
                abort();
            size_t ul = strcspn(url, "?");
            if (ul < sizeof(path)) {
                memcpy(path, url, ul);
                path[ul] = '\0';
                (void)sched__route_match(p.req.method, path, &matched, &np, params);
            }
            char *q = strdup(url + ul);
            if (q) {
                sched__pct_decode(q, true);
                free(q);
            }
            sched_http_parser_next(&p);
        } else if (n == 0) {
            break; /* all input fed, request incomplete */
        }
    }
    free(pending);
    sched_http_parser_free(&p);
    return 0;
}
