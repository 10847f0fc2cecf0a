/* files_s3.c - the Files API's S3-compatible store: PUT, GET and DELETE of
 * the object <endpoint>/<bucket>/<file id> (path-style), signed by libcurl's
 * own SigV4 (CURLOPT_AWS_SIGV4), and the checks of its configuration.
 *
 * Requests are blocking easy handles, bounded by the timeouts below; they
 * run on the files worker's thread (fileio.c), never on the event loop. */
#define WP_LOG_COMPONENT "files"
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

#define S3_CONNECT_TIMEOUT_S 5L
#define S3_TIMEOUT_S 120L

/* A response body, grown up to max bytes. */
struct s3_body {
    char *data;
    size_t len, cap, max;
    bool too_big;
};

static size_t body_write(char *p, size_t sz, size_t n, void *ud)
{
    struct s3_body *b = ud;
    size_t k = sz * n;
    if (b->len + k > b->max) {
        b->too_big = true;
        return 0; /* aborts the transfer */
    }
    if (b->len + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + k + 1)
            cap *= 2;
        char *nd = realloc(b->data, cap);
        if (!nd)
            return 0;
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, k);
    b->len += k;
    b->data[b->len] = '\0';
    return k;
}

/* The <Code> of an S3 error document, else "". */
static void error_code(const struct s3_body *b, char *out, size_t cap)
{
    const char *s = b->data ? strstr(b->data, "<Code>") : NULL;
    const char *e = s ? strstr(s, "</Code>") : NULL;
    out[0] = '\0';
    if (s && e && e - (s + 6) < 64)
        snprintf(out, cap, " %.*s", (int)(e - (s + 6)), s + 6);
}

/* One request: method on the object named id; body/len for PUT; the
 * response body into *resp (bounded by resp->max). Returns the HTTP status
 * (> 0) or an error. */
static int s3_request(const struct sched_files_s3 *c, const char *method, const char *id,
                      const void *body, size_t len, struct s3_body *resp, struct wp_err *err)
{
    char url[512], sigv4[64], cerr[CURL_ERROR_SIZE] = "";
    long status = 0;
    if (!sched__file_id_valid(id) ||
        snprintf(url, sizeof(url), "%s/%s/%s", c->endpoint, c->bucket, id) >= (int)sizeof(url))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad file id %s", id);
    snprintf(sigv4, sizeof(sigv4), "aws:amz:%s:s3", c->region);
    /* curl 7.88 signs x-amz-content-sha256 when given but does not make
     * it; S3 wants it on every request: the payload's SHA-256 in hex. */
    unsigned char sum[32];
    char sha[40 + 64 + 1];
    int k = snprintf(sha, sizeof(sha), "x-amz-content-sha256: ");
    sched__sha256(body ? body : "", body ? len : 0, sum);
    for (int i = 0; i < 32; i++)
        k += snprintf(sha + k, sizeof(sha) - (size_t)k, "%02x", sum[i]);
    const char *lines[] = {"Expect:", sha, body ? "Content-Type: application/octet-stream" : NULL};
    struct curl_slist *hdr = NULL, *t = NULL;
    for (size_t i = 0; i < 3 && lines[i]; i++) {
        if (!(t = curl_slist_append(hdr, lines[i])))
            break;
        hdr = t;
    }
    CURL *h = t ? curl_easy_init() : NULL;
    if (!h) {
        curl_slist_free_all(hdr);
        return wp_err_set(err, -ENOMEM, "S3 %s %s: out of memory", method, id);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, S3_CONNECT_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, S3_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4);
    curl_easy_setopt(h, CURLOPT_USERPWD, c->userpwd);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    if (body) {
        /* POSTFIELDS, not an upload callback: the whole body is in
         * memory already and its hash is signed above. */
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else if (!strcmp(method, "GET")) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    if (rc != CURLE_OK) {
        if (resp->too_big)
            return wp_err_set(err, WP_ETOOBIG, "S3 %s %s: larger than %zu bytes", method, id,
                              resp->max);
        /* curl's detail names the host: the log's, not the client's. */
        log_error("S3 %s %s: %s", method, url, cerr[0] ? cerr : curl_easy_strerror(rc));
        return wp_err_set(err, -EIO, "S3 %s %s: %s", method, id, curl_easy_strerror(rc));
    }
    return (int)status;
}

static int status_error(const char *method, const char *id, int status,
                        const struct s3_body *b, struct wp_err *err)
{
    char code[72];
    error_code(b, code, sizeof(code));
    return wp_err_set(err, status == 404 ? WP_ENOTFOUND : -EIO, "S3 %s %s: HTTP %d%s", method,
                      id, status, code);
}

int sched__s3_put(const struct sched_files_s3 *c, const char *id, const void *data, size_t len,
                  struct wp_err *err)
{
    struct s3_body b = {.max = 64 << 10};
    /* "" rather than NULL for an empty file: POSTFIELDS NULL would mean none. */
    int st = s3_request(c, "PUT", id, len ? data : "", len, &b, err);
    if (st >= 0 && (st < 200 || st > 299))
        st = status_error("PUT", id, st, &b, err);
    free(b.data);
    return st < 0 ? st : 0;
}

int sched__s3_get(const struct sched_files_s3 *c, const char *id, size_t max, char **out,
                  size_t *len, struct wp_err *err)
{
    struct s3_body b = {.max = max};
    int st = s3_request(c, "GET", id, NULL, 0, &b, err);
    if (st >= 0 && (st < 200 || st > 299))
        st = status_error("GET", id, st, &b, err);
    if (st < 0) {
        free(b.data);
        return st;
    }
    *out = b.data ? b.data : calloc(1, 1);
    *len = b.len;
    return *out ? 0 : wp_err_set(err, -ENOMEM, "S3 GET %s: out of memory", id);
}

int sched__s3_del(const struct sched_files_s3 *c, const char *id, struct wp_err *err)
{
    struct s3_body b = {.max = 64 << 10};
    int st = s3_request(c, "DELETE", id, NULL, 0, &b, err);
    if (st >= 0 && (st < 200 || st > 299) && st != 404) /* gone already: done */
        st = status_error("DELETE", id, st, &b, err);
    free(b.data);
    return st < 0 ? st : 0;
}

/* ---- configuration ---- */

/* S3's bucket naming rules: 3-63 of [a-z0-9.-], a letter or digit at both
 * ends, no "..". */
static bool bucket_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || n > 63 || strstr(s, ".."))
        return false;
    for (size_t i = 0; i < n; i++) {
        bool alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9');
        if (!alnum && ((i == 0 || i == n - 1) || (s[i] != '.' && s[i] != '-')))
            return false;
    }
    return true;
}

/* An http(s) URL with a host, no user, query or fragment (libcurl's parser). */
static bool endpoint_valid(const char *s)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL, *frag = NULL;
    bool ok = u && strlen(s) < sizeof(((struct sched_files_s3 *)0)->endpoint) &&
              !strpbrk(s, " \t\r\n") && curl_url_set(u, CURLUPART_URL, s, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
              (!strcmp(scheme, "http") || !strcmp(scheme, "https")) &&
              !strncasecmp(s, scheme, strlen(scheme)) &&
              curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host[0] &&
              curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_OK &&
              curl_url_get(u, CURLUPART_QUERY, &query, 0) != CURLUE_OK &&
              curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) != CURLUE_OK;
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(query);
    curl_free(frag);
    curl_url_cleanup(u);
    return ok;
}

int sched__s3_option(struct sched_files_s3 *c, const char *name, const char *val,
                     struct wp_err *err)
{
    if (!strcmp(name, "files-s3-endpoint")) {
        if (!endpoint_valid(val))
            return wp_err_set(err, WP_ECONFIG,
                              "--files-s3-endpoint wants an http:// or https:// URL "
                              "(no user, query or fragment; under %zu characters)",
                              sizeof(c->endpoint));
        snprintf(c->endpoint, sizeof(c->endpoint), "%s", val);
        for (size_t n = strlen(c->endpoint); n > 0 && c->endpoint[n - 1] == '/'; n--)
            c->endpoint[n - 1] = '\0';
        return 0;
    }
    if (!strcmp(name, "files-s3-bucket")) {
        if (!bucket_valid(val))
            return wp_err_set(err, WP_ECONFIG,
                              "--files-s3-bucket: '%.64s' is not a valid bucket name (3-63 of "
                              "a-z 0-9 . -, a letter or digit at both ends)", val);
        snprintf(c->bucket, sizeof(c->bucket), "%s", val);
        return 0;
    }
    if (!strcmp(name, "files-s3-region")) {
        size_t n = strlen(val);
        if (n == 0 || n >= sizeof(c->region) || strspn(val, "abcdefghijklmnopqrstuvwxyz0123456789-") != n)
            return wp_err_set(err, WP_ECONFIG, "--files-s3-region wants a region name "
                                               "(a-z 0-9 -, e.g. us-east-1)");
        snprintf(c->region, sizeof(c->region), "%s", val);
        return 0;
    }
    return 1;
}

int sched__s3_check(struct sched_files_s3 *c, struct wp_err *err)
{
    /* Read, then unset: no child (nodes' helpers, sandboxes) inherits them. */
    const char *id = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    int rc = 0;
    if (!c->endpoint[0] != !c->bucket[0])
        rc = wp_err_set(err, WP_ECONFIG,
                        "the S3 files store needs both --files-s3-endpoint and --files-s3-bucket");
    else if (c->endpoint[0] && (!id || !*id || !secret || !*secret))
        rc = wp_err_set(err, WP_ECONFIG, "the S3 files store needs AWS_ACCESS_KEY_ID and "
                                         "AWS_SECRET_ACCESS_KEY in the environment");
    else if (c->endpoint[0] && (strchr(id, ':') || strpbrk(id, "\r\n") || strpbrk(secret, "\r\n") ||
                                strlen(id) + strlen(secret) + 2 > sizeof(c->userpwd)))
        rc = wp_err_set(err, WP_ECONFIG, "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: too long, "
                                         "not one line, or a ':' in the key id");
    else if (c->endpoint[0])
        snprintf(c->userpwd, sizeof(c->userpwd), "%s:%s", id, secret);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    return rc;
}
