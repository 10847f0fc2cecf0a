/* vault_key.c - the key that seals vault secrets, and its rotation.
 *
 * The key is its own secret, never derived from anything else (an API key
 * added or rotated must not make stored credentials unreadable). Where it
 * comes from, first found: --vault-key HEX, $WARMPOOL_VAULT_KEY, the file
 * --vault-key-file (default /etc/warmpool/vault.key), generated there on
 * first start (every scheduler of a deployment needs the same file).
 *
 * Sealed values say which key sealed them: "v2:<kid>:<base64>", kid the
 * first 8 bytes (hex) of sha256 of the key. A value sealed by the previous
 * key (--vault-key-previous / -previous-file) still opens, and is sealed
 * again with the current one when written back; `--rotate-vault-key`
 * re-seals every stored value at once. Values of the first format (no
 * prefix, sealed with the old key derived from the API-key table) open
 * with that derived key as a last resort. A value no key opens is an
 * error that names the key it needs. */
#define WP_LOG_COMPONENT "vault"
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/rcluster.h"
#include "base/redis.h"
#include "scheduler/sched_int.h"

static int parse_hex(const char *hex, unsigned char key[32])
{
    if (strspn(hex, "0123456789abcdefABCDEF") != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        sscanf(hex + 2 * i, "%2x", &v);
        key[i] = (unsigned char)v;
    }
    return 0;
}

static void kid_of(const unsigned char key[32], char kid[17])
{
    unsigned char h[32];
    sched__sha256(key, 32, h);
    for (int i = 0; i < 8; i++)
        snprintf(kid + 2 * i, 3, "%02x", h[i]);
}

/* Read the key file, or make it (exclusive: schedulers starting together
 * agree on one key). */
static int key_file(const char *path, bool create, unsigned char key[32], struct wp_err *err)
{
    char *data = NULL;
    size_t len;
    struct stat st;

    if (wp_read_file(path, 4096, &data, &len, NULL) == 0) {
        data[strcspn(data, "\r\n")] = '\0';
        int bad = parse_hex(data, key);
        memset(data, 0, len);
        free(data);
        if (bad)
            return wp_err_set(err, WP_ECONFIG, "%s: not a vault key (64 hex digits)", path);
        /* Group-readable is how a package shares it with the scheduler's
         * user (root:warmpool 0640); others never. */
        if (stat(path, &st) == 0 && (st.st_mode & 007))
            log_warn("%s is readable by others (mode %o): chmod 640 it", path, st.st_mode & 0777);
        return 0;
    }
    if (!create)
        return wp_err_errno(err, "vault key %s", path);
    char dir[512], tmp[600], hex[66];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (wp_mkdir_p(dir, 0700, err) < 0)
            return wp_err_wrap(err, "vault key");
    }
    if (RAND_bytes(key, 32) != 1)
        return wp_err_set(err, WP_ECONFIG, "no randomness for a vault key");
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    hex[64] = '\n';
    snprintf(tmp, sizeof(tmp), "%s.new.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return wp_err_errno(err, "create %s", tmp);
    bool ok = write(fd, hex, 65) == 65 && fsync(fd) == 0;
    close(fd);
    memset(hex, 0, sizeof(hex));
    /* link() fails if another scheduler made it first: use theirs. */
    int lrc = ok ? link(tmp, path) : -1;
    int lerr = errno;
    unlink(tmp);
    if (!ok)
        return wp_err_set(err, -EIO, "write %s", tmp);
    if (lrc < 0 && lerr == EEXIST)
        return key_file(path, false, key, err);
    if (lrc < 0)
        return wp_err_set(err, -lerr, "create %s: %s", path, strerror(lerr));
    log_warn("generated a vault key in %s: every scheduler of this deployment needs this file "
             "(lose it and stored credentials cannot be opened)",
             path);
    return 0;
}

int sched__vault_keys_load(const struct sched_config *cfg, struct sched_vault_keys *k,
                           struct wp_err *err)
{
    const char *env = getenv("WARMPOOL_VAULT_KEY");
    int rc;

    memset(k, 0, sizeof(*k));
    if (cfg->vault_key_hex[0]) {
        parse_hex(cfg->vault_key_hex, k->cur);
        snprintf(k->source, sizeof(k->source), "--vault-key");
    } else if (env && *env) {
        if (parse_hex(env, k->cur) < 0)
            return wp_err_set(err, WP_ECONFIG, "WARMPOOL_VAULT_KEY: want 64 hex digits");
        snprintf(k->source, sizeof(k->source), "$WARMPOOL_VAULT_KEY");
    } else {
        if ((rc = key_file(cfg->vault_key_file, true, k->cur, err)) < 0)
            return rc;
        snprintf(k->source, sizeof(k->source), "%s", cfg->vault_key_file);
    }
    kid_of(k->cur, k->cur_kid);
    if (cfg->vault_prev_hex[0]) {
        parse_hex(cfg->vault_prev_hex, k->prev);
        k->has_prev = true;
    } else if (cfg->vault_prev_file[0]) {
        if ((rc = key_file(cfg->vault_prev_file, false, k->prev, err)) < 0)
            return rc;
        k->has_prev = true;
    }
    if (k->has_prev)
        kid_of(k->prev, k->prev_kid);
    /* The key of the first format: a hash of the API-key table. */
    sched__sha256(cfg->orgs, sizeof(cfg->orgs[0]) * (size_t)cfg->norgs, k->legacy);
    return 0;
}

char *sched__vault_seal(const struct sched_vault_keys *k, const char *plain, size_t n)
{
    char *body = sched__seal(k->cur, plain, n);
    if (!body)
        return NULL;
    size_t l = strlen(body);
    char *out = malloc(l + 24);
    if (out)
        snprintf(out, l + 24, "v2:%s:%s", k->cur_kid, body);
    free(body);
    return out;
}

char *sched__vault_unseal(const struct sched_vault_keys *k, const char *sealed, size_t *n,
                          bool *stale, char *why, size_t cap)
{
    char *out = NULL;

    *stale = false;
    why[0] = '\0';
    if (strncmp(sealed, "v2:", 3) == 0 && strlen(sealed) > 20 && sealed[19] == ':') {
        char kid[17];
        snprintf(kid, sizeof(kid), "%.16s", sealed + 3);
        if (strcmp(kid, k->cur_kid) == 0)
            out = sched__unseal(k->cur, sealed + 20, n);
        else if (k->has_prev && strcmp(kid, k->prev_kid) == 0 &&
                 (out = sched__unseal(k->prev, sealed + 20, n)))
            *stale = true;
        if (!out)
            snprintf(why, cap,
                     "sealed with vault key %s; this scheduler has %s%s%s (see --vault-key-file "
                     "and --vault-key-previous-file)",
                     kid, k->cur_kid, k->has_prev ? " and previous " : "",
                     k->has_prev ? k->prev_kid : "");
        return out;
    }
    if ((out = sched__unseal(k->cur, sealed, n)) || (out = sched__unseal(k->legacy, sealed, n)))
        *stale = true;
    else
        snprintf(why, cap, "sealed before vault keys had ids, with a key this scheduler does not "
                           "have (the old key derived from the API-key table changed)");
    return out;
}

/* ---- --rotate-vault-key ------------------------------------------------------ */

#include "lua/scheduler/vault_key.h" /* its Lua scripts: lua/scheduler/vault_key/ (Makefile) */

struct rotate_count {
    int done, current, failed;
};

/* Re-seal the credentials of one Redis (every master of a cluster in turn:
 * a SCAN sees only its own node's keys, and each key found is that node's). */
static int rotate_on(redisContext *r, const struct sched_vault_keys *k, struct rotate_count *n,
                     struct wp_err *err)
{
    char cursor[32] = "0";
    do {
        redisReply *s = redisCommand(r, "SCAN %s MATCH wp:obj:* COUNT 1000 TYPE hash", cursor);
        if (!s || s->type != REDIS_REPLY_ARRAY || s->elements != 2) {
            int rc = wp_err_set(err, WP_EPROTO, "SCAN: %s", s && s->str ? s->str : r->errstr);
            freeReplyObject(s);
            return rc;
        }
        snprintf(cursor, sizeof(cursor), "%s", s->element[0]->str);
        for (size_t i = 0; i < s->element[1]->elements; i++) {
            const char *key = s->element[1]->element[i]->str;
            redisReply *v = redisCommand(r, "HGET %s sealed", key);
            if (v && v->type == REDIS_REPLY_ERROR) { /* e.g. MOVED: a slot migrating */
                fprintf(stderr, "%s: %s\n", key + 7, v->str);
                n->failed++;
            } else if (v && v->type == REDIS_REPLY_STRING) {
                size_t len = 0;
                bool stale;
                char why[256];
                char *plain = sched__vault_unseal(k, v->str, &len, &stale, why, sizeof(why));
                if (!plain) {
                    fprintf(stderr, "%s: %s\n", key + 7, why);
                    n->failed++;
                } else if (!stale) {
                    n->current++;
                } else {
                    char *sealed = sched__vault_seal(k, plain, len);
                    redisReply *c = sealed ? redisCommand(r, "EVAL %s 1 %s %s %s", lua_cas, key,
                                                          v->str, sealed)
                                           : NULL;
                    n->done += c && c->type == REDIS_REPLY_INTEGER && c->integer == 1;
                    freeReplyObject(c);
                    free(sealed);
                }
                if (plain) {
                    memset(plain, 0, len);
                    free(plain);
                }
            }
            freeReplyObject(v);
        }
        freeReplyObject(s);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

int sched__vault_rotate(const struct sched_config *cfg, struct wp_err *err)
{
    struct sched_vault_keys k;
    struct rotate_count n = {0, 0, 0};
    redisContext *one = NULL, *ctx[WP_RCL_MAX_NODES];
    struct wp_rcl_sync *rcs = NULL;
    int rc, nctx = 1;

    if ((rc = sched__vault_keys_load(cfg, &k, err)) < 0)
        return rc;
    if (wp_rcl_on()) { /* every master's share of the keys */
        if (!(rcs = wp_rcl_sync_new(err)))
            return err ? err->code : WP_ECONFIG;
        nctx = wp_rcl_sync_masters(rcs, ctx, WP_RCL_MAX_NODES, err);
    } else if ((ctx[0] = one = wp_redis_connect_sync(cfg->redis_host, cfg->redis_port, err))) {
        nctx = 1;
    } else {
        return err ? err->code : WP_ECONFIG;
    }
    rc = nctx < 0 ? nctx : 0;
    for (int i = 0; rc == 0 && i < nctx; i++)
        rc = rotate_on(ctx[i], &k, &n, err);
    if (one)
        redisFree(one);
    wp_rcl_sync_free(rcs);
    if (rc < 0)
        return rc;
    printf("{\"resealed\":%d,\"already_current\":%d,\"failed\":%d,\"key\":\"%s\"}\n", n.done,
           n.current, n.failed, k.cur_kid);
    return n.failed ? wp_err_set(err, WP_ESTATE,
                                 "%d stored value(s) open with no key given", n.failed)
                    : 0;
}
