/* hands_bash.c - the persistent shell behind the bash tool.
 *
 * One /bin/bash --noprofile --norc per sandbox, started when the hands come
 * up (so a checkpoint holds it and a clone's first call costs what its
 * second does; --lazy-shell: on the first call) and again as soon as one is
 * killed, in its own session (setsid), with three pipes: its stdin (commands), its stdout and
 * stderr merged (output), and its fd 3 (one status line per command).
 * A command is sent as
 *
 *     eval '<command, single-quote escaped>' </dev/null 2>&1 3>&-
 *     printf '%d\n' $? >&3
 *
 * so cd and exported variables persist (eval runs in the shell itself),
 * stdin is /dev/null, the command cannot write the status pipe, and a
 * syntax error is just a non-zero status. Commands run one at a time; the
 * others wait on a queue. Output keeps the last ALINK_BASH_KEEP bytes in a
 * ring (a 100 MB output costs 100 KiB) and is optionally streamed as
 * chunks. Timeout and cancel kill the shell's whole process tree (group,
 * session, descendants) and the next call starts a fresh shell, as the
 * SDK's runner does (here already started when that call comes).
 */
#define WP_LOG_COMPONENT "hands"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agentlink/alink_int.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

extern char **environ;

static void start_next(struct alink__hands *h);

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ---- killing a process tree ---------------------------------------------- */

struct proc_ent {
    pid_t pid, ppid, pgrp, sid;
    unsigned long long start; /* clock ticks since boot */
};

/* Now, in the unit of /proc/PID/stat's starttime. */
static unsigned long long now_ticks(void)
{
    struct timespec ts;
    long hz = sysconf(_SC_CLK_TCK);

    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (unsigned long long)ts.tv_sec * (unsigned long long)hz +
           (unsigned long long)ts.tv_nsec / (1000000000ull / (unsigned long long)hz);
}

static size_t scan_procs(struct proc_ent *v, size_t cap)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    size_t n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)) && n < cap) {
        char path[300], buf[512], *p;
        int fd;
        ssize_t k;

        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        k = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (k <= 0)
            continue;
        buf[k] = '\0';
        p = strrchr(buf, ')');
        if (!p)
            continue;
        char state;
        int ppid, pgrp, sid;
        unsigned long long start;
        if (sscanf(p + 1,
                   " %c %d %d %d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d"
                   " %llu",
                   &state, &ppid, &pgrp, &sid, &start) != 5)
            continue;
        v[n].start = start;
        v[n].pid = (pid_t)atoi(e->d_name);
        v[n].ppid = ppid;
        v[n].pgrp = pgrp;
        v[n].sid = sid;
        n++;
    }
    closedir(d);
    return n;
}

/* SIGKILL the shell S and everything that came from it: its process group
 * and session (background jobs), its descendants (even those that called
 * setsid), and orphans reparented to us that started since the call began
 * (escaped by double fork; older orphans, daemons of earlier calls, stay).
 * Repeated a few times to catch processes forked meanwhile. */
static void kill_tree(pid_t s, unsigned long long since)
{
    enum { CAP = 8192 };
    struct proc_ent *v = malloc(CAP * sizeof(*v));
    pid_t self = getpid();

    kill(-s, SIGKILL);
    if (!v)
        return;
    for (int pass = 0; pass < 3; pass++) {
        size_t n = scan_procs(v, CAP);
        bool *mark = calloc(n ? n : 1, sizeof(bool));
        bool changed = true, any = false;

        if (!mark)
            break;
        for (size_t i = 0; i < n; i++)
            mark[i] = v[i].pid == s || v[i].pgrp == s || v[i].sid == s ||
                      (v[i].ppid == self && v[i].pid != self && v[i].start + 1 >= since);
        while (changed) {
            changed = false;
            for (size_t i = 0; i < n; i++) {
                if (mark[i])
                    continue;
                for (size_t j = 0; j < n; j++) {
                    if (mark[j] && v[i].ppid == v[j].pid) {
                        mark[i] = changed = true;
                        break;
                    }
                }
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (mark[i] && v[i].pid != self) {
                kill(v[i].pid, SIGKILL);
                any = true;
            }
        }
        free(mark);
        if (!any)
            break;
    }
    free(v);
}

/* ---- the shell process -------------------------------------------------- */

static void shell_close(struct alink__hands *h, bool kill_it)
{
    struct alink__shell *sh = &h->shell;

    if (!sh->pid)
        return;
    if (kill_it)
        kill_tree(sh->pid, sh->call_start);
    ev_io_stop(h->loop, &sh->in_w);
    ev_io_stop(h->loop, &sh->out_w);
    ev_io_stop(h->loop, &sh->st_w);
    close(sh->in_fd);
    close(sh->out_fd);
    close(sh->st_fd);
    sh->in_fd = sh->out_fd = sh->st_fd = -1;
    /* Its exit status arrives later through the catch-all child watcher,
     * which then no longer matches sh->pid and just reaps it. */
    sh->pid = 0;
    sh->st_len = 0;
    sh->warmups = 0;
    wp_buf_reset(&sh->inbuf);
}

static void in_cb(struct ev_loop *loop, ev_io *w, int revents);
static void out_cb(struct ev_loop *loop, ev_io *w, int revents);
static void st_cb(struct ev_loop *loop, ev_io *w, int revents);

static int shell_start(struct alink__hands *h, struct wp_err *err)
{
    struct alink__shell *sh = &h->shell;
    int in[2] = {-1, -1}, out[2] = {-1, -1}, st[2] = {-1, -1};
    pid_t pid;

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0) {
        wp_err_errno(err, "pipe");
        goto fail;
    }
    pid = fork();
    if (pid < 0) {
        wp_err_errno(err, "fork");
        goto fail;
    }
    if (pid == 0) {
        char *argv[] = {(char *)"bash", (char *)"--noprofile", (char *)"--norc", NULL};
        size_t n = 0, k = 0;
        sigset_t none;

        setsid();
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < NSIG; s++)
            signal(s, SIG_DFL);
        if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0 ||
            dup2(st[1], 3) < 0)
            _exit(126);
        wp_close_fds_from(4);
        if (chdir(h->workdir) < 0)
            (void)!chdir("/");
        while (environ[n])
            n++;
        char **env = calloc(n + 4, sizeof(char *));
        if (!env)
            _exit(126);
        for (size_t i = 0; i < n; i++) {
            const char *e = environ[i];
            if (strncmp(e, "ANTHROPIC_", 10) == 0 || strncmp(e, "PS1=", 4) == 0 ||
                strncmp(e, "PS2=", 4) == 0 || strncmp(e, "TERM=", 5) == 0)
                continue;
            env[k++] = environ[i];
        }
        env[k++] = (char *)"PS1=";
        env[k++] = (char *)"PS2=";
        env[k++] = (char *)"TERM=dumb";
        env[k] = NULL;
        execve(h->shell_path, argv, env);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(st[1]);
    sh->pid = pid;
    sh->in_fd = in[1];
    sh->out_fd = out[0];
    sh->st_fd = st[0];
    set_nonblock(sh->in_fd);
    set_nonblock(sh->out_fd);
    set_nonblock(sh->st_fd);
    ev_io_init(&sh->in_w, in_cb, sh->in_fd, EV_WRITE);
    ev_io_init(&sh->out_w, out_cb, sh->out_fd, EV_READ);
    ev_io_init(&sh->st_w, st_cb, sh->st_fd, EV_READ);
    sh->in_w.data = sh->out_w.data = sh->st_w.data = h;
    ev_io_start(h->loop, &sh->out_w);
    ev_io_start(h->loop, &sh->st_w);
    log_debug("shell started pid=%d", (int)pid);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
        if (st[i] >= 0)
            close(st[i]);
    }
    return err ? err->code : -1;
}

static void shell_flush_in(struct alink__hands *h)
{
    struct alink__shell *sh = &h->shell;

    while (sh->pid && sh->inbuf.len) {
        ssize_t n = write(sh->in_fd, sh->inbuf.data, sh->inbuf.len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            wp_buf_reset(&sh->inbuf); /* EPIPE: the shell is gone; child exit follows */
            break;
        }
        wp_buf_consume(&sh->inbuf, (size_t)n);
    }
    if (sh->pid && sh->inbuf.len)
        ev_io_start(h->loop, &sh->in_w);
    else
        ev_io_stop(h->loop, &sh->in_w);
}

/* Written from the loop's next turn rather than now: the frames read in
 * this turn (an attach and the call behind it, issue 20) reach the shell
 * as one write, one wake-up of it, and replies sent meanwhile (the
 * attach's) leave before the shell competes for the CPU. */
static void shell_flush_soon(struct alink__hands *h)
{
    struct alink__shell *sh = &h->shell;
    if (sh->pid && sh->inbuf.len)
        ev_io_start(h->loop, &sh->in_w);
}

static void in_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    shell_flush_in(w->data);
}

void alink__bash_preamble(struct alink__hands *h, const char *text, size_t len)
{
    struct alink__shell *sh = &h->shell;

    /* No shell yet: the next one starts from our (already updated)
     * environment and workdir, nothing to send. */
    if (!sh->pid || !len)
        return;
    /* Kept until the next command, which goes out with them: the shell is
     * not woken for the attach (whose answer then waits for nothing), and
     * wakes once for the first call (issue 20). Nothing of the shell can
     * see them earlier: it only runs what it reads. */
    if (wp_buf_append(&sh->inbuf, text, len) < 0)
        log_warn("shell input buffer full: attach settings not sent to the running shell");
}

/* ---- output --------------------------------------------------------------- */

static void ring_put(struct alink__shell *sh, const char *p, size_t n)
{
    sh->total += n;
    if (n > ALINK_BASH_KEEP) {
        p += n - ALINK_BASH_KEEP;
        n = ALINK_BASH_KEEP;
    }
    while (n) {
        size_t k = ALINK_BASH_KEEP - sh->ring_pos;
        if (k > n)
            k = n;
        memcpy(sh->ring + sh->ring_pos, p, k);
        sh->ring_pos = (sh->ring_pos + k) % ALINK_BASH_KEEP;
        p += k;
        n -= k;
    }
}

/* Bytes at the end of p that start an incomplete UTF-8 sequence. */
static size_t utf8_tail(const unsigned char *p, size_t n)
{
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = p[n - back];
        if ((c & 0xc0) == 0x80)
            continue;
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

static void stream_chunk(struct alink__shell *sh, struct alink__call *call, const char *p,
                         size_t n)
{
    char buf[65536 + 4];
    size_t len = 0, tail;

    if (n > 65536)
        n = 65536; /* callers read at most 64 KiB */
    memcpy(buf, sh->carry, sh->carry_len);
    len = sh->carry_len;
    memcpy(buf + len, p, n);
    len += n;
    tail = utf8_tail((unsigned char *)buf, len);
    sh->carry_len = tail;
    memcpy(sh->carry, buf + len - tail, tail);
    len -= tail;
    if (len && !alink__chunk(call->conn, call->id, buf, len))
        sh->dropped += len;
}

/* Read what the shell wrote; at most max bytes (bounded work per loop
 * turn). Returns bytes read. */
static size_t read_output(struct alink__hands *h, size_t max)
{
    struct alink__shell *sh = &h->shell;
    char buf[65536];
    size_t got = 0;

    while (sh->pid && got < max) {
        ssize_t n = read(sh->out_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                ev_io_stop(h->loop, &sh->out_w); /* all writers gone */
            break;
        }
        got += (size_t)n;
        if (!sh->cur)
            continue; /* a background job writing between calls */
        ring_put(sh, buf, (size_t)n);
        if (sh->cur->stream)
            stream_chunk(sh, sh->cur, buf, (size_t)n);
    }
    return got;
}

static void out_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    read_output(w->data, 1u << 20);
}

/* The kept output, cleaned as the SDK does: ANSI escapes removed, trailing
 * newlines dropped, "[output truncated]" in front when cut. */
static void build_output(struct alink__shell *sh, struct wp_buf *out)
{
    size_t kept = sh->total < ALINK_BASH_KEEP ? (size_t)sh->total : ALINK_BASH_KEEP;
    size_t start = sh->total < ALINK_BASH_KEEP ? 0 : sh->ring_pos;
    char *tmp = malloc(kept + 1);
    size_t i, w = 0;

    if (!tmp)
        return;
    for (i = 0; i < kept; i++)
        tmp[i] = sh->ring[(start + i) % ALINK_BASH_KEEP];
    /* Strip ANSI: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), ESC x. */
    for (i = 0; i < kept;) {
        unsigned char c = (unsigned char)tmp[i];
        if (c != 0x1b) {
            tmp[w++] = tmp[i++];
            continue;
        }
        if (i + 1 < kept && tmp[i + 1] == '[') {
            i += 2;
            while (i < kept && !((unsigned char)tmp[i] >= 0x40 && (unsigned char)tmp[i] <= 0x7e))
                i++;
            i++;
        } else if (i + 1 < kept && tmp[i + 1] == ']') {
            i += 2;
            while (i < kept && tmp[i] != '\a' && !(tmp[i] == 0x1b && i + 1 < kept && tmp[i + 1] == '\\'))
                i++;
            i += (i < kept && tmp[i] == 0x1b) ? 2 : 1;
        } else {
            i += 2;
        }
    }
    while (w && (tmp[w - 1] == '\n' || tmp[w - 1] == '\r'))
        w--;
    if (sh->total > ALINK_BASH_KEEP)
        wp_buf_append(out, "[output truncated]\n", 19);
    wp_buf_append(out, tmp, w);
    free(tmp);
}

/* ---- call lifecycle ---------------------------------------------------- */

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void end_call(struct alink__hands *h, const char *text, size_t len, bool is_error)
{
    struct alink__shell *sh = &h->shell;
    struct alink__call *call = sh->cur;

    if (!call)
        return;
    sh->cur = NULL;
    ev_timer_stop(h->loop, &call->timer);
    if (call->stream && sh->carry_len)
        alink__chunk(call->conn, call->id, (char *)sh->carry, sh->carry_len);
    if (sh->dropped)
        log_debug("call id=%llu: %llu output bytes not streamed (slow reader)",
                  (unsigned long long)call->id, (unsigned long long)sh->dropped);
    alink__reply(call->conn, call->id, text, len, is_error);
    alink__call_free(call);
    start_next(h);
}

/* The command finished with status rc (or the shell died: died = true). */
static void finish(struct alink__hands *h, int rc, bool died)
{
    struct alink__shell *sh = &h->shell;
    struct wp_buf out;
    char msg[64];

    /* Output written before the status line is already in the pipe. */
    if (!died)
        read_output(h, 4u << 20);
    wp_buf_init(&out, ALINK_BASH_KEEP + 64);
    build_output(sh, &out);
    if (rc != 0 && out.len == 0) {
        int n = snprintf(msg, sizeof(msg), "exit %d", rc);
        end_call(h, msg, (size_t)n, true);
    } else {
        end_call(h, out.data ? out.data : "", out.len, rc != 0);
    }
    wp_buf_free(&out);
}

static void st_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct alink__hands *h = w->data;
    struct alink__shell *sh = &h->shell;
    (void)loop;
    (void)revents;

    for (;;) {
        ssize_t n = read(sh->st_fd, sh->st + sh->st_len, sizeof(sh->st) - 1 - sh->st_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                ev_io_stop(h->loop, &sh->st_w); /* the shell exited; child exit follows */
            return;
        }
        sh->st_len += (size_t)n;
        sh->st[sh->st_len] = '\0';
        char *nl;
        while ((nl = strchr(sh->st, '\n'))) {
            int rc = atoi(sh->st);
            size_t used = (size_t)(nl - sh->st) + 1;
            memmove(sh->st, nl + 1, sh->st_len - used + 1);
            sh->st_len -= used;
            if (sh->warmups > 0) {
                sh->warmups--; /* a prestarted shell now reads its input */
                alink__hands_ready(h);
                continue;
            }
            if (sh->cur)
                finish(h, rc, false);
            if (!sh->pid)
                return;
        }
        if (sh->st_len >= sizeof(sh->st) - 1)
            sh->st_len = 0; /* garbage; cannot happen with 3>&- */
    }
}

void alink__bash_child_exit(struct alink__hands *h, pid_t pid, int status)
{
    struct alink__shell *sh = &h->shell;

    if (!sh->pid || pid != sh->pid)
        return; /* an orphan or an old shell: reaped, nothing else to do */
    log_debug("shell pid=%d exited status=%d", (int)pid, status);
    if (sh->warmups > 0) {
        /* Died before it could answer the warm-up (no shell in the image?):
         * say ready anyway, and start the next one on the next call only,
         * so a broken shell is not restarted in a loop. */
        log_warn("shell %s exited status=%d before it was ready", h->shell_path, status);
        alink__hands_ready(h);
    }
    read_output(h, 4u << 20);
    shell_close(h, false);
    if (sh->cur)
        finish(h, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), true);
}

static void append_escaped(struct wp_buf *b, const char *s)
{
    wp_buf_append(b, "'", 1);
    for (; *s; s++) {
        if (*s == '\'')
            wp_buf_append(b, "'\\''", 4);
        else
            wp_buf_append(b, s, 1);
    }
    wp_buf_append(b, "'", 1);
}

static void start_next(struct alink__hands *h)
{
    struct alink__shell *sh = &h->shell;
    struct alink__call *call;
    struct wp_err err;

    while (!sh->cur && sh->head) {
        call = sh->head;
        sh->head = call->next;
        if (!sh->head)
            sh->tail = NULL;
        call->next = NULL;
        sh->cur = call;
        sh->call_start = now_ticks();
        sh->total = 0;
        sh->ring_pos = 0;
        sh->carry_len = 0;
        sh->dropped = 0;

        json_t *jc = json_object_get(call->input, "command");
        json_t *jr = json_object_get(call->input, "restart");
        json_t *jt = json_object_get(call->input, "timeout_ms");
        const char *cmd = json_string_value(jc);
        int64_t tmo = json_is_integer(jt) ? json_integer_value(jt) : 0;

        if ((jc && !json_is_string(jc)) || (jr && !json_is_boolean(jr)) ||
            (jt && !json_is_integer(jt))) {
            end_call(h, "bash: invalid input", 19, true);
            continue;
        }
        if (json_is_true(jr)) {
            shell_close(h, true);
            if (!cmd) {
                end_call(h, "bash session restarted", 22, false);
                continue;
            }
        }
        if (!cmd) {
            end_call(h, "bash: command is required", 25, true);
            continue;
        }
        /* timeout_ms: 0 or absent means the default (the API's rule). */
        if (tmo <= 0)
            tmo = call->timeout_ms > 0 ? call->timeout_ms : ALINK_BASH_TIMEOUT_MS;
        if (tmo > ALINK_BASH_TIMEOUT_MAX_MS)
            tmo = ALINK_BASH_TIMEOUT_MAX_MS;
        call->timeout_ms = tmo;
        if (!sh->pid && shell_start(h, &err) < 0) {
            char msg[300];
            int n = snprintf(msg, sizeof(msg), "bash: cannot start shell: %s", err.msg);
            end_call(h, msg, (size_t)n, true);
            continue;
        }
        ev_io_start(h->loop, &sh->out_w);
        ev_io_start(h->loop, &sh->st_w);
        size_t before = sh->inbuf.len;
        wp_buf_append(&sh->inbuf, "eval ", 5);
        append_escaped(&sh->inbuf, cmd);
        if (wp_buf_append(&sh->inbuf, " </dev/null 2>&1 3>&-\nprintf '%d\\n' $? >&3\n", 43) < 0) {
            sh->inbuf.len = before;
            end_call(h, "bash: command too long", 22, true);
            continue;
        }
        ev_timer_init(&call->timer, timeout_cb, (double)tmo / 1000.0, 0.);
        call->timer.data = h;
        ev_timer_start(h->loop, &call->timer);
        shell_flush_soon(h);
    }
    /* A call killed the shell (timeout, cancel, restart, exit): the next
     * one is started now rather than on the next call. */
    if (!sh->cur && !sh->pid)
        alink__bash_prestart(h);
}

void alink__bash_prestart(struct alink__hands *h)
{
    struct alink__shell *sh = &h->shell;
    struct wp_err err;
    static const char warm[] = "printf '0\\n' >&3\n";

    if (h->lazy_shell || h->stopping || sh->pid)
        return;
    if (shell_start(h, &err) < 0) {
        log_warn("cannot start shell %s: %s", h->shell_path, err.msg);
        alink__hands_ready(h);
        return;
    }
    /* Its answer says the shell has loaded and waits for input. */
    sh->warmups = 1;
    wp_buf_append(&sh->inbuf, warm, sizeof(warm) - 1);
    shell_flush_in(h);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct alink__hands *h = w->data;
    char msg[96];
    int n;
    (void)loop;
    (void)revents;

    if (!h->shell.cur)
        return;
    n = snprintf(msg, sizeof(msg), "bash: bash command timed out after %lldms",
                 (long long)h->shell.cur->timeout_ms);
    shell_close(h, true);
    end_call(h, msg, (size_t)n, true);
}

void alink__bash_init(struct alink__hands *h)
{
    struct alink__shell *sh = &h->shell;

    memset(sh, 0, sizeof(*sh));
    sh->in_fd = sh->out_fd = sh->st_fd = -1;
    wp_buf_init(&sh->inbuf, 2 * ALINK_FRAME_MAX_DEFAULT + 65536);
    sh->ring = malloc(ALINK_BASH_KEEP);
    wp_assert(sh->ring != NULL);
}

void alink__bash_submit(struct alink__hands *h, struct alink__call *call)
{
    struct alink__shell *sh = &h->shell;
    size_t queued = 0;

    for (struct alink__call *c = sh->head; c; c = c->next)
        queued++;
    if (queued >= ALINK_BASH_MAX_QUEUED) {
        alink__replyf(call->conn, call->id, true, "bash: too many commands waiting (%d)",
                      ALINK_BASH_MAX_QUEUED);
        alink__call_free(call);
        return;
    }
    call->next = NULL;
    if (sh->tail)
        sh->tail->next = call;
    else
        sh->head = call;
    sh->tail = call;
    start_next(h);
}

static bool drop_queued(struct alink__hands *h, struct alink__conn *conn, uint64_t id, bool all)
{
    struct alink__shell *sh = &h->shell;
    struct alink__call **pp = &sh->head, *prev = NULL;
    bool found = false;

    while (*pp) {
        struct alink__call *c = *pp;
        if (c->conn == conn && (all || c->id == id)) {
            *pp = c->next;
            if (sh->tail == c)
                sh->tail = prev;
            if (!all)
                alink__reply(conn, c->id, "bash: command cancelled", 23, true);
            alink__call_free(c);
            found = true;
            if (!all)
                break;
            continue;
        }
        prev = c;
        pp = &c->next;
    }
    return found;
}

bool alink__bash_cancel(struct alink__hands *h, struct alink__conn *conn, uint64_t id)
{
    struct alink__shell *sh = &h->shell;

    if (sh->cur && sh->cur->conn == conn && sh->cur->id == id) {
        shell_close(h, true);
        end_call(h, "bash: command cancelled", 23, true);
        return true;
    }
    return drop_queued(h, conn, id, false);
}

void alink__bash_conn_gone(struct alink__hands *h, struct alink__conn *conn)
{
    struct alink__shell *sh = &h->shell;

    drop_queued(h, conn, 0, true);
    if (sh->cur && sh->cur->conn == conn) {
        sh->cur->conn = NULL; /* nobody to answer */
        shell_close(h, true);
        end_call(h, "", 0, true);
    }
}

void alink__bash_shutdown(struct alink__hands *h)
{
    struct alink__shell *sh = &h->shell;

    while (sh->head) {
        struct alink__call *c = sh->head;
        sh->head = c->next;
        alink__call_free(c);
    }
    sh->tail = NULL;
    if (sh->cur) {
        ev_timer_stop(h->loop, &sh->cur->timer);
        alink__call_free(sh->cur);
        sh->cur = NULL;
    }
    shell_close(h, true);
    wp_buf_free(&sh->inbuf);
    free(sh->ring);
    sh->ring = NULL;
}
