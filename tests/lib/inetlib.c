/* inetlib.c - see inetlib.h. */
#include "inetlib.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "snaplib.h"
#include "testlib.h"

int th_source_file(const char *name, char *out, size_t cap)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    if (n <= 0)
        return -1;
    exe[n] = '\0';
    for (int up = 0; up < 6; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash)
            return -1;
        *slash = '\0';
        snprintf(out, cap, "%s/tests/integration/%s", exe, name);
        if (access(out, R_OK) == 0)
            return 0;
    }
    return -1;
}

int th_inet_start(struct th_inet *in, const char *dir, int third)
{
    char out[2048], script[PATH_MAX], ready[700];

    memset(in, 0, sizeof(*in));
    in->pid = -1;
    snprintf(in->gw, sizeof(in->gw), "198.18.%d.1", third);
    snprintf(in->addr, sizeof(in->addr), "198.18.%d.2", third);
    snprintf(in->ns, sizeof(in->ns), "wpt-inet-%d", (int)getpid());
    snprintf(in->hostif, sizeof(in->hostif), "wpi%d", (int)getpid() % 100000);
    if (th_sh(out, sizeof(out),
              "set -e; ip netns add %s; ip link add %s type veth peer name eth0 netns %s; "
              "ip addr add %s/30 dev %s; ip link set %s up; "
              "ip -n %s addr add %s/30 dev eth0; ip -n %s link set eth0 up; "
              "ip -n %s link set lo up; ip -n %s route add default via %s",
              in->ns, in->hostif, in->ns, in->gw, in->hostif, in->hostif, in->ns, in->addr, in->ns,
              in->ns, in->ns, in->gw) != 0) {
        fprintf(stderr, "inet: namespace: %s\n", out);
        return -1;
    }
    snprintf(in->tlsdir, sizeof(in->tlsdir), "%s/inet-tls", dir);
    if (th_sh(out, sizeof(out),
              "set -e; mkdir -p %s; cd %s; "
              "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
              "-keyout ca.key -out ca.pem -days 2 -subj /CN=test-internet-CA 2>/dev/null; "
              "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key "
              "-out srv.csr -subj /CN=api.allowed.test 2>/dev/null; "
              "echo 'subjectAltName=DNS:api.allowed.test,DNS:allowed.test,DNS:api.other.test' > ext; "
              "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem "
              "-days 2 -extfile ext 2>/dev/null",
              in->tlsdir, in->tlsdir) != 0) {
        fprintf(stderr, "inet: certificates: %s\n", out);
        return -1;
    }
    if (th_source_file("egress_server.py", script, sizeof(script)) < 0)
        return -1;
    snprintf(in->log, sizeof(in->log), "%s/inet-arrived.log", dir);
    snprintf(ready, sizeof(ready), "%s/inet.ready", dir);
    in->tls_port = th_free_port();
    in->http_port = th_free_port();
    in->pid = fork();
    if (in->pid == 0) {
        char tp[16], hp[16], cert[700], key[700];
        snprintf(tp, sizeof(tp), "%d", in->tls_port);
        snprintf(hp, sizeof(hp), "%d", in->http_port);
        snprintf(cert, sizeof(cert), "%s/srv.pem", in->tlsdir);
        snprintf(key, sizeof(key), "%s/srv.key", in->tlsdir);
        execlp("ip", "ip", "netns", "exec", in->ns, "python3", script, tp, hp, cert, key, in->log,
               ready, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && access(ready, F_OK) != 0; i++)
        th_msleep(50);
    if (access(ready, F_OK) != 0) {
        fprintf(stderr, "inet: egress_server.py did not start\n");
        return -1;
    }
    return 0;
}

void th_inet_stop(struct th_inet *in)
{
    char out[256];
    if (in->pid > 0) {
        kill(in->pid, SIGKILL);
        waitpid(in->pid, NULL, 0);
        in->pid = -1;
    }
    if (in->ns[0])
        th_sh(out, sizeof(out), "ip link del %s 2>/dev/null; ip netns del %s 2>/dev/null",
              in->hostif, in->ns);
}

char *th_inet_arrived(const struct th_inet *in, const char *path)
{
    char *log = NULL, key[256];
    struct wp_err err;

    if (wp_read_file(in->log, 1 << 26, &log, NULL, &err) < 0)
        return NULL;
    snprintf(key, sizeof(key), " %s HTTP/", path);
    char *at = strstr(log, key);
    if (!at) {
        free(log);
        return NULL;
    }
    char *end = strstr(at + 1, "\n=== ");
    char *out = strndup(at, end ? (size_t)(end - at) : strlen(at));
    free(log);
    return out;
}
