/* orphans.c - the node's checks for sandboxes of dead owners (an earlier
 * run of the node killed with SIGKILL, a helper that died). The first check
 * runs at start-up, before the loop; the node then checks again a few
 * times in its first seconds (an earlier run's helpers may still have been
 * finishing) and every POOL__ORPHANS_PERIOD_S after that. Those re-checks
 * block (kills, unmounts, rm), so each runs snap_gc_with in a helper
 * process, as destroys do; the helper reports on a pipe watched by an
 * ev_io. What a check could not remove, and why, is kept for the node's
 * hash (`orphans`, `orphans_why`) and shown by `warmpool pool status`. */
#define WP_LOG_COMPONENT "node"
#include "pool/pool_int.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

/* Seconds after start-up of the re-checks, then the period. */
static const double recheck_at[] = { 1, 2, 4, 8 };
#define N_RECHECK (int)(sizeof(recheck_at) / sizeof(recheck_at[0]))

struct pool__orphans {
    struct ev_loop *loop;
    ev_io io;               /* the running check's report */
    pid_t pid;              /* the running check's helper, 0 when none */
    char buf[8192];         /* its report so far (bounded: it stops there) */
    size_t len;
    double started_at;      /* start-up, monotonic seconds */
    int rounds;             /* checks started since start-up */
    double next_at;
    uint64_t cleaned;       /* removed since start-up */
    uint64_t checked_ms;    /* wall clock of the last finished check */
    int n_left;             /* left by the last check */
    char left[POOL__ORPHANS_SHOWN][POOL__ORPHAN_LINE];
};

int pool__orphans_new(struct ev_loop *loop, double now, struct pool__orphans **out,
                      struct wp_err *err)
{
    struct pool__orphans *o = calloc(1, sizeof(*o));
    if (!o)
        return wp_err_set(err, -ENOMEM, "out of memory");
    o->loop = loop;
    o->started_at = now;
    o->next_at = now + recheck_at[0];
    *out = o;
    return 0;
}

/* One thing a check left; the first POOL__ORPHANS_SHOWN are kept. */
static void note_left(struct pool__orphans *o, const char *id, const char *why)
{
    if (o->n_left < POOL__ORPHANS_SHOWN)
        snprintf(o->left[o->n_left], sizeof(o->left[0]), "%.63s: %s", id, why);
    o->n_left++;
}

static void sync_left_cb(void *arg, const char *id, const char *why)
{
    note_left(arg, id, why);
}

int pool__orphans_check_now(struct pool__orphans *o, struct snap_ctx *snap, struct wp_err *err)
{
    struct snap_gc_opts opts = { .on_left = sync_left_cb, .arg = o };
    o->n_left = 0;
    int rc = snap_gc_with(snap, &opts, err);
    o->checked_ms = wp_wall_ms();
    if (rc > 0)
        o->cleaned += (uint64_t)rc;
    return rc;
}

/* In the helper: one line per sandbox left, "left <id>\t<why>\n", with
 * newlines and tabs in the reason flattened so a line stays a line. */
static void pipe_left_cb(void *arg, const char *id, const char *why)
{
    char flat[POOL__ORPHAN_LINE], line[POOL__ORPHAN_LINE + 80];
    int fd = *(int *)arg;

    snprintf(flat, sizeof(flat), "%s", why);
    for (char *c = flat; *c; c++)
        if (*c == '\n' || *c == '\t')
            *c = ' ';
    int n = snprintf(line, sizeof(line), "left %.63s\t%s\n", id, flat);
    if (n > 0 && write(fd, line, (size_t)n) < 0)
        _exit(1);
}

/* Parse the helper's report (it is ours, but a line may have been cut by
 * the buffer's bound: each line is checked). */
static void report(struct pool__orphans *o)
{
    char *p = o->buf, *end = o->buf + o->len;
    int cleaned = -1;

    o->n_left = 0;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break; /* a cut line */
        *nl = '\0';
        if (strncmp(p, "left ", 5) == 0) {
            char *tab = strchr(p + 5, '\t');
            if (tab) {
                *tab = '\0';
                note_left(o, p + 5, tab + 1);
            }
        } else if (strncmp(p, "done ", 5) == 0) {
            cleaned = atoi(p + 5);
        }
        p = nl + 1;
    }
    o->checked_ms = wp_wall_ms();
    if (cleaned > 0) {
        o->cleaned += (uint64_t)cleaned;
        log_info("removed %d sandboxes of dead owners (check %d)", cleaned, o->rounds);
    } else if (cleaned < 0) {
        log_warn("orphan check %d: the helper died without a report", o->rounds);
    }
    if (o->n_left)
        log_warn("orphan check %d: %d sandboxes left (see pool status)", o->rounds, o->n_left);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pool__orphans *o = w->data;
    (void)revents;

    for (;;) {
        char scratch[512];
        char *dst = o->len < sizeof(o->buf) ? o->buf + o->len : scratch;
        size_t cap = o->len < sizeof(o->buf) ? sizeof(o->buf) - o->len : sizeof(scratch);
        ssize_t r = read(w->fd, dst, cap);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r > 0) {
            if (dst != scratch)
                o->len += (size_t)r;
            continue;
        }
        break; /* EOF or error: the helper is done */
    }
    ev_io_stop(loop, w);
    close(w->fd);
    /* libev's catch-all child watcher (the node's) reaps the helper. */
    o->pid = 0;
    report(o);
}

bool pool__orphans_due(const struct pool__orphans *o, double now)
{
    return o->pid == 0 && now >= o->next_at;
}

int pool__orphans_start(struct pool__orphans *o, struct snap_ctx *snap, const char *const *ids,
                        int n_ids, const pid_t *owners, int n_owners, double now,
                        struct wp_err *err)
{
    int pfd[2];

    if (o->pid)
        return wp_err_set(err, WP_ESTATE, "an orphan check is running");
    /* The next one, whether this one starts or not. */
    o->rounds++;
    o->next_at = o->rounds < N_RECHECK ? o->started_at + recheck_at[o->rounds]
                                       : now + POOL__ORPHANS_PERIOD_S;
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return wp_err_errno(err, "pipe");
    /* Taken before the fork: a sandbox made after it is not judged, since
     * the lists do not know it. */
    uint64_t since = wp_wall_ms();
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return wp_err_errno(err, "fork");
    }
    if (pid == 0) {
        close(pfd[0]);
        struct snap_gc_opts opts = {
            .keep_ids = ids, .n_keep_ids = n_ids, .keep_owners = owners,
            .n_keep_owners = n_owners, .since_ms = since, .sandboxes_only = true,
            .on_left = pipe_left_cb, .arg = &pfd[1],
        };
        int rc = snap_gc_with(snap, &opts, NULL);
        dprintf(pfd[1], "done %d\n", rc < 0 ? 0 : rc);
        _exit(0);
    }
    close(pfd[1]);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    o->pid = pid;
    o->len = 0;
    ev_io_init(&o->io, io_cb, pfd[0], EV_READ);
    o->io.data = o;
    ev_io_start(o->loop, &o->io);
    return 0;
}

void pool__orphans_text(const struct pool__orphans *o, struct pool__orphans_text *t)
{
    size_t l = 0;
    int shown = o->n_left < POOL__ORPHANS_SHOWN ? o->n_left : POOL__ORPHANS_SHOWN;

    snprintf(t->count, sizeof(t->count), "%d", o->n_left);
    snprintf(t->cleaned, sizeof(t->cleaned), "%llu", (unsigned long long)o->cleaned);
    snprintf(t->checked_ms, sizeof(t->checked_ms), "%llu", (unsigned long long)o->checked_ms);
    t->why[0] = '\0';
    for (int i = 0; i < shown && l < sizeof(t->why); i++) {
        int n = snprintf(t->why + l, sizeof(t->why) - l, "%s%s", i ? "\n" : "", o->left[i]);
        if (n < 0)
            break;
        l += (size_t)n;
    }
}

void pool__orphans_free(struct pool__orphans *o)
{
    if (!o)
        return;
    if (o->pid) {
        /* Let a running check finish: cut short, it would leave a sandbox
         * half destroyed. libev may have reaped it already (ECHILD). */
        ev_io_stop(o->loop, &o->io);
        close(o->io.fd);
        while (waitpid(o->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    free(o);
}
