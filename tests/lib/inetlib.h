/* inetlib.h - "the internet" for egress tests: a network namespace of the
 * test's own behind a host veth (a /30 of 198.18.0.0/15, the benchmarking
 * range) running tests/integration/egress_server.py, an HTTPS server with a
 * certificate a test CA signed (for api.allowed.test, allowed.test,
 * api.other.test) and a plain HTTP one, both recording every request as
 * it arrives. */
#ifndef TH_INETLIB_H
#define TH_INETLIB_H

#include <stddef.h>
#include <sys/types.h>

struct th_inet {
    char ns[32], hostif[16];
    char gw[16], addr[16];  /* the host's end, the server's */
    char tlsdir[600];       /* ca.pem: the CA to trust upstream */
    char log[700];          /* what arrived */
    int tls_port, http_port;
    pid_t pid;
};

/* third: 198.18.<third>.0/30. Files under dir. 0 or -1 (says why). */
int th_inet_start(struct th_inet *in, const char *dir, int third);
void th_inet_stop(struct th_inet *in);
/* The recorded request whose path is `path` (caller frees), or NULL. */
char *th_inet_arrived(const struct th_inet *in, const char *path);
/* tests/integration/<name> from the build tree's location. 0 or -1. */
int th_source_file(const char *name, char *out, size_t cap);

#endif
