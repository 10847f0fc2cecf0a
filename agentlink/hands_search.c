/* hands_search.c - the glob and grep tools: a bounded directory walk
 * (skips .git and node_modules, never follows symlinks), doublestar
 * matching, POSIX extended regular expressions. Limits follow the SDK's
 * runner (toolset.md section 8). */
#define WP_LOG_COMPONENT "hands"
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agentlink/alink_int.h"
#include "base/err.h"
#include "base/timeutil.h"

#define MAX_SEGS 64


/* ---- doublestar ------------------------------------------------------------ */

static size_t split(char *s, char **segs)
{
    size_t n = 0;

    for (char *p = strtok(s, "/"); p && n < MAX_SEGS; p = strtok(NULL, "/"))
        segs[n++] = p;
    return n;
}

static bool match_segs(char **p, size_t np, char **s, size_t ns)
{
    while (np && strcmp(p[0], "**") != 0) {
        if (!ns || fnmatch(p[0], s[0], 0) != 0)
            return false;
        p++, np--, s++, ns--;
    }
    if (!np)
        return ns == 0;
    while (np > 1 && strcmp(p[1], "**") == 0) /* "**" / "**" == "**" */
        p++, np--;
    for (size_t k = 0; k <= ns; k++)
        if (match_segs(p + 1, np - 1, s + k, ns - k))
            return true;
    return false;
}

bool alink__glob_match(const char *pattern, const char *path)
{
    char pb[PATH_MAX], sb[PATH_MAX];
    char *ps[MAX_SEGS], *ss[MAX_SEGS];

    if (strlen(pattern) >= sizeof(pb) || strlen(path) >= sizeof(sb))
        return false;
    strcpy(pb, pattern);
    strcpy(sb, path);
    return match_segs(ps, split(pb, ps), ss, split(sb, ss));
}

/* Expand {a,b} alternatives (nested allowed) into up to cap patterns. */
static size_t expand_braces(const char *pat, char **outv, size_t n, size_t cap)
{
    const char *open = NULL, *close = NULL, *p;
    int depth = 0;

    if (n >= cap)
        return n;
    for (p = pat; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p == '{' && depth++ == 0)
            open = p;
        else if (*p == '}' && depth > 0 && --depth == 0) {
            close = p;
            break;
        }
    }
    if (!open || !close) {
        outv[n] = strdup(pat);
        return outv[n] ? n + 1 : n;
    }
    const char *alt = open + 1;
    depth = 0;
    for (p = open + 1; p <= close && n < cap; p++) {
        if (*p == '{')
            depth++;
        else if (*p == '}' && depth > 0)
            depth--;
        else if ((*p == ',' && depth == 0) || p == close) {
            size_t l = (size_t)(open - pat) + (size_t)(p - alt) + strlen(close + 1) + 1;
            char *tmp = malloc(l);
            if (!tmp)
                break;
            snprintf(tmp, l, "%.*s%.*s%s", (int)(open - pat), pat, (int)(p - alt), alt,
                     close + 1);
            n = expand_braces(tmp, outv, n, cap);
            free(tmp);
            alt = p + 1;
        }
    }
    return n;
}

/* ---- the walk ----------------------------------------------------------------- */

struct walk {
    char root[PATH_MAX]; /* absolute directory walked */
    size_t visited;
    size_t max_visit;
    uint64_t deadline_ns;
    bool stopped;  /* visit or time limit hit */
    bool timeout;
    /* called per regular file; return false to stop */
    bool (*file)(struct walk *w, const char *rel, const char *abs, const struct stat *st);
    void *ctx;
};

static void walk_dir(struct walk *w, const char *rel)
{
    char dpath[2 * PATH_MAX + 2];
    DIR *d;
    struct dirent *e;

    if ((size_t)snprintf(dpath, sizeof(dpath), "%s%s%s", w->root, *rel ? "/" : "", rel) >=
        PATH_MAX)
        return;
    d = opendir(dpath);
    if (!d)
        return;
    while (!w->stopped && (e = readdir(d))) {
        char r[PATH_MAX], a[PATH_MAX];
        struct stat st;

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strcmp(e->d_name, ".git") == 0 || strcmp(e->d_name, "node_modules") == 0)
            continue;
        if (++w->visited > w->max_visit) {
            w->stopped = true;
            break;
        }
        if ((w->visited & 255) == 0 && wp_now_ns() > w->deadline_ns) {
            w->stopped = w->timeout = true;
            break;
        }
        if (strlen(dpath) + strlen(e->d_name) + 2 > sizeof(a))
            continue;
        if ((size_t)snprintf(r, sizeof(r), "%s%s%s", rel, *rel ? "/" : "", e->d_name) >=
                sizeof(r) ||
            (size_t)snprintf(a, sizeof(a), "%.*s/%s", PATH_MAX - 300, dpath, e->d_name) >=
                sizeof(a))
            continue;
        if (lstat(a, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode))
            walk_dir(w, r);
        else if (S_ISREG(st.st_mode) && !w->file(w, r, a, &st))
            w->stopped = true;
    }
    closedir(d);
}

/* Resolve the optional "path" input to an absolute directory or file and
 * the prefix shown in results. */
static int search_root(struct alink__hands *h, json_t *input, const char *tool, char *abs,
                       size_t cap, char *shown, size_t shown_cap, struct stat *st,
                       struct wp_buf *out)
{
    json_t *jp = json_object_get(input, "path");
    const char *p = json_string_value(jp);
    struct wp_err err;

    if (jp && !json_is_string(jp))
        return alink__tool_fail(out, "%s: path must be a string", tool), -1;
    if (!p || !*p || strcmp(p, ".") == 0) {
        snprintf(abs, cap, "%s", h->workdir);
        shown[0] = '\0';
    } else {
        if (alink__resolve(h, p, abs, cap, &err) < 0)
            return alink__tool_fail(out, "%s: %s", tool, err.msg), -1;
        snprintf(shown, shown_cap, "%s", p);
        size_t l = strlen(shown);
        while (l > 1 && shown[l - 1] == '/')
            shown[--l] = '\0';
    }
    if (stat(abs, st) < 0)
        return alink__tool_fail(out, "%s: %s: %s", tool, p ? p : ".", strerror(errno)), -1;
    return 0;
}

/* ---- glob ------------------------------------------------------------------ */

struct glob_hit {
    char *rel;
    struct timespec mtime;
};

struct glob_ctx {
    char **pats;
    size_t n_pats;
    struct glob_hit *hits;
    size_t n, cap;
};

static bool glob_file(struct walk *w, const char *rel, const char *abs, const struct stat *st)
{
    struct glob_ctx *g = w->ctx;
    (void)abs;

    for (size_t i = 0; i < g->n_pats; i++) {
        if (!alink__glob_match(g->pats[i], rel))
            continue;
        if (g->n == g->cap) {
            size_t nc = g->cap ? g->cap * 2 : 64;
            struct glob_hit *nh = realloc(g->hits, nc * sizeof(*nh));
            if (!nh)
                return false;
            g->hits = nh;
            g->cap = nc;
        }
        g->hits[g->n].rel = strdup(rel);
        g->hits[g->n].mtime = st->st_mtim;
        if (g->hits[g->n].rel)
            g->n++;
        break;
    }
    return true;
}

static int newest_first(const void *a, const void *b)
{
    const struct glob_hit *x = a, *y = b;

    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? 1 : -1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec)
        return x->mtime.tv_nsec < y->mtime.tv_nsec ? 1 : -1;
    return strcmp(x->rel, y->rel);
}

bool alink__tool_glob(struct alink__hands *h, json_t *input, struct wp_buf *out)
{
    const char *pat = json_string_value(json_object_get(input, "pattern"));
    char *pats[64];
    struct glob_ctx g = {0};
    struct walk w = {0};
    char shown[PATH_MAX];
    struct stat st;
    bool is_err = false;

    if (!pat || !*pat)
        return alink__tool_fail(out, "glob: pattern is required");
    if (pat[0] == '/')
        return alink__tool_fail(out, "glob: pattern must be relative (use path for the directory)");
    if (strcmp(pat, "..") == 0 || strncmp(pat, "../", 3) == 0 || strstr(pat, "/../") ||
        (strlen(pat) >= 3 && strcmp(pat + strlen(pat) - 3, "/..") == 0))
        return alink__tool_fail(out, "glob: pattern must not contain ..");
    if (search_root(h, input, "glob", w.root, sizeof(w.root), shown, sizeof(shown), &st, out) <
        0)
        return true;
    if (!S_ISDIR(st.st_mode))
        return alink__tool_fail(out, "glob: path is not a directory");
    g.n_pats = expand_braces(pat, pats, 0, 64);
    g.pats = pats;
    w.max_visit = ALINK_GLOB_MAX_VISIT;
    w.deadline_ns = wp_now_ns() + (uint64_t)ALINK_GREP_TIME_MS * 1000000ull;
    w.file = glob_file;
    w.ctx = &g;
    walk_dir(&w, "");
    if (g.n == 0) {
        wp_buf_append(out, "no matches", 10);
    } else {
        qsort(g.hits, g.n, sizeof(*g.hits), newest_first);
        for (size_t i = 0; i < g.n && i < ALINK_GLOB_MAX_RESULTS; i++)
            wp_buf_printf(out, "%s%s%s%s", i ? "\n" : "", shown, *shown ? "/" : "",
                          g.hits[i].rel);
        if (g.n > ALINK_GLOB_MAX_RESULTS)
            wp_buf_printf(out, "\n[results truncated: showing %d of %zu]",
                          ALINK_GLOB_MAX_RESULTS, g.n);
    }
    if (w.stopped)
        wp_buf_printf(out, "\n[search stopped after %zu entries]", w.visited - 1);
    for (size_t i = 0; i < g.n; i++)
        free(g.hits[i].rel);
    free(g.hits);
    for (size_t i = 0; i < g.n_pats; i++)
        free(pats[i]);
    return is_err;
}

/* ---- grep ------------------------------------------------------------------ */

struct grep_ctx {
    regex_t re;
    const char *shown;  /* prefix of displayed paths */
    bool single;        /* path names one file: show it as given */
    struct wp_buf *out;
    bool truncated;
};

static bool grep_file(struct walk *w, const char *rel, const char *abs, const struct stat *st)
{
    struct grep_ctx *g = w->ctx;
    FILE *f = fopen(abs, "re");
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    (void)st;

    if (!f)
        return true;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (memchr(line, '\0', (size_t)n))
            break; /* binary: stop this file at the NUL byte */
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        if (n > ALINK_GREP_MAX_LINE)
            continue;
        if (regexec(&g->re, line, 0, NULL, 0) != 0)
            continue;
        char head[PATH_MAX + 32];
        int hl;
        if (g->single)
            hl = snprintf(head, sizeof(head), "%s:%zu:", g->shown, lineno);
        else
            hl = snprintf(head, sizeof(head), "%s%s%s:%zu:", g->shown, *g->shown ? "/" : "",
                          rel, lineno);
        if (g->out->len + (size_t)hl + (size_t)n + 1 > ALINK_GREP_MAX_OUT) {
            g->truncated = true;
            break;
        }
        wp_buf_append(g->out, head, (size_t)hl);
        wp_buf_append(g->out, line, (size_t)n);
        wp_buf_append(g->out, "\n", 1);
    }
    free(line);
    fclose(f);
    if (wp_now_ns() > w->deadline_ns)
        w->timeout = true;
    return !g->truncated && !w->timeout;
}

/* JavaScript-style shorthands the model tends to use, mapped to ERE. */
static void translate_regex(const char *in, struct wp_buf *re)
{
    bool in_class = false;

    for (const char *p = in; *p; p++) {
        if (*p == '\\' && p[1]) {
            const char *rep = NULL;
            switch (p[1]) {
            case 'd': rep = in_class ? "0-9" : "[0-9]"; break;
            case 'D': rep = in_class ? NULL : "[^0-9]"; break;
            case 't': rep = "\t"; break;
            }
            if (rep) {
                wp_buf_append(re, rep, strlen(rep));
                p++;
                continue;
            }
            wp_buf_append(re, p, 2);
            p++;
            continue;
        }
        if (*p == '[' && !in_class)
            in_class = true;
        else if (*p == ']' && in_class)
            in_class = false;
        wp_buf_append(re, p, 1);
    }
}

bool alink__tool_grep(struct alink__hands *h, json_t *input, struct wp_buf *out)
{
    const char *pat = json_string_value(json_object_get(input, "pattern"));
    struct grep_ctx g = {.out = out};
    struct walk w = {0};
    struct wp_buf re;
    char shown[PATH_MAX];
    struct stat st;
    int rc;

    if (!pat || !*pat)
        return alink__tool_fail(out, "grep: pattern is required");
    wp_buf_init(&re, 64 * 1024);
    translate_regex(pat, &re);
    rc = regcomp(&g.re, re.data ? re.data : "", REG_EXTENDED | REG_NEWLINE | REG_NOSUB);
    wp_buf_free(&re);
    if (rc != 0) {
        char msg[256];
        regerror(rc, &g.re, msg, sizeof(msg));
        return alink__tool_fail(out, "grep: invalid regular expression: %s", msg);
    }
    if (search_root(h, input, "grep", w.root, sizeof(w.root), shown, sizeof(shown), &st, out) <
        0) {
        regfree(&g.re);
        return true;
    }
    g.shown = shown;
    w.max_visit = 10 * ALINK_GLOB_MAX_VISIT;
    w.deadline_ns = wp_now_ns() + (uint64_t)ALINK_GREP_TIME_MS * 1000000ull;
    w.file = grep_file;
    w.ctx = &g;
    if (S_ISREG(st.st_mode)) {
        g.single = true;
        if (!*shown)
            snprintf(shown, sizeof(shown), ".");
        grep_file(&w, "", w.root, &st);
    } else if (S_ISDIR(st.st_mode)) {
        walk_dir(&w, "");
    } else {
        regfree(&g.re);
        return alink__tool_fail(out, "grep: path is not a file or directory");
    }
    regfree(&g.re);
    if (out->len && out->data[out->len - 1] == '\n')
        out->data[--out->len] = '\0';
    if (out->len == 0 && !g.truncated)
        wp_buf_append(out, "no matches", 10);
    if (g.truncated)
        wp_buf_printf(out, "\n[output truncated at %u bytes]", ALINK_GREP_MAX_OUT);
    if (w.timeout)
        wp_buf_printf(out, "\n[search stopped after %d ms]", ALINK_GREP_TIME_MS);
    else if (w.stopped && !g.truncated)
        wp_buf_printf(out, "\n[search stopped after %zu entries]", w.visited - 1);
    return false;
}
