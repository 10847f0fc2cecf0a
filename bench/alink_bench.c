/* alink_bench.c - agentlink round trips, host -> hands -> host, over a Unix
 * socket with the real libev client and a real warmpool-hands child:
 *   - a trivial tool call (read of a 6-byte file: no shell involved),
 *   - a trivial bash call (`true` through the persistent shell),
 *   - attach (2 env vars, 32 bytes of seed).
 * Each is timed N times back to back (after a warm-up); prints median, p95,
 * p99, min, max in microseconds and writes JSON and Markdown.
 *
 *   alink_bench HANDS-BINARY [--n N] [--json FILE] [--md FILE]
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "agentlink/agentlink.h"
#include "base/err.h"
#include "base/timeutil.h"

struct waiter {
    bool done;
    int status;
    bool is_error;
};

static void result_cb(void *ctx, int status, const struct alink_result *res,
                      const struct wp_err *err)
{
    struct waiter *w = ctx;
    (void)err;
    w->done = true;
    w->status = status;
    w->is_error = res->is_error;
}

static void connect_cb(void *ctx, int status, const struct wp_err *err)
{
    int *st = ctx;
    if (status < 0)
        fprintf(stderr, "connect: %s\n", err ? err->msg : "?");
    *st = status == 0 ? 1 : -1;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct stats {
    double median, p95, p99, min, max;
};

static struct stats summarize(double *v, int n)
{
    struct stats s;
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    s.median = v[n / 2];
    s.p95 = v[(int)(n * 0.95)];
    s.p99 = v[(int)(n * 0.99)];
    s.min = v[0];
    s.max = v[n - 1];
    return s;
}

enum kind { K_READ, K_BASH, K_ATTACH };

static int run(struct ev_loop *loop, struct alink_client *c, enum kind k, int n, double *out)
{
    json_t *read_in = json_pack("{s:s}", "file_path", "f.txt");
    json_t *bash_in = json_pack("{s:s}", "command", "true");
    struct alink_env_var env[] = {{"WP_SESSION_ENV_A", "alpha"}, {"WP_SESSION_ENV_B", "beta"}};
    struct alink_attach at = {.session_id = "sess_bench", .env = env, .n_env = 2};
    struct wp_err err;

    for (int i = 0; i < n; i++) {
        struct waiter w = {0};
        uint64_t t0 = wp_now_ns();
        int64_t id;
        if (k == K_ATTACH)
            id = alink_client_attach(c, &at, result_cb, &w, &err);
        else
            id = alink_client_call(c, k == K_READ ? "read" : "bash",
                                   k == K_READ ? read_in : bash_in, NULL, result_cb, &w, &err);
        if (id < 0) {
            fprintf(stderr, "start: %s\n", err.msg);
            return -1;
        }
        while (!w.done)
            ev_run(loop, EVRUN_ONCE);
        if (out)
            out[i] = (double)(wp_now_ns() - t0) / 1000.0;
        if (w.status != 0 || w.is_error) {
            fprintf(stderr, "call failed (kind %d)\n", (int)k);
            return -1;
        }
    }
    json_decref(read_in);
    json_decref(bash_in);
    return 0;
}

int main(int argc, char **argv)
{
    const char *hands, *json_path = NULL, *md_path = NULL;
    int n = 1000;
    char dir[] = "/tmp/wp-alink-bench-XXXXXX";
    char sock[256], work[256], file[300];
    struct ev_loop *loop;
    struct alink_client *c;
    struct wp_err err;
    pid_t pid;
    int st = 0, rc = 1;

    if (argc < 2) {
        fprintf(stderr, "usage: %s HANDS-BINARY [--n N] [--json FILE] [--md FILE]\n", argv[0]);
        return 2;
    }
    hands = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--n") == 0)
            n = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--json") == 0)
            json_path = argv[i + 1];
        else if (strcmp(argv[i], "--md") == 0)
            md_path = argv[i + 1];
    }
    if (n < 20)
        n = 20;
    if (!mkdtemp(dir))
        return 1;
    snprintf(sock, sizeof(sock), "%s/hands.sock", dir);
    snprintf(work, sizeof(work), "%s/work", dir);
    mkdir(work, 0755);
    snprintf(file, sizeof(file), "%s/f.txt", work);
    FILE *f = fopen(file, "w");
    if (!f)
        return 1;
    fputs("hello\n", f);
    fclose(f);
    pid = fork();
    if (pid == 0) {
        execl(hands, hands, "--socket", sock, "--workdir", work, "--log-level", "warn",
              (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        if (access(sock, F_OK) == 0)
            break;
        usleep(10000);
    }
    loop = ev_loop_new(EVFLAG_AUTO);
    if (alink_client_new(loop, NULL, &c, &err) < 0 ||
        alink_client_connect_unix(c, sock, connect_cb, &st, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        goto out;
    }
    while (!st)
        ev_run(loop, EVRUN_ONCE);
    if (st < 0)
        goto out;

    double *v[3];
    struct stats s[3];
    const char *names[3] = {"tool_call_read", "tool_call_bash_true", "attach"};
    for (int k = 0; k < 3; k++) {
        v[k] = calloc((size_t)n, sizeof(double));
        if (run(loop, c, (enum kind)k, 50, NULL) < 0 || run(loop, c, (enum kind)k, n, v[k]) < 0)
            goto out;
        s[k] = summarize(v[k], n);
        printf("%-20s n=%d median=%.1fus p95=%.1fus p99=%.1fus min=%.1fus max=%.1fus\n",
               names[k], n, s[k].median, s[k].p95, s[k].p99, s[k].min, s[k].max);
    }
    struct utsname u;
    uname(&u);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    if (json_path) {
        FILE *j = fopen(json_path, "w");
        if (!j)
            goto out;
        fprintf(j, "{\n  \"benchmark\": \"agentlink\",\n  \"date\": \"%s\",\n"
                   "  \"machine\": {\"kernel\": \"%s\", \"cpus\": %ld},\n"
                   "  \"transport\": \"unix socket, libev client, warmpool-hands child process\",\n"
                   "  \"n\": %d,\n  \"target_median_us\": 200,\n  \"results_us\": {\n",
                when, u.release, ncpu, n);
        for (int k = 0; k < 3; k++)
            fprintf(j,
                    "    \"%s\": {\"median\": %.1f, \"p95\": %.1f, \"p99\": %.1f, \"min\": %.1f, "
                    "\"max\": %.1f}%s\n",
                    names[k], s[k].median, s[k].p95, s[k].p99, s[k].min, s[k].max,
                    k < 2 ? "," : "");
        fprintf(j, "  },\n  \"target_met\": %s\n}\n", s[0].median < 200 ? "true" : "false");
        fclose(j);
    }
    if (md_path) {
        FILE *m = fopen(md_path, "w");
        if (!m)
            goto out;
        fprintf(m,
                "# agentlink round trips\n\n"
                "%s, Linux %s, %ld CPUs. Host -> warmpool-hands -> host over a Unix socket "
                "(libev client, hands as a child process), %d calls each, back to back, after "
                "50 warm-up calls. Produced by `bench/bench_agentlink.sh`.\n\n"
                "| what | median (us) | p95 (us) | p99 (us) | min (us) | max (us) |\n"
                "|---|---:|---:|---:|---:|---:|\n",
                when, u.release, ncpu, n);
        const char *desc[3] = {"trivial tool call (`read` of a 6-byte file)",
                               "`bash` `true` (persistent shell)",
                               "`attach` (2 env vars, 32-byte reseed)"};
        for (int k = 0; k < 3; k++)
            fprintf(m, "| %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n", desc[k], s[k].median,
                    s[k].p95, s[k].p99, s[k].min, s[k].max);
        fprintf(m, "\nTarget: median under 200 us for the trivial round trip: %s.\n",
                s[0].median < 200 ? "met" : "NOT met");
        fclose(m);
    }
    for (int k = 0; k < 3; k++)
        free(v[k]);
    rc = 0;
out:
    alink_client_free(c);
    ev_loop_destroy(loop);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}
