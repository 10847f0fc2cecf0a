/* snaplib.c - helpers for tests that boot real sandboxes. */
#include "snaplib.h"
#include "testlib.h"
#include "sched_testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"

int th_snap_open(struct th_snap *s)
{
    return th_snap_open_cfg(s, NULL);
}

int th_snap_open_cfg(struct th_snap *s, const struct snap_config *base)
{
    struct wp_err err;
    struct snap_config cfg = { 0 };

    if (base)
        cfg = *base;
    memset(s, 0, sizeof(*s));
    s->state = th_tmpdir("snap");
    if (!s->state)
        return -1;
    snprintf(s->rootfs, sizeof(s->rootfs), "%s/layers/busybox", s->state);
    cfg.state_dir = s->state;
    if (snap_ctx_open(&cfg, &s->ctx, &err) < 0 || snap_rootfs_busybox(s->rootfs, &err) < 0) {
        fprintf(stderr, "th_snap_open: %s\n", err.msg);
        return -1;
    }
    return 0;
}

void th_snap_close(struct th_snap *s)
{
    if (s->ctx) {
        /* Whatever a failed test left running: destroy every sandbox. */
        char dir[1024];
        snprintf(dir, sizeof(dir), "%s/sandboxes", s->state);
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.')
                snap_destroy_id(s->ctx, e->d_name, NULL);
        if (d)
            closedir(d);
        /* Images too, through the API: each gives back its uid range. */
        snprintf(dir, sizeof(dir), "%s/images", s->state);
        d = opendir(dir);
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.' && snap_name_valid(e->d_name))
                snap_image_delete(s->ctx, e->d_name, NULL);
        if (d)
            closedir(d);
        snap_gc(s->ctx, NULL);
        snap_ctx_close(s->ctx);
    }
    th_rmtree(s->state);
    free(s->state);
    s->state = NULL;
}

struct snap_template *th_template(const char *fmt, ...)
{
    char json[8192];
    struct snap_template *t = NULL;
    struct wp_err err;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(json, sizeof(json), fmt, ap);
    va_end(ap);
    if (snap_template_parse(json, strlen(json), &t, &err) < 0)
        fail_msg("template: %s\n%s", err.msg, json);
    return t;
}

bool th_sandbox_gone(struct th_snap *s, const char *id, pid_t pid)
{
    char path[1024], line[2048];
    struct stat st;
    glob_t g;
    bool gone = true;
    FILE *f;

    snprintf(path, sizeof(path), "%s/sandboxes/%s", s->state, id);
    if (stat(path, &st) == 0) {
        fprintf(stderr, "leak: %s exists\n", path);
        gone = false;
    }
    snprintf(path, sizeof(path), "/sys/fs/cgroup/*/warmpool/%s", id);
    if (glob(path, 0, NULL, &g) == 0) {
        fprintf(stderr, "leak: cgroup %s\n", g.gl_pathv[0]);
        gone = false;
    }
    globfree(&g);
    snprintf(path, sizeof(path), "/sys/fs/cgroup/warmpool/%s", id);
    if (stat(path, &st) == 0) {
        fprintf(stderr, "leak: cgroup %s\n", path);
        gone = false;
    }
    f = fopen("/proc/self/mountinfo", "r");
    while (f && fgets(line, sizeof(line), f))
        if (strstr(line, id)) {
            fprintf(stderr, "leak: mount %s", line);
            gone = false;
        }
    if (f)
        fclose(f);
    if (pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH)) {
        fprintf(stderr, "leak: process %d\n", (int)pid);
        gone = false;
    }
    return gone;
}

void th_destroy_gone(struct th_snap *s, struct snap_sandbox *sb)
{
    struct wp_err err;
    char id[64];
    pid_t pid = sb->init_pid;

    snprintf(id, sizeof(id), "%s", sb->id);
    if (snap_destroy(s->ctx, sb, &err) < 0)
        fail_msg("destroy %s: %s", id, err.msg);
    assert_true(th_sandbox_gone(s, id, pid));
}

char *th_read_in(const struct snap_sandbox *sb, const char *path)
{
    char full[1024], *data = NULL;
    size_t len;

    snprintf(full, sizeof(full), "%s%s", sb->root, path);
    if (wp_read_file(full, 1 << 20, &data, &len, NULL) < 0)
        return NULL;
    return data;
}

long th_read_long(const struct snap_sandbox *sb, const char *path)
{
    /* The writer truncates then writes: an empty read is a moment in
     * between, so look again. */
    for (int i = 0; i < 100; i++) {
        char *s = th_read_in(sb, path);
        long v = s && *s ? strtol(s, NULL, 10) : -1;
        free(s);
        if (v >= 0)
            return v;
        th_msleep(1);
    }
    return -1;
}

unsigned long th_ns_inode(pid_t pid, const char *ns)
{
    char path[128];
    struct stat st;

    snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, ns);
    return stat(path, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

void th_msleep(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int th_hostname_of(pid_t pid, char *out, size_t cap)
{
    char path[128];
    int pfd[2];
    pid_t child;
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%d/ns/uts", (int)pid);
    if (pipe(pfd) < 0)
        return -1;
    child = fork();
    if (child == 0) {
        char hn[256] = "";
        int fd = open(path, O_RDONLY);
        if (fd < 0 || setns(fd, CLONE_NEWUTS) < 0)
            _exit(1);
        gethostname(hn, sizeof(hn));
        if (write(pfd[1], hn, strlen(hn)) < 0)
            _exit(1);
        _exit(0);
    }
    close(pfd[1]);
    n = read(pfd[0], out, cap - 1);
    close(pfd[0]);
    waitpid(child, NULL, 0);
    if (n < 0)
        return -1;
    out[n] = '\0';
    return 0;
}

int th_hands_template(const char *dir, const char *name, const char *hostname, char *path,
                      size_t cap)
{
    char wp[1024], json[2048], host[128] = "";
    struct wp_err err;

    if (th_hands_copy(dir, wp, sizeof(wp)) < 0)
        return -1;
    if (hostname)
        snprintf(host, sizeof(host), "\"hostname\":\"%s\",", hostname);
    snprintf(path, cap, "%s/%s.json", dir, name);
    snprintf(json, sizeof(json),
             "{\"name\":\"%s\",\"rootfs\":\"host\",\"workdir\":\"/work\",%s"
             "\"init_sets_hostname\":true,\"init\":[\"/.wp/warmpool-hands\",\"--socket\",\"/run/warmpool/hands.sock\","
             "\"--workdir\",\"/work\",\"--ready-file\",\"/run/warmpool/hands.ready\"],"
             "\"ready_file\":\"/run/warmpool/hands.ready\","
             "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
             "\"limits\":{\"memory_mb\":64,\"pids\":32}}",
             name, host, wp);
    return wp_write_file(path, json, strlen(json), 0644, &err) < 0 ? -1 : 0;
}

pid_t th_node_spawn(const char *dir, const char *id, int redis_port, const char *env_spec)
{
    char log[1100], state[1100];
    snprintf(log, sizeof(log), "%s/node-%s.log", dir, id);
    snprintf(state, sizeof(state), "%s/state-%s", dir, id);
    return th_node_start(id, redis_port, state, log, "--env", env_spec, (char *)NULL);
}

int th_open_in_cgroup(const char *dir, const char *path)
{
    int pfd[2], res = -EIO;
    pid_t pid;

    if (pipe(pfd) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return -errno;
    }
    if (pid == 0) {
        char procs[600], me[32];
        snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
        snprintf(me, sizeof(me), "%d", (int)getpid());
        int f = open(procs, O_WRONLY);
        int r = f >= 0 && write(f, me, strlen(me)) > 0 ? 0 : -EIO;
        if (r == 0) {
            int fd = open(path, O_RDONLY | O_NOCTTY);
            r = fd >= 0 ? 1 : -errno;
        }
        if (write(pfd[1], &r, sizeof(r)) < 0)
            _exit(1);
        _exit(0);
    }
    close(pfd[1]);
    if (read(pfd[0], &res, sizeof(res)) != (ssize_t)sizeof(res))
        res = -EIO;
    close(pfd[0]);
    waitpid(pid, NULL, 0);
    return res;
}
