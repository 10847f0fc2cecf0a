/* fuzz_snap_template.c - the environment template parser on any bytes:
 * it must accept or refuse with an error, never crash or leak. */
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "snapshot/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct snap_template *t = NULL;
    struct wp_err err;

    if (snap_template_parse((const char *)data, size, &t, &err) == 0)
        snap_template_free(t);
    return 0;
}
