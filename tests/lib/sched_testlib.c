/* sched_testlib.c - see sched_testlib.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "sched_testlib.h"
#include "snaplib.h"
#include "testlib.h"
#include "base/err.h"
#include "base/fs.h"

const char *th_build_dir(void)
{
    static char dir[4096];
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return "build";
    exe[n] = '\0';
    /* BUILD/tests/<unit|integration>/<name> */
    char *d = dirname(dirname(dirname(exe)));
    snprintf(dir, sizeof(dir), "%s", d);
    return dir;
}

int th_hands_copy(const char *dir, char *out, size_t cap)
{
    char hands[4200], dst[4200], *data = NULL;
    size_t len = 0;
    struct wp_err err;
    int rc = -1;

    snprintf(hands, sizeof(hands), "%s/warmpool-hands", th_build_dir());
    snprintf(out, cap, "%s/wp", dir);
    snprintf(dst, sizeof(dst), "%s/warmpool-hands", out);
    if (access(dst, X_OK) == 0)
        return 0; /* copied already (templates of one test share it) */
    if ((mkdir(out, 0755) == 0 || errno == EEXIST) &&
        wp_read_file(hands, 64 << 20, &data, &len, &err) == 0 &&
        wp_write_file(dst, data, len, 0755, &err) == 0)
        rc = 0;
    free(data);
    return rc;
}

int th_node_start(const char *id, int redis_port, const char *state, const char *log, ...)
{
    const char *argv[64];
    char bin[4200], redis[64];
    int argc = 0;
    va_list ap;

    snprintf(bin, sizeof(bin), "%s/warmpool-node", th_build_dir());
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", redis_port);
    argv[argc++] = bin;
    argv[argc++] = "--id";
    argv[argc++] = id;
    argv[argc++] = "--redis";
    argv[argc++] = redis;
    argv[argc++] = "--state-dir";
    argv[argc++] = state;
    /* Tests stop nodes with SIGTERM and expect them gone at once (leased
     * sandboxes lost); test_drain passes its own --drain-timeout after. */
    argv[argc++] = "--drain-timeout";
    argv[argc++] = "0";
    va_start(ap, log);
    for (const char *a; argc < 62 && (a = va_arg(ap, const char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        wp_close_fds_from(3);
        execv(bin, (char **)argv);
        _exit(127);
    }
    return pid;
}

bool th_wait_hot(int redis_port, const char *env, int n, int secs)
{
    for (int i = 0; i < secs * 20; i++) {
        char out[64];
        th_sh(out, sizeof(out), "redis-cli -p %d llen 'wp:env:{%s}:hot'", redis_port, env);
        if (atoi(out) >= n)
            return true;
        th_msleep(50);
    }
    return false;
}

/* Children still running at exit (a failed assertion skips the stop)
 * are killed so no scheduler outlives its test binary. */
static int live_pids[64];

static void kill_survivors(void)
{
    for (int i = 0; i < 64; i++)
        if (live_pids[i] > 0) {
            kill(live_pids[i], SIGKILL);
            waitpid(live_pids[i], NULL, 0);
            live_pids[i] = 0;
        }
}

static void track(int pid, bool add)
{
    static bool registered;
    if (!registered) {
        atexit(kill_survivors);
        registered = true;
    }
    for (int i = 0; i < 64; i++) {
        if (add && live_pids[i] == 0) {
            live_pids[i] = pid;
            return;
        }
        if (!add && live_pids[i] == pid) {
            live_pids[i] = 0;
            return;
        }
    }
}

static char vkey[64];
static pid_t vkey_owner;
static void drop_vault_key(void)
{
    if (vkey[0] && getpid() == vkey_owner) /* not a forked child's exit */
        unlink(vkey);
}

int th_sched_start(struct th_sched *s, int redis_port, ...)
{
    va_list ap;
    va_start(ap, redis_port);
    int rc = th_sched_startv(s, redis_port, ap);
    va_end(ap);
    return rc;
}

int th_stack_start(struct th_redis *r, struct th_sched *s, ...)
{
    va_list ap;
    if (th_redis_start(r, 0) < 0)
        return -1;
    va_start(ap, s);
    int rc = th_sched_startv(s, r->port, ap);
    va_end(ap);
    if (rc < 0)
        th_redis_stop(r);
    return rc;
}

int th_stack_stop(struct th_redis *r, struct th_sched *s)
{
    int st = th_sched_stop(s);
    th_redis_stop(r);
    return st == 0 ? 0 : -1;
}

int th_sched_startv(struct th_sched *s, int redis_port, va_list ap)
{
    const char *argv[64];
    char bin[4200], redis[64];
    int argc = 0, pfd[2];

    snprintf(bin, sizeof(bin), "%s/warmpool-scheduler", th_build_dir());
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", redis_port);
    argv[argc++] = bin;
    argv[argc++] = "--listen";
    argv[argc++] = "127.0.0.1:0";
    argv[argc++] = "--redis";
    argv[argc++] = redis;
    argv[argc++] = "--api-key";
    argv[argc++] = "acme:sk-acme";
    argv[argc++] = "--api-key";
    argv[argc++] = "beta:sk-beta";
    argv[argc++] = "--log-level";
    argv[argc++] = getenv("WP_SCHED_LOG") ? getenv("WP_SCHED_LOG") : "warn";
    /* One vault key per test process (its schedulers share it), not the
     * machine's /etc/warmpool/vault.key; a test may pass its own after. */
    if (!vkey[0]) {
        snprintf(vkey, sizeof(vkey), "/tmp/wp-test-vault-%d.key", (int)getpid());
        vkey_owner = getpid();
        atexit(drop_vault_key);
    }
    argv[argc++] = "--vault-key-file";
    argv[argc++] = vkey;
    const char *a;
    while ((a = va_arg(ap, const char *)) && argc < 62)
        argv[argc++] = a;
    argv[argc] = NULL;
    if (pipe(pfd) < 0)
        return -1;
    int pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    s->pid = pid;
    track(pid, true);
    s->port = 0;
    char buf[256];
    size_t len = 0;
    struct pollfd p = {.fd = pfd[0], .events = POLLIN};
    while (len < sizeof(buf) - 1 && poll(&p, 1, 10000) > 0) {
        ssize_t n = read(pfd[0], buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        if (sscanf(buf, "listening %d", &s->port) == 1 && strchr(buf, '\n'))
            break;
    }
    close(pfd[0]);
    if (s->port <= 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    /* Give the Redis connection a moment to come up. */
    usleep(50000);
    return 0;
}

int th_sched_stop(struct th_sched *s)
{
    if (s->pid <= 0)
        return -1;
    track(s->pid, false);
    int rc = th_term_wait(s->pid, 10000);
    s->pid = 0;
    return rc;
}

int th_sched_kill(struct th_sched *s)
{
    int st = 0;
    if (s->pid <= 0)
        return -1;
    track(s->pid, false);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
    return 0;
}

int th_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 10};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int th_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int th_read_until(int fd, char *out, size_t cap, const char *needle, int timeout_ms)
{
    size_t len = 0;
    long deadline = now_ms() + timeout_ms;
    out[0] = '\0';
    while (len < cap - 1) {
        if (needle && strstr(out, needle))
            break;
        long left = deadline - now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = recv(fd, out + len, cap - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        out[len] = '\0';
    }
    return (int)len;
}

int th_read_all(int fd, char *out, size_t cap, int timeout_ms)
{
    return th_read_until(fd, out, cap, NULL, timeout_ms);
}

json_t *th_call(int port, const char *key, const char *method, const char *path,
                const char *body, int want)
{
    struct th_resp r;
    if (th_http(port, method, path, key, body, &r) < 0) {
        fprintf(stderr, "%s %s: no response\n", method, path);
        return NULL;
    }
    json_t *j = r.status == want ? json_loads(r.body, 0, NULL) : NULL;
    if (!j)
        fprintf(stderr, "%s %s -> %d (want %d) %s\n", method, path, r.status, want, r.body);
    th_resp_free(&r);
    return j;
}

json_t *th_api(int port, const char *key, const char *method, const char *path, const char *body,
               int want)
{
    struct th_resp r;
    assert_int_equal(th_http(port, method, path, key, body, &r), 0);
    if (r.status != want)
        fail_msg("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body);
    json_t *o = json_loads(r.body, 0, NULL);
    th_resp_free(&r);
    assert_non_null(o);
    return o;
}

void th_resp_free(struct th_resp *r)
{
    free(r->body);
    r->body = NULL;
}

int th_resp_header(const struct th_resp *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = r->head; (p = strchr(p, '\n')); ) {
        p++;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t l = strcspn(v, "\r\n");
            snprintf(out, cap, "%.*s", (int)l, v);
            return 0;
        }
    }
    return -1;
}

int th_http(int port, const char *method, const char *path, const char *key, const char *body,
            struct th_resp *r)
{
    memset(r, 0, sizeof(*r));
    int fd = th_connect(port);
    if (fd < 0)
        return -1;
    size_t bl = body ? strlen(body) : 0;
    size_t cap = 8192 + bl;
    char *req = malloc(cap);
    int n = snprintf(req, cap,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s"
                     "%s",
                     method, path, key ? "x-api-key: " : "", key ? key : "", key ? "\r\n" : "",
                     body ? "Content-Type: application/json\r\n" : "");
    if (body)
        n += snprintf(req + n, cap - (size_t)n, "Content-Length: %zu\r\n", bl);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    if (body) {
        memcpy(req + n, body, bl);
        n += (int)bl;
    }
    int rc = th_send_all(fd, req, (size_t)n);
    free(req);
    if (rc < 0) {
        close(fd);
        return -1;
    }
    size_t rcap = 1 << 24;
    char *buf = malloc(rcap);
    int len = th_read_all(fd, buf, rcap, 10000);
    close(fd);
    char *sep = strstr(buf, "\r\n\r\n");
    if (len <= 0 || !sep || sscanf(buf, "HTTP/1.1 %d", &r->status) != 1) {
        free(buf);
        return -1;
    }
    size_t hl = (size_t)(sep - buf);
    snprintf(r->head, sizeof(r->head), "%.*s", (int)(hl < sizeof(r->head) ? hl : sizeof(r->head) - 1), buf);
    r->body_len = (size_t)len - hl - 4;
    r->body = malloc(r->body_len + 1);
    memcpy(r->body, sep + 4, r->body_len);
    r->body[r->body_len] = '\0';
    free(buf);
    return 0;
}

void th_send_text(int port, const char *key, const char *sid, const char *text)
{
    char path[160], body[1024];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
             text);
    json_decref(th_api(port, key, "POST", path, body, 200));
}
