/* wipe.h - secrets leave memory wiped, not just freed (jansson and libc
 * free without clearing). OPENSSL_cleanse underneath: no compiler may drop it. */
#ifndef WP_WIPE_H
#define WP_WIPE_H

#include <jansson.h>
#include <stddef.h>

/* Clears every string in J (objects and arrays followed); J keeps its shape
 * and its references: the caller still owns and releases it. */
void wp_wipe_json(json_t *j);

/* Clears the NUL-terminated S and frees it; NULL is fine. */
void wp_wipe_free_str(char *s);

#endif
