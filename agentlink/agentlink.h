/* agentlink.h - the link between the host and the hands inside a sandbox.
 *
 * Three parts share this header:
 *   - the frame codec (frame.c): pure functions over bytes, no I/O;
 *   - the host client (client.c): an async libev client used by the node
 *     daemon (and later the scheduler, through a TCP relay);
 *   - the message vocabulary both ends speak (documented in
 *     ARCHITECTURE.md, section agentlink/).
 *
 * The hands binary itself (hands_*.c) has no public API: it is a program.
 *
 * Wire format: every frame is a 4-byte big-endian payload length followed
 * by that many bytes of one JSON object. The object's "t" member names the
 * message type.
 */
#ifndef ALINK_AGENTLINK_H
#define ALINK_AGENTLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct wp_err;
struct wp_buf;
struct ev_loop;

#define ALINK_PROTO_VERSION 1
#define ALINK_FRAME_HDR 4
#define ALINK_FRAME_MAX_DEFAULT (1024u * 1024u) /* payload bytes */
#define ALINK_SOCK_PATH_DEFAULT "/run/warmpool/hands.sock"

/* ---- frame codec ------------------------------------------------------ */

/* Decode one frame header from (buf, len).
 *
 *   return  > 0   a whole frame is present; the value is the bytes it takes
 *                 (header + payload). *payload points into buf (borrowed),
 *                 *plen is its length.
 *   return  0     need more bytes.
 *   return WP_ETOOBIG  the announced payload is larger than max; *plen holds
 *                 the announced length so the caller can skip it (the
 *                 stream stays in sync) or close.
 *
 * Never reads past buf + len; never allocates. */
int alink_frame_decode(const uint8_t *buf, size_t len, size_t max, const uint8_t **payload,
                       size_t *plen);

/* Append a frame holding the compact JSON of msg to out. msg is borrowed.
 * Returns 0, WP_ETOOBIG (payload over max, or out full: nothing appended),
 * -ENOMEM. */
int alink_frame_encode(struct wp_buf *out, const json_t *msg, size_t max, struct wp_err *err);

enum alink_msg_type {
    ALINK_MSG_HELLO = 1,
    ALINK_MSG_ATTACH,
    ALINK_MSG_CALL,
    ALINK_MSG_CHUNK,
    ALINK_MSG_RESULT,
    ALINK_MSG_CANCEL,
    ALINK_MSG_ERROR,
};

/* A parsed and validated message. Pointers borrow from json, which the
 * struct owns (free with alink_msg_free). */
struct alink_msg {
    enum alink_msg_type type;
    json_t *json;     /* owned: the whole object */
    uint64_t id;      /* request id (attach, call, chunk, result, cancel; error: 0 if none) */
    int version;      /* hello */
    const char *tool; /* call */
    json_t *input;    /* call: borrowed from json, an object */
    int64_t timeout_ms; /* call: 0 = the tool's default */
    bool stream;      /* call: send chunk frames while running */
    const char *text; /* chunk: data; result: content; error: message */
    size_t text_len;
    const char *stream_name; /* chunk: "output" */
    bool is_error;           /* result */
    const char *code;        /* error: a short code such as "bad_frame" */
};

/* Parse and validate one frame payload. Returns 0 or WP_EPROTO with a
 * message in err. On failure *id_out (if not NULL) holds the request id
 * when one could be read (so the error frame can name the call), else 0. */
int alink_msg_parse(const uint8_t *payload, size_t len, struct alink_msg *m, uint64_t *id_out,
                    struct wp_err *err);
void alink_msg_free(struct alink_msg *m);
const char *alink_msg_type_name(enum alink_msg_type t);

/* Builders: each returns a new reference (caller owns, json_decref) or NULL
 * on allocation failure. Text arguments are copied and made valid UTF-8
 * (invalid bytes become U+FFFD). */
json_t *alink_msg_hello(int version);
json_t *alink_msg_result(uint64_t id, const char *text, size_t len, bool is_error);
json_t *alink_msg_chunk(uint64_t id, const char *stream, const char *data, size_t len);
json_t *alink_msg_cancel(uint64_t id);
json_t *alink_msg_error(uint64_t id, const char *code, const char *message);

/* A JSON string from arbitrary bytes: invalid UTF-8 sequences and NUL bytes
 * are replaced by U+FFFD. Caller owns the result. */
json_t *alink_json_text(const char *s, size_t len);

/* ---- attach ------------------------------------------------------------ */

struct alink_env_var {
    const char *name; /* borrowed */
    const char *value;
};

/* Per-session settings applied to a warm clone. All pointers borrowed for
 * the duration of the call that takes the struct. */
struct alink_attach {
    const char *session_id;  /* required */
    const char *workdir;     /* NULL: keep */
    const char *hostname;    /* NULL: keep */
    const struct alink_env_var *env;
    size_t n_env;
    const uint8_t *seed;     /* fresh randomness; NULL: the client draws 32 bytes */
    size_t seed_len;
};

/* ---- host client ------------------------------------------------------- */

struct alink_client;

/* What a call ends with. content is borrowed for the duration of the
 * callback. status 0: the hands answered (is_error says whether the tool
 * failed). status < 0: the link failed, the call timed out or was
 * cancelled locally; content then holds a readable message and is_error
 * is true, so a session can forward it to the model as a tool error. */
struct alink_result {
    const char *content;
    size_t len;
    bool is_error;
};

typedef void (*alink_result_cb)(void *ctx, int status, const struct alink_result *res,
                                const struct wp_err *err);
typedef void (*alink_chunk_cb)(void *ctx, const char *data, size_t len);
typedef void (*alink_connect_cb)(void *ctx, int status, const struct wp_err *err);
/* Called once when an established link goes down (peer closed, I/O error,
 * protocol violation), after every in-flight call got its result. */
typedef void (*alink_close_cb)(void *ctx, const struct wp_err *err);

struct alink_client_opts {
    size_t max_frame;            /* 0: ALINK_FRAME_MAX_DEFAULT */
    double connect_timeout_s;    /* 0: 5 s (covers the hello handshake) */
    alink_close_cb on_close;     /* may be NULL */
    void *close_ctx;
};

struct alink_call_opts {
    int64_t timeout_ms;     /* 0: the tool's default, enforced by the hands */
    double client_grace_s;  /* extra time the client waits beyond timeout_ms
                               before failing the call itself; 0: 5 s */
    alink_chunk_cb on_chunk; /* non-NULL: ask the hands to stream output */
};

/* Create a client on loop. *out is caller-owned (alink_client_free).
 * Loop: every alink_client_* function must be called on loop's thread. */
int alink_client_new(struct ev_loop *loop, const struct alink_client_opts *opts,
                     struct alink_client **out, struct wp_err *err);

/* Connect to the hands' Unix socket at path and do the version handshake.
 * If this returns < 0, cb is never called; else exactly once (status 0:
 * ready for calls). */
int alink_client_connect_unix(struct alink_client *c, const char *path, alink_connect_cb cb,
                              void *ctx, struct wp_err *err);

/* The same over an fd that is already connected (any stream transport,
 * e.g. a TCP relay). Steals fd (closed by the client, also on failure). */
int alink_client_connect_fd(struct alink_client *c, int fd, alink_connect_cb cb, void *ctx,
                            struct wp_err *err);

/* Send attach. cb as for calls. Returns the request id (> 0) or < 0 (cb
 * never called). a is borrowed for the duration of this call.
 * Attach and calls may be sent while the hello handshake is in flight
 * (pipelined, one round trip less): they go right behind the hello, which
 * the hands answer first; a failed handshake fails them with its reason,
 * before the connect callback. */
int64_t alink_client_attach(struct alink_client *c, const struct alink_attach *a,
                            alink_result_cb cb, void *ctx, struct wp_err *err);

/* Send a tool call. input is borrowed (serialised before return); opts may
 * be NULL. Returns the request id (> 0), or < 0 and cb is never called;
 * otherwise cb is called exactly once (result, timeout, cancel or link
 * failure), and opts->on_chunk zero or more times before it. The frame is
 * written at once when nothing is queued: if that write finds the link
 * dead, cb runs before this function returns (the id is still returned). */
int64_t alink_client_call(struct alink_client *c, const char *tool, const json_t *input,
                          const struct alink_call_opts *opts, alink_result_cb cb, void *ctx,
                          struct wp_err *err);

/* Cancel a call: a cancel frame is sent (the hands kill what the call
 * runs) and the call's cb is called at once with status -ECANCELED; the
 * hands' late result for it is ignored.
 * Returns 0 or WP_ENOTFOUND (no such call in flight). */
int alink_client_cancel(struct alink_client *c, int64_t id, struct wp_err *err);

/* Number of calls in flight (attach included). */
size_t alink_client_inflight(const struct alink_client *c);
bool alink_client_connected(const struct alink_client *c);

/* Close the link: every in-flight call gets its cb (status -ECONNABORTED),
 * then the client can connect again. on_close is not called. */
void alink_client_close(struct alink_client *c);

/* Close and free. Safe inside any of the client's callbacks (the memory is
 * released when the callback returns). NULL is a no-op. */
void alink_client_free(struct alink_client *c);

#endif
