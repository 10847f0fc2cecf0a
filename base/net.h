/* net.h - listening sockets. */
#ifndef WP_NET_H
#define WP_NET_H

struct wp_err;

/* A non-blocking, close-on-exec TCP listener on an IPv4 host and port
 * (0: any free port), SO_REUSEADDR set. Returns the fd (caller owns it)
 * and the bound port in *bound, or < 0: WP_ECONFIG for a host that is not
 * an IPv4 address, -errno otherwise. */
int wp_tcp_listen(const char *host, int port, int backlog, int *bound, struct wp_err *err);

#endif
