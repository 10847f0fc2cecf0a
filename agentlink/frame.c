/* frame.c - agentlink wire codec: length-prefixed JSON frames and the
 * validation of every message type. Pure: no I/O, no global state. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"
#include "base/err.h"

int alink_frame_decode(const uint8_t *buf, size_t len, size_t max, const uint8_t **payload,
                       size_t *plen)
{
    uint32_t n;

    if (len < ALINK_FRAME_HDR)
        return 0;
    n = ((uint32_t)buf[0] << 24) | ((uint32_t)buf[1] << 16) | ((uint32_t)buf[2] << 8) |
        (uint32_t)buf[3];
    *plen = n;
    if (n > max)
        return WP_ETOOBIG;
    if (len - ALINK_FRAME_HDR < n)
        return 0;
    *payload = buf + ALINK_FRAME_HDR;
    /* n <= max <= a frame size far below INT_MAX is enforced by callers'
     * max; guard anyway so the return value cannot wrap. */
    if ((size_t)n + ALINK_FRAME_HDR > (size_t)0x7fffffff)
        return WP_ETOOBIG;
    return (int)(n + ALINK_FRAME_HDR);
}

struct dump_ctx {
    struct wp_buf *out;
    size_t start;
    size_t max;
    int rc;
};

static int dump_cb(const char *p, size_t n, void *data)
{
    struct dump_ctx *d = data;
    int rc;

    if (d->out->len - d->start - ALINK_FRAME_HDR + n > d->max) {
        d->rc = WP_ETOOBIG;
        return -1;
    }
    rc = wp_buf_append(d->out, p, n);
    if (rc < 0) {
        d->rc = rc;
        return -1;
    }
    return 0;
}

int alink_frame_encode(struct wp_buf *out, const json_t *msg, size_t max, struct wp_err *err)
{
    static const uint8_t zero[ALINK_FRAME_HDR];
    struct dump_ctx d = {out, out->len, max, 0};
    size_t n;
    uint8_t *h;
    int rc;

    rc = wp_buf_append(out, zero, sizeof(zero));
    if (rc < 0)
        return wp_err_set(err, rc, "frame: output buffer full");
    if (json_dump_callback(msg, dump_cb, &d, JSON_COMPACT) < 0) {
        out->len = d.start;
        if (out->data)
            out->data[out->len] = '\0';
        rc = d.rc ? d.rc : -ENOMEM;
        return wp_err_set(err, rc, "frame: encode: %s", wp_strerror(rc));
    }
    n = out->len - d.start - ALINK_FRAME_HDR;
    h = (uint8_t *)out->data + d.start;
    h[0] = (uint8_t)(n >> 24);
    h[1] = (uint8_t)(n >> 16);
    h[2] = (uint8_t)(n >> 8);
    h[3] = (uint8_t)n;
    return 0;
}

/* ---- validation ---------------------------------------------------------- */

static const struct {
    enum alink_msg_type type;
    const char *name;
} msg_names[] = {
    {ALINK_MSG_HELLO, "hello"},   {ALINK_MSG_ATTACH, "attach"}, {ALINK_MSG_CALL, "call"},
    {ALINK_MSG_CHUNK, "chunk"},   {ALINK_MSG_RESULT, "result"}, {ALINK_MSG_CANCEL, "cancel"},
    {ALINK_MSG_ERROR, "error"},
};

const char *alink_msg_type_name(enum alink_msg_type t)
{
    for (size_t i = 0; i < sizeof(msg_names) / sizeof(msg_names[0]); i++)
        if (msg_names[i].type == t)
            return msg_names[i].name;
    return "?";
}

/* Request ids are positive JSON integers. */
static int get_id(json_t *o, bool required, uint64_t *id, struct wp_err *err)
{
    json_t *v = json_object_get(o, "id");

    if (!v) {
        if (required)
            return wp_err_set(err, WP_EPROTO, "missing \"id\"");
        *id = 0;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return wp_err_set(err, WP_EPROTO, "\"id\" must be a positive integer");
    *id = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_str(json_t *o, const char *key, bool required, const char **s, size_t *len,
                   struct wp_err *err)
{
    json_t *v = json_object_get(o, key);

    if (!v) {
        if (required)
            return wp_err_set(err, WP_EPROTO, "missing \"%s\"", key);
        *s = NULL;
        if (len)
            *len = 0;
        return 0;
    }
    if (!json_is_string(v))
        return wp_err_set(err, WP_EPROTO, "\"%s\" must be a string", key);
    *s = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return 0;
}

static int check_attach(json_t *o, struct wp_err *err)
{
    const char *s;
    json_t *env = json_object_get(o, "env");
    const char *k;
    json_t *v;

    if (get_str(o, "session", true, &s, NULL, err) < 0 ||
        get_str(o, "workdir", false, &s, NULL, err) < 0 ||
        get_str(o, "hostname", false, &s, NULL, err) < 0 ||
        get_str(o, "seed", false, &s, NULL, err) < 0)
        return WP_EPROTO;
    if (env && !json_is_object(env))
        return wp_err_set(err, WP_EPROTO, "\"env\" must be an object");
    json_object_foreach(env, k, v) {
        if (!json_is_string(v))
            return wp_err_set(err, WP_EPROTO, "env value of %.64s must be a string", k);
        if (!*k || strchr(k, '=') || strlen(k) != strcspn(k, "\n"))
            return wp_err_set(err, WP_EPROTO, "bad env name");
    }
    return 0;
}

int alink_msg_parse(const uint8_t *payload, size_t len, struct alink_msg *m, uint64_t *id_out,
                    struct wp_err *err)
{
    json_error_t jerr;
    const char *t;
    json_t *o, *v;
    size_t i;
    int rc = WP_EPROTO;

    memset(m, 0, sizeof(*m));
    if (id_out)
        *id_out = 0;
    o = json_loadb((const char *)payload, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o)
        return wp_err_set(err, WP_EPROTO, "bad json: %s", jerr.text);
    if (!json_is_object(o)) {
        wp_err_set(err, WP_EPROTO, "frame is not a JSON object");
        goto fail;
    }
    m->json = o;
    if (get_id(o, false, &m->id, NULL) == 0 && id_out)
        *id_out = m->id;
    if (get_str(o, "t", true, &t, NULL, err) < 0)
        goto fail;
    for (i = 0; i < sizeof(msg_names) / sizeof(msg_names[0]); i++)
        if (strcmp(msg_names[i].name, t) == 0)
            break;
    if (i == sizeof(msg_names) / sizeof(msg_names[0])) {
        wp_err_set(err, WP_EPROTO, "unknown message type \"%.32s\"", t);
        goto fail;
    }
    m->type = msg_names[i].type;
    switch (m->type) {
    case ALINK_MSG_HELLO:
        v = json_object_get(o, "v");
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
            wp_err_set(err, WP_EPROTO, "hello: \"v\" must be an integer in 1..65535");
            goto fail;
        }
        m->version = (int)json_integer_value(v);
        break;
    case ALINK_MSG_ATTACH:
        if (get_id(o, true, &m->id, err) < 0 || check_attach(o, err) < 0)
            goto fail;
        break;
    case ALINK_MSG_CALL:
        if (get_id(o, true, &m->id, err) < 0 || get_str(o, "tool", true, &m->tool, NULL, err) < 0)
            goto fail;
        m->input = json_object_get(o, "input");
        if (!json_is_object(m->input)) {
            wp_err_set(err, WP_EPROTO, "call: \"input\" must be an object");
            goto fail;
        }
        v = json_object_get(o, "timeout_ms");
        if (v && (!json_is_integer(v) || json_integer_value(v) < 0)) {
            wp_err_set(err, WP_EPROTO, "call: \"timeout_ms\" must be a non-negative integer");
            goto fail;
        }
        m->timeout_ms = v ? json_integer_value(v) : 0;
        v = json_object_get(o, "stream");
        if (v && !json_is_boolean(v)) {
            wp_err_set(err, WP_EPROTO, "call: \"stream\" must be a boolean");
            goto fail;
        }
        m->stream = json_is_true(v);
        break;
    case ALINK_MSG_CHUNK:
        if (get_id(o, true, &m->id, err) < 0 ||
            get_str(o, "data", true, &m->text, &m->text_len, err) < 0 ||
            get_str(o, "stream", false, &m->stream_name, NULL, err) < 0)
            goto fail;
        break;
    case ALINK_MSG_RESULT:
        if (get_id(o, true, &m->id, err) < 0 ||
            get_str(o, "content", true, &m->text, &m->text_len, err) < 0)
            goto fail;
        v = json_object_get(o, "is_error");
        if (v && !json_is_boolean(v)) {
            wp_err_set(err, WP_EPROTO, "result: \"is_error\" must be a boolean");
            goto fail;
        }
        m->is_error = json_is_true(v);
        break;
    case ALINK_MSG_CANCEL:
        if (get_id(o, true, &m->id, err) < 0)
            goto fail;
        break;
    case ALINK_MSG_ERROR:
        if (get_id(o, false, &m->id, err) < 0 ||
            get_str(o, "code", true, &m->code, NULL, err) < 0 ||
            get_str(o, "message", false, &m->text, &m->text_len, err) < 0)
            goto fail;
        if (!m->text) {
            m->text = "";
        }
        break;
    }
    return 0;
fail:
    json_decref(o);
    memset(m, 0, sizeof(*m));
    return rc;
}

void alink_msg_free(struct alink_msg *m)
{
    if (!m)
        return;
    json_decref(m->json);
    m->json = NULL;
}

/* ---- builders ------------------------------------------------------------ */

/* Length of a valid UTF-8 sequence at p (1..4), or 0 if invalid. NUL is
 * treated as invalid so it never reaches a C string. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t need;
    unsigned cp;

    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((need == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (need == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return need;
}

json_t *alink_json_text(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, bad = 0, k;
    char *copy, *w;
    json_t *j;

    while (i < len) {
        k = utf8_seq(p + i, len - i);
        if (!k) {
            bad++;
            k = 1;
        }
        i += k;
    }
    if (!bad)
        return json_stringn_nocheck(s, len);
    copy = malloc(len + bad * 2 + 1);
    if (!copy)
        return NULL;
    w = copy;
    for (i = 0; i < len; i += k) {
        k = utf8_seq(p + i, len - i);
        if (k) {
            memcpy(w, p + i, k);
            w += k;
        } else {
            k = 1;
            memcpy(w, "\xef\xbf\xbd", 3);
            w += 3;
        }
    }
    j = json_stringn_nocheck(copy, (size_t)(w - copy));
    free(copy);
    return j;
}

static json_t *msg_new(const char *t, uint64_t id)
{
    json_t *o = json_object();

    if (!o)
        return NULL;
    if (json_object_set_new(o, "t", json_string(t)) < 0 ||
        (id && json_object_set_new(o, "id", json_integer((json_int_t)id)) < 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *alink_msg_hello(int version)
{
    json_t *o = msg_new("hello", 0);

    if (o && json_object_set_new(o, "v", json_integer(version)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *alink_msg_result(uint64_t id, const char *text, size_t len, bool is_error)
{
    json_t *o = msg_new("result", id);

    if (o && (json_object_set_new(o, "content", alink_json_text(text, len)) < 0 ||
              json_object_set_new(o, "is_error", json_boolean(is_error)) < 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *alink_msg_chunk(uint64_t id, const char *stream, const char *data, size_t len)
{
    json_t *o = msg_new("chunk", id);

    if (o && (json_object_set_new(o, "stream", json_string(stream)) < 0 ||
              json_object_set_new(o, "data", alink_json_text(data, len)) < 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *alink_msg_cancel(uint64_t id)
{
    return msg_new("cancel", id);
}

json_t *alink_msg_error(uint64_t id, const char *code, const char *message)
{
    json_t *o = msg_new("error", id);

    if (o && (json_object_set_new(o, "code", json_string(code)) < 0 ||
              json_object_set_new(o, "message",
                                  alink_json_text(message, strlen(message))) < 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}
