/* net.c - listening sockets, shared by the scheduler, the node's relay
 * and the test model server. */
#include "base/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/err.h"

int wp_tcp_listen(const char *host, int port, int backlog, int *bound, struct wp_err *err)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    socklen_t len = sizeof(sa);
    int fd, one = 1;

    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return wp_err_set(err, WP_ECONFIG, "listen address %s is not an IPv4 address", host);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return wp_err_errno(err, "socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, backlog) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        int code = wp_err_errno(err, "listen on %s:%d", host, port);
        close(fd);
        return code;
    }
    *bound = ntohs(sa.sin_port);
    return fd;
}
