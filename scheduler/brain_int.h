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
    int kind;             /* 0 built-in (the brain runs it), 1 external (a client or worker) */
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
/* The agent's permission policy type for a toolset tool ("always_allow"
 * when none is set), whether the toolset enables it, and whether name is
 * one of the six sandbox tools the brain runs. */
const char *sched__brain_policy(json_t *agent, const char *tool);
bool sched__brain_tool_enabled(json_t *agent, const char *name);
bool sched__brain_builtin(const char *name);

#endif
