/* sse.h - a text/event-stream parser (prefix wp_sse_). Pure: bytes in,
 * events out, no I/O; unit-tested and fuzzed alone. Shared by the
 * scheduler's model client and the node's work-queue worker. */
#ifndef WP_SSE_H
#define WP_SSE_H

#include <stddef.h>

#include "base/err.h"

struct wp_sse_parser;
/* One dispatched event: event is its type ("message" when the stream
 * named none), data/len its data lines joined with '\n' (NUL-terminated);
 * both borrowed for the callback. Returns 0 to go on or < 0 to stop (the
 * feed returns that value). */
typedef int (*wp_sse_event_cb)(void *ctx, const char *event, const char *data, size_t len);
/* Caller owns the parser (wp_sse_parser_free). NULL when cb is NULL,
 * max_event is 0 or memory is short. */
struct wp_sse_parser *wp_sse_parser_new(size_t max_event, wp_sse_event_cb cb, void *ctx);
void wp_sse_parser_free(struct wp_sse_parser *p);
/* Returns 0, WP_ETOOBIG (an event over max_event), -ENOMEM or cb's error;
 * after an error every later feed returns the same. */
int wp_sse_parser_feed(struct wp_sse_parser *p, const char *data, size_t len);

#endif
