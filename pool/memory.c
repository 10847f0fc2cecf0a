/* memory.c - what a node's clones really hold, measured, not assumed.
 *
 * Per clone: the sum over its processes (its cgroup) of
 * /proc/PID/smaps_rollup (Pss, Private_Clean + Private_Dirty, Anonymous)
 * and /proc/PID/ksm_stat (ksm_merging_pages), plus the kernel memory its
 * cgroup is charged for (page tables, slab: never shared). "Private" is
 * what the clone alone maps plus that kernel memory; "shared" for an
 * environment is sum(Pss) - sum(Private): the proportional share of pages
 * mapped by several processes, i.e. about one copy of what its clones
 * share (KSM-merged pages and host files), however many clones there are.
 *
 * Host-wide: KSM's pages_shared/pages_sharing/full_scans and the CPU time
 * of the ksmd kernel thread (utime + stime from /proc/<ksmd>/stat).
 *
 * Every /proc and sysfs read is bounded and parsed defensively: a process
 * that exits mid-read, a field that is missing or not a number, is skipped
 * or reported, never trusted. */
#define WP_LOG_COMPONENT "mem"
#include "pool/pool_int.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/redis.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

/* Upper bounds of the private-bytes-per-clone histogram (the last bucket
 * is +Inf): 1 MiB doubling to 1 GiB. Fixed, so a scraper renders them as
 * Prometheus `le` buckets without knowing the node. */
const uint64_t pool__mem_bounds[POOL__MEM_NB - 1] = {
    1ull << 20, 2ull << 20, 4ull << 20, 8ull << 20, 16ull << 20, 32ull << 20,
    64ull << 20, 128ull << 20, 256ull << 20, 512ull << 20, 1ull << 30,
};

/* "Name:   123 kB" lines: the value of name in bytes. */
static bool kb_field(const char *text, const char *name, uint64_t *out)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || p[n] != ':')
            continue;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p + n + 1, &end, 10);
        if (end == p + n + 1 || errno || v > (1ull << 44)) /* 16 PiB in kB: garbage */
            return false;
        while (*end == ' ')
            end++;
        if (strncmp(end, "kB", 2) != 0)
            return false;
        *out = (uint64_t)v * 1024;
        return true;
    }
    return false;
}

int pool__mem_parse_rollup(const char *text, struct pool__proc_mem *m)
{
    uint64_t pc = 0, pd = 0;

    memset(m, 0, sizeof(*m));
    if (!kb_field(text, "Rss", &m->rss) || !kb_field(text, "Pss", &m->pss) ||
        !kb_field(text, "Private_Clean", &pc) || !kb_field(text, "Private_Dirty", &pd))
        return WP_EINVAL_INPUT;
    kb_field(text, "Anonymous", &m->anon); /* absent on old kernels: 0 */
    m->private_ = pc + pd;
    if (m->private_ > m->rss || m->pss > m->rss)
        return WP_EINVAL_INPUT;
    return 0;
}

int pool__mem_parse_ksm_stat(const char *text, uint64_t *merging_pages)
{
    const char *p = strstr(text, "ksm_merging_pages ");
    char *end;

    *merging_pages = 0;
    if (!p || (p != text && p[-1] != '\n'))
        return WP_EINVAL_INPUT;
    errno = 0;
    unsigned long long v = strtoull(p + strlen("ksm_merging_pages "), &end, 10);
    if (errno || (*end != '\n' && *end != '\0'))
        return WP_EINVAL_INPUT;
    *merging_pages = v;
    return 0;
}

int pool__mem_parse_cpu_ticks(const char *stat, uint64_t *ticks)
{
    /* "pid (comm) state ppid ..." where comm may hold spaces and ')':
     * fields are counted from the last ')'. utime and stime are fields
     * 14 and 15, i.e. the 12th and 13th after the comm. */
    const char *p = strrchr(stat, ')');
    unsigned long long ut, st;

    *ticks = 0;
    if (!p)
        return WP_EINVAL_INPUT;
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return WP_EINVAL_INPUT;
    *ticks = ut + st;
    return 0;
}

static int read_proc(pid_t pid, const char *what, size_t max, char **text)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, what);
    return wp_read_file(path, max, text, NULL, NULL);
}

#define MAX_PIDS 256

int pool__mem_clone(struct snap_ctx *ctx, const char *id, struct pool__clone_mem *out,
                    struct wp_err *err)
{
    pid_t pids[MAX_PIDS];
    struct snap_cgroup_mem cg;
    int n, rc;

    memset(out, 0, sizeof(*out));
    if ((rc = snap_sandbox_cgroup_mem(ctx, id, &cg, err)) < 0)
        return rc;
    if ((n = snap_sandbox_pids(ctx, id, pids, MAX_PIDS, err)) < 0)
        return n;
    for (int i = 0; i < n; i++) {
        struct pool__proc_mem pm;
        char *text = NULL;
        uint64_t merging = 0;
        /* Gone since the cgroup was listed, or a kernel thread: skip. */
        if (read_proc(pids[i], "smaps_rollup", 64 << 10, &text) < 0)
            continue;
        rc = pool__mem_parse_rollup(text, &pm);
        free(text);
        if (rc < 0) {
            log_debug("sandbox=%s pid=%d: unexpected smaps_rollup, skipped", id, (int)pids[i]);
            continue;
        }
        text = NULL;
        if (read_proc(pids[i], "ksm_stat", 4096, &text) == 0 &&
            pool__mem_parse_ksm_stat(text, &merging) == 0)
            out->merged += merging * (uint64_t)sysconf(_SC_PAGESIZE);
        free(text);
        out->pss += pm.pss;
        out->private_ += pm.private_;
        out->anon += pm.anon;
        out->nprocs++;
    }
    out->kernel = cg.kernel;
    out->cgroup = cg.usage;
    out->private_ += cg.kernel;
    out->pss += cg.kernel;
    return 0;
}

/* ---- host-wide KSM ------------------------------------------------------- */

static long ksm_long(const char *name)
{
    char path[128], *text = NULL, *end;
    long v = -1;

    snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
    if (wp_read_file(path, 64, &text, NULL, NULL) == 0) {
        errno = 0;
        v = strtol(text, &end, 10);
        if (end == text || errno || v < 0)
            v = -1;
        free(text);
    }
    return v;
}

/* ksmd is a kernel thread: a child of kthreadd (pid 2) named "ksmd". */
static pid_t find_ksmd(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;

    if (!d)
        return 0;
    while (!found && (e = readdir(d))) {
        char *text = NULL, *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 2 || pid > 100000) /* kernel threads start early */
            continue;
        if (read_proc((pid_t)pid, "stat", 1024, &text) == 0) {
            int ppid = 0;
            const char *p = strrchr(text, ')');
            if (strncmp(text + strcspn(text, "("), "(ksmd)", 6) == 0 && p &&
                sscanf(p + 1, " %*c %d", &ppid) == 1 && ppid == 2)
                found = (pid_t)pid;
        }
        free(text);
    }
    closedir(d);
    return found;
}

void pool__mem_ksm_host(struct pool__ksm_host *h)
{
    static pid_t ksmd; /* found once; checked again on each read */
    char *text = NULL;
    uint64_t ticks;

    memset(h, 0, sizeof(*h));
    h->pages_shared = ksm_long("pages_shared");
    h->pages_sharing = ksm_long("pages_sharing");
    h->full_scans = ksm_long("full_scans");
    for (int tries = 0; tries < 2; tries++) {
        if (!ksmd)
            ksmd = find_ksmd();
        if (!ksmd)
            return;
        if (read_proc(ksmd, "stat", 1024, &text) == 0 && strstr(text, "(ksmd)") &&
            pool__mem_parse_cpu_ticks(text, &ticks) == 0) {
            h->ksmd_cpu_ms = ticks * 1000 / (uint64_t)sysconf(_SC_CLK_TCK);
            h->ksmd_found = true;
            free(text);
            return;
        }
        free(text);
        text = NULL;
        ksmd = 0; /* not ksmd any more: look again */
    }
}

uint64_t pool__mem_available(void)
{
    char *text = NULL;
    uint64_t v = 0;

    if (wp_read_file("/proc/meminfo", 64 << 10, &text, NULL, NULL) == 0) {
        if (!kb_field(text, "MemAvailable", &v))
            v = 0;
        free(text);
    }
    return v;
}

/* ---- per environment ------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank of sorted v[0..n). */
static uint64_t rank(const uint64_t *v, int n, double p)
{
    int i = (int)((p / 100.0) * n + 0.999999) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

void pool__mem_summary(uint64_t *priv, int n, struct pool__env_mem *m)
{
    memset(m->hist, 0, sizeof(m->hist));
    m->p50 = m->p95 = 0;
    if (n <= 0)
        return;
    qsort(priv, (size_t)n, sizeof(*priv), cmp_u64);
    m->p50 = rank(priv, n, 50);
    m->p95 = rank(priv, n, 95);
    for (int i = 0; i < n; i++) {
        int b = 0;
        while (b < POOL__MEM_NB - 1 && priv[i] > pool__mem_bounds[b])
            b++;
        m->hist[b]++;
    }
}

/* ---- publishing ------------------------------------------------------------ */

static void mem_reply(void *ctx, redisReply *reply)
{
    (void)ctx;
    if (!reply)
        log_debug("redis: memory figures: no reply (disconnected)");
    else if (reply->type == REDIS_REPLY_ERROR)
        log_warn("redis: memory figures: %s", reply->str);
}

#define NFIELDS (20 + POOL__MEM_NB)

void pool__mem_publish(struct wp_redis *r, const char *node, const char *env, const char *ksm,
                       const struct pool__env_mem *m, double ttl_s)
{
    char key[200], val[NFIELDS][32], name[POOL__MEM_NB][40], ttl[32];
    const char *argv[2 + 2 * NFIELDS];
    int argc = 0, v = 0;
    uint64_t cum = 0;

    snprintf(key, sizeof(key), POOL__K_MEM "%s", env, node);
    argv[argc++] = "HSET";
    argv[argc++] = key;
#define PUT(field, fmt, x)                                                                        \
    do {                                                                                          \
        snprintf(val[v], sizeof(val[v]), fmt, x);                                                 \
        argv[argc++] = field;                                                                     \
        argv[argc++] = val[v++];                                                                  \
    } while (0)
    argv[argc++] = "ksm";
    argv[argc++] = ksm;
    PUT("clones", "%d", m->clones);
    PUT("shared_bytes", "%llu", (unsigned long long)m->shared);
    PUT("private_sum_bytes", "%llu", (unsigned long long)m->private_sum);
    PUT("private_count", "%d", m->clones);
    PUT("private_p50_bytes", "%llu", (unsigned long long)m->p50);
    PUT("private_p95_bytes", "%llu", (unsigned long long)m->p95);
    PUT("anon_bytes", "%llu", (unsigned long long)m->anon);
    PUT("merged_bytes", "%llu", (unsigned long long)m->merged);
    PUT("kernel_bytes", "%llu", (unsigned long long)m->kernel);
    PUT("cgroup_bytes", "%llu", (unsigned long long)m->cgroup);
    PUT("per_clone_bytes", "%llu", (unsigned long long)m->per_clone);
    PUT("hot_fit", "%d", m->fit);
    PUT("hot_asked", "%d", m->asked);
    PUT("hot_capped", "%d", m->asked > m->fit ? 1 : 0);
    PUT("updated_ms", "%llu", (unsigned long long)wp_wall_ms());
    /* Cumulative, Prometheus style: private_le_<bytes> counts clones
     * holding at most that many private bytes; private_le_inf = all. */
    for (int b = 0; b < POOL__MEM_NB; b++) {
        cum += m->hist[b];
        if (b < POOL__MEM_NB - 1)
            snprintf(name[b], sizeof(name[b]), "private_le_%llu",
                     (unsigned long long)pool__mem_bounds[b]);
        else
            snprintf(name[b], sizeof(name[b]), "private_le_inf");
        PUT(name[b], "%llu", (unsigned long long)cum);
    }
#undef PUT
    wp_redis_argv(r, mem_reply, NULL, argc, argv, NULL);
    /* A dead node's figures go by themselves. */
    snprintf(ttl, sizeof(ttl), "%.0f", ttl_s * 1000);
    const char *exp[] = { "PEXPIRE", key, ttl };
    wp_redis_argv(r, mem_reply, NULL, 3, exp, NULL);
}
