/* fuzz_multipart.c - sched__mp_parse() over arbitrary bytes.
 *
 * The input up to the first newline is the Content-Type header (so
 * boundary parsing is fuzzed too); the rest is the body. Every part the
 * parser returns must lie inside the body, and its name must be set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/sched_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sched_mp_part parts[8];
    const char *why = NULL;
    const uint8_t *nl = memchr(data, '\n', size < 256 ? size : 256);
    size_t cl = nl ? (size_t)(nl - data) : 0;
    char ct[257];
    memcpy(ct, data, cl);
    ct[cl] = '\0';
    const uint8_t *b = nl ? nl + 1 : data;
    size_t bl = size - (size_t)(b - data);
    /* A copy of exactly bl bytes, so ASan sees any read past the end. */
    char *body = malloc(bl ? bl : 1);
    if (!body)
        return 0;
    memcpy(body, b, bl);
    int n = sched__mp_parse(ct, body, bl, parts, 8, &why);
    if (n < 0 && !why)
        abort();
    for (int i = 0; i < n; i++) {
        if (parts[i].data < body || parts[i].data + parts[i].len > body + bl ||
            !parts[i].name[0] || strlen(parts[i].name) >= sizeof(parts[i].name))
            abort();
    }
    free(body);
    return 0;
}
