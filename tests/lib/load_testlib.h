/* load_testlib.h - steady, bounded session load against running schedulers
 * (test_drain's rolling restart, test_faults' fault matrix): sessions each
 * looping user message -> (scripted) bash tool call -> result -> idle, an
 * SSE stream per session that resumes with Last-Event-ID on whichever
 * scheduler answers, and optionally a /v1/sandboxes user. Threads of the
 * test process; nothing here asserts (the test checks the report). */
#ifndef WP_LOAD_TESTLIB_H
#define WP_LOAD_TESTLIB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct json_t;

#define TH_LOAD_SESS 8
#define TH_LOAD_ACKS 256
#define TH_LOAD_PORTS 4

struct th_load_stream {
    pthread_t thr;
    bool running;
    pthread_mutex_t mu;
    char last[96];     /* the last SSE id: line (the resume cursor) */
    char (*seen)[64];  /* event ids as the stream delivered them */
    int nseen, cap;
    int opens;         /* connections that answered 200 (1 + resumes) */
};

struct th_load_sess {
    char sid[64];
    char acked[TH_LOAD_ACKS][64]; /* ids POST .../events answered 200 with */
    uint64_t sent_ns[TH_LOAD_ACKS];
    int nacked;
    int ended;               /* turns ended (idle end_turn or retries_exhausted) */
    uint64_t recovered_ns;   /* end of its first turn begun after the fault */
    struct th_load_stream st;
};

struct th_load {
    /* set by the caller before th_load_start */
    const char *key;            /* API key */
    const char *text;           /* user message text ("load round") */
    const char *sandbox_env;    /* /v1/sandboxes environment; NULL: none */
    volatile int ports[TH_LOAD_PORTS]; /* 0 = that scheduler is down */
    int nports, nsess;
    int turn_timeout_s;         /* a turn not ended by then fails the load (60) */
    int max_turns;              /* user messages per session (0: until stopped) */
    bool tolerate_errors;       /* session.error / error tool results are outcomes, not failures */
    struct th_load_sess s[TH_LOAD_SESS];
    volatile uint64_t fault_ns; /* when the fault was applied (0: none yet) */
    /* results */
    volatile int turns;
    volatile int failed;
    char why[512];
    char last_refusal[256];     /* the last answer to an input that was not a 200 */
    volatile int sbx_ok, sbx_err, sbx_new;
    volatile uint64_t sbx_recovered_ns;
    /* private */
    volatile int stop, stop_streams;
    pthread_t thr, sbx_thr;
};

/* What the log, the acknowledgements and the streams say after a run. */
struct th_load_report {
    int acked;          /* user messages POST .../events acknowledged */
    int lost;           /* acknowledged (a 200, or delivered on a stream), not in the history */
    int dup;            /* event ids twice in a history */
    int extra_input;    /* user messages in the history that no 200 acknowledged (a retried POST whose first try landed) */
    int stream_missing; /* history events (after a stream's first) its stream never delivered */
    int stream_dup;     /* events a stream delivered twice */
    int stream_resumes; /* reconnections with Last-Event-ID */
    int events;         /* events in all histories */
    int errors;         /* session.error events */
    int retrying;       /* ... of them with retry_status retrying */
    int exhausted;      /* turns ended with retries_exhausted */
    int tool_errors;    /* agent.tool_result with is_error */
    int sessions_failed;/* sessions whose last turn did not end with end_turn */
    int unended;        /* acknowledged turns that never ended */
    double recover_s;   /* fault -> every session ended a turn begun after it, the sandbox user executed again (-1: not yet) */
};

/* Start the streams (each connected before the load sends), then the
 * load and the sandbox user. The sessions' sid are filled in by the
 * caller. 0, or -1 when a stream could not open (nothing left running). */
int th_load_start(struct th_load *l);
/* Stop sending, wait for turns in flight (up to turn_timeout_s), stop the
 * sandbox user (its sandbox deleted), then let each stream catch up with
 * its session's history (10 s at most) and stop it. */
void th_load_stop(struct th_load *l);
/* Compare with the histories read from port; prints what is wrong. */
void th_load_check(struct th_load *l, int port, struct th_load_report *rep);
/* Free the streams' memory. */
void th_load_free(struct th_load *l);

/* ---- a session's history ---- */
/* Its events (the data array, owned), or NULL. */
struct json_t *th_history(int port, const char *key, const char *sid);
int th_count_type(struct json_t *data, const char *type);
/* session.status_idle with this stop_reason type ("end_turn", ...). */
int th_count_idle(struct json_t *data, const char *reason);
/* agent.tool_result with is_error true. */
int th_count_tool_errors(struct json_t *data);

#endif
