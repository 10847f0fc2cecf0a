/* msrv_script.c - configuration: latency distributions, the seeded RNG,
 * the JSON script of scripted turns and faults, and turn selection. */
#define WP_LOG_COMPONENT "msrv"
#include "msrv.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

#define SCRIPT_MAX (16 * 1024 * 1024)

void msrv_config_init(struct msrv_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->host, sizeof(cfg->host), "127.0.0.1");
    cfg->port = 8765;
    cfg->seed = 1;
    cfg->ttft.kind = MSRV_DIST_FIXED;
    cfg->ttft.a = cfg->ttft.b = 200;
    cfg->tokens_per_s = 100;
    cfg->chunk_tokens = 1;
    cfg->text = strdup("Hello! This is the warmpool model server speaking.");
    cfg->require_auth = true;
    cfg->max_body = MSRV_BODY_MAX;
    cfg->fault_status = 529;
    cfg->retry_after = 1;
    cfg->fault_after = 2;
}

static void turn_free(struct msrv_turn *t)
{
    for (size_t i = 0; i < t->n_blocks; i++) {
        free(t->blocks[i].text);
        free(t->blocks[i].name);
        free(t->blocks[i].id);
    }
    free(t->blocks);
}

static void convs_free(struct msrv_conv *convs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < convs[i].n_turns; j++)
            turn_free(&convs[i].turns[j]);
        free(convs[i].turns);
        free(convs[i].match);
    }
    free(convs);
}

void msrv_config_free(struct msrv_config *cfg)
{
    free(cfg->text);
    cfg->text = NULL;
    convs_free(cfg->convs, cfg->n_convs);
    cfg->convs = NULL;
    cfg->n_convs = 0;
}

/* ---- RNG and distributions ------------------------------------------ */

void msrv_rng_seed(struct msrv_rng *r, uint64_t seed, uint64_t stream)
{
    r->s = seed ^ (stream * 0x9e3779b97f4a7c15ull);
    (void)msrv_rng_next(r);
}

uint64_t msrv_rng_next(struct msrv_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double msrv_rng_double(struct msrv_rng *r)
{
    return (double)(msrv_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

double msrv_dist_sample(const struct msrv_dist *d, struct msrv_rng *r)
{
    double v = 0;

    switch (d->kind) {
    case MSRV_DIST_FIXED:
        v = d->a;
        break;
    case MSRV_DIST_UNIFORM:
        v = d->a + (d->b - d->a) * msrv_rng_double(r);
        break;
    case MSRV_DIST_LOGNORMAL: {
        /* median = e^mu; p95 = e^(mu + 1.6449 sigma). Box-Muller. */
        double mu = log(d->a);
        double sigma = d->b > d->a ? log(d->b / d->a) / 1.6448536269514722 : 0;
        double u1 = msrv_rng_double(r), u2 = msrv_rng_double(r);
        double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
        v = exp(mu + sigma * z);
        break;
    }
    }
    return v > 0 && isfinite(v) ? v : 0;
}

int msrv_dist_parse(const char *spec, struct msrv_dist *out, struct wp_err *err)
{
    double a = 0, b = 0;
    char tail;

    if (sscanf(spec, "fixed:%lf%c", &a, &tail) == 1 && a >= 0) {
        *out = (struct msrv_dist){ MSRV_DIST_FIXED, a, a };
        return 0;
    }
    if (sscanf(spec, "uniform:%lf:%lf%c", &a, &b, &tail) == 2 && a >= 0 && b >= a) {
        *out = (struct msrv_dist){ MSRV_DIST_UNIFORM, a, b };
        return 0;
    }
    if (sscanf(spec, "lognormal:%lf:%lf%c", &a, &b, &tail) == 2 && a > 0 && b >= a) {
        *out = (struct msrv_dist){ MSRV_DIST_LOGNORMAL, a, b };
        return 0;
    }
    return wp_err_set(err, WP_ECONFIG,
                      "bad distribution '%s' (fixed:MS, uniform:MIN:MAX, lognormal:MEDIAN:P95)",
                      spec);
}

/* ---- the JSON script -------------------------------------------------- */

static int dist_from_json(json_t *j, struct msrv_dist *out, struct wp_err *err)
{
    const char *kind = json_string_value(json_object_get(j, "dist"));
    json_t *ms = json_object_get(j, "ms");

    if (json_is_string(j))
        return msrv_dist_parse(json_string_value(j), out, err);
    if (json_is_number(j)) {
        *out = (struct msrv_dist){ MSRV_DIST_FIXED, json_number_value(j), 0 };
        return out->a >= 0 ? 0 : wp_err_set(err, WP_ECONFIG, "negative latency");
    }
    if (!kind)
        return wp_err_set(err, WP_ECONFIG, "ttft: want a number, a string or {\"dist\":...}");
    if (strcmp(kind, "fixed") == 0 && json_is_number(ms)) {
        *out = (struct msrv_dist){ MSRV_DIST_FIXED, json_number_value(ms), 0 };
        return out->a >= 0 ? 0 : wp_err_set(err, WP_ECONFIG, "negative latency");
    }
    if (strcmp(kind, "uniform") == 0) {
        out->kind = MSRV_DIST_UNIFORM;
        out->a = json_number_value(json_object_get(j, "min_ms"));
        out->b = json_number_value(json_object_get(j, "max_ms"));
        if (out->a >= 0 && out->b >= out->a)
            return 0;
    }
    if (strcmp(kind, "lognormal") == 0) {
        out->kind = MSRV_DIST_LOGNORMAL;
        out->a = json_number_value(json_object_get(j, "median_ms"));
        out->b = json_number_value(json_object_get(j, "p95_ms"));
        if (out->a > 0 && out->b >= out->a)
            return 0;
    }
    return wp_err_set(err, WP_ECONFIG, "bad ttft distribution '%s'", kind);
}

static int fault_kind_parse(const char *s, enum msrv_fault_kind *out)
{
    static const struct {
        const char *name;
        enum msrv_fault_kind kind;
    } table[] = {
        { "none", MSRV_FAULT_NONE },
        { "status", MSRV_FAULT_STATUS },
        { "error", MSRV_FAULT_STREAM_ERROR },
        { "drop", MSRV_FAULT_DROP },
        { "stall", MSRV_FAULT_STALL },
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (s && strcmp(s, table[i].name) == 0) {
            *out = table[i].kind;
            return 0;
        }
    return -1;
}

static int block_from_json(json_t *j, struct msrv_block *b, struct wp_err *err)
{
    const char *type = json_string_value(json_object_get(j, "type"));

    memset(b, 0, sizeof(*b));
    if (!type)
        return wp_err_set(err, WP_ECONFIG, "content block without a type");
    if (strcmp(type, "text") == 0 || strcmp(type, "thinking") == 0) {
        const char *key = type[0] == 't' && type[1] == 'e' ? "text" : "thinking";
        const char *s = json_string_value(json_object_get(j, key));
        if (!s)
            return wp_err_set(err, WP_ECONFIG, "%s block without \"%s\"", type, key);
        b->kind = key[1] == 'e' ? MSRV_BLOCK_TEXT : MSRV_BLOCK_THINKING;
        b->text = strdup(s);
    } else if (strcmp(type, "tool_use") == 0) {
        const char *name = json_string_value(json_object_get(j, "name"));
        const char *id = json_string_value(json_object_get(j, "id"));
        json_t *input = json_object_get(j, "input");
        if (!name)
            return wp_err_set(err, WP_ECONFIG, "tool_use block without a name");
        if (!input)
            input = json_object();
        else
            json_incref(input);
        if (!json_is_object(input)) {
            json_decref(input);
            return wp_err_set(err, WP_ECONFIG, "tool_use input must be an object");
        }
        b->kind = MSRV_BLOCK_TOOL_USE;
        b->name = strdup(name);
        b->id = id ? strdup(id) : NULL;
        b->text = json_dumps(input, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
        json_decref(input);
        if (!b->name || (id && !b->id))
            return wp_err_set(err, -ENOMEM, "tool_use block");
    } else {
        return wp_err_set(err, WP_ECONFIG, "unknown content block type '%s'", type);
    }
    return b->text ? 0 : wp_err_set(err, -ENOMEM, "content block");
}

static int turn_from_json(json_t *j, struct msrv_turn *t, struct wp_err *err)
{
    json_t *content = json_object_get(j, "content");
    json_t *text = json_object_get(j, "text");
    json_t *ttft = json_object_get(j, "ttft_ms");
    json_t *fault = json_object_get(j, "fault");
    const char *stop = json_string_value(json_object_get(j, "stop_reason"));
    size_t n;

    memset(t, 0, sizeof(*t));
    if (json_is_string(j)) {
        text = j;
        content = NULL;
    } else if (!json_is_object(j)) {
        return wp_err_set(err, WP_ECONFIG, "a turn is a string or an object");
    }
    if (content && !json_is_array(content))
        return wp_err_set(err, WP_ECONFIG, "turn content must be an array");
    n = (content ? json_array_size(content) : 0) + (json_is_string(text) ? 1 : 0);
    t->blocks = calloc(n ? n : 1, sizeof(*t->blocks));
    if (!t->blocks)
        return wp_err_set(err, -ENOMEM, "turn");
    if (json_is_string(text)) {
        t->blocks[0].kind = MSRV_BLOCK_TEXT;
        t->blocks[0].text = strdup(json_string_value(text));
        t->n_blocks = 1;
        if (!t->blocks[0].text)
            return wp_err_set(err, -ENOMEM, "turn");
    }
    for (size_t i = 0; content && i < json_array_size(content); i++) {
        int rc = block_from_json(json_array_get(content, i), &t->blocks[t->n_blocks], err);
        t->n_blocks++; /* counted even on failure so turn_free releases it */
        if (rc < 0)
            return wp_err_wrap(err, "block %zu", i);
    }
    if (stop)
        snprintf(t->stop_reason, sizeof(t->stop_reason), "%s", stop);
    if (ttft) {
        if (dist_from_json(ttft, &t->ttft, err) < 0)
            return -1;
        t->has_ttft = true;
    }
    if (fault) {
        const char *kind = json_string_value(json_object_get(fault, "kind"));
        if (json_is_string(fault))
            kind = json_string_value(fault);
        if (fault_kind_parse(kind, &t->fault) < 0)
            return wp_err_set(err, WP_ECONFIG, "fault kind: none, status, error, drop or stall");
        t->fault_status = (int)json_integer_value(json_object_get(fault, "status"));
        t->fault_after = json_is_integer(json_object_get(fault, "after"))
                             ? (int)json_integer_value(json_object_get(fault, "after"))
                             : 1;
    }
    return 0;
}

static int conv_from_json(json_t *j, struct msrv_conv *c, struct wp_err *err)
{
    json_t *turns = json_object_get(j, "turns");
    const char *match = json_string_value(json_object_get(j, "match"));

    if (!json_is_array(turns))
        return wp_err_set(err, WP_ECONFIG, "conversation without a \"turns\" array");
    if (match) {
        c->match = strdup(match);
        if (!c->match)
            return wp_err_set(err, -ENOMEM, "conversation");
    }
    c->turns = calloc(json_array_size(turns) + 1, sizeof(*c->turns));
    if (!c->turns)
        return wp_err_set(err, -ENOMEM, "conversation");
    for (size_t i = 0; i < json_array_size(turns); i++) {
        int rc = turn_from_json(json_array_get(turns, i), &c->turns[c->n_turns], err);
        c->n_turns++;
        if (rc < 0)
            return wp_err_wrap(err, "turn %zu", i);
    }
    return 0;
}

static void rule_from_json(json_t *j, struct msrv_fault_rule *r)
{
    if (json_is_integer(json_object_get(j, "first")))
        r->first = (int)json_integer_value(json_object_get(j, "first"));
    if (json_is_number(json_object_get(j, "rate")))
        r->rate = json_number_value(json_object_get(j, "rate"));
}

static int faults_from_json(struct msrv_config *cfg, json_t *f, struct wp_err *err)
{
    json_t *v;

    if (!json_is_object(f))
        return wp_err_set(err, WP_ECONFIG, "\"faults\" must be an object");
    v = json_object_get(f, "status");
    if (json_is_integer(v))
        cfg->fault_status = (int)json_integer_value(v);
    v = json_object_get(f, "retry_after");
    if (json_is_integer(v))
        cfg->retry_after = (int)json_integer_value(v);
    v = json_object_get(f, "after");
    if (json_is_integer(v))
        cfg->fault_after = (int)json_integer_value(v);
    rule_from_json(json_object_get(f, "http"), &cfg->status_rule);
    rule_from_json(json_object_get(f, "stream_error"), &cfg->error_rule);
    rule_from_json(json_object_get(f, "drop"), &cfg->drop_rule);
    rule_from_json(json_object_get(f, "stall"), &cfg->stall_rule);
    return 0;
}

int msrv_config_load_json(struct msrv_config *cfg, const char *json, size_t len,
                          struct wp_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *v, *convs;
    struct msrv_conv *parsed = NULL;
    size_t n_parsed = 0;
    int rc = 0;

    if (!root)
        return wp_err_set(err, WP_ECONFIG, "script: line %d: %s", jerr.line, jerr.text);
    if (!json_is_object(root)) {
        rc = wp_err_set(err, WP_ECONFIG, "script: want an object");
        goto out;
    }
    v = json_object_get(root, "seed");
    if (json_is_integer(v))
        cfg->seed = (uint64_t)json_integer_value(v);
    v = json_object_get(root, "ttft_ms");
    rc = v ? dist_from_json(v, &cfg->ttft, err) : 0;
    if (rc < 0)
        goto out;
    v = json_object_get(root, "tokens_per_s");
    if (json_is_number(v))
        cfg->tokens_per_s = json_number_value(v);
    v = json_object_get(root, "chunk_tokens");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        cfg->chunk_tokens = (int)json_integer_value(v);
    v = json_object_get(root, "text");
    if (json_is_string(v)) {
        char *t = strdup(json_string_value(v));
        if (!t) {
            rc = wp_err_set(err, -ENOMEM, "script");
            goto out;
        }
        free(cfg->text);
        cfg->text = t;
    }
    v = json_object_get(root, "require_auth");
    if (json_is_boolean(v))
        cfg->require_auth = json_is_true(v);
    v = json_object_get(root, "faults");
    rc = v ? faults_from_json(cfg, v, err) : 0;
    if (rc < 0)
        goto out;

    /* "turns" is shorthand for one conversation that matches anything. */
    convs = json_object_get(root, "conversations");
    v = json_object_get(root, "turns");
    if (convs || v) {
        size_t n = (json_is_array(convs) ? json_array_size(convs) : 0) + (v ? 1 : 0);
        if (convs && !json_is_array(convs)) {
            rc = wp_err_set(err, WP_ECONFIG, "\"conversations\" must be an array");
            goto out;
        }
        parsed = calloc(n + 1, sizeof(*parsed));
        if (!parsed) {
            rc = wp_err_set(err, -ENOMEM, "script");
            goto out;
        }
        for (size_t i = 0; convs && i < json_array_size(convs); i++) {
            rc = conv_from_json(json_array_get(convs, i), &parsed[n_parsed++], err);
            if (rc < 0) {
                wp_err_wrap(err, "conversation %zu", i);
                goto out;
            }
        }
        if (v) {
            rc = conv_from_json(root, &parsed[n_parsed++], err);
            if (rc < 0)
                goto out;
        }
        convs_free(cfg->convs, cfg->n_convs);
        cfg->convs = parsed;
        cfg->n_convs = n_parsed;
        parsed = NULL;
        n_parsed = 0;
    }
out:
    convs_free(parsed, n_parsed);
    json_decref(root);
    return rc < 0 ? rc : 0;
}

int msrv_config_load_file(struct msrv_config *cfg, const char *path, struct wp_err *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = wp_read_file(path, SCRIPT_MAX, &data, &len, err);

    if (rc < 0)
        return rc;
    rc = msrv_config_load_json(cfg, data, len, err);
    free(data);
    if (rc < 0)
        return wp_err_wrap(err, "%s", path);
    return 0;
}

const struct msrv_turn *msrv_config_pick(const struct msrv_config *cfg,
                                         const struct msrv_msgreq *req)
{
    for (size_t i = 0; i < cfg->n_convs; i++) {
        const struct msrv_conv *c = &cfg->convs[i];
        if (c->match && !strstr(req->first_user, c->match))
            continue;
        return req->n_assistant < c->n_turns ? &c->turns[req->n_assistant] : NULL;
    }
    return NULL;
}
