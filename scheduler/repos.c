/* repos.c - github_repository resources: what the API accepts, and the
 * clone a session's brain runs in its sandbox at attach (brain_egress.c).
 *
 * The clone runs inside the sandbox, through the bash tool's shell, so
 * the host never writes into a tree the sandbox controls. Its remote URL
 * carries the token's placeholder as Basic credentials
 * (https://x-access-token:<placeholder>@host/...); the node's egress
 * proxy puts the token in on the way to the repository's host only. The
 * same remote then serves `git fetch` and `git push` from inside. */
#define WP_LOG_COMPONENT "sessions"
#include <ctype.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "scheduler/brain_int.h"
#include "scheduler/sched_int.h"

static bool safe_chars(const char *s, const char *extra)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr(extra, *s)))
            return false;
    return true;
}

/* https://host[:port]/path: host into host, the rest checked. */
static const char *split_url(const char *url, char *host, size_t hcap, const char **path)
{
    if (strncmp(url, "https://", 8) != 0)
        return "url must be an https:// URL";
    const char *a = url + 8;
    size_t al = strcspn(a, "/");
    if (al == 0 || a[al] != '/' || !a[al + 1])
        return "url must name a host and a repository path";
    if (memchr(a, '@', al))
        return "url must not carry credentials (use authorization_token)";
    size_t hl = strcspn(a, ":/");
    if (hl == 0 || hl >= hcap)
        return "url's host is empty or too long";
    memcpy(host, a, hl);
    host[hl] = '\0';
    if (a[hl] == ':') {
        const char *p = a + hl + 1;
        size_t pl = (size_t)(a + al - p);
        if (pl == 0 || pl > 5 || strspn(p, "0123456789") < pl || atoi(p) < 1 || atoi(p) > 65535)
            return "url's port must be 1..65535";
    }
    if (pool_egress_host_pattern_check(host) || host[0] == '*')
        return "url's host must be a host name or an IPv4 address";
    *path = a + al;
    if (strlen(*path) > 1024 || !safe_chars(*path, "._/-~") || strstr(*path, ".."))
        return "url's path may hold letters, digits and . _ / - ~ only";
    return NULL;
}

int sched__repo_host(const char *url, char *host, size_t cap)
{
    const char *path;
    return split_url(url, host, cap, &path) ? -1 : 0;
}

const char *sched__repo_check(const char *url, json_t *checkout, json_t *mount_path, char *mount,
                              size_t cap)
{
    char host[256];
    const char *path, *msg;

    if (strlen(url) > 2048)
        return "url is too long";
    if ((msg = split_url(url, host, sizeof(host), &path)))
        return msg;
    if (checkout && !json_is_null(checkout)) {
        const char *ty = json_string_value(json_object_get(checkout, "type"));
        const char *name = json_string_value(json_object_get(checkout, "name"));
        const char *sha = json_string_value(json_object_get(checkout, "sha"));
        if (!json_is_object(checkout) || !ty ||
            (strcmp(ty, "branch") && strcmp(ty, "commit")) ||
            json_object_size(checkout) != 2)
            return "checkout must be {type: branch, name} or {type: commit, sha}";
        if (!strcmp(ty, "branch") &&
            (!name || !*name || strlen(name) > 255 || name[0] == '-' ||
             !safe_chars(name, "._/-+") || strstr(name, "..")))
            return "checkout.name must be a branch name (letters, digits, . _ / - +)";
        if (!strcmp(ty, "commit") &&
            (!sha || strlen(sha) < 7 || strlen(sha) > 64 ||
             strspn(sha, "0123456789abcdef") != strlen(sha)))
            return "checkout.sha must be a commit id (7 to 64 lowercase hex digits)";
    }
    if (mount_path && !json_is_null(mount_path)) {
        const char *m = json_string_value(mount_path);
        if (!m || m[0] != '/' || strlen(m) < 2 || strlen(m) > 256 || !safe_chars(m, "._/-") ||
            strstr(m, ".."))
            return "mount_path must be an absolute path of letters, digits and . _ / - (no ..)";
        if (mount)
            snprintf(mount, cap, "%s", m);
    } else if (mount) {
        const char *slash = strrchr(path, '/');
        char name[256];
        snprintf(name, sizeof(name), "%s", slash && slash[1] ? slash + 1 : "repo");
        size_t nl = strlen(name);
        if (nl > 4 && !strcmp(name + nl - 4, ".git"))
            name[nl - 4] = '\0';
        snprintf(mount, cap, "/workspace/%s", name);
    }
    return NULL;
}

/* The shell the brain runs once per sandbox: every repository cloned
 * where it belongs (kept when already there: a sandbox attached again),
 * one "WPREPO <index> <outcome>" line each. Values were checked at
 * create (safe_chars), and are single-quoted besides. The clone and the
 * checkout write reflog entries, which need a committer: without one git
 * asks DNS for the host's domain, and a sandbox confined to its proxy has
 * no DNS, so each would wait out the resolver (2 x 5 s). REPO_IDENT is
 * given to those two commands only (not exported: the model's shell keeps
 * its own identity). */
#define REPO_IDENT "GIT_COMMITTER_NAME=warmpool GIT_COMMITTER_EMAIL=warmpool@localhost "
int sched__repo_clone_script(json_t *repos, struct wp_buf *out)
{
    size_t i;
    json_t *r;
    /* A subshell: the model's shell keeps its variables and environment. */
    wp_buf_printf(out, "( export GIT_TERMINAL_PROMPT=0; ");
    json_array_foreach(repos, i, r) {
        const char *remote = json_string_value(json_object_get(r, "remote"));
        const char *mount = json_string_value(json_object_get(r, "mount_path"));
        json_t *co = json_object_get(r, "checkout");
        const char *ty = json_string_value(json_object_get(co, "type"));
        const char *name = json_string_value(json_object_get(co, "name"));
        const char *sha = json_string_value(json_object_get(co, "sha"));
        if (!remote || !mount)
            return -1;
        wp_buf_printf(out, "d='%s'; if [ -e \"$d/.git\" ]; then echo 'WPREPO %zu ok'; else "
                           "mkdir -p \"$(dirname \"$d\")\" && o=$(" REPO_IDENT "git clone -q %s%s%s '%s' \"$d\" 2>&1); "
                           "rc=$?; ",
                      mount, i, ty && !strcmp(ty, "branch") ? "--branch '" : "",
                      ty && !strcmp(ty, "branch") ? name : "",
                      ty && !strcmp(ty, "branch") ? "'" : "", remote);
        if (ty && !strcmp(ty, "commit"))
            wp_buf_printf(out, "if [ $rc = 0 ]; then o=$(" REPO_IDENT "git -C \"$d\" checkout -q '%s' 2>&1) || "
                               "{ rc=1; o=\"checkout: $o\"; }; fi; ",
                          sha);
        wp_buf_printf(out, "if [ $rc = 0 ]; then echo 'WPREPO %zu ok'; else "
                           "echo \"WPREPO %zu failed $(printf %%s \"$o\" | tr '\\n' ' ' | "
                           "cut -c1-300)\"; fi; fi; ",
                      i, i);
    }
    wp_buf_printf(out, "true )");
    return 0;
}

/* Whether why holds the HTTP status code as a word of its own: not part of
 * a port (":53403"), a path ("/403/") or a longer number, all of which the
 * repository's URL in git's message may hold. */
static bool has_status(const char *why, const char *code)
{
    size_t n = strlen(code);
    for (const char *p = strstr(why, code); p; p = strstr(p + 1, code)) {
        char before = p > why ? p[-1] : ' ', after = p[n];
        if (!isdigit((unsigned char)before) && before != ':' && before != '/' && before != '.' &&
            !isdigit((unsigned char)after))
            return true;
    }
    return false;
}

/* What went wrong, as the reference's error types. */
const char *sched__repo_error_type(const char *why)
{
    if (strstr(why, "checkout:") || strstr(why, "Remote branch") ||
        strstr(why, "did not match any") || strstr(why, "reference is not a tree"))
        return "repository_checkout_error";
    if (has_status(why, "401") || strstr(why, "Authentication failed") ||
        strstr(why, "could not read Username") || strstr(why, "Invalid username or password"))
        return "repository_authentication_error";
    if (has_status(why, "403") || strstr(why, "forbidden") || strstr(why, "Forbidden"))
        return "repository_forbidden_error";
    if (has_status(why, "404") || strstr(why, "not found") || strstr(why, "does not exist"))
        return "repository_not_found_error";
    return "repository_clone_error";
}
