/* test_brain_log.c - the brain's pure half: what a log says is pending,
 * and the model request it implies (scheduler/brain_log.c). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "lib/testlib.h"
#include "scheduler/brain_int.h"

/* A log from compact JSON lines (each an event with "type" and "id"). */
static json_t *log_of(const char *json)
{
    json_error_t e;
    json_t *l = json_loads(json, 0, &e);
    if (!l)
        fail_msg("bad test log: %s", e.text);
    return l;
}

static const char *agent_json =
    "{\"model\":{\"id\":\"claude-x\"},\"system\":\"be brief\",\"tools\":["
    "{\"type\":\"agent_toolset_20260401\",\"configs\":[{\"name\":\"grep\",\"enabled\":false},"
    "{\"name\":\"write\",\"permission_policy\":{\"type\":\"always_ask\"}}]},"
    "{\"type\":\"custom\",\"name\":\"lookup\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}}]}";

static void a_turn_through_a_tool_call(void **state)
{
    struct sched_brain_state d;
    (void)state;
    json_t *log = log_of("[{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}]");
    sched__brain_derive(log, false, &d);
    assert_true(d.turn_active && d.awaiting_model && !d.model_open && d.npend == 0);

    json_array_append_new(log, json_pack("{s:s, s:s}", "type", "span.model_request_start", "id", "s1"));
    sched__brain_derive(log, false, &d);
    assert_true(d.model_open);
    assert_string_equal(d.open_span, "s1");

    json_array_append_new(log, json_pack("{s:s, s:s, s:s, s:{}, s:s}", "type", "agent.tool_use", "id",
                                         "t1", "name", "bash", "input", "evaluated_permission", "allow"));
    json_array_append_new(log, json_pack("{s:s, s:s, s:b}", "type", "span.model_request_end", "id",
                                         "e1", "is_error", 0));
    sched__brain_derive(log, false, &d);
    assert_false(d.model_open);
    assert_false(d.awaiting_model);
    assert_int_equal(d.npend, 1);
    assert_string_equal(d.pend[0].id, "t1");
    assert_int_equal(d.pend[0].kind, 0); /* the brain runs it */

    json_array_append_new(log, json_pack("{s:s, s:s, s:s}", "type", "agent.tool_result", "id", "r1",
                                         "tool_use_id", "t1"));
    sched__brain_derive(log, false, &d);
    assert_int_equal(d.npend, 0);
    assert_true(d.awaiting_model); /* the results go back to the model */

    /* A failed request does not count as answered. */
    json_array_append_new(log, json_pack("{s:s, s:s}", "type", "span.model_request_start", "id", "s2"));
    json_array_append_new(log, json_pack("{s:s, s:s, s:b}", "type", "span.model_request_end", "id",
                                         "e2", "is_error", 1));
    sched__brain_derive(log, false, &d);
    assert_true(d.awaiting_model && !d.model_open);

    json_array_append_new(log, json_pack("{s:s, s:s}", "type", "span.model_request_start", "id", "s3"));
    json_array_append_new(log, json_pack("{s:s, s:s, s:b}", "type", "span.model_request_end", "id",
                                         "e3", "is_error", 0));
    json_array_append_new(log, json_pack("{s:s, s:s, s:{s:s}}", "type", "session.status_idle", "id",
                                         "i1", "stop_reason", "type", "end_turn"));
    sched__brain_derive(log, false, &d);
    assert_false(d.turn_active || d.awaiting_model);
    json_decref(log);
}

static void external_calls_wait_for_their_answers(void **state)
{
    struct sched_brain_state d;
    (void)state;
    json_t *log = log_of(
        "[{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[]},"
        "{\"type\":\"agent.custom_tool_use\",\"id\":\"c1\",\"name\":\"lookup\",\"input\":{}},"
        "{\"type\":\"agent.tool_use\",\"id\":\"t1\",\"name\":\"write\",\"input\":{},\"evaluated_permission\":\"ask\"},"
        "{\"type\":\"span.model_request_end\",\"id\":\"e1\",\"is_error\":false}]");
    sched__brain_derive(log, false, &d);
    assert_int_equal(d.npend, 2);
    assert_int_equal(d.pend[0].kind, 1);
    assert_int_equal(d.pend[1].kind, 1);
    assert_false(d.idle_for_pending);
    json_array_append_new(log, log_of("{\"type\":\"session.status_idle\",\"id\":\"i1\","
                                      "\"stop_reason\":{\"type\":\"requires_action\"}}"));
    sched__brain_derive(log, false, &d);
    assert_true(d.idle_for_pending && d.turn_active);
    /* Allowed: the brain runs it now; the custom one still waits. */
    json_array_append_new(log, log_of("{\"type\":\"user.tool_confirmation\",\"id\":\"k1\","
                                      "\"tool_use_id\":\"t1\",\"result\":\"allow\"}"));
    sched__brain_derive(log, false, &d);
    assert_int_equal(d.npend, 2);
    for (int i = 0; i < d.npend; i++)
        assert_int_equal(d.pend[i].kind, strcmp(d.pend[i].id, "t1") == 0 ? 0 : 1);
    json_array_append_new(log, log_of("{\"type\":\"user.custom_tool_result\",\"id\":\"x1\","
                                      "\"custom_tool_use_id\":\"c1\"}"));
    json_array_append_new(log, log_of("{\"type\":\"agent.tool_result\",\"id\":\"x2\",\"tool_use_id\":\"t1\"}"));
    sched__brain_derive(log, false, &d);
    assert_int_equal(d.npend, 0);
    assert_true(d.awaiting_model);
    json_decref(log);

    /* Self-hosted: every built-in call is the worker's; a denial answers. */
    log = log_of("[{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[]},"
                 "{\"type\":\"agent.tool_use\",\"id\":\"t1\",\"name\":\"bash\",\"input\":{},\"evaluated_permission\":\"allow\"},"
                 "{\"type\":\"agent.tool_use\",\"id\":\"t2\",\"name\":\"bash\",\"input\":{},\"evaluated_permission\":\"ask\"}]");
    sched__brain_derive(log, true, &d);
    assert_int_equal(d.npend, 2);
    assert_int_equal(d.pend[0].kind, 1);
    json_array_append_new(log, log_of("{\"type\":\"user.tool_confirmation\",\"id\":\"k\","
                                      "\"tool_use_id\":\"t2\",\"result\":\"deny\"}"));
    sched__brain_derive(log, true, &d);
    assert_int_equal(d.npend, 1);
    assert_string_equal(d.pend[0].id, "t1");
    /* A new message instead of the answer drops the waiting call. */
    json_array_append_new(log, log_of("{\"type\":\"user.message\",\"id\":\"u2\",\"content\":[]}"));
    sched__brain_derive(log, true, &d);
    assert_int_equal(d.npend, 0);
    assert_true(d.awaiting_model);
    json_decref(log);
}

static void interrupts_end_the_turn(void **state)
{
    struct sched_brain_state d;
    (void)state;
    json_t *log = log_of("[{\"type\":\"user.interrupt\",\"id\":\"x0\"},"
                         "{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[]},"
                         "{\"type\":\"span.model_request_start\",\"id\":\"s1\"},"
                         "{\"type\":\"user.interrupt\",\"id\":\"x1\"}]");
    sched__brain_derive(log, false, &d);
    assert_true(d.interrupted && d.model_open);
    json_array_append_new(log, log_of("{\"type\":\"span.model_request_end\",\"id\":\"e\",\"is_error\":true}"));
    json_array_append_new(log, log_of("{\"type\":\"session.status_idle\",\"id\":\"i\","
                                      "\"stop_reason\":{\"type\":\"end_turn\"}}"));
    sched__brain_derive(log, false, &d);
    assert_false(d.interrupted || d.turn_active || d.awaiting_model);
    json_decref(log);
}

static const char *txt(json_t *block)
{
    return json_string_value(json_object_get(block, "text"));
}

static void the_request_follows_the_log(void **state)
{
    (void)state;
    json_t *agent = log_of(agent_json);
    json_t *log = log_of(
        "[{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
        "  {\"type\":\"redacted\"}]},"
        "{\"type\":\"span.model_request_start\",\"id\":\"s1\"},"
        "{\"type\":\"agent.message\",\"id\":\"m1\",\"content\":[{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"type\":\"agent.tool_use\",\"id\":\"t1\",\"name\":\"bash\",\"input\":{\"command\":\"ls\"}},"
        "{\"type\":\"agent.tool_use\",\"id\":\"t2\",\"name\":\"write\",\"input\":{}},"
        "{\"type\":\"span.model_request_end\",\"id\":\"e1\",\"is_error\":false},"
        "{\"type\":\"agent.tool_result\",\"id\":\"r1\",\"tool_use_id\":\"t1\",\"is_error\":false,"
        "  \"content\":[{\"type\":\"text\",\"text\":\"f\"}]},"
        "{\"type\":\"user.tool_confirmation\",\"id\":\"k\",\"tool_use_id\":\"t2\",\"result\":\"deny\","
        "  \"deny_message\":\"not now\"},"
        "{\"type\":\"agent.custom_tool_use\",\"id\":\"c1\",\"name\":\"lookup\",\"input\":{}},"
        "{\"type\":\"user.message\",\"id\":\"u2\",\"content\":[{\"type\":\"text\",\"text\":\"c\"}]}]");
    json_t *r = sched__brain_request(log, agent, 1234);
    assert_string_equal(json_string_value(json_object_get(r, "model")), "claude-x");
    assert_int_equal(json_integer_value(json_object_get(r, "max_tokens")), 1234);
    assert_string_equal(json_string_value(json_object_get(r, "system")), "be brief");
    json_t *m = json_object_get(r, "messages");
    /* user, assistant, user (results), assistant (custom), user (synthetic result + c) */
    assert_int_equal(json_array_size(m), 5);
    const char *roles[] = { "user", "assistant", "user", "assistant", "user" };
    for (int i = 0; i < 5; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(m, (size_t)i), "role")),
                            roles[i]);
    json_t *c0 = json_object_get(json_array_get(m, 0), "content");
    assert_int_equal(json_array_size(c0), 1); /* the redacted block stays out */
    assert_string_equal(txt(json_array_get(c0, 0)), "a");
    json_t *c1 = json_object_get(json_array_get(m, 1), "content");
    assert_int_equal(json_array_size(c1), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(c1, 1), "id")), "t1");
    json_t *c2 = json_object_get(json_array_get(m, 2), "content");
    assert_int_equal(json_array_size(c2), 2);
    json_t *deny = json_array_get(c2, 1);
    assert_string_equal(json_string_value(json_object_get(deny, "tool_use_id")), "t2");
    assert_true(json_is_true(json_object_get(deny, "is_error")));
    assert_string_equal(txt(json_array_get(json_object_get(deny, "content"), 0)), "not now");
    /* The custom call was never answered: an error result, first in the
     * message, then the new text. */
    json_t *c4 = json_object_get(json_array_get(m, 4), "content");
    assert_string_equal(json_string_value(json_object_get(json_array_get(c4, 0), "type")), "tool_result");
    assert_string_equal(json_string_value(json_object_get(json_array_get(c4, 0), "tool_use_id")), "c1");
    assert_string_equal(txt(json_array_get(c4, 1)), "c");
    /* Tools: the enabled sandbox tools (grep is off) and the custom one. */
    json_t *tools = json_object_get(r, "tools");
    char names[256] = "";
    for (size_t i = 0; i < json_array_size(tools); i++) {
        strcat(names, json_string_value(json_object_get(json_array_get(tools, i), "name")));
        strcat(names, ",");
    }
    assert_string_equal(names, "bash,read,write,edit,glob,lookup,");
    json_decref(r);
    json_decref(log);

    assert_string_equal(sched__brain_policy(agent, "write"), "always_ask");
    assert_string_equal(sched__brain_policy(agent, "bash"), "always_allow");
    assert_false(sched__brain_tool_enabled(agent, "grep"));
    assert_true(sched__brain_builtin("edit"));
    assert_false(sched__brain_builtin("web_fetch"));
    json_decref(agent);
}

/* MCP calls: the brain runs them even in self-hosted environments; ask
 * waits for a confirmation; results and denials resolve them; both go
 * back to the model as tool_use/tool_result. */
static void mcp_calls_in_the_log(void **state)
{
    struct sched_brain_state d;
    (void)state;
    for (int sh = 0; sh < 2; sh++) {
        json_t *log = log_of(
            "[{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
            "{\"type\":\"agent.mcp_tool_use\",\"id\":\"m1\",\"name\":\"echo\",\"mcp_server_name\":\"s\","
            "\"input\":{\"text\":\"x\"},\"evaluated_permission\":\"allow\"},"
            "{\"type\":\"agent.mcp_tool_use\",\"id\":\"m2\",\"name\":\"danger\",\"mcp_server_name\":\"s\","
            "\"input\":{},\"evaluated_permission\":\"ask\"}]");
        sched__brain_derive(log, sh, &d);
        assert_int_equal(d.npend, 2);
        assert_true(d.pend[0].mcp && d.pend[1].mcp);
        assert_int_equal(d.pend[0].kind, 0); /* run by the brain, self-hosted or not */
        assert_int_equal(d.pend[1].kind, 1); /* waits for the user */
        json_array_append_new(log, json_pack("{s:s, s:s, s:s, s:s}", "type", "user.tool_confirmation", "id",
                                             "c1", "tool_use_id", "m2", "result", "allow"));
        json_array_append_new(log, json_pack("{s:s, s:s, s:s, s:[{s:s, s:s}]}", "type", "agent.mcp_tool_result",
                                             "id", "r1", "mcp_tool_use_id", "m1", "content", "type", "text",
                                             "text", "echo: x"));
        sched__brain_derive(log, sh, &d);
        assert_int_equal(d.npend, 1);
        assert_string_equal(d.pend[0].id, "m2");
        assert_int_equal(d.pend[0].kind, 0); /* confirmed: the brain runs it, self-hosted too */
        json_array_append_new(log, json_pack("{s:s, s:s, s:s, s:b, s:[{s:s, s:s}]}", "type", "agent.mcp_tool_result",
                                             "id", "r2", "mcp_tool_use_id", "m2", "is_error", 1, "content",
                                             "type", "text", "text", "boom"));
        sched__brain_derive(log, sh, &d);
        assert_int_equal(d.npend, 0);
        assert_true(d.awaiting_model);

        json_t *agent = log_of("{\"model\":\"claude-x\"}");
        json_t *req = sched__brain_request(log, agent, 100);
        json_t *msgs = json_object_get(req, "messages");
        assert_int_equal(json_array_size(msgs), 3);
        json_t *uses = json_object_get(json_array_get(msgs, 1), "content");
        assert_string_equal(json_string_value(json_object_get(json_array_get(uses, 0), "name")), "echo");
        assert_string_equal(json_string_value(json_object_get(json_array_get(uses, 0), "id")), "m1");
        json_t *res = json_object_get(json_array_get(msgs, 2), "content");
        assert_int_equal(json_array_size(res), 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(res, 0), "tool_use_id")), "m1");
        assert_false(json_is_true(json_object_get(json_array_get(res, 0), "is_error")));
        assert_true(json_is_true(json_object_get(json_array_get(res, 1), "is_error")));
        json_decref(req);
        json_decref(agent);
        json_decref(log);
    }
    /* a denial is the call's result */
    json_t *log = log_of(
        "[{\"type\":\"user.message\",\"id\":\"u1\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
        "{\"type\":\"agent.mcp_tool_use\",\"id\":\"m1\",\"name\":\"danger\",\"mcp_server_name\":\"s\","
        "\"input\":{},\"evaluated_permission\":\"ask\"},"
        "{\"type\":\"user.tool_confirmation\",\"id\":\"c1\",\"tool_use_id\":\"m1\",\"result\":\"deny\"}]");
    sched__brain_derive(log, false, &d);
    assert_int_equal(d.npend, 0);
    assert_true(d.awaiting_model);
    json_decref(log);
}

static void mcp_toolset_configs(void **state)
{
    (void)state;
    bool on = false;
    json_t *agent = log_of(
        "{\"tools\":[{\"type\":\"mcp_toolset\",\"mcp_server_name\":\"a\","
        "\"default_config\":{\"permission_policy\":{\"type\":\"always_ask\"}},"
        "\"configs\":[{\"name\":\"x\",\"enabled\":false},{\"name\":\"y\",\"permission_policy\":{\"type\":\"always_allow\"}}]},"
        "{\"type\":\"mcp_toolset\",\"mcp_server_name\":\"b\",\"default_config\":{\"enabled\":false},"
        "\"configs\":[{\"name\":\"z\",\"enabled\":true}]}]}");
    assert_string_equal(sched__brain_mcp_config(agent, "a", "w", &on), "always_ask");
    assert_true(on);
    sched__brain_mcp_config(agent, "a", "x", &on);
    assert_false(on);
    assert_string_equal(sched__brain_mcp_config(agent, "a", "y", &on), "always_allow");
    assert_true(on);
    sched__brain_mcp_config(agent, "b", "w", &on);
    assert_false(on);
    assert_string_equal(sched__brain_mcp_config(agent, "b", "z", &on), "always_allow");
    assert_true(on);
    sched__brain_mcp_config(agent, "nobody", "z", &on);
    assert_false(on);
    json_decref(agent);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_turn_through_a_tool_call),
        cmocka_unit_test(external_calls_wait_for_their_answers),
        cmocka_unit_test(interrupts_end_the_turn),
        cmocka_unit_test(the_request_follows_the_log),
        cmocka_unit_test(mcp_calls_in_the_log),
        cmocka_unit_test(mcp_toolset_configs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
