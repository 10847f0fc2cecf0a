/* cli_quota.c - `warmpool quota set|show`: an organization's quotas, set by
 * the operator straight into Redis (where every scheduler's check script
 * reads them: scheduler/quota.c), and what each organization uses. An
 * organization's keys share its hash tag ({<org>}), so its use is one
 * script on Redis Cluster too; the organizations and pools are found by
 * KEYS on every master. */
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "pool/pool_int.h"

static const char *const quota_names[] = {"sessions", "sandboxes", "hot", "memory_mb", "cpu",
                                          "disk_mb", NULL};

/* Organization names as the scheduler's --api-key takes them. */
static bool org_valid(const char *o)
{
    size_t l = strlen(o);
    return l > 0 && l < 64 && strspn(o, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789_-.") == l;
}

/* cli.c's command helper (exits on a dead connection); error replies are
 * checked where one can come. */
typedef redisReply *(*cmd_fn)(const char *fmt, ...);
typedef int (*keys_fn)(const char *pattern, char (*names)[128], int cap);

#define MAX_NAMES 4096 /* organizations, pools listed by `quota show` */

static bool reply_ok(redisReply *r)
{
    if (r->type != REDIS_REPLY_ERROR)
        return true;
    fprintf(stderr, "warmpool: redis: %s\n", r->str);
    return false;
}

static int quota_set(cmd_fn cmd, int argc, char **argv)
{
    if (argc < 3 || !org_valid(argv[1])) {
        fprintf(stderr, "warmpool: quota set ORG NAME=N|none ... (ORG as in --api-key)\n");
        return 2;
    }
    const char *org = argv[1];
    /* Check every argument before writing any: bad input changes nothing. */
    for (int i = 2; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        bool known = false;
        for (int k = 0; eq && quota_names[k]; k++)
            known |= strlen(quota_names[k]) == (size_t)(eq - argv[i]) &&
                     !strncmp(argv[i], quota_names[k], (size_t)(eq - argv[i]));
        char *end;
        double v = eq ? strtod(eq + 1, &end) : 0;
        bool integer = eq && strncmp(argv[i], "cpu=", 4) != 0;
        if (!known || (strcmp(eq + 1, "none") &&
                       (!eq[1] || *end || !isfinite(v) || v < 0 || v > 1e12 ||
                        (integer && v != floor(v))))) {
            fprintf(stderr, "warmpool: '%s': one of sessions, sandboxes, hot, memory_mb, disk_mb "
                            "(whole numbers), cpu (a number), each =N or =none\n", argv[i]);
            return 2;
        }
    }
    for (int i = 2; i < argc; i++) {
        char name[32];
        const char *eq = strchr(argv[i], '=');
        snprintf(name, sizeof(name), "%.*s", (int)(eq - argv[i]), argv[i]);
        if (!strcmp(eq + 1, "none"))
            freeReplyObject(cmd("HDEL wp:quota:{%s} %s", org, name));
        else
            freeReplyObject(cmd("HSET wp:quota:{%s} %s %s", org, name, eq + 1));
        printf("%s %s = %s\n", org, name, eq + 1);
    }
    return 0;
}

#include "lua/pool/cli_quota.h" /* its Lua scripts: lua/pool/cli_quota/ (Makefile) */

static int show_org(cmd_fn cmd, const char *org)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    long long now = (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    redisReply *u = cmd("EVAL %s 3 wp:idx:{%s}:session:active wp:quotause:{%s}:sbx "
                        "wp:quotause:{%s}:envs %lld wp:sbx:{%s}:", lua_usage, org, org, org, now,
                        org);
    if (!reply_ok(u)) {
        freeReplyObject(u);
        return 1;
    }
    printf("%s\n", org);
    for (int k = 0; quota_names[k]; k++) {
        redisReply *q = cmd("HGET wp:quota:{%s} %s", org, quota_names[k]);
        const char *use = u->type == REDIS_REPLY_ARRAY && (size_t)k < u->elements
                              ? u->element[k]->str : "?";
        const char *lim = q->type == REDIS_REPLY_STRING ? q->str : NULL;
        bool over = lim && atof(use) > atof(lim);
        printf("  %-10s %10s used of %-10s%s\n", quota_names[k], use, lim ? lim : "unlimited",
               over ? "  OVER (set below what is in use: nothing new until it drops)" : "");
        freeReplyObject(q);
    }
    printf("  (hot, memory_mb, cpu, disk_mb: what its environments keep hot, min_hot x size)\n");
    freeReplyObject(u);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The hash tags ({<name>}) of the keys matching each pattern on every
 * master, sorted, each once; their number (-1: out of memory). */
static int tags_of(keys_fn keys, const char *const *patterns, char (**out)[128])
{
    char(*names)[128] = calloc(MAX_NAMES, sizeof(*names));
    int n = 0;
    if (!names)
        return -1;
    for (int p = 0; patterns[p] && n < MAX_NAMES; p++)
        n += keys(patterns[p], names + n, MAX_NAMES - n);
    for (int i = 0; i < n; i++) { /* the key -> its tag */
        char *l = strchr(names[i], '{'), *r = l ? strchr(l, '}') : NULL;
        size_t len = l && r ? (size_t)(r - l - 1) : 0;
        if (len)
            memmove(names[i], l + 1, len);
        names[i][len] = '\0';
    }
    qsort(names, (size_t)n, sizeof(*names), by_name);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (names[i][0] && (m == 0 || strcmp(names[m - 1], names[i])))
            memmove(names[m++], names[i], sizeof(*names));
    *out = names;
    return m;
}

static int quota_show(cmd_fn cmd, keys_fn keys, int argc, char **argv)
{
    if (argc >= 2) {
        if (!org_valid(argv[1])) {
            fprintf(stderr, "warmpool: bad organization name '%s'\n", argv[1]);
            return 2;
        }
        return show_org(cmd, argv[1]);
    }
    /* Every organization with a quota or with use counted. */
    static const char *const org_keys[] = {"wp:quota:{*}", "wp:quotause:{*}:envs",
                                           "wp:quotause:{*}:sbx", NULL};
    static const char *const pool_keys[] = {"wp:env:{*}:policy", NULL};
    char(*orgs)[128] = NULL, (*pools)[128] = NULL;
    int n = tags_of(keys, org_keys, &orgs), rc = n < 0;
    if (n == 0)
        printf("no organization has a quota or counted use\n");
    for (int i = 0; !rc && i < n; i++)
        rc = org_valid(orgs[i]) ? show_org(cmd, orgs[i]) : 0;
    free(orgs);
    if (rc)
        return rc;
    /* Pools open to every organization, the operator should know. */
    n = tags_of(keys, pool_keys, &pools);
    for (int i = 0; i < n; i++) {
        if (!strncmp(pools[i], "env_", 4)) /* an API environment's own pool */
            continue;
        redisReply *o = cmd("HGET wp:env:{%s}:policy orgs", pools[i]);
        const char *orgs_of = o->type == REDIS_REPLY_STRING ? o->str : "*";
        if (reply_ok(o))
            printf("pool %s: %s\n", pools[i],
                   strcmp(orgs_of, "*") ? orgs_of
                                        : "every organization (warmpool pool set NAME orgs=...)");
        freeReplyObject(o);
    }
    free(pools);
    return n < 0;
}

int pool__cli_quota(redisReply *(*cmd)(const char *fmt, ...), keys_fn keys, int argc,
                    char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "set"))
        return quota_set(cmd, argc, argv);
    if (argc >= 1 && !strcmp(argv[0], "show"))
        return quota_show(cmd, keys, argc, argv);
    fprintf(stderr, "warmpool: quota set ORG NAME=N|none ... | quota show [ORG]\n");
    return 2;
}
