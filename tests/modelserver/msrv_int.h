/* msrv_int.h - shared between the files of wp-modelserver's server
 * (msrv_server.c: sockets, timers, connections; msrv_routes.c: the
 * handlers). Not for tests or other modules. */
#ifndef MSRV_INT_H
#define MSRV_INT_H

#include <ev.h>

#include "msrv.h"

#define MSRV_IN_MAX (16 * 1024)
#define MSRV_OUT_MAX (8 * 1024 * 1024) /* a reader this far behind is dropped */
#define MSRV_TTFT_RING 4096
#define MSRV_RECENT_MAX 4096 /* GET /stats/requests */

struct msrv_conn {
    ev_io rio, wio;
    ev_timer timer; /* fallback when tfd < 0 */
    ev_io tio;      /* the timerfd */
    int tfd;
    bool no_tfd;
    struct msrv_server *srv;
    int fd;
    struct msrv_conn *prev, *next; /* srv->conns */
    struct msrv_conn *close_next;  /* srv->closed */
    bool closing, busy, in_process, keep_alive, close_when_flushed;
    bool peer_eof; /* read returned 0: serve what is buffered, then close */
    struct msrv_parser *parser;
    char in[MSRV_IN_MAX];
    size_t in_len;
    struct wp_buf out;
    /* The response in progress. */
    char req_id[40];
    int status;
    bool stream;
    size_t turn;
    struct msrv_plan plan;
    size_t seg;
    enum msrv_fault_kind fault;
    size_t fault_at;
    double t0_ms, next_at_ms, ttft_ms;
};

struct msrv_recent {
    char req_id[40];
    double ttft_ms, planned_ms;
    size_t turn; /* the conversation turn played (0 = a session's first reply) */
};

struct msrv_server {
    const struct msrv_config *cfg;
    struct ev_loop *loop;
    int lfd;
    int port;
    ev_io accept_io;
    ev_prepare prepare;
    struct msrv_conn *conns, *closed;
    struct msrv_rng id_rng;
    uint64_t n_http, n_messages, n_streams, n_active, n_client_gone;
    uint64_t n_fault_status, n_fault_error, n_fault_drop, n_fault_stall;
    int seen_status, seen_error, seen_drop, seen_stall; /* requests that reached each rule */
    json_t *by_status;                      /* "200": count */
    json_t *last_tools;                     /* names of the last request's tools (owned) */
    double ttft[MSRV_TTFT_RING];
    double late[MSRV_TTFT_RING]; /* measured - planned TTFT: the server's own overhead */
    uint64_t n_ttft;
    struct msrv_recent recent[MSRV_RECENT_MAX];
    uint64_t n_recent;
    struct msrv_cache *cache; /* the prompt cache (msrv_cache.c); owned */
};

/* Output; each may close the conn (check c->closing after). */
void msrv__send_raw(struct msrv_conn *c, const char *data, size_t len);
/* A whole response with Content-Length; extra: more header lines or NULL. */
void msrv__respond(struct msrv_conn *c, int status, const char *ctype, const char *extra,
                   const char *body, size_t len);
/* The API's error shape; retry_after < 0 = no retry-after header. */
void msrv__respond_error(struct msrv_conn *c, int status, const char *msg, int retry_after);
/* The response is complete: log it, then serve the next request. */
void msrv__finish(struct msrv_conn *c);
/* Start the timer for c->next_at_ms (absolute, wp_now_ms clock). */
void msrv__arm(struct msrv_conn *c);
/* Dispatch the request the parser completed (msrv_routes.c). */
void msrv__handle_request(struct msrv_conn *c);

#endif
