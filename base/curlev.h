/* curlev.h - a libcurl multi handle driven by a libev loop, exactly as
 * style habit 5 (curl's multi-uv.c) says: an ev_io per socket curl asks
 * for, one ev_timer for curl's timeout, curl_multi_socket_action. Shared
 * by the scheduler's model client and the node's worker HTTP client. */
#ifndef WP_CURLEV_H
#define WP_CURLEV_H

#include <curl/curl.h>
#include <ev.h>
#include <stdbool.h>

struct wp_curlev_sock;
/* Runs after every curl_multi_socket_action, outside curl: the owner
 * drains curl_multi_info_read and removes what was cancelled inside. */
typedef void (*wp_curlev_after_cb)(void *ctx);

struct wp_curlev {
    struct ev_loop *loop;
    CURLM *multi;                  /* owned */
    ev_timer timer;                /* curl's one timeout */
    struct wp_curlev_sock *socks;
    int in_curl;                   /* > 0 inside curl_multi_socket_action */
    wp_curlev_after_cb after;
    void *ctx;
};

/* Embedded in its owner. Returns 0 or -ENOMEM. */
int wp_curlev_init(struct wp_curlev *ce, struct ev_loop *loop, wp_curlev_after_cb after, void *ctx);
/* The next finished transfer (CURLMSG_DONE): its CURLOPT_PRIVATE pointer
 * and result; false when there is none. For the owner's after hook. */
bool wp_curlev_next_done(struct wp_curlev *ce, void **priv, CURLcode *res);
/* curl_multi_cleanup (remove every easy handle first), then the watchers.
 * Not from inside curl. */
void wp_curlev_cleanup(struct wp_curlev *ce);

#endif
