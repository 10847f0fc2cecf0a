/* multipart.c - a strict multipart/form-data parser (RFC 7578) over a
 * complete body held in memory, for POST /v1/files.
 *
 * Debian has no maintained C library for just this (libmicrohttpd's post
 * processor comes with a whole HTTP server, GMime with GLib and mail), so
 * this is a small one. Strict: no preamble, CRLF line ends only, every part
 * has a Content-Disposition of form-data with a name, header lines are
 * bounded, and the body ends with the closing delimiter (an epilogue of one
 * CRLF at most). Anything else is refused with a message, never guessed. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "scheduler/sched_int.h"

#define MAX_HEADER_LINE 1024
#define MAX_PART_HEADERS 8

static bool bchar(char c)
{
    /* RFC 2046 bcharsnospace plus space (not last). */
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           strchr("'()+_,-./:=? ", c) != NULL;
}

/* The value of parameter name in a header value such as
 * `form-data; name="file"; filename="a.txt"` into out. Quoted strings may
 * hold \" and \\. Returns 1 found, 0 absent, -1 malformed or too long. */
static int param(const char *v, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = strchr(v, ';');
    while (p) {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *eq = strchr(p, '=');
        if (!eq)
            return -1;
        const char *ke = eq;
        while (ke > p && (ke[-1] == ' ' || ke[-1] == '\t'))
            ke--;
        bool match = (size_t)(ke - p) == nl && !strncasecmp(p, name, nl);
        const char *q = eq + 1;
        while (*q == ' ' || *q == '\t')
            q++;
        size_t n = 0;
        if (*q == '"') {
            for (q++; *q != '"'; q++) {
                if (!*q)
                    return -1;
                if (*q == '\\' && (q[1] == '"' || q[1] == '\\'))
                    q++;
                if (match) {
                    if (n + 1 >= cap)
                        return -1;
                    out[n++] = *q;
                }
            }
            q++;
        } else {
            for (; *q && *q != ';' && *q != ' ' && *q != '\t'; q++) {
                if (*q == '"')
                    return -1;
                if (match) {
                    if (n + 1 >= cap)
                        return -1;
                    out[n++] = *q;
                }
            }
        }
        while (*q == ' ' || *q == '\t')
            q++;
        if (*q && *q != ';')
            return -1;
        if (match) {
            out[n] = '\0';
            return 1;
        }
        p = *q ? q : NULL;
    }
    return 0;
}

int sched__mp_boundary(const char *content_type, char out[SCHED_MP_BOUNDARY_MAX + 1],
                       const char **why)
{
    static const char mt[] = "multipart/form-data";
    if (!content_type || strncasecmp(content_type, mt, sizeof(mt) - 1) ||
        (content_type[sizeof(mt) - 1] != ';' && content_type[sizeof(mt) - 1] != ' ')) {
        *why = "content-type must be multipart/form-data";
        return -1;
    }
    int rc = param(content_type, "boundary", out, SCHED_MP_BOUNDARY_MAX + 1);
    size_t n = rc == 1 ? strlen(out) : 0;
    if (rc != 1 || n == 0 || out[n - 1] == ' ') {
        *why = "multipart/form-data needs a boundary of 1-70 characters";
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!bchar(out[i])) {
            *why = "the multipart boundary has a character RFC 2046 does not allow";
            return -1;
        }
    return 0;
}

static const char *find(const char *h, size_t hl, const char *n, size_t nl)
{
    return hl >= nl ? memmem(h, hl, n, nl) : NULL;
}

/* One part's header block at p (up to end); fills part and returns the
 * first data byte, or NULL with *why. */
static const char *headers(const char *p, const char *end, struct sched_mp_part *part,
                           const char **why)
{
    char line[MAX_HEADER_LINE + 1];
    bool disp = false;
    for (int n = 0;; n++) {
        const char *eol = find(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) {
            *why = "a multipart part's headers do not end";
            return NULL;
        }
        size_t ll = (size_t)(eol - p);
        if (ll == 0)
            break;
        if (n >= MAX_PART_HEADERS || ll > MAX_HEADER_LINE || memchr(p, '\0', ll)) {
            *why = "a multipart part has too many, too long or invalid header lines";
            return NULL;
        }
        memcpy(line, p, ll);
        line[ll] = '\0';
        p = eol + 2;
        char *colon = strchr(line, ':');
        if (!colon || colon == line || strpbrk(line, "\r\n") || memchr(line, ' ', (size_t)(colon - line))) {
            *why = "a multipart part has a malformed header line";
            return NULL;
        }
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (!strcasecmp(line, "content-disposition")) {
            if (disp || strncasecmp(v, "form-data", 9) || (v[9] && v[9] != ';' && v[9] != ' ')) {
                *why = "each multipart part needs one Content-Disposition: form-data";
                return NULL;
            }
            disp = true;
            int rn = param(v, "name", part->name, sizeof(part->name));
            int rf = param(v, "filename", part->filename, sizeof(part->filename));
            if (rn != 1 || !part->name[0] || rf < 0) {
                *why = "a multipart part's Content-Disposition needs a name (and a valid filename)";
                return NULL;
            }
            part->has_filename = rf == 1;
        } else if (!strcasecmp(line, "content-type")) {
            size_t vl = strlen(v);
            if (part->content_type[0] || vl == 0 || vl >= sizeof(part->content_type)) {
                *why = "a multipart part has a bad Content-Type";
                return NULL;
            }
            memcpy(part->content_type, v, vl + 1);
        } else if (!strcasecmp(line, "content-transfer-encoding")) {
            if (strcasecmp(v, "binary") && strcasecmp(v, "8bit") && strcasecmp(v, "7bit")) {
                *why = "a multipart part's Content-Transfer-Encoding must be binary";
                return NULL;
            }
        } /* other headers carry nothing we use */
    }
    if (!disp) {
        *why = "each multipart part needs one Content-Disposition: form-data";
        return NULL;
    }
    return p + 2;
}

int sched__mp_parse(const char *content_type, const char *body, size_t len,
                    struct sched_mp_part *parts, int max, const char **why)
{
    char bnd[SCHED_MP_BOUNDARY_MAX + 1];
    char delim[SCHED_MP_BOUNDARY_MAX + 5]; /* "\r\n--" + boundary */
    const char *end = body + len;
    int n = 0;

    if (sched__mp_boundary(content_type, bnd, why) < 0)
        return -1;
    size_t dl = (size_t)snprintf(delim, sizeof(delim), "\r\n--%s", bnd);
    /* The first delimiter has no CRLF before it (no preamble). */
    if (len < dl - 2 || memcmp(body, delim + 2, dl - 2)) {
        *why = "the multipart body does not start with its boundary";
        return -1;
    }
    const char *p = body + dl - 2;
    for (;;) {
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') {
            p += 2;
            if (p == end || (end - p == 2 && p[0] == '\r' && p[1] == '\n'))
                break;
            *why = "the multipart body has data after its closing boundary";
            return -1;
        }
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') {
            *why = "a multipart boundary line is not followed by CRLF";
            return -1;
        }
        p += 2;
        if (n >= max) {
            *why = "the multipart body has too many parts";
            return -1;
        }
        struct sched_mp_part *part = &parts[n];
        memset(part, 0, sizeof(*part));
        p = headers(p, end, part, why);
        if (!p)
            return -1;
        const char *d = find(p, (size_t)(end - p), delim, dl);
        if (!d) {
            *why = "a multipart part is not closed by its boundary";
            return -1;
        }
        part->data = p;
        part->len = (size_t)(d - p);
        n++;
        p = d + dl;
    }
    return n;
}
