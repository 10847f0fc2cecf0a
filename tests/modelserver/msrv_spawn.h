/* msrv_spawn.h - start and stop wp-modelserver from a test (header-only,
 * static functions; include from tests only).
 *
 *   struct msrv_proc m;
 *   const char *args[] = { "--ttft", "fixed:50", NULL };
 *   if (msrv_spawn(&m, args) < 0) fail();
 *   ... http://127.0.0.1:m.port ...
 *   msrv_stop(&m);
 *
 * The binary is found as $WP_MODELSERVER, else BUILD/wp-modelserver where
 * BUILD is three levels above the running test (BUILD/tests/<kind>/<test>).
 * Its stderr (one log line per request) goes to m.log. */
#ifndef MSRV_SPAWN_H
#define MSRV_SPAWN_H

#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/testlib.h"

struct msrv_proc {
    int pid;
    int port;
    char bin[1024];
    char log[512];
};

static inline int msrv_find_bin(char *out, size_t cap)
{
    char exe[900];
    ssize_t n;
    const char *env = getenv("WP_MODELSERVER");

    if (env) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    /* BUILD/tests/<kind>/<name> -> BUILD */
    for (int i = 0; i < 3; i++) {
        char *slash = strrchr(exe, '/');
        if (!slash)
            return -1;
        *slash = '\0';
    }
    snprintf(out, cap, "%s/wp-modelserver", exe);
    return access(out, X_OK);
}

/* BUILD directory of the running test (for scratch files such as npm's). */
static inline int msrv_build_dir(char *out, size_t cap)
{
    char bin[1024];

    if (msrv_find_bin(bin, sizeof(bin)) < 0)
        return -1;
    snprintf(out, cap, "%s", dirname(bin));
    return 0;
}

/* The same on a given port (0: a free one), e.g. to start it again where
 * its clients already point. */
static inline int msrv_spawn_port(struct msrv_proc *m, int at, const char *const *args)
{
    const char *argv[64];
    char port[16];
    int n = 0;
    pid_t pid;

    memset(m, 0, sizeof(*m));
    if (msrv_find_bin(m->bin, sizeof(m->bin)) < 0)
        return -1;
    m->port = at > 0 ? at : th_free_port();
    snprintf(port, sizeof(port), "%d", m->port);
    snprintf(m->log, sizeof(m->log), "/tmp/wp-msrv-%d-%d.log", (int)getpid(), m->port);
    argv[n++] = m->bin;
    argv[n++] = "--port";
    argv[n++] = port;
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(m->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        execv(m->bin, (char *const *)argv);
        _exit(127);
    }
    m->pid = pid;
    for (int i = 0; i < 500; i++) {
        char out[16] = "";
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            m->pid = 0;
            return -1;
        }
        if (th_sh(out, sizeof(out), "curl -s -m 1 http://127.0.0.1:%d/health 2>/dev/null",
                  m->port) == 0 &&
            strncmp(out, "ok", 2) == 0)
            return 0;
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    m->pid = 0;
    return -1;
}

static inline int msrv_spawn(struct msrv_proc *m, const char *const *args)
{
    return msrv_spawn_port(m, 0, args);
}

/* SIGTERM, then the exit status (0 = clean shutdown). */
static inline int msrv_stop(struct msrv_proc *m)
{
    int st = -1;

    if (m->pid <= 0)
        return -1;
    kill(m->pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(m->pid, &st, WNOHANG) == m->pid) {
            m->pid = 0;
            unlink(m->log);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    kill(m->pid, SIGKILL);
    waitpid(m->pid, NULL, 0);
    m->pid = 0;
    return -1;
}

#endif
