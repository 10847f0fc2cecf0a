/* wipe.c - clearing secrets before memory goes back (wipe.h). */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "wipe.h"

void wp_wipe_json(json_t *j)
{
    const char *k;
    size_t i;
    json_t *v;

    if (json_is_string(j))
        OPENSSL_cleanse((char *)json_string_value(j), json_string_length(j));
    else if (json_is_object(j))
        json_object_foreach(j, k, v) wp_wipe_json(v);
    else if (json_is_array(j))
        json_array_foreach(j, i, v) wp_wipe_json(v);
}

void wp_wipe_free_str(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}
