/* buf.c - bounded growable buffer. */
#include "buf.h"
#include "err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void wp_buf_init(struct wp_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void wp_buf_free(struct wp_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void wp_buf_reset(struct wp_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static int grow(struct wp_buf *b, size_t need)
{
    size_t cap = b->cap ? b->cap : 64;
    char *p;

    while (cap < need + 1)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int wp_buf_append(struct wp_buf *b, const void *p, size_t n)
{
    if (n > b->max - b->len)
        return WP_ETOOBIG;
    if (b->len + n + 1 > b->cap && grow(b, b->len + n) < 0)
        return -ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int wp_buf_printf(struct wp_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof(small))
        return wp_buf_append(b, small, n);
    if ((size_t)n > b->max - b->len)
        return WP_ETOOBIG;
    if (b->len + n + 1 > b->cap && grow(b, b->len + n) < 0)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, n + 1, fmt, ap);
    va_end(ap);
    b->len += n;
    return 0;
}

void wp_buf_consume(struct wp_buf *b, size_t n)
{
    if (n >= b->len) {
        wp_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *wp_buf_steal(struct wp_buf *b, size_t *len)
{
    char *p = b->data;

    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
