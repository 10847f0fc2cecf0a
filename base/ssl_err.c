/* ssl_err.c - OpenSSL's error queue as text (its own file: only what
 * uses it links libcrypto, not every user of base/err.c). */
#include <openssl/err.h>
#include <stdio.h>

#include "err.h"

void wp_err_openssl(char *out, size_t cap)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, out, cap);
    else
        snprintf(out, cap, "unknown error");
    ERR_clear_error();
}
