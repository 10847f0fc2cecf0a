/* template.c - environment templates: parse, validate, canonical form. */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"

#define MAX_TEMPLATE_BYTES (1 << 20)
#define MAX_ARGS 256
#define MAX_STR 4096

/* Limits that are absurd rather than merely large: refused outright. */
#define MIN_MEMORY_MB 8
#define MAX_MEMORY_MB (1024 * 1024)
#define MAX_PIDS (1 << 22)
#define MAX_CPU 1024.0
#define MAX_DISK_MB (1024 * 1024)
#define MAX_SHM_MB (64 * 1024)

static const char *known_keys[] = { "name", "rootfs", "init", "env", "workdir", "hostname",
                                    "limits", "setup", "ready_file", "ready_timeout_s", "binds", "ksm",
                                    "network", "init_sets_hostname", NULL };

bool snap_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (i > 0 && (c == '.' || c == '_' || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

void snap_template_free(struct snap_template *t)
{
    if (!t)
        return;
    free(t->name);
    free(t->rootfs);
    free(t->workdir);
    free(t->hostname);
    free(t->ready_file);
    snap__network_free(&t->network);
    for (int i = 0; i < t->n_binds; i++) {
        free(t->binds[i].source);
        free(t->binds[i].target);
    }
    for (char ***v = (char **[]){ t->init, t->env, t->setup }, ***end = v + 3; v < end; v++) {
        for (char **p = *v; p && *p; p++)
            free(*p);
        free(*v);
    }
    free(t);
}

static int get_str(json_t *o, const char *key, bool required, char **out, struct wp_err *err)
{
    json_t *v = json_object_get(o, key);

    if (!v) {
        if (required)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\" is required", key);
        return 0;
    }
    if (!json_is_string(v))
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\" must be a string", key);
    if (json_string_length(v) == 0 || json_string_length(v) >= MAX_STR ||
        strlen(json_string_value(v)) != json_string_length(v))
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\" must be 1-%d bytes, no NUL",
                          key, MAX_STR - 1);
    *out = strdup(json_string_value(v));
    return *out ? 0 : wp_err_set(err, -ENOMEM, "out of memory");
}

static int get_strv(json_t *o, const char *key, bool required, char ***out, struct wp_err *err)
{
    json_t *v = json_object_get(o, key), *item;
    size_t i;
    char **vec;

    if (!v) {
        if (required)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\" is required", key);
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) > MAX_ARGS)
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\" must be an array of at most %d strings",
                          key, MAX_ARGS);
    if (required && json_array_size(v) == 0)
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\" must not be empty", key);
    vec = calloc(json_array_size(v) + 1, sizeof(char *));
    if (!vec)
        return wp_err_set(err, -ENOMEM, "out of memory");
    *out = vec; /* owned by the template from here, freed with it */
    json_array_foreach(v, i, item) {
        if (!json_is_string(item) || json_string_length(item) >= MAX_STR ||
            strlen(json_string_value(item)) != json_string_length(item))
            return wp_err_set(err, WP_EINVAL_INPUT, "template: \"%s\"[%zu] must be a string without NUL",
                              key, i);
        vec[i] = strdup(json_string_value(item));
        if (!vec[i])
            return wp_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

static int get_env(json_t *o, char ***out, struct wp_err *err)
{
    json_t *v = json_object_get(o, "env"), *val;
    const char *k;
    size_t i = 0;
    char **vec;

    if (!v)
        return 0;
    if (!json_is_object(v) || json_object_size(v) > MAX_ARGS)
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"env\" must be an object of strings");
    vec = calloc(json_object_size(v) + 1, sizeof(char *));
    if (!vec)
        return wp_err_set(err, -ENOMEM, "out of memory");
    *out = vec;
    json_object_foreach(v, k, val) {
        if (!json_is_string(val) || !*k || strchr(k, '=') ||
            strlen(json_string_value(val)) != json_string_length(val))
            return wp_err_set(err, WP_EINVAL_INPUT, "template: env \"%s\" must be a string value with a name without '='",
                              k);
        if (asprintf(&vec[i++], "%s=%s", k, json_string_value(val)) < 0) {
            vec[i - 1] = NULL;
            return wp_err_set(err, -ENOMEM, "out of memory");
        }
    }
    return 0;
}

static int get_limits(json_t *o, struct snap_limits *lim, struct wp_err *err)
{
    json_t *l = json_object_get(o, "limits"), *v;
    const char *k;

    if (!l)
        return 0;
    if (!json_is_object(l))
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"limits\" must be an object");
    json_object_foreach(l, k, v) {
        if (strcmp(k, "memory_mb") && strcmp(k, "pids") && strcmp(k, "cpu") &&
            strcmp(k, "disk_mb") && strcmp(k, "shm_mb"))
            return wp_err_set(err, WP_EINVAL_INPUT,
                              "template: unknown limit \"%s\" (memory_mb, pids, cpu, disk_mb, shm_mb)", k);
        if (!json_is_number(v))
            return wp_err_set(err, WP_EINVAL_INPUT, "template: limit \"%s\" must be a number", k);
    }
    v = json_object_get(l, "memory_mb");
    if (v) {
        double mb = json_number_value(v);
        if (mb < MIN_MEMORY_MB || mb > MAX_MEMORY_MB)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: limits.memory_mb %g is absurd (%d..%d)",
                              mb, MIN_MEMORY_MB, MAX_MEMORY_MB);
        lim->memory_bytes = (uint64_t)(mb * 1024 * 1024);
    }
    v = json_object_get(l, "pids");
    if (v) {
        double p = json_number_value(v);
        if (p < 1 || p > MAX_PIDS || p != (double)(uint32_t)p)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: limits.pids %g is absurd (1..%d)", p, MAX_PIDS);
        lim->pids = (uint32_t)p;
    }
    v = json_object_get(l, "cpu");
    if (v) {
        double c = json_number_value(v);
        if (c < 0.01 || c > MAX_CPU)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: limits.cpu %g is absurd (0.01..%g)", c, MAX_CPU);
        lim->cpu_millis = (uint32_t)(c * 1000 + 0.5);
    }
    /* Size limits of the writable layer and /dev/shm (tmpfs, confine.c);
     * absent = the default, never unlimited. */
    v = json_object_get(l, "disk_mb");
    if (v) {
        double mb = json_number_value(v);
        if (mb < 1 || mb > MAX_DISK_MB || mb != (double)(uint32_t)mb)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: limits.disk_mb %g is absurd (1..%d)", mb, MAX_DISK_MB);
        lim->disk_bytes = (uint64_t)mb << 20;
    }
    v = json_object_get(l, "shm_mb");
    if (v) {
        double mb = json_number_value(v);
        if (mb < 1 || mb > MAX_SHM_MB || mb != (double)(uint32_t)mb)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: limits.shm_mb %g is absurd (1..%d)", mb, MAX_SHM_MB);
        lim->shm_bytes = (uint64_t)mb << 20;
    }
    return 0;
}

static int check_abs_path(const char *what, const char *p, struct wp_err *err);

static int get_binds(json_t *o, struct snap_template *t, struct wp_err *err)
{
    json_t *v = json_object_get(o, "binds"), *b;
    size_t i;
    struct stat st;
    int rc;

    if (!v)
        return 0;
    if (!json_is_array(v) || json_array_size(v) > SNAP_MAX_BINDS)
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"binds\" must be an array of at most %d objects",
                          SNAP_MAX_BINDS);
    json_array_foreach(v, i, b) {
        struct snap_bind *d = &t->binds[i];
        if (!json_is_object(b) || json_object_size(b) != 2)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: binds[%zu] must be {\"source\", \"target\"}", i);
        t->n_binds = (int)i + 1; /* freed with the template from here */
        if ((rc = get_str(b, "source", true, &d->source, err)) < 0 ||
            (rc = get_str(b, "target", true, &d->target, err)) < 0 ||
            (rc = check_abs_path("binds source", d->source, err)) < 0 ||
            (rc = check_abs_path("binds target", d->target, err)) < 0)
            return rc;
        if (strcmp(d->target, "/") == 0 || strncmp(d->target, "/proc", 5) == 0 ||
            strncmp(d->target, "/dev", 4) == 0 || strncmp(d->target, "/usr", 4) == 0 ||
            strchr(d->target, ',') || strchr(d->target, ':'))
            return wp_err_set(err, WP_EINVAL_INPUT, "template: binds target \"%s\" is reserved", d->target);
        if (stat(d->source, &st) < 0)
            return wp_err_set(err, WP_EINVAL_INPUT, "template: binds source \"%s\" does not exist", d->source);
    }
    return 0;
}

/* An allowed host: a hostname (LDH labels), an IPv4 address, or
 * IPv4/prefix. Everything the nft set cannot hold is refused by name. */
static int check_host(size_t i, const char *h, struct wp_err *err)
{
    const char *slash = strchr(h, '/');
    struct in_addr a;
    size_t n = strlen(h), label = 0;

    if (h[0] == '*')
        return wp_err_set(err, WP_EINVAL_INPUT,
                          "template: network.allowed_hosts[%zu] \"%s\": wildcards cannot be "
                          "enforced by address; name each host", i, h);
    if (slash) {
        char ip[16], *end;
        long p;
        if ((size_t)(slash - h) >= sizeof(ip))
            goto bad;
        memcpy(ip, h, slash - h);
        ip[slash - h] = '\0';
        errno = 0;
        p = strtol(slash + 1, &end, 10);
        if (inet_pton(AF_INET, ip, &a) != 1 || !slash[1] || *end || errno || p < 0 || p > 32)
            goto bad;
        return 0;
    }
    if (inet_pton(AF_INET, h, &a) == 1)
        return 0;
    if (n == 0 || n > 253)
        goto bad;
    for (size_t k = 0; k <= n; k++) {
        char c = h[k];
        if (c == '.' || c == '\0') {
            if (label == 0 || h[k - 1] == '-')
                goto bad;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c == '-' && label > 0);
        if (!ok || ++label > 63)
            goto bad;
    }
    return 0;
bad:
    return wp_err_set(err, WP_EINVAL_INPUT,
                      "template: network.allowed_hosts[%zu] \"%.100s\" must be a bare hostname, "
                      "an IPv4 address or IPv4/prefix (no URL, port, path, wildcard or IPv6)", i, h);
}

static int get_network(json_t *o, struct snap_network *net, struct wp_err *err)
{
    json_t *v = json_object_get(o, "network"), *m, *hosts, *h;
    const char *k;
    size_t i;
    int rc;

    if (!v)
        return 0;
    if (!json_is_object(v))
        return wp_err_set(err, WP_EINVAL_INPUT, "template: \"network\" must be an object");
    json_object_foreach(v, k, h) {
        if (strcmp(k, "mode") && strcmp(k, "allowed_hosts"))
            return wp_err_set(err, WP_EINVAL_INPUT,
                              "template: unknown network field \"%s\" (mode, allowed_hosts)", k);
    }
    m = json_object_get(v, "mode");
    if (!json_is_string(m))
        return wp_err_set(err, WP_EINVAL_INPUT,
                          "template: network.mode must be \"none\", \"unrestricted\" or \"limited\"");
    if (!strcmp(json_string_value(m), "none"))
        net->mode = SNAP_NET_NONE;
    else if (!strcmp(json_string_value(m), "unrestricted"))
        net->mode = SNAP_NET_UNRESTRICTED;
    else if (!strcmp(json_string_value(m), "limited"))
        net->mode = SNAP_NET_LIMITED;
    else
        return wp_err_set(err, WP_EINVAL_INPUT,
                          "template: network.mode \"%.64s\" must be \"none\", \"unrestricted\" or "
                          "\"limited\"", json_string_value(m));
    hosts = json_object_get(v, "allowed_hosts");
    if (!hosts)
        return 0;
    if (net->mode != SNAP_NET_LIMITED)
        return wp_err_set(err, WP_EINVAL_INPUT,
                          "template: network.allowed_hosts is only for mode \"limited\"");
    if (!json_is_array(hosts) || json_array_size(hosts) > SNAP_MAX_ALLOWED_HOSTS)
        return wp_err_set(err, WP_EINVAL_INPUT,
                          "template: network.allowed_hosts must be an array of at most %d strings",
                          SNAP_MAX_ALLOWED_HOSTS);
    net->hosts = calloc(json_array_size(hosts) + 1, sizeof(char *));
    if (!net->hosts)
        return wp_err_set(err, -ENOMEM, "out of memory");
    json_array_foreach(hosts, i, h) {
        if (!json_is_string(h) || strlen(json_string_value(h)) != json_string_length(h))
            return wp_err_set(err, WP_EINVAL_INPUT,
                              "template: network.allowed_hosts[%zu] must be a string", i);
        if ((rc = check_host(i, json_string_value(h), err)) < 0)
            return rc;
        net->hosts[i] = strdup(json_string_value(h));
        if (!net->hosts[i])
            return wp_err_set(err, -ENOMEM, "out of memory");
        net->n_hosts = (int)i + 1; /* freed with the template from here */
    }
    return 0;
}

int snap__template_network(json_t *tmpl, struct snap_network *net, struct wp_err *err)
{
    int rc;

    memset(net, 0, sizeof(*net));
    if (!json_is_object(tmpl))
        return 0;
    rc = get_network(tmpl, net, err);
    if (rc < 0)
        snap__network_free(net);
    return rc;
}

void snap__network_free(struct snap_network *net)
{
    for (int i = 0; i < net->n_hosts; i++)
        free(net->hosts[i]);
    free(net->hosts);
    memset(net, 0, sizeof(*net));
}

static int check_abs_path(const char *what, const char *p, struct wp_err *err)
{
    if (p[0] != '/' || strstr(p, "/../") || (strlen(p) >= 3 && !strcmp(p + strlen(p) - 3, "/..")))
        return wp_err_set(err, WP_EINVAL_INPUT, "template: %s \"%s\" must be an absolute path without ..",
                          what, p);
    return 0;
}

static int digest_hex(const char *s, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    if (!EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL))
        return -1;
    for (unsigned i = 0; i < n && i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    out[64] = '\0';
    return 0;
}

int snap_template_parse(const char *json, size_t len, struct snap_template **out,
                        struct wp_err *err)
{
    struct snap_template *t = NULL;
    json_error_t jerr;
    json_t *root = NULL, *v;
    const char *k;
    char *canon = NULL;
    struct stat st;
    int rc;

    if (len > MAX_TEMPLATE_BYTES)
        return wp_err_set(err, WP_ETOOBIG, "template: larger than %d bytes", MAX_TEMPLATE_BYTES);
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return wp_err_set(err, WP_EINVAL_INPUT, "template: invalid JSON at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root)) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "template: must be a JSON object");
        goto out;
    }
    json_object_foreach(root, k, v) {
        bool known = false;
        for (const char **p = known_keys; *p; p++)
            known |= strcmp(*p, k) == 0;
        if (!known) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "template: unknown field \"%s\"", k);
            goto out;
        }
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        rc = wp_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = get_str(root, "name", true, &t->name, err)) < 0 ||
        (rc = get_str(root, "rootfs", true, &t->rootfs, err)) < 0 ||
        (rc = get_strv(root, "init", true, &t->init, err)) < 0 ||
        (rc = get_env(root, &t->env, err)) < 0 ||
        (rc = get_str(root, "workdir", false, &t->workdir, err)) < 0 ||
        (rc = get_str(root, "hostname", false, &t->hostname, err)) < 0 ||
        (rc = get_strv(root, "setup", false, &t->setup, err)) < 0 ||
        (rc = get_str(root, "ready_file", false, &t->ready_file, err)) < 0 ||
        (rc = get_limits(root, &t->limits, err)) < 0 || (rc = get_binds(root, t, err)) < 0 ||
        (rc = get_network(root, &t->network, err)) < 0)
        goto out;
    if (!snap_name_valid(t->name)) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "template: name \"%s\" must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}",
                        t->name);
        goto out;
    }
    v = json_object_get(root, "ksm");
    if (v && !json_is_boolean(v)) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "template: \"ksm\" must be true or false");
        goto out;
    }
    t->ksm = json_is_true(v);
    v = json_object_get(root, "init_sets_hostname");
    if (v && !json_is_boolean(v)) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "template: \"init_sets_hostname\" must be true or false");
        goto out;
    }
    t->init_sets_hostname = json_is_true(v);
    v = json_object_get(root, "ready_timeout_s");
    t->ready_timeout_s = 60;
    if (v) {
        if (!json_is_number(v) || json_number_value(v) <= 0 || json_number_value(v) > 3600) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "template: ready_timeout_s must be a number in (0, 3600]");
            goto out;
        }
        t->ready_timeout_s = json_number_value(v);
    }
    if (!t->workdir && !(t->workdir = strdup("/"))) {
        rc = wp_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (!t->hostname && !(t->hostname = strdup("sandbox"))) {
        rc = wp_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (strlen(t->hostname) > 64) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "template: hostname longer than 64 bytes");
        goto out;
    }
    if ((rc = check_abs_path("workdir", t->workdir, err)) < 0 ||
        (t->ready_file && (rc = check_abs_path("ready_file", t->ready_file, err)) < 0) ||
        (rc = check_abs_path("init[0]", t->init[0], err)) < 0)
        goto out;
    if (strcmp(t->rootfs, "host") != 0) {
        if ((rc = check_abs_path("rootfs", t->rootfs, err)) < 0)
            goto out;
        if (stat(t->rootfs, &st) < 0 || !S_ISDIR(st.st_mode)) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "template: rootfs \"%s\" is not a directory%s",
                            t->rootfs, errno == ENOENT ? " (missing)" : "");
            goto out;
        }
    }
    canon = snap__template_json(t);
    if (!canon || digest_hex(canon, t->digest) < 0) {
        rc = wp_err_set(err, -ENOMEM, "template: cannot compute digest");
        goto out;
    }
    *out = t;
    t = NULL;
    rc = 0;
out:
    free(canon);
    snap_template_free(t);
    json_decref(root);
    return rc;
}

int snap_template_load(const char *path, struct snap_template **out, struct wp_err *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc;

    rc = wp_read_file(path, MAX_TEMPLATE_BYTES, &data, &len, err);
    if (rc < 0)
        return rc;
    rc = snap_template_parse(data, len, out, err);
    free(data);
    if (rc < 0)
        wp_err_wrap(err, "%s", path);
    return rc;
}

static json_t *strv_json(char **v)
{
    json_t *a = json_array();
    for (; v && *v; v++)
        json_array_append_new(a, json_string(*v));
    return a;
}

char *snap__template_json(const struct snap_template *t)
{
    json_t *o = json_object(), *env = json_object(), *lim = json_object();
    char *s;

    json_object_set_new(o, "name", json_string(t->name));
    json_object_set_new(o, "rootfs", json_string(t->rootfs));
    json_object_set_new(o, "init", strv_json(t->init));
    for (char **e = t->env; e && *e; e++) {
        char *eq = strchr(*e, '=');
        char key[MAX_STR];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - *e), *e);
        json_object_set_new(env, key, json_string(eq + 1));
    }
    json_object_set_new(o, "env", env);
    json_object_set_new(o, "workdir", json_string(t->workdir));
    json_object_set_new(o, "hostname", json_string(t->hostname));
    json_object_set_new(o, "setup", strv_json(t->setup));
    if (t->ready_file)
        json_object_set_new(o, "ready_file", json_string(t->ready_file));
    json_object_set_new(o, "ready_timeout_s", json_real(t->ready_timeout_s));
    if (t->limits.memory_bytes)
        json_object_set_new(lim, "memory_mb", json_real((double)t->limits.memory_bytes / 1048576.0));
    if (t->limits.pids)
        json_object_set_new(lim, "pids", json_integer(t->limits.pids));
    if (t->limits.cpu_millis)
        json_object_set_new(lim, "cpu", json_real(t->limits.cpu_millis / 1000.0));
    if (t->limits.disk_bytes)
        json_object_set_new(lim, "disk_mb", json_integer((json_int_t)(t->limits.disk_bytes >> 20)));
    if (t->limits.shm_bytes)
        json_object_set_new(lim, "shm_mb", json_integer((json_int_t)(t->limits.shm_bytes >> 20)));
    json_object_set_new(o, "limits", lim);
    if (t->ksm)
        json_object_set_new(o, "ksm", json_true());
    if (t->init_sets_hostname)
        json_object_set_new(o, "init_sets_hostname", json_true());
    if (t->n_binds) {
        json_t *binds = json_array();
        for (int i = 0; i < t->n_binds; i++)
            json_array_append_new(binds, json_pack("{s:s, s:s}", "source", t->binds[i].source,
                                                   "target", t->binds[i].target));
        json_object_set_new(o, "binds", binds);
    }
    /* Only when set, so templates without it keep their digests. */
    if (t->network.mode != SNAP_NET_NONE) {
        static const char *const modes[] = { "none", "unrestricted", "limited" };
        json_t *net = json_pack("{s:s}", "mode", modes[t->network.mode]);
        if (t->network.mode == SNAP_NET_LIMITED)
            json_object_set_new(net, "allowed_hosts", strv_json(t->network.hosts));
        json_object_set_new(o, "network", net);
    }
    s = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(o);
    return s;
}
