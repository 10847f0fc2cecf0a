/* node_memory.c - what clones hold (memory.c) and how many fit the budget. */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
/* ---- memory ------------------------------------------------------------------ */

/* Memory pages in the image (its manifest's sizes.pages_bytes): what a new
 * clone holds before KSM merges it. 0 when unknown. */
void node__read_image_bytes(struct node *n, struct env *e)
{
    char path[700];
    json_t *o, *v;

    snprintf(path, sizeof(path), "%s/images/%s/manifest.json", n->cfg.state_dir, e->image);
    o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
    v = json_object_get(json_object_get(o, "sizes"), "pages_bytes");
    e->image_bytes = json_is_integer(v) && json_integer_value(v) > 0 &&
                             json_integer_value(v) < (1ll << 40)
                         ? (uint64_t)json_integer_value(v)
                         : 0;
    json_decref(o);
}

bool node__merging(const struct env *e)
{
    return e->ksm == KSM_ON || e->ksm == KSM_OVERRIDE;
}

/* Every MEM_PERIOD_S: what each clone holds (memory.c), per environment
 * one shared copy plus private bytes per clone, and from that how many hot
 * clones fit the budget. A clone counts as settled once its private bytes
 * held still between two measures (lazy pages have landed) and, when
 * mergeable, KSM has made two full scans since they last moved (it is
 * merged): before that it counts at its image's size,
 * what it may hold until merged. The estimate for one more clone is the
 * p95 of settled clones' private bytes, or the image's size when none is
 * settled: pessimistic while little is known, as measured as it can be
 * once the pool runs. Cost: a few /proc reads per clone (smaps_rollup
 * walks the page tables: ~0.1 ms for 200 MB). */
void node__measure_memory(struct node *n)
{
    uint64_t *priv = NULL, *settled = NULL, used_steady = 0;
    int cnt = 0;

    pool__mem_ksm_host(&n->kh);
    for (struct nsb *s = n->sbs; s; s = s->next)
        cnt++;
    priv = calloc((size_t)cnt + 1, sizeof(*priv));
    settled = calloc((size_t)cnt + 1, sizeof(*settled));
    if (!priv || !settled)
        goto out;
    n->used_now = 0;
    n->unsettled = 0;
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        struct pool__env_mem *m = &e->mem;
        int k = 0, ks = 0, restoring = 0;
        uint64_t pending = 0;

        memset(m, 0, sizeof(*m));
        for (struct nsb *s = n->sbs; s; s = s->next) {
            struct pool__clone_mem cm;
            if (s->e != e)
                continue;
            if (!s->sb || s->sb->init_pid <= 0) {
                restoring++;
                continue;
            }
            if (pool__mem_clone(n->snap, s->sb->id, &cm, NULL) < 0)
                continue;
            /* Settled: lazy pages have landed (private bytes held still
             * over a measure) and, when mergeable, KSM made two full scans
             * since they last moved (merging is done, not just begun). */
            bool moved = cm.private_ > s->last_private + (1u << 20) ||
                         cm.private_ + (1u << 20) < s->last_private;
            if (moved)
                s->scans_at_change = n->kh.full_scans;
            s->last_private = cm.private_;
            s->settled = n->now - s->ready_at >= 2 && !moved &&
                         (!node__merging(e) || (n->kh.full_scans >= 0 && s->scans_at_change >= 0 &&
                                          n->kh.full_scans >= s->scans_at_change + 2));
            m->clones++;
            m->pss += cm.pss;
            m->private_sum += cm.private_;
            m->anon += cm.anon;
            m->merged += cm.merged;
            m->kernel += cm.kernel;
            m->cgroup += cm.cgroup;
            priv[k++] = cm.private_;
            if (s->settled)
                settled[ks++] = cm.private_;
            else {
                n->unsettled += node__merging(e);
                /* Not merged yet: it may still grow to the image's size. */
                pending += e->image_bytes > cm.private_ ? e->image_bytes - cm.private_ : 0;
            }
        }
        m->shared = m->pss > m->private_sum ? m->pss - m->private_sum : 0;
        struct pool__env_mem tmp;
        pool__mem_summary(settled, ks, &tmp);
        m->per_clone = ks ? tmp.p95 : e->image_bytes;
        pool__mem_summary(priv, k, m);
        n->used_now += m->pss + pending + (uint64_t)restoring * e->image_bytes;
        used_steady += m->pss + (uint64_t)restoring * m->per_clone;
    }
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        int hot = e->idle + e->restoring;
        e->fit = pool_mem_fit(n->budget, used_steady, e->mem.per_clone, hot);
        e->fit_keep = pool_mem_fit(n->budget + n->budget / 50, used_steady, e->mem.per_clone, hot);
        e->mem.fit = e->fit;
        e->mem.asked = e->target;
        pool__mem_publish(n->r, n->cfg.id, e->cfg.name, node__ksm_names[e->ksm], &e->mem,
                          n->cfg.heartbeat_ttl_s * 2 + 10);
        if (e->fit < e->target && e->fit < POOL_TARGET_UNBOUNDED)
            log_debug("env=%s hot target %d capped to %d by memory (budget %llu MB, used %llu MB)",
                      e->cfg.name, e->target, e->fit, (unsigned long long)(n->budget >> 20),
                      (unsigned long long)(used_steady >> 20));
    }
out:
    free(priv);
    free(settled);
}
