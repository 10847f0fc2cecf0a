/* criu.c - how this host runs criu: the probe, the mode, the deadlines.
 *
 * `criu check` passing says little: on some CPUs (seen: AMD Zen 5 in a
 * VM) compel stops a task at its rt_sigreturn with an x86 hardware
 * breakpoint that never fires, and every dump waits forever. criu's fault
 * injection switch CRIU_FAULT=130 (FI_NO_BREAKPOINTS) makes it stop the
 * task with PTRACE_SYSCALL instead. So the probe dumps and restores a
 * throwaway process (eagerly and lazily) under a deadline, first in the
 * default mode, then without breakpoints, and the node runs every criu
 * (libcriu's swrk, the CLI, lazy-pages) in the first mode that worked.
 * Where none works the node boots sandboxes cold.
 *
 * The answer depends on the kernel, the criu build and the CPU, so it is
 * cached under that key (cache_dir/criu-probe-<sha256 prefix>.json); a
 * lock file serialises probes of processes starting together.
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"

#define FI_NO_BREAKPOINTS "130"

static const char *const mode_names[] = { "unknown", "default", "no-breakpoints", "none" };

const char *snap_criu_mode_name(enum snap_criu_mode m)
{
    return (unsigned)m < sizeof(mode_names) / sizeof(mode_names[0]) ? mode_names[m] : "unknown";
}

int snap_criu_mode_parse(const char *s, enum snap_criu_mode *out)
{
    if (!s || strcmp(s, "auto") == 0)
        *out = SNAP_CRIU_UNKNOWN;
    else if (strcmp(s, "default") == 0)
        *out = SNAP_CRIU_DEFAULT;
    else if (strcmp(s, "no-breakpoints") == 0)
        *out = SNAP_CRIU_NOBP;
    else if (strcmp(s, "none") == 0)
        *out = SNAP_CRIU_NONE;
    else
        return WP_EINVAL_INPUT;
    return 0;
}

void snap__criu_env(enum snap_criu_mode mode)
{
    /* The variable is criu's own; one inherited from the operator's shell
     * must not decide the mode behind the probe's back. */
    if (mode == SNAP_CRIU_NOBP)
        setenv("CRIU_FAULT", FI_NO_BREAKPOINTS, 1);
    else
        unsetenv("CRIU_FAULT");
    /* criu links GnuTLS for its page server's TLS, which warmpool never
     * asks for; the library's load-time set-up (ASN.1 trees, PKCS#11) was
     * ~4 ms of CPU on every criu exec, so on every restore. */
    setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 1);
}

/* ---- waiting with a deadline --------------------------------------------- */

int snap__wait_deadline(pid_t pid, uint64_t deadline_ns, int *status)
{
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int st = 0;

    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status)
                *status = st;
            if (pfd >= 0)
                close(pfd);
            return 0;
        }
        if (r < 0 && errno != EINTR) {
            /* ECHILD: reaped by someone else (a daemon's SIGCHLD handler). */
            if (pfd >= 0)
                close(pfd);
            if (status)
                *status = 0;
            return errno == ECHILD ? 0 : -errno;
        }
        uint64_t now = wp_now_ns();
        if (now >= deadline_ns) {
            if (pfd >= 0)
                close(pfd);
            return WP_ETIMEDOUT;
        }
        uint64_t left_ms = (deadline_ns - now) / 1000000 + 1;
        if (pfd >= 0) {
            struct pollfd p = { pfd, POLLIN, 0 };
            poll(&p, 1, left_ms > 1000 ? 1000 : (int)left_ms);
        } else {
            struct timespec ts = { 0, 2 * 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
    }
}

void snap__kill_group(pid_t pid)
{
    /* The group first (criu and whatever it forked), then the leader in
     * case it never got its own group. SIGKILL detaches ptrace: a task
     * criu had seized runs on, untraced. */
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* ---- the probe ------------------------------------------------------------- */

struct step {
    double ms;
    bool timed_out;
    int status;
};

/* In a child: nothing inherited but /dev/null as stdin/out/err. */
static void child_stdio_null(void)
{
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    wp_close_fds_from(3);
}

/* Start criu with args in the mode, leading a process group of its own
 * (killed whole at a deadline); output to /dev/null (it logs to the file
 * named in args). Returns its pid or -errno. */
static pid_t spawn_criu(const char *criu, const char *const *args, enum snap_criu_mode mode)
{
    const char *argv[24];
    int n = 0;
    pid_t pid;

    argv[n++] = criu;
    for (const char *const *a = args; *a && n < 23; a++)
        argv[n++] = *a;
    argv[n] = NULL;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        setpgid(0, 0);
        child_stdio_null();
        snap__criu_env(mode);
        unsetenv("CRIU_CONFIG_FILE");
        execv(criu, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Run criu under a deadline. */
static int run_criu(const char *criu, const char *const *args, enum snap_criu_mode mode,
                    double deadline_s, struct step *st)
{
    uint64_t t0 = wp_now_ns();
    int rc;
    pid_t pid;

    memset(st, 0, sizeof(*st));
    pid = spawn_criu(criu, args, mode);
    if (pid < 0)
        return pid;
    rc = snap__wait_deadline(pid, t0 + (uint64_t)(deadline_s * 1e9), &st->status);
    if (rc == WP_ETIMEDOUT) {
        snap__kill_group(pid);
        st->timed_out = true;
    }
    st->ms = (double)(wp_now_ns() - t0) / 1e6;
    return rc == WP_ETIMEDOUT ? 0 : rc;
}

/* The throwaway task: its own session, nothing inherited but /dev/null. */
static pid_t start_target(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        child_stdio_null();
        execl("/bin/sleep", "sleep", "1000", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* A task criu let go of must be running (or sleeping) and untraced. */
static bool untraced(pid_t pid)
{
    char path[64], *data = NULL, *p;
    size_t len;
    bool ok = false;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if (wp_read_file(path, 1 << 16, &data, &len, NULL) < 0)
        return false;
    p = strstr(data, "\nTracerPid:");
    ok = p && atoi(p + 11) == 0 && !strstr(data, "\nState:\tt") && !strstr(data, "\nState:\tT");
    free(data);
    return ok;
}

static pid_t read_pidfile(const char *path)
{
    char *data = NULL;
    size_t len;
    pid_t pid = 0;
    if (wp_read_file(path, 64, &data, &len, NULL) == 0)
        pid = atoi(data);
    free(data);
    return pid;
}

/* Kill and reap a task restored detached: it is our child because the
 * probe runner is a subreaper. */
static void end_restored(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
}

struct mode_result {
    bool ok, lazy_ok, target_untraced;
    double dump_ms, restore_ms, lazy_ms;
    char why[200];
};

static void set_why(struct mode_result *r, const char *what, const struct step *st,
                    double deadline_s, const char *log)
{
    if (st->timed_out)
        snprintf(r->why, sizeof(r->why), "%s did not finish within %.1f s (log %s)", what,
                 deadline_s, log);
    else if (WIFEXITED(st->status))
        snprintf(r->why, sizeof(r->why), "%s failed with exit status %d (log %s)", what,
                 WEXITSTATUS(st->status), log);
    else
        snprintf(r->why, sizeof(r->why), "%s killed by signal %d (log %s)", what,
                 WTERMSIG(st->status), log);
}

static bool step_ok(const struct step *st)
{
    return !st->timed_out && WIFEXITED(st->status) && WEXITSTATUS(st->status) == 0;
}

/* Whether a lazy-pages daemon's socket exists in dir. */
static bool wait_socket(const char *path, pid_t daemon, double deadline_s)
{
    uint64_t end = wp_now_ns() + (uint64_t)(deadline_s * 1e9);
    struct stat st;
    while (wp_now_ns() < end) {
        if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            return true;
        if (waitpid(daemon, NULL, WNOHANG) == daemon)
            return false;
        struct timespec ts = { 0, 500 * 1000 };
        nanosleep(&ts, NULL);
    }
    return false;
}

/* One mode, in the probe runner: dump, eager restore, lazy restore. */
static void probe_mode(const char *criu, const char *dir, enum snap_criu_mode mode,
                       double deadline_s, struct mode_result *r)
{
    char img[600], dlog[700], rlog[700], llog[700], pidf[700], sock[700], dmode[64];
    struct step st;
    pid_t target, pid;

    memset(r, 0, sizeof(*r));
    snprintf(dmode, sizeof(dmode), "%s", snap_criu_mode_name(mode));
    snprintf(img, sizeof(img), "%s/%s", dir, dmode);
    wp_rm_rf(img, NULL);
    if (wp_mkdir_p(img, 0700, NULL) < 0) {
        snprintf(r->why, sizeof(r->why), "mkdir %s: %s", img, strerror(errno));
        return;
    }
    snprintf(dlog, sizeof(dlog), "%s/dump.log", img);
    snprintf(rlog, sizeof(rlog), "%s/restore.log", img);
    snprintf(llog, sizeof(llog), "%s/lazy-restore.log", img);
    snprintf(pidf, sizeof(pidf), "%s/restored.pid", img);

    target = start_target();
    if (target < 0) {
        snprintf(r->why, sizeof(r->why), "fork: %s", strerror(errno));
        return;
    }
    const char *dump[] = { "dump", "-t", NULL, "-D", img, "-o", dlog, "-v4", NULL };
    char tpid[16];
    snprintf(tpid, sizeof(tpid), "%d", (int)target);
    dump[2] = tpid;
    run_criu(criu, dump, mode, deadline_s, &st);
    r->dump_ms = st.ms;
    if (!step_ok(&st)) {
        set_why(r, "dump", &st, deadline_s, dlog);
        /* criu is gone: the task it held must run on, untraced. */
        r->target_untraced = untraced(target);
        end_restored(target);
        return;
    }
    end_restored(target); /* criu killed it after the dump: reap, free its pid */

    const char *restore[] = { "restore", "-D", img, "-o", rlog, "-v4", "-d", "--pidfile", pidf, NULL };
    run_criu(criu, restore, mode, deadline_s, &st);
    r->restore_ms = st.ms;
    pid = read_pidfile(pidf);
    end_restored(pid);
    if (!step_ok(&st) || pid <= 0) {
        set_why(r, "restore", &st, deadline_s, rlog);
        return;
    }
    r->ok = true;

    /* Lazy: a page server of the image, and a restore that faults pages
     * in from it. Both share the work dir, where the socket lives. */
    snprintf(sock, sizeof(sock), "%s/lazy-pages.socket", img);
    unlink(pidf);
    const char *lp[] = { "lazy-pages", "-D", img, "-W", img, "-o", "lazy-pages.log", "-v4", NULL };
    pid_t daemon = spawn_criu(criu, lp, mode);
    if (daemon < 0 || !wait_socket(sock, daemon, deadline_s)) {
        snprintf(r->why, sizeof(r->why), "lazy-pages daemon did not listen within %.1f s",
                 deadline_s);
        if (daemon > 0)
            snap__kill_group(daemon);
        return;
    }
    const char *lazy[] = { "restore", "-D", img, "-W", img, "--lazy-pages", "-o", llog, "-v4",
                           "-d", "--pidfile", pidf, NULL };
    run_criu(criu, lazy, mode, deadline_s, &st);
    r->lazy_ms = st.ms;
    pid = read_pidfile(pidf);
    end_restored(pid);
    snap__kill_group(daemon);
    if (!step_ok(&st) || pid <= 0) {
        set_why(r, "lazy restore", &st, deadline_s, llog);
        return;
    }
    r->lazy_ok = true;
}

static void result_json(const struct mode_result *r, int fd)
{
    json_t *o = json_pack("{s:b, s:b, s:b, s:f, s:f, s:f, s:s}", "ok", r->ok, "lazy_ok",
                          r->lazy_ok, "untraced", r->target_untraced, "dump_ms", r->dump_ms,
                          "restore_ms", r->restore_ms, "lazy_ms", r->lazy_ms, "why", r->why);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    if (s && write(fd, s, strlen(s)) < 0)
        log_debug("probe: result pipe closed");
    free(s);
    json_decref(o);
}

/* Probe one mode in a runner process of its own: a subreaper (restored
 * tasks are detached from criu and reparented to it), with no event loop
 * or signal handler of the caller's to reap its children first. */
static int probe_in_runner(const char *criu, const char *dir, enum snap_criu_mode mode,
                           double deadline_s, struct mode_result *r, struct wp_err *err)
{
    int pfd[2];
    pid_t pid;
    char buf[1024];
    ssize_t n = 0, k;

    memset(r, 0, sizeof(*r));
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return wp_err_errno(err, "pipe");
    pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return wp_err_errno(err, "fork");
    }
    if (pid == 0) {
        struct mode_result res;
        close(pfd[0]);
        setpgid(0, 0);
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        signal(SIGCHLD, SIG_DFL);
        probe_mode(criu, dir, mode, deadline_s, &res);
        result_json(&res, pfd[1]);
        _exit(0);
    }
    close(pfd[1]);
    /* Each step has its deadline inside; this one bounds the runner. */
    uint64_t end = wp_now_ns() + (uint64_t)(deadline_s * 5e9) + 2000000000ull;
    if (snap__wait_deadline(pid, end, NULL) == WP_ETIMEDOUT)
        snap__kill_group(pid);
    while (n < (ssize_t)sizeof(buf) - 1 && ((k = read(pfd[0], buf + n, sizeof(buf) - 1 - n)) > 0 ||
                                            (k < 0 && errno == EINTR)))
        if (k > 0)
            n += k;
    close(pfd[0]);
    buf[n] = '\0';
    json_t *o = json_loads(buf, 0, NULL);
    if (!o) {
        snprintf(r->why, sizeof(r->why), "probe runner died without a result");
        return 0;
    }
    r->ok = json_is_true(json_object_get(o, "ok"));
    r->lazy_ok = json_is_true(json_object_get(o, "lazy_ok"));
    r->target_untraced = json_is_true(json_object_get(o, "untraced"));
    r->dump_ms = json_number_value(json_object_get(o, "dump_ms"));
    r->restore_ms = json_number_value(json_object_get(o, "restore_ms"));
    r->lazy_ms = json_number_value(json_object_get(o, "lazy_ms"));
    snprintf(r->why, sizeof(r->why), "%s", json_string_value(json_object_get(o, "why")) ?: "");
    json_decref(o);
    return 0;
}

/* ---- the cache key ----------------------------------------------------------- */

static void cpu_model(char *out, size_t cap)
{
    char *data = NULL, *line, *save = NULL;
    size_t len, used = 0;
    static const char *const want[] = { "vendor_id", "cpu family", "model", "model name",
                                        "stepping", "microcode" };

    out[0] = '\0';
    if (wp_read_file("/proc/cpuinfo", 4 << 20, &data, &len, NULL) < 0)
        return;
    /* The first processor's block is enough: a VM's vCPUs are alike. */
    for (line = strtok_r(data, "\n", &save); line && *line; line = strtok_r(NULL, "\n", &save)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        size_t klen = (size_t)(colon - line);
        while (klen && (line[klen - 1] == ' ' || line[klen - 1] == '\t'))
            klen--;
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
            if (strlen(want[i]) == klen && strncmp(line, want[i], klen) == 0 && used < cap)
                used += (size_t)snprintf(out + used, cap - used, "%s%s=%s", used ? ";" : "",
                                         want[i], colon + 1 + (colon[1] == ' '));
        if (strncmp(line, "flags", 5) == 0)
            break;
    }
    free(data);
}

void snap__criu_key(const char *criu, const char *version, char *out, size_t cap)
{
    struct utsname u;
    char cpu[400], real[300];

    uname(&u);
    cpu_model(cpu, sizeof(cpu));
    if (!realpath(criu, real))
        snprintf(real, sizeof(real), "%s", criu);
    snprintf(out, cap, "criu=%s %s|kernel=%s %s|cpu=%s", real, version, u.release, u.version, cpu);
}

static void cache_path(const char *dir, const char *key, char *out, size_t cap)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char hex[17];

    EVP_Digest(key, strlen(key), md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(out, cap, "%s/criu-probe-%s.json", dir, hex);
}

static int cache_read(const char *path, const char *key, struct snap_probe *p)
{
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL), *v;
    enum snap_criu_mode m;
    int rc = -1;

    if (!o)
        return -1;
    v = json_object_get(o, "mode");
    /* A cache written for another key, or damaged: probe again. */
    if (json_is_string(json_object_get(o, "key")) &&
        strcmp(json_string_value(json_object_get(o, "key")), key) == 0 && json_is_string(v) &&
        snap_criu_mode_parse(json_string_value(v), &m) == 0 && m != SNAP_CRIU_UNKNOWN &&
        json_is_boolean(json_object_get(o, "lazy_ok"))) {
        p->mode = m;
        p->lazy_ok = json_is_true(json_object_get(o, "lazy_ok"));
        snprintf(p->why, sizeof(p->why), "%s", json_string_value(json_object_get(o, "why")) ?: "");
        p->dump_ms = json_number_value(json_object_get(o, "dump_ms"));
        p->restore_ms = json_number_value(json_object_get(o, "restore_ms"));
        p->lazy_ms = json_number_value(json_object_get(o, "lazy_ms"));
        p->probed_ms = json_number_value(json_object_get(o, "probe_ms"));
        p->cached = true;
        rc = 0;
    }
    json_decref(o);
    return rc;
}

static void cache_write(const char *path, const struct snap_probe *p)
{
    json_t *o = json_pack("{s:s, s:s, s:b, s:s, s:f, s:f, s:f, s:f, s:I}", "key", p->key, "mode",
                          snap_criu_mode_name(p->mode), "lazy_ok", p->lazy_ok, "why", p->why,
                          "dump_ms", p->dump_ms, "restore_ms", p->restore_ms, "lazy_ms",
                          p->lazy_ms, "probe_ms", p->probed_ms, "probed_at_ms",
                          (json_int_t)wp_wall_ms());
    char *s = o ? json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(6)) : NULL;
    struct wp_err err;
    if (s && wp_write_file(path, s, strlen(s), 0644, &err) < 0)
        log_warn("criu probe: cannot cache the result: %s", err.msg);
    free(s);
    json_decref(o);
}

static int criu_version(const char *criu, char *out, size_t cap, struct wp_err *err)
{
    char cmd[400], line[128];
    FILE *p;

    snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", criu);
    if (strchr(criu, '\''))
        return wp_err_set(err, WP_EINVAL_INPUT, "criu path %s holds a quote", criu);
    p = popen(cmd, "re");
    if (!p)
        return wp_err_errno(err, "run %s", criu);
    out[0] = '\0';
    while (fgets(line, sizeof(line), p))
        if (strncmp(line, "Version: ", 9) == 0)
            snprintf(out, cap, "%.*s", (int)strcspn(line + 9, "\n"), line + 9);
    if (pclose(p) != 0 || !out[0])
        return wp_err_set(err, WP_ECONFIG, "%s does not run (install it with `make deps`)", criu);
    return 0;
}

int snap__criu_version(const char *criu, char *out, size_t cap, struct wp_err *err)
{
    return criu_version(criu, out, cap, err);
}

int snap_criu_probe(const struct snap_probe_config *cfg, struct snap_probe *p, struct wp_err *err)
{
    const char *criu = cfg->criu_bin ? cfg->criu_bin : WP_PREFIX "/bin/criu";
    const char *cdir = cfg->cache_dir ? cfg->cache_dir : SNAP_PROBE_CACHE_DIR;
    double deadline = cfg->deadline_s > 0 ? cfg->deadline_s : 5.0;
    char version[64], path[600], work[600], lockp[600];
    struct mode_result def, nobp;
    int lock = -1, rc;
    uint64_t t0 = wp_now_ns();

    memset(p, 0, sizeof(*p));
    if (access(criu, X_OK) < 0)
        return wp_err_errno(err, "criu at %s (run `make deps`)", criu);
    if ((rc = criu_version(criu, version, sizeof(version), err)) < 0)
        return rc;
    snap__criu_key(criu, version, p->key, sizeof(p->key));
    if (cdir[0]) {
        if ((rc = wp_mkdir_p(cdir, 0755, err)) < 0)
            return wp_err_wrap(err, "criu probe cache");
        cache_path(cdir, p->key, path, sizeof(path));
        /* One prober at a time; the others wait and read its answer. */
        snprintf(lockp, sizeof(lockp), "%s/.criu-probe.lock", cdir);
        lock = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (lock >= 0)
            while (flock(lock, LOCK_EX) < 0 && errno == EINTR)
                ;
        if (!cfg->force && cache_read(path, p->key, p) == 0) {
            if (lock >= 0)
                close(lock);
            return 0;
        }
    }
    snprintf(work, sizeof(work), "%s/criu-probe.XXXXXX", cfg->work_dir ? cfg->work_dir : "/tmp");
    if (!mkdtemp(work)) {
        rc = wp_err_errno(err, "mkdtemp %s", work);
        goto out;
    }
    log_info("criu probe: %s %s, deadline %.1f s per step", criu, version, deadline);
    if ((rc = probe_in_runner(criu, work, SNAP_CRIU_DEFAULT, deadline, &def, err)) < 0)
        goto out;
    p->default_untraced = def.target_untraced;
    if (def.ok) {
        p->mode = SNAP_CRIU_DEFAULT;
        p->lazy_ok = def.lazy_ok;
        p->dump_ms = def.dump_ms;
        p->restore_ms = def.restore_ms;
        p->lazy_ms = def.lazy_ms;
        if (!def.lazy_ok)
            snprintf(p->why, sizeof(p->why), "lazy pages: %s", def.why);
    } else {
        if ((rc = probe_in_runner(criu, work, SNAP_CRIU_NOBP, deadline, &nobp, err)) < 0)
            goto out;
        p->mode = nobp.ok ? SNAP_CRIU_NOBP : SNAP_CRIU_NONE;
        p->lazy_ok = nobp.ok && nobp.lazy_ok;
        p->dump_ms = nobp.dump_ms;
        p->restore_ms = nobp.restore_ms;
        p->lazy_ms = nobp.lazy_ms;
        if (nobp.ok)
            snprintf(p->why, sizeof(p->why), "default mode: %s%s%s", def.why,
                     nobp.lazy_ok ? "" : "; lazy pages: ", nobp.lazy_ok ? "" : nobp.why);
        else
            snprintf(p->why, sizeof(p->why), "default mode: %s; no-breakpoints mode: %s", def.why,
                     nobp.why);
    }
    p->probed_ms = (double)(wp_now_ns() - t0) / 1e6;
    /* Logs of a failed mode stay for the operator; a clean probe leaves nothing. */
    if (p->mode == SNAP_CRIU_DEFAULT && p->lazy_ok)
        wp_rm_rf(work, NULL);
    if (cdir[0])
        cache_write(path, p);
    rc = 0;
out:
    if (lock >= 0)
        close(lock);
    return rc;
}

char *snap_probe_json(const struct snap_probe *p)
{
    json_t *o = json_pack("{s:s, s:b, s:s, s:s, s:s, s:f, s:f, s:f, s:f}", "mode",
                          snap_criu_mode_name(p->mode), "lazy_ok", p->lazy_ok, "source",
                          p->forced ? "configured" : p->cached ? "cached" : "probed", "why",
                          p->why, "key", p->key, "dump_ms", p->dump_ms, "restore_ms",
                          p->restore_ms, "lazy_ms", p->lazy_ms, "probe_ms", p->probed_ms);
    if (o && p->mode != SNAP_CRIU_DEFAULT && !p->forced && !p->cached)
        json_object_set_new(o, "default_left_untraced", json_boolean(p->default_untraced));
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(o);
    return s;
}
