/* msrv_cache.c - prompt caching billed as the Messages API documents it,
 * so a client's cache_control placement can be measured against the
 * stand-in: the prompt is tools, then system, then the messages' content
 * blocks, in that order; a block with cache_control is a breakpoint; a
 * request reads the longest prefix cached earlier that ends at a block
 * boundary no more than 20 blocks before one of its breakpoints, writes
 * the prefix up to its last breakpoint, and pays in full only what comes
 * after that. Prefixes under 1024 tokens are not cached; an entry lives 5
 * minutes, refreshed by each read. Without cache_control nothing is read
 * or written. Tokens are bytes / 4 of each block's compact JSON with the
 * message structure around it (the same estimate as the whole request's
 * input_tokens, so what is neither read nor written is the request's other
 * fields and the last breakpoint's tail). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msrv.h"

#define CACHE_MIN_TOKENS 1024
#define CACHE_LOOKBACK 20
#define CACHE_TTL_MS (5 * 60 * 1000)

/* FNV-1a 64 over a block's text, chained so h[i] names the prefix. */
static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static struct msrv_cache_entry *find(struct msrv_cache *c, uint64_t key, uint64_t now)
{
    for (size_t i = 0; i < MSRV_CACHE_SLOTS; i++)
        if (c->e[i].key == key && c->e[i].expires_ms > now)
            return &c->e[i];
    return NULL;
}

static void put(struct msrv_cache *c, uint64_t key, uint64_t now)
{
    struct msrv_cache_entry *e = find(c, key, now), *old = &c->e[0];
    if (!e) {
        for (size_t i = 0; i < MSRV_CACHE_SLOTS && !e; i++)
            if (c->e[i].expires_ms <= now)
                e = &c->e[i];
        for (size_t i = 1; i < MSRV_CACHE_SLOTS && !e; i++)
            if (c->e[i].expires_ms < old->expires_ms)
                old = &c->e[i];
        if (!e)
            e = old; /* full: the one closest to expiring goes */
    }
    e->key = key;
    e->expires_ms = now + CACHE_TTL_MS;
}

struct walk {
    uint64_t h;
    long tokens;
    size_t n;
    uint64_t hash[MSRV_CACHE_MAX_BLOCKS];
    long upto[MSRV_CACHE_MAX_BLOCKS]; /* tokens through block i */
    bool bp[MSRV_CACHE_MAX_BLOCKS];
};

/* wrap: bytes of the structure around the block (a message's role and
 * brackets) that belong to the prompt with it. */
static void add_block(struct walk *w, const char *prefix, json_t *b, size_t wrap)
{
    if (w->n >= MSRV_CACHE_MAX_BLOCKS)
        return;
    json_t *copy = json_is_object(b) ? json_copy(b) : json_incref(b);
    bool bp = json_is_object(b) && json_object_get(b, "cache_control");
    if (json_is_object(copy))
        json_object_del(copy, "cache_control"); /* the marker is not content */
    char *s = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_decref(copy);
    size_t l = s ? strlen(s) : 0;
    w->h = fnv(fnv(w->h, prefix, strlen(prefix)), s ? s : "", l);
    w->tokens += (long)((l + wrap) / 4);
    w->hash[w->n] = w->h;
    w->upto[w->n] = w->tokens;
    w->bp[w->n] = bp;
    w->n++;
    free(s);
}

void msrv_cache_bill(struct msrv_cache *c, json_t *root, uint64_t now_ms, long *read,
                     long *created)
{
    struct walk *w = calloc(1, sizeof(*w));
    size_t i, k;
    json_t *v, *m;
    *read = *created = 0;
    if (!w)
        return;
    w->h = 0xcbf29ce484222325ull;
    json_array_foreach(json_object_get(root, "tools"), i, v)
        add_block(w, "tool:", v, 1);
    json_t *sys = json_object_get(root, "system");
    if (json_is_string(sys))
        add_block(w, "system:", sys, 10);
    json_array_foreach(sys, i, v)
        add_block(w, "system:", v, 1);
    json_array_foreach(json_object_get(root, "messages"), i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        char tag[32];
        snprintf(tag, sizeof(tag), "%s#%zu:", role ? role : "?", i);
        /* {"role":"...","content":[...]}, the first block carries it */
        size_t wrap = strlen(role ? role : "") + 26;
        if (json_is_string(content))
            add_block(w, tag, content, wrap);
        json_array_foreach(content, k, v)
            add_block(w, tag, v, k == 0 ? wrap : 1);
    }
    /* The longest earlier prefix within the lookback of a breakpoint. */
    long hit = 0, last_bp = -1;
    for (i = 0; i < w->n; i++) {
        if (!w->bp[i])
            continue;
        last_bp = (long)i;
        for (size_t j = i + 1; j-- > 0 && i - j <= CACHE_LOOKBACK;) {
            struct msrv_cache_entry *e = find(c, w->hash[j], now_ms);
            if (e && w->upto[j] > hit) {
                hit = w->upto[j];
                e->expires_ms = now_ms + CACHE_TTL_MS;
            }
        }
    }
    if (last_bp >= 0 && w->upto[last_bp] >= CACHE_MIN_TOKENS) {
        *read = hit;
        *created = w->upto[last_bp] - hit;
        for (i = 0; i <= (size_t)last_bp; i++)
            if (w->bp[i] && w->upto[i] >= CACHE_MIN_TOKENS)
                put(c, w->hash[i], now_ms);
    }
    free(w);
}
