/* node_image.c - each environment's image (builds in a helper) and its
 * slot: set up at start-up, or learnt and withdrawn at run time (catalog.c). */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
/* ---- images ------------------------------------------------------------------ */

/* Progress of a build, for the log and for Redis (`build:<env>` in the
 * node's hash: the last line, then "ready" or "failed: ..."). */
void node__build_status(struct node *n, struct env *e, const char *line)
{
    char key[160], field[96];
    node__fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
    snprintf(field, sizeof(field), "build:%s", e->cfg.name);
    const char *argv[] = { "HSET", key, field, line };
    node__cmd(n, "build progress", 4, argv);
    if (e->api)
        pool__catalog_note(n->r, n->cfg.id, e->cfg.name, line);
}

static void build_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct env *e = w->data;
    ssize_t r;
    (void)revents;

    r = read(w->fd, e->build_buf + e->build_len, sizeof(e->build_buf) - 1 - e->build_len);
    if (r <= 0) {
        ev_io_stop(loop, w);
        close(w->fd);
        return;
    }
    e->build_len += (size_t)r;
    char *nl;
    while ((nl = memchr(e->build_buf, '\n', e->build_len)) ||
           e->build_len == sizeof(e->build_buf) - 1) {
        size_t l = nl ? (size_t)(nl - e->build_buf) : e->build_len;
        e->build_buf[l] = '\0';
        log_info("build env=%s: %s", e->cfg.name, e->build_buf);
        if (strncmp(e->build_buf, "failed: ", 8) == 0)
            e->build_failed_line = true;
        node__build_status(e->n, e, e->build_buf);
        size_t used = nl ? l + 1 : l;
        memmove(e->build_buf, e->build_buf + used, e->build_len - used);
        e->build_len -= used;
    }
}

static void build_progress(void *arg, const char *line)
{
    dprintf(*(int *)arg, "%s\n", line);
}

void node__start_build(struct node *n, struct env *e)
{
    int pfd[2];
    pid_t pid;

    e->img = IMG_BUILDING;
    e->build_failed_line = false;
    log_info("building image=%s env=%s", e->image, e->cfg.name);
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        e->img = IMG_FAILED;
        e->build_retry_at = n->now + 10;
        return;
    }
    pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        e->img = IMG_FAILED;
        e->build_retry_at = n->now + 10;
        return;
    }
    if (pid == 0) {
        struct snap_sandbox *sb;
        struct wp_err err;
        int out = pfd[1];
        close(pfd[0]);
        dprintf(out, "booting\n");
        if (snap_boot(n->snap, e->t, NULL, build_progress, &out, &sb, &err) < 0) {
            dprintf(out, "failed: %s\n", err.msg);
            _exit(1);
        }
        dprintf(out, "booted in %.1f ms, checkpointing\n", sb->boot_ms);
        if (snap_checkpoint(n->snap, sb, e->t, e->image, sb->boot_ms, NULL, &err) < 0) {
            dprintf(out, "failed: %s\n", err.msg);
            _exit(1);
        }
        _exit(0);
    }
    close(pfd[1]);
    e->build_len = 0;
    ev_io_init(&e->build_io, build_io_cb, pfd[0], EV_READ);
    e->build_io.data = e;
    ev_io_start(n->loop, &e->build_io);
    e->build_pid = pid;
}

static void image_name(struct env *e)
{
    /* The digest names the image: a changed template builds a new one. */
    char name[sizeof(e->image)];
    snprintf(name, sizeof(name), "%.40s-%.12s", e->cfg.name, e->t->digest);
    memcpy(e->image, name, sizeof(name));
}

/* The image of e's template is on disk already (an earlier run built it). */

static void image_on_disk(struct node *n, struct env *e)
{
    char path[700];
    image_name(e);
    snprintf(path, sizeof(path), "%s/images/%s/manifest.json", n->cfg.state_dir, e->image);
    e->found_on_disk = access(path, F_OK) == 0;
    e->img = e->found_on_disk ? IMG_READY : IMG_NONE;
    struct wp_err err;
    if (e->found_on_disk && snap_image_check(n->snap, e->image, &err) < 0) {
        /* Damaged, or made by an older build this node must not restore
         * (no user namespace): built again rather than failing claims. */
        log_warn("image=%s env=%s on disk is not usable: %s: rebuilding", e->image, e->cfg.name,
                 err.msg);
        node__image_set_aside(n, e);
        e->found_on_disk = false;
    }
    if (e->found_on_disk)
        node__read_image_bytes(n, e);
}

/* Set up slot e (zeroed or retired and empty) to serve template t (steals). */
void node__env_init(struct node *n, struct env *e, const struct pool_env_config *cfg,
                    struct snap_template *t)
{
    snap_template_free(e->t);
    while (e->claims_q) {
        struct claimq *q = e->claims_q;
        e->claims_q = q->next;
        free(q);
    }
    memset(e, 0, sizeof(*e));
    e->n = n;
    e->cfg = *cfg;
    e->t = t;
    snprintf(e->cfg.name, sizeof(e->cfg.name), "%s", t->name);
    e->min_hot = e->cfg.min_hot;
    e->max_hot = e->cfg.max_hot;
    /* 10 s half life: a burst registers within seconds (scale up at
     * once); the scaler's cooldown makes the way down slow. */
    pool_rate_init(&e->claims, 10);
    pool_ewma_init(&e->refill, 30);
    pool_scaler_init(&e->scaler, 30);
    char inbox[sizeof(e->inbox)];
    snprintf(inbox, sizeof(inbox), POOL__K_INBOX "%s", e->cfg.name, n->cfg.id);
    memcpy(e->inbox, inbox, sizeof(inbox));
    /* Where the previous run stopped (read from Redis before the first
     * read), but nothing older than a claim's 30 s: the earlier run's
     * sandboxes are gone, so its claimed/release notes mean nothing. */
    snprintf(e->last_id, sizeof(e->last_id), "%llu-0",
             (unsigned long long)(wp_wall_ms() - POOL__CLAIM_MAX_AGE_MS));
    image_on_disk(n, e);
    e->fit = e->fit_keep = POOL_TARGET_UNBOUNDED; /* until measured */
    e->ksm = e->t->ksm ? KSM_ON : KSM_OFF;
    if (e->t->ksm && n->cfg.multi_tenant && !n->cfg.ksm_multi_tenant) {
        /* Merging across organizations lets one learn, by copy-on-write
         * timing, whether a page with given content exists in another's
         * sandbox: refused unless the operator overrides. Boots (the
         * image build, cold boots) and restores both run unmerged. */
        log_warn("KSM refused for env=%s: this node is multi-tenant (--multi-tenant); merging "
                 "would open a timing side channel between organizations. Its sandboxes run "
                 "unmerged; --ksm-multi-tenant-override merges anyway",
                 e->cfg.name);
        e->t->ksm = false;
        e->ksm = KSM_REFUSED;
    } else if (e->t->ksm && n->cfg.multi_tenant) {
        log_warn("KSM on for env=%s on a multi-tenant node by operator override: organizations "
                 "sharing this node can probe each other's memory contents by copy-on-write "
                 "timing",
                 e->cfg.name);
        e->ksm = KSM_OVERRIDE;
    }
}
/* ---- environments learnt at run time (catalog.c) ---------------------- */

static struct env *find_env(struct node *n, const char *name)
{
    for (int i = 0; i < n->n_envs; i++)
        if (strcmp(n->envs[i].cfg.name, name) == 0)
            return &n->envs[i];
    return NULL;
}

static int count_sbs(struct node *n, struct env *e)
{
    int c = 0;
    for (struct nsb *s = n->sbs; s; s = s->next)
        c += s->e == e;
    return c;
}

/* Destroy e's idle clones (all, or only those of another image). */
void node__drop_idle(struct node *n, struct env *e, bool stale_only, const char *why)
{
    char hot[160];
    node__fmtkey(hot, sizeof(hot), POOL__K_HOT, e->cfg.name);
    for (struct nsb *s = n->sbs, *next; s; s = next) {
        next = s->next;
        if (s->e != e || s->st != SB_IDLE || (stale_only && strcmp(s->sb->image, e->image) == 0))
            continue;
        const char *lrem[] = { "LREM", hot, "0", s->sb->id };
        node__cmd(n, "drop idle", 4, lrem);
        node__destroy_sb(n, s, why);
    }
}

/* Delete env's images but keep (may be ""), in a helper process: removing
 * trees blocks. An image clones still use is refused by snapshot/; the
 * helper tries for 10 s, then it stays until the environment is withdrawn. */
static void delete_images(struct node *n, const char *env, const char *keep)
{
    char dir[600];
    size_t el = strlen(env);
    pid_t pid = fork();
    if (pid != 0)
        return; /* libev reaps the helper; a fork failure only leaves disk used */
    snprintf(dir, sizeof(dir), "%s/images", n->cfg.state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        /* Exactly <env>-<12 hex>: not set-aside (.stale-) or partial ones. */
        if (strncmp(de->d_name, env, el) != 0 || de->d_name[el] != '-' ||
            strlen(de->d_name + el + 1) != 12 || strspn(de->d_name + el + 1, "0123456789abcdef") != 12 ||
            strcmp(de->d_name, keep) == 0)
            continue;
        /* Idle clones being destroyed right now release it: their destroy
         * helpers run beside this one, and a loaded machine can take tens
         * of seconds over them (10 s was seen to be too short); a leased
         * clone keeps it until the environment goes. */
        struct wp_err err;
        int rc = 0;
        for (int i = 0; i < 600 && (rc = snap_image_delete(n->snap, de->d_name, &err)) == WP_ESTATE; i++)
            usleep(200 * 1000);
        if (rc < 0)
            log_info("image=%s kept: %s", de->d_name, err.msg);
        else
            log_info("image=%s deleted", de->d_name);
    }
    if (d)
        closedir(d);
    _exit(0);
}

int node__env_put(void *ctx, const char *name, struct snap_template *t, struct wp_err *err)
{
    struct node *n = ctx;
    struct env *e = find_env(n, name);

    if (e && !e->api) {
        snap_template_free(t);
        return wp_err_set(err, WP_EEXISTS, "%s is served from this node's configuration", name);
    }
    if (e && !e->retired) {
        /* A new template: swap it once nothing is being made from the
         * old one (asked again next round). */
        if (e->img == IMG_BUILDING || e->restoring > 0) {
            snap_template_free(t);
            return WP_ESTATE;
        }
        snap_template_free(e->t);
        e->t = t;
        char old[sizeof(e->image)];
        memcpy(old, e->image, sizeof(old));
        image_on_disk(n, e);
        e->failures = 0;
        e->backoff = 0;
        e->refill_at = 0;
        if (strcmp(old, e->image) != 0) {
            log_info("env=%s template changed: image %s -> %s", name, old, e->image);
            node__drop_idle(n, e, true, "template changed");
            delete_images(n, name, e->image);
        }
        return 0;
    }
    if (e && count_sbs(n, e) > 0) {
        snap_template_free(t);
        return WP_ESTATE; /* withdrawn and back: once the old clones are gone */
    }
    if (!e) {
        /* A free slot: retired and empty, else a new one. */
        for (int i = 0; i < n->n_envs && !e; i++)
            if (n->envs[i].retired && count_sbs(n, &n->envs[i]) == 0)
                e = &n->envs[i];
        if (!e && n->n_envs < POOL_MAX_ENVS)
            e = &n->envs[n->n_envs++];
    }
    if (!e) {
        snap_template_free(t);
        return wp_err_set(err, WP_ETOOBIG, "node full: at most %d environments", POOL_MAX_ENVS);
    }
    /* Policy until the first refresh (within a second): nothing hot. */
    struct pool_env_config c = { .min_hot = 0, .max_hot = 0 };
    node__env_init(n, e, &c, t);
    e->api = true;
    if (e->found_on_disk)
        node__build_status(n, e, "ready (image on disk)");
    return 0;
}

int node__env_retire(void *ctx, const char *name)
{
    struct node *n = ctx;
    struct env *e = find_env(n, name);
    char nodes[160];

    if (!e || !e->api)
        return 0;
    if (!e->retired) {
        log_info("env=%s withdrawn: no longer served here", name);
        e->retired = true;
        node__fmtkey(nodes, sizeof(nodes), POOL__K_NODES_OF, name);
        const char *srem[] = { "SREM", nodes, n->cfg.id };
        node__cmd(n, "env nodes", 3, srem);
        node__publish_live(n, e, true);
        char key[160], f[9][96];
        static const char *const fields[] = { "build", "target", "claims_per_s", "refill_ms",
                                              "refills", "ksm", "claims_waiting",
                                              "claim_wait_ms", "claims_shed" };
        node__fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
        const char *hdel[11] = { "HDEL", key };
        for (int i = 0; i < 9; i++) {
            snprintf(f[i], sizeof(f[i]), "%s:%s", fields[i], name);
            hdel[2 + i] = f[i];
        }
        node__cmd(n, "node fields", 11, hdel);
        node__serve_claims(n, e); /* queued claims are answered: not here */
    }
    /* Idle clones go now (also those a refill finished since); leased
     * ones stay with their holders until released. */
    node__drop_idle(n, e, false, "environment withdrawn");
    int left = count_sbs(n, e);
    if (left == 0 && e->build_pid == 0 && e->img != IMG_NONE) {
        /* Nothing restored from it is left: its images go too. */
        e->img = IMG_NONE;
        delete_images(n, name, "");
    }
    return left > 0 || e->build_pid > 0;
}
