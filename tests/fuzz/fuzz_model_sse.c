/* fuzz_model_sse.c - the model client's SSE parser over arbitrary bytes.
 *
 * The first byte picks a feed size (1..256); the rest is parsed twice,
 * once whole and once in pieces of that size. Both must give the same
 * events and the same result (a split never changes what is parsed), every
 * event's data must be NUL-terminated at its length, and nothing may
 * exceed the limit, which is small so the WP_ETOOBIG path runs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/sse.h"

#define MAX_EVENT 512

static int on_ev(void *ctx, const char *event, const char *data, size_t len)
{
    struct wp_buf *out = ctx;

    if (data[len] != '\0' || len > MAX_EVENT)
        abort();
    /* type, NUL, length-prefixed data: an unambiguous record. */
    if (wp_buf_append(out, event, strlen(event) + 1) < 0 ||
        wp_buf_append(out, &len, sizeof(len)) < 0 || wp_buf_append(out, data, len) < 0)
        return -1;
    return 0;
}

static int run(const uint8_t *data, size_t size, size_t step, struct wp_buf *out)
{
    struct wp_sse_parser *p = wp_sse_parser_new(MAX_EVENT, on_ev, out);
    int rc = 0;

    if (!p)
        abort();
    for (size_t off = 0; off < size && rc == 0; off += step)
        rc = wp_sse_parser_feed(p, (const char *)data + off,
                                   size - off < step ? size - off : step);
    wp_sse_parser_free(p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wp_buf whole, split;
    size_t step;
    int rc1, rc2;

    if (size < 1)
        return 0;
    step = (size_t)data[0] + 1;
    data++;
    size--;
    wp_buf_init(&whole, 1 << 22);
    wp_buf_init(&split, 1 << 22);
    rc1 = run(data, size, size ? size : 1, &whole);
    rc2 = run(data, size, step, &split);
    if (rc1 != rc2 || whole.len != split.len ||
        (whole.len && memcmp(whole.data, split.data, whole.len)))
        abort();
    if (rc1 != 0 && rc1 != WP_ETOOBIG)
        abort();
    wp_buf_free(&whole);
    wp_buf_free(&split);
    return 0;
}
