/* util.c - ids, timestamps, validation helpers and crypto for scheduler/. */
#define WP_LOG_COMPONENT "sched"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

void sched__new_id(const char *prefix, char *out, size_t cap)
{
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    unsigned char rnd[24];
    char tail[25];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        RAND_bytes(rnd, sizeof(rnd));
    for (int i = 0; i < 24; i++)
        tail[i] = b62[rnd[i] % 62];
    tail[24] = '\0';
    snprintf(out, cap, "%s%s", prefix, tail);
}

void sched__rfc3339(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
}

int sched__parse_rfc3339(const char *s, uint64_t *ms)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    int frac = 0, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
        return WP_EINVAL_INPUT;
    const char *p = s + n;
    if (*p == '.') {
        int digits = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3) {
                frac = frac * 10 + (*p - '0');
                digits++;
            }
            p++;
        }
        while (digits++ < 3)
            frac *= 10;
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int hh, mm;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2)
            return WP_EINVAL_INPUT;
        off = (hh * 3600L + mm * 60L) * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return WP_EINVAL_INPUT;
    }
    if (*p)
        return WP_EINVAL_INPUT;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return WP_EINVAL_INPUT;
    *ms = (uint64_t)(t - off) * 1000u + (uint64_t)frac;
    return 0;
}

bool sched__utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    while (p < e) {
        unsigned c = *p;
        int len;
        unsigned min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            min = 0x80;
            c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            min = 0x800;
            c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            min = 0x10000;
            c &= 0x07;
        } else {
            return false;
        }
        if (e - p < len)
            return false;
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        p += len;
    }
    return true;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            n++;
    return n;
}

const char *sched__check_metadata(json_t *m, bool patch)
{
    const char *k;
    json_t *v;
    if (!json_is_object(m))
        return "metadata must be an object of strings";
    if (!patch && json_object_size(m) > 16)
        return "metadata may have at most 16 keys";
    json_object_foreach(m, k, v) {
        if (utf8_chars(k) > 64 || k[0] == '\0')
            return "metadata keys must be 1 to 64 characters";
        if (json_is_null(v) && patch)
            continue;
        if (!json_is_string(v))
            return "metadata values must be strings";
        if (utf8_chars(json_string_value(v)) > 512)
            return "metadata values may be at most 512 characters";
    }
    return NULL;
}

void sched__apply_metadata_patch(json_t *stored, json_t *patch, bool empty_deletes)
{
    const char *k;
    json_t *v;
    json_object_foreach(patch, k, v) {
        if (json_is_null(v) || (empty_deletes && json_is_string(v) &&
                                json_string_value(v)[0] == '\0'))
            json_object_del(stored, k);
        else
            json_object_set(stored, k, v);
    }
}

const char *sched__unknown_field(json_t *obj, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                ok = true;
        if (!ok)
            return k;
    }
    return NULL;
}

int sched__page_params(struct sched_req *req, int *limit, const char **page)
{
    const char *l = sched__query(req, "limit");
    *limit = 20;
    *page = sched__query(req, "page");
    if (*page && (*page)[0] == '\0')
        *page = NULL;
    if (l) {
        char *end;
        long v = strtol(l, &end, 10);
        if (*l == '\0' || *end || v < 1 || v > 1000) {
            sched__bad_request(req, "limit must be an integer from 1 to 1000");
            return -1;
        }
        *limit = (int)v;
    }
    if (*page && strncmp(*page, "page_", 5) != 0) {
        sched__bad_request(req, "invalid page cursor");
        return -1;
    }
    return 0;
}

bool sched__query_bool(struct sched_req *req, const char *key, bool def, bool *bad)
{
    const char *v = sched__query(req, key);
    if (!v)
        return def;
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        return true;
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        return false;
    *bad = true;
    return def;
}

void sched__sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

void sched__sha256_hex(const char *s, char *out)
{
    unsigned char h[32];
    sched__sha256(s, strlen(s), h);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

void sched__b64url(const void *p, size_t n, char *out, size_t cap)
{
    if (cap < 4 * ((n + 2) / 3) + 1) {
        out[0] = '\0';
        return;
    }
    int l = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    while (l > 0 && out[l - 1] == '=')
        l--;
    out[l] = '\0';
    for (char *c = out; *c; c++) {
        if (*c == '+')
            *c = '-';
        else if (*c == '/')
            *c = '_';
    }
}

/* AES-256-GCM: base64(nonce[12] | tag[16] | ciphertext). */
char *sched__seal(const unsigned char key[32], const char *plain, size_t n)
{
    unsigned char *raw = malloc(28 + n + 16);
    char *out = NULL;
    int len = 0, fl = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!raw || !ctx)
        goto done;
    if (RAND_bytes(raw, 12) != 1)
        goto done;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) != 1 ||
        EVP_EncryptUpdate(ctx, raw + 28, &len, (const unsigned char *)plain, (int)n) != 1 ||
        EVP_EncryptFinal_ex(ctx, raw + 28 + len, &fl) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, raw + 12) != 1)
        goto done;
    size_t total = 28 + (size_t)len + (size_t)fl;
    out = malloc(4 * ((total + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, raw, (int)total);
done:
    EVP_CIPHER_CTX_free(ctx);
    free(raw);
    return out;
}

char *sched__unseal(const unsigned char key[32], const char *sealed, size_t *n)
{
    size_t sl = strlen(sealed);
    unsigned char *raw = malloc(sl + 4);
    char *out = NULL;
    int len = 0, fl = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!raw || !ctx)
        goto done;
    int rl = EVP_DecodeBlock(raw, (const unsigned char *)sealed, (int)sl);
    if (rl < 28)
        goto done;
    while (sl > 0 && sealed[sl - 1] == '=') { /* DecodeBlock counts padding */
        rl--;
        sl--;
    }
    out = malloc((size_t)rl);
    if (!out)
        goto done;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) != 1 ||
        EVP_DecryptUpdate(ctx, (unsigned char *)out, &len, raw + 28, rl - 28) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, raw + 12) != 1 ||
        EVP_DecryptFinal_ex(ctx, (unsigned char *)out + len, &fl) != 1) {
        free(out);
        out = NULL;
        goto done;
    }
    out[len + fl] = '\0';
    *n = (size_t)(len + fl);
done:
    EVP_CIPHER_CTX_free(ctx);
    free(raw);
    return out;
}
