/* brain_int.h - between brain.c (the loop: leases, model calls, tools)
 * and brain_log.c (pure: the log -> what is pending, the model request).
 * Private to scheduler/. */
#ifndef SCHED_BRAIN_INT_H
#define SCHED_BRAIN_INT_H

#include <jansson.h>
#include <stdbool.h>

/* A tool call without its result. */
struct sched_brain_pend {
    char id[64];
    int kind;             /* 0 the brain runs it, 1 external (a client, a worker, a confirmation) */
    bool mcp;             /* an agent.mcp_tool_use */
};

/* What the log says, read from its start. */
struct sched_brain_state {
    bool turn_active;     /* input arrived after the last end of turn */
    bool awaiting_model;  /* a model request must run */
    bool model_open;      /* a span start without its end */
    char open_span[64];
    bool interrupted;     /* an interrupt not yet answered by an idle */
    bool idle_for_pending;/* a requires_action idle lists the current externals */
    bool running;         /* the last status event was running */
    bool last_stop_tool_use;
    int npend;
    struct sched_brain_pend pend[64];
};

/* log: array of events (borrowed). self_hosted: built-in calls are answered
 * by the environment's worker (external). */
void sched__brain_derive(json_t *log, bool self_hosted, struct sched_brain_state *d);
/* The Messages API request (caller owns) for the conversation in log,
 * with the agent snapshot's model, system prompt and tools. */
json_t *sched__brain_request(json_t *log, json_t *agent, int max_tokens);
/* Prompt caching: a cache_control breakpoint on the last content block of
 * the last message. Tools, system and the history before it are the
 * stable prefix each turn extends, so the next request reads all of it
 * from the cache and pays in full only for what is new (the Messages API
 * looks up to 20 blocks back for the previous breakpoint). */
void sched__brain_cache_mark(json_t *req);
/* The agent's permission policy type for a toolset tool ("always_allow"
 * when none is set), whether the toolset enables it, and whether name is
 * one of the six sandbox tools the brain runs. */
const char *sched__brain_policy(json_t *agent, const char *tool);
bool sched__brain_tool_enabled(json_t *agent, const char *name);
/* The request's definitions of the enabled sandbox tools and the custom
 * tools (caller owns). */
json_t *sched__brain_tool_defs(json_t *agent);
/* The mcp_toolset of server: tool's permission policy type
 * ("always_allow" when none is set) and, when enabled is not NULL,
 * whether the toolset enables it (false when no toolset names server). */
const char *sched__brain_mcp_config(json_t *agent, const char *server, const char *tool, bool *enabled);
bool sched__brain_builtin(const char *name);

/* ---- the loop's state (brain.c, brain_tools.c) ---- */

#include <ev.h>
#include <stdint.h>

#include "base/buf.h"
#include "pool/pool.h"

struct sched_brains;
struct sched_server;
struct sched_model_call;
struct alink_client;
struct sched_metrics;
struct sched_brain_mcp;
struct mcp_hub;

enum sbx_state { SBX_NONE, SBX_CLAIMING, SBX_LINKING, SBX_READY, SBX_FAILED };
enum egress_state { EGRESS_NONE, EGRESS_LOADING, EGRESS_LOADED };

/* A built-in tool call this brain runs. */
struct btool {
    struct brain *b;
    char use_id[64];
    char name[32];
    json_t *input;      /* owned */
    uint64_t t0;        /* when the call was due */
    uint64_t files_due; /* the start of the model request that asked for it: the file
                           resources must have been checked since (brain_files.c) */
    int64_t call_id;    /* on the link; 0 while waiting for the sandbox */
    bool waited;
    struct btool *next;
};

/* A content block of the model's reply being streamed. */
struct block {
    int kind;           /* 0 text, 1 tool_use, 2 thinking, 3 other */
    char ev_id[64];     /* explicit id of the event it becomes */
    char tool_name[128];
    struct wp_buf buf;  /* text or tool input JSON */
};

struct brain {
    struct sched_brains *bs;
    struct sched_server *srv;
    char sid[64], org[64], env_id[64], pool_env[64];
    char key_obj[200], key_ev[200], key_lease[200];
    char token[32];          /* the brain lease's fencing token */
    bool loaded;             /* session read, log read */
    bool env_wait;           /* the environment's record not read yet: no step */
    bool self_hosted;
    bool stopped;            /* lost the lease or the session is gone: no more writes */
    json_t *agent;           /* the session's agent snapshot (owned) */
    json_t *vault_ids;       /* the session's (owned) */
    struct mcp_hub *mcp_hub; /* the process's MCP client (borrowed) */
    struct sched_brain_mcp *mcp; /* brain_mcp.c: its MCP servers (owned), NULL before use */
    json_t *log;             /* array of event objects, each with "type" and "id" */
    char last_pos[64];       /* stream id read up to */
    bool reading, reread;
    int refs;                /* Redis replies and pool callbacks still to come */
    bool in_step, step_again;

    /* the model call in flight */
    struct sched_model_call *call;
    char span_id[64];
    uint64_t call_t0;
    bool call_first_token;
    struct block blocks[16];
    int nblocks;
    json_t *usage;           /* model_usage being accumulated (owned) */
    char stop_reason[32];
    int partial_failures;
    struct wp_buf delta;     /* text deltas not yet appended */
    char delta_ev[64];
    bool delta_dirty;
    int model_rounds;        /* requests in this turn */

    /* the turn */
    uint64_t turn_t0;        /* input seen (monotonic ns) */
    bool turn_first_token;

    /* the sandbox */
    enum sbx_state sbx;
    struct pool_claim_result claim;
    struct alink_client *ac;
    uint64_t claim_t0;
    char sbx_error[200];
    struct btool *tools;
    /* brain_files.c: the file resources mounted in sandbox files_sbx */
    char files_sbx[64];
    json_t *files_mounted;   /* resource id -> true (owned) */
    json_t *files_todo;      /* the check's resources still to mount (owned) */
    bool files_busy;         /* a check is running */
    uint64_t files_t0, files_check_t0; /* the last finished / the running check's start */
    uint64_t files_put_t0;   /* the mount in flight started (for the log) */

    /* secrets in play (brain_egress.c), read before the first claim */
    enum egress_state egress_state;
    json_t *egress;          /* {"credentials":[...]} for the route (owned; holds
                                secrets: wiped when freed), NULL when none */
    json_t *egress_vars;     /* [{name, value: placeholder}] (owned) */
    bool egress_warned;      /* credential_host_unreachable_error checked */
    bool egress_stale;       /* read again at the next turn's start */
    bool egress_recheck;     /* being read again: compare with egress_routed */
    char *egress_routed;     /* what the last route carried (compact JSON; wiped) */
    json_t *egress_sess;     /* read beside the credentials, in the session's slot:
                                {"json": the session, "rtok": {field: sealed}} (owned) */
    char proxy[64];          /* the sandbox's egress proxy "host:port" ("" none) */
    bool has_repos;          /* the session has github_repository resources */
    json_t *repos;           /* [{url, remote, mount_path, checkout}] (owned) */
    bool repos_cloned;       /* done in this sandbox (or tried) */
    uint64_t clone_t0;

    ev_timer renew;
    ev_timer linger;
    struct brain *next, *dnext;
};


/* brain.c, for brain_tools.c: append an event (fenced; ev stolen; id ""
 * or NULL: the stream id becomes the event's id), run the step, free a
 * stopped brain once nothing refers to it, the process's metrics, seconds
 * since a monotonic time. */
void sched__brain_emit(struct brain *b, json_t *ev, const char *id);
void sched__brain_step(struct brain *b);
void sched__brain_maybe_free(struct brain *b);
/* Renew the session's sandbox lease (--sandbox-lease); a lease the pool
 * says is lost (its node was reaped: dead or cut off), stale or gone fails
 * the sandbox: calls in flight end in error, the next one claims anew. */
void sched__brain_sandbox_renew(struct brain *b);
struct sched_metrics *sched__brain_metrics(struct brain *b);
double sched__brain_since(uint64_t t0);

/* brain_tools.c: the session's sandbox (claim, relay, attach) and the
 * built-in tool calls run in it. claim: unless one is there or coming;
 * tools_run: start what can start, fail what cannot (called when tools
 * are due and whenever the sandbox changes); tool_start: a call the log
 * lists (agent.tool_use event) without a result; tools_cancel: interrupt
 * every call (each gets its result). */
void sched__brain_claim(struct brain *b);
/* ... the claim itself, once the session's secrets are known (egress_cb). */
void sched__brain_claim_go(struct brain *b);
/* The sandbox cannot come: tools waiting for it fail with why. */
void sched__brain_sandbox_failed(struct brain *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The session's sandbox tier as known now, for metric labels (one of
 * hot, warm, cold; pending while claiming; none; failed; other). */
const char *sched__brain_tier(const struct brain *b);
void sched__brain_tools_run(struct brain *b);
void sched__brain_tool_start(struct brain *b, json_t *ev);
void sched__brain_tools_cancel(struct brain *b);

/* brain_egress.c: the session's environment_variable credentials. load:
 * read them unless done (true while the read is in flight: the claim goes
 * on from its callback through sched__brain_claim_go); env: the attach's
 * variables (the proxy's, for a non-empty proxy "host:port", and each
 * secret's placeholder; pointers into pe and b, valid until the next
 * load/free); free: wipes the secrets. placeholder: "wpcred_" + 32 hex,
 * from the vault key, session and credential ids; 0 or -1. */
bool sched__brain_egress_load(struct brain *b);
struct alink_env_var;
int sched__brain_egress_env(struct brain *b, const char *proxy, struct alink_env_var *vars,
                            size_t cap, struct pool_egress_env *pe);
void sched__brain_egress_free(struct brain *b);
/* At attach: clone the session's repositories in the sandbox (true: the
 * clone runs; sched__brain_sandbox_ready follows). */
bool sched__brain_repos_clone(struct brain *b);
/* brain_tools.c: the sandbox can take tool calls now. */
void sched__brain_sandbox_ready(struct brain *b);
/* brain_tools.c: route to the same sandbox again (new credentials). */
void sched__brain_relink(struct brain *b);
/* brain_egress.c: a turn ended (the next one reads the credentials
 * again); a turn starts with the sandbox kept: read them, and route
 * again when they changed (a rotated token, an updated secret). */
void sched__brain_egress_turn_end(struct brain *b);
void sched__brain_egress_turn_start(struct brain *b);
/* A route is about to carry b->egress: remembered (as a wiped copy). */
void sched__brain_egress_routed(struct brain *b);
int sched__egress_placeholder(const unsigned char key[32], const char *session, const char *cred,
                              char out[POOL_EGRESS_PLACEHOLDER_LEN]);
/* brain_files.c: whether the session's file resources were all put in the
 * sandbox by a check that started at or after due (wp_now_ns); if not, a
 * check starts (when none runs) and sched__brain_tools_run runs again when
 * it ends. The brain starts one with each model request, so it is usually
 * done before a tool call is due. */
bool sched__brain_files_ready(struct brain *b, uint64_t due);
void sched__brain_files_free(struct brain *b);

/* brain_mcp.c: the session's MCP servers. ready: lists every server (its
 * credential first) unless done this turn; true once each is listed or
 * failed (the step runs again then). add_tools: their enabled tools into
 * a model request. use: the agent.mcp_tool_use event for a model's
 * tool_use of name (input borrowed), NULL when no server offers it.
 * call: run a call the log lists (1 while it runs or waits, 0 when its
 * result was written at once). busy: calls, listings or refreshes in
 * flight. cancel: every call ends with an error result. turn_end: the
 * next turn reads the credentials and lists again. free: everything, no
 * callbacks after. */
bool sched__brain_mcp_ready(struct brain *b);
void sched__brain_mcp_add_tools(struct brain *b, json_t *req);
json_t *sched__brain_mcp_use(struct brain *b, const char *name, json_t *input);
int sched__brain_mcp_call(struct brain *b, json_t *ev);
bool sched__brain_mcp_busy(struct brain *b);
void sched__brain_mcp_cancel(struct brain *b);
void sched__brain_mcp_turn_end(struct brain *b);
void sched__brain_mcp_free(struct brain *b);

#endif
