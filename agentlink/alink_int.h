/* alink_int.h - shared between the files of agentlink/ only (the hands
 * program and its tools). Names here use the alink__ prefix. */
#ifndef ALINK_INT_H
#define ALINK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ev.h>
#include <jansson.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"

struct wp_err;

/* Limits, mirroring the SDK's own runner (toolset.md section 8). */
#define ALINK_BASH_KEEP (100u * 1024u)        /* bash keeps the last 100 KiB */
#define ALINK_BASH_TIMEOUT_MS 120000          /* default per-call timeout */
#define ALINK_BASH_TIMEOUT_MAX_MS 3600000     /* a caller cannot ask for more */
#define ALINK_BASH_MAX_QUEUED 256             /* bash calls waiting for the shell */
#define ALINK_READ_MAX (256u * 1024u)         /* read/edit file limit */
#define ALINK_GLOB_MAX_RESULTS 200
#define ALINK_GLOB_MAX_VISIT 50000
#define ALINK_GREP_MAX_OUT (100u * 1024u)
#define ALINK_GREP_MAX_LINE 2000
#define ALINK_GREP_TIME_MS 60000
#define ALINK_WRITE_MAX (16u * 1024u * 1024u) /* bounded by the frame size anyway */
#define ALINK_MAX_ROOTS 8
#define ALINK_CONN_OUT_MAX (64u * 1024u * 1024u) /* hard cap of a connection's queue */
#define ALINK_CHUNK_SOFT (1024u * 1024u)      /* chunks are dropped above this queue size */

struct alink__hands;
struct alink__conn;

/* A call accepted from a connection. Synchronous tools answer before the
 * frame handler returns; bash calls live on the shell's queue. */
struct alink__call {
    uint64_t id;
    struct alink__conn *conn; /* borrowed; NULL once the connection is gone */
    json_t *input;            /* owned reference */
    int64_t timeout_ms;
    bool stream;
    ev_timer timer;           /* bash: armed while running */
    struct alink__call *next; /* shell queue */
};

/* The persistent shell (one per sandbox: sessions own a whole sandbox). */
struct alink__shell {
    pid_t pid;                 /* 0: not running */
    int in_fd, out_fd, st_fd;  /* our ends: its stdin, its stdout+stderr, its fd 3 */
    ev_io in_w, out_w, st_w;
    struct wp_buf inbuf;       /* bytes waiting for its stdin */
    struct alink__call *cur;   /* running, or NULL */
    struct alink__call *head, *tail; /* waiting */
    /* Output of the running call: a ring keeping the last ALINK_BASH_KEEP
     * bytes, so a 100 MB output costs 100 KiB. */
    char *ring;
    size_t ring_pos;   /* next write position */
    uint64_t total;    /* bytes seen for this call */
    char st[32];       /* partial status line */
    size_t st_len;
    unsigned char carry[4]; /* incomplete UTF-8 tail held back from a chunk */
    size_t carry_len;
    uint64_t dropped;  /* chunk bytes not streamed (slow reader) */
    unsigned long long call_start; /* boot-clock ticks when cur started */
    /* Status lines still owed by the warm-up command of a shell started
     * ahead of its first call (not a call's; dropped when they arrive). */
    int warmups;
};

struct alink__hands {
    struct ev_loop *loop;
    const char *sock_path;  /* borrowed from argv */
    const char *shell_path;
    int listen_fd;
    ev_io listen_w;
    ev_child child_w;       /* catch-all: reaps every child and orphan */
    ev_signal term_w, int_w;
    ev_prepare prepare_w;   /* frees closed connections */
    struct alink__conn *conns;
    struct alink__conn *closed;
    size_t max_frame;
    char workdir[4096];
    char roots[ALINK_MAX_ROOTS][4096]; /* resolved; roots[0] is the workdir */
    size_t n_roots;
    char session[128];
    bool allow_hostname;
    uint64_t rng[2];        /* xorshift128+ state, reseeded by attach */
    bool lazy_shell;        /* --lazy-shell: start the shell on the first call */
    bool stopping;          /* leaving ev_run: start no more shells */
    /* Readiness (--ready-file / --ready-fd): said once the socket accepts
     * and the first shell has answered, so a checkpoint holds a shell that
     * is already waiting for input. ready_w bounds that wait. */
    const char *ready_file; /* borrowed from argv */
    int ready_fd;
    bool ready_sent;
    ev_timer ready_w;
    struct alink__shell shell;
};

struct alink__conn {
    ev_io io;
    int fd;
    struct alink__hands *h;
    struct wp_buf in;
    struct wp_buf out;
    size_t skip;        /* bytes of an oversized frame still to discard */
    bool hello;         /* handshake done */
    bool closing;
    bool attach_failed; /* its last attach failed: calls are refused until one succeeds
                         * (a host may pipeline its first call behind the attach) */
    struct alink__conn *next;
};

/* hands_server.c */
int alink__hands_main(int argc, char **argv);
/* Queue a result / chunk / error frame on a connection (no-op if conn is
 * NULL or closing). text is borrowed. */
void alink__reply(struct alink__conn *c, uint64_t id, const char *text, size_t len,
                  bool is_error);
void alink__replyf(struct alink__conn *c, uint64_t id, bool is_error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Returns false if the chunk was dropped because the queue is over the
 * soft limit. */
bool alink__chunk(struct alink__conn *c, uint64_t id, const char *data, size_t len);
void alink__call_free(struct alink__call *call);
uint64_t alink__rand(struct alink__hands *h);

/* hands_bash.c */
void alink__bash_init(struct alink__hands *h);
/* Takes ownership of call; answers it exactly once. */
void alink__bash_submit(struct alink__hands *h, struct alink__call *call);
/* Returns true if a call (conn, id) was found and cancelled (answered). */
bool alink__bash_cancel(struct alink__hands *h, struct alink__conn *conn, uint64_t id);
/* A connection is going away: kill its running call, drop its queued ones. */
void alink__bash_conn_gone(struct alink__hands *h, struct alink__conn *conn);
/* A child exited (called from the catch-all child watcher). */
void alink__bash_child_exit(struct alink__hands *h, pid_t pid, int status);
/* Append shell text run before the next command (attach settings). */
void alink__bash_preamble(struct alink__hands *h, const char *text, size_t len);
void alink__bash_shutdown(struct alink__hands *h);
/* Start the shell now (unless --lazy-shell or one runs): it then answers a
 * warm-up command and alink__hands_ready follows. */
void alink__bash_prestart(struct alink__hands *h);
/* hands_server.c: say "ready" (once; later calls do nothing). */
void alink__hands_ready(struct alink__hands *h);

/* hands_files.c: synchronous tools. Each writes the result text into out
 * (bounded) and returns true if it is an error result. */
bool alink__tool_read(struct alink__hands *h, json_t *input, struct wp_buf *out);
bool alink__tool_write(struct alink__hands *h, json_t *input, struct wp_buf *out);
bool alink__tool_edit(struct alink__hands *h, json_t *input, struct wp_buf *out);
/* Resolve a tool path against the workdir and confine it to the roots,
 * symlinks included. resolved gets an absolute path. Returns 0 or < 0 with
 * a message for the model in err. */
int alink__resolve(struct alink__hands *h, const char *path, char *resolved, size_t cap,
                   struct wp_err *err);
/* Set roots[0] to the (resolved) workdir. */
int alink__set_workdir(struct alink__hands *h, const char *dir, struct wp_err *err);

/* hands_search.c */
bool alink__tool_glob(struct alink__hands *h, json_t *input, struct wp_buf *out);
bool alink__tool_grep(struct alink__hands *h, json_t *input, struct wp_buf *out);
/* Doublestar match of a relative path against a pattern (no braces). */
bool alink__glob_match(const char *pattern, const char *path);

/* hands_files.c: replace out with a tool error message; returns true
 * (the result is an error) so tools can `return alink__tool_fail(...)`. */
bool alink__tool_fail(struct wp_buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
