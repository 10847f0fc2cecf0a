/* buf.h - a growable byte buffer with a hard maximum (curl dynbuf). */
#ifndef WP_BUF_H
#define WP_BUF_H

#include <stddef.h>

struct wp_buf {
    char *data;  /* owned; always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    size_t max;  /* len never exceeds this */
};

/* No allocation until the first append. */
void wp_buf_init(struct wp_buf *b, size_t max);
void wp_buf_free(struct wp_buf *b);
void wp_buf_reset(struct wp_buf *b);
/* Returns 0, WP_ETOOBIG (nothing appended) or -ENOMEM. */
int wp_buf_append(struct wp_buf *b, const void *p, size_t n);
int wp_buf_printf(struct wp_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes. */
void wp_buf_consume(struct wp_buf *b, size_t n);
/* Hand the data out: caller owns it (free()); b is left empty. */
char *wp_buf_steal(struct wp_buf *b, size_t *len);

#endif
