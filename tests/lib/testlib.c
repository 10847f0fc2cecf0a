/* testlib.c - shared test helpers: temp dirs, a real redis-server, shell. */
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/fs.h"

char *th_tmpdir(const char *tag)
{
    const char *root = getenv("WP_TEST_TMP");
    char *path;

    if (!root)
        root = "/tmp";
    if (asprintf(&path, "%s/wp-%s-XXXXXX", root, tag) < 0)
        return NULL;
    if (!mkdtemp(path)) {
        free(path);
        return NULL;
    }
    /* Sandboxes in a user namespace reach their dirs (state dirs, bind
     * sources made here) as an unprivileged host id: search for others. */
    chmod(path, 0711);
    return path;
}

void th_rmtree(const char *path)
{
    if (path)
        wp_rm_rf(path, NULL);
}

int th_free_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int th_spawn(const char *log, const char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        wp_close_fds_from(3);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static int redis_spawn(struct th_redis *r, int aof, const char *extra_bind)
{
    char port[16];
    pid_t pid;

    snprintf(port, sizeof(port), "%d", r->port);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        wp_close_fds_from(3);
        /* Beyond loopback only where asked (no password: protected mode
         * would refuse those clients). */
        if (extra_bind)
            execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
                   extra_bind, "--protected-mode", "no", "--dir", r->dir, "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                   (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
                   "--dir", r->dir, "--save", "", "--appendonly", aof ? "yes" : "no",
                   "--appendfsync", "everysec", "--daemonize", "no",
                   "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    /* Wait until it answers PING (redis-cli is in the same package). */
    for (int i = 0; i < 500; i++) {
        char out[64] = "";
        if (th_sh(out, sizeof(out), "redis-cli -p %d ping 2>/dev/null", r->port) == 0 &&
            strncmp(out, "PONG", 4) == 0)
            return 0;
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    r->pid = 0;
    return -1;
}

int th_redis_start(struct th_redis *r, int aof)
{
    char *dir = th_tmpdir("redis");

    if (!dir)
        return -1;
    snprintf(r->dir, sizeof(r->dir), "%s", dir);
    free(dir);
    r->port = th_free_port();
    return redis_spawn(r, aof, NULL);
}

int th_redis_spawn_on(struct th_redis *r, const char *extra_bind)
{
    return redis_spawn(r, 0, extra_bind);
}

int th_term_wait(int pid, int ms)
{
    int st = 0;
    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    for (int i = 0; i < ms / 10; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

int th_redis_restart(struct th_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
    }
    return redis_spawn(r, 1, NULL);
}

void th_redis_stop(struct th_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
    th_rmtree(r->dir);
}

int th_sh(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    FILE *p;
    size_t n = 0;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    p = popen(cmd, "r");
    if (!p)
        return -1;
    if (out && cap) {
        n = fread(out, 1, cap - 1, p);
        out[n] = '\0';
    } else {
        char sink[512];
        while (fread(sink, 1, sizeof(sink), p) > 0)
            ;
    }
    st = pclose(p);
    if (st < 0 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

bool th_redis_cli_has(int port, const char *args, const char *needle)
{
    char out[8192] = "";
    th_sh(out, sizeof(out), "redis-cli -p %d %s 2>/dev/null", port, args);
    return strstr(out, needle) != NULL;
}
