/* test_msrv.c - wp-modelserver pieces without sockets: the request
 * parser, body validation, distributions, scripts and reply plans. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/testlib.h"
#include "base/err.h"
#include "tests/modelserver/msrv.h"

static void parser_pieces_and_pipelining(void **state)
{
    const char *in = "POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nX-Api-"
                     "Key: k\r\nContent-Length: 2\r\n\r\n{}GET /health HTTP/1.1\r\n\r\n";
    struct msrv_parser *p = msrv_parser_new(1024);
    struct wp_err err;
    size_t off = 0, len = strlen(in);
    bool done = false;
    int n;
    (void)state;

    /* The header name is split across two reads. */
    n = msrv_parser_feed(p, in, 50, &done, &err);
    assert_int_equal(n, 50);
    assert_false(done);
    off = 50;
    n = msrv_parser_feed(p, in + off, len - off, &done, &err);
    assert_true(done);
    assert_true(n > 0 && (size_t)n < len - off);
    off += (size_t)n;
    assert_string_equal(msrv_parser_req(p)->method, "POST");
    assert_string_equal(msrv_parser_req(p)->path, "/v1/messages");
    assert_true(msrv_parser_req(p)->has_api_key);
    assert_false(msrv_parser_req(p)->has_auth);
    assert_string_equal(msrv_parser_req(p)->body.data, "{}");
    assert_true(msrv_parser_req(p)->keep_alive);
    msrv_parser_next(p);
    n = msrv_parser_feed(p, in + off, len - off, &done, &err);
    assert_true(done);
    assert_int_equal((size_t)n, len - off);
    assert_string_equal(msrv_parser_req(p)->method, "GET");
    assert_string_equal(msrv_parser_req(p)->path, "/health");
    assert_int_equal(msrv_parser_req(p)->body.len, 0);
    msrv_parser_free(p);
}

static void parser_limits_and_errors(void **state)
{
    struct msrv_parser *p = msrv_parser_new(4);
    struct wp_err err;
    bool done;
    const char *big = "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    const char *bad = "NOPE\r\n\r\n";
    (void)state;

    assert_int_equal(msrv_parser_feed(p, big, strlen(big), &done, &err), WP_ETOOBIG);
    assert_non_null(strstr(err.msg, "body"));
    msrv_parser_free(p);
    p = msrv_parser_new(4);
    assert_int_equal(msrv_parser_feed(p, bad, strlen(bad), &done, &err), WP_EPROTO);
    msrv_parser_free(p);
}

static void msgreq_validation(void **state)
{
    struct msrv_msgreq r;
    struct wp_err err;
    const char *ok = "{\"model\":\"m\",\"max_tokens\":10,\"stream\":true,\"messages\":["
                     "{\"role\":\"user\",\"content\":\"run bash please\"},"
                     "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
                     "\"tool_use_id\":\"t\",\"content\":\"ok\"}]}]}";
    (void)state;

    assert_int_equal(msrv_msgreq_parse(ok, strlen(ok), &r, &err), 0);
    assert_string_equal(r.model, "m");
    assert_int_equal(r.max_tokens, 10);
    assert_true(r.stream);
    assert_int_equal(r.n_assistant, 1);
    assert_int_equal(r.n_tool_results, 1);
    assert_string_equal(r.first_user, "run bash please");
    msrv_msgreq_free(&r);

#define BAD(body, text)                                                              \
    do {                                                                             \
        assert_int_equal(msrv_msgreq_parse(body, strlen(body), &r, &err), WP_EINVAL_INPUT); \
        assert_non_null(strstr(err.msg, text));                                      \
    } while (0)
    BAD("{\"max_tokens\":1,\"messages\":[]}", "model");
    BAD("{\"model\":\"m\",\"messages\":[]}", "max_tokens");
    BAD("{\"model\":\"m\",\"max_tokens\":0,\"messages\":[]}", "greater than");
    BAD("{\"model\":\"m\",\"max_tokens\":1}", "messages");
    BAD("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[]}", "at least one");
    BAD("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"bot\",\"content\":\"\"}]}",
        "role");
    BAD("{\"model\":\"m\",\"model\":\"n\"}", "JSON");
    BAD("not json", "JSON");
#undef BAD
}

static void distributions_are_seeded(void **state)
{
    struct msrv_dist d;
    struct msrv_rng a, b;
    double below = 0, xs[2000];
    (void)state;

    assert_int_equal(msrv_dist_parse("lognormal:100:300", &d, NULL), 0);
    msrv_rng_seed(&a, 7, 3);
    msrv_rng_seed(&b, 7, 3);
    for (int i = 0; i < 2000; i++) {
        xs[i] = msrv_dist_sample(&d, &a);
        assert_true(xs[i] == msrv_dist_sample(&d, &b));
        below += xs[i] <= 100;
    }
    /* About half below the median. */
    assert_true(below > 800 && below < 1200);
    assert_int_equal(msrv_dist_parse("uniform:10:20", &d, NULL), 0);
    for (int i = 0; i < 100; i++) {
        double v = msrv_dist_sample(&d, &a);
        assert_true(v >= 10 && v <= 20);
    }
    assert_int_equal(msrv_dist_parse("fixed:5", &d, NULL), 0);
    assert_true(msrv_dist_sample(&d, &a) == 5);
    assert_int_equal(msrv_dist_parse("uniform:20:10", &d, NULL), WP_ECONFIG);
    assert_int_equal(msrv_dist_parse("weird", &d, NULL), WP_ECONFIG);
}

static const char script[] =
    "{\"seed\": 3, \"ttft_ms\": {\"dist\":\"uniform\",\"min_ms\":10,\"max_ms\":20},"
    " \"tokens_per_s\": 1000, \"chunk_tokens\": 2,"
    " \"conversations\": [{\"match\": \"bash\", \"turns\": ["
    "   {\"content\": [{\"type\":\"thinking\",\"thinking\":\"Let me run it.\"},"
    "                  {\"type\":\"text\",\"text\":\"Running ls.\"},"
    "                  {\"type\":\"tool_use\",\"name\":\"bash\","
    "                   \"input\":{\"command\":\"ls -la /tmp\"}}]},"
    "   \"All done.\"]}]}";

static void script_and_plan(void **state)
{
    struct msrv_config cfg;
    struct msrv_msgreq r;
    struct msrv_plan plan;
    struct msrv_rng rng;
    struct wp_err err;
    const struct msrv_turn *t;
    const char *body = "{\"model\":\"mm\",\"max_tokens\":100,\"messages\":["
                       "{\"role\":\"user\",\"content\":\"please use bash\"}]}";
    char all[16384] = "";
    json_t *content;
    (void)state;

    msrv_config_init(&cfg);
    assert_int_equal(msrv_config_load_json(&cfg, script, strlen(script), &err), 0);
    assert_int_equal(cfg.n_convs, 1);
    assert_int_equal(msrv_msgreq_parse(body, strlen(body), &r, &err), 0);
    t = msrv_config_pick(&cfg, &r);
    assert_non_null(t);
    assert_int_equal(t->n_blocks, 3);
    msrv_rng_seed(&rng, cfg.seed, 0);
    assert_int_equal(msrv_plan_build(&cfg, t, &r, &rng, &plan, &err), 0);
    assert_true(plan.ttft_ms >= 10 && plan.ttft_ms <= 20);
    /* Timing: the first segment waits the TTFT, the others 2 tokens at 1000/s. */
    assert_true(plan.segs[0].delay_ms == plan.ttft_ms);
    for (size_t i = 1; i < plan.n; i++)
        assert_true(fabs(plan.segs[i].delay_ms - 2.0) < 1e-9);
    assert_true(fabs(plan.total_ms - (plan.ttft_ms + 2.0 * (double)(plan.n - 1))) < 1e-6);
    assert_string_equal(plan.stop_reason, "tool_use");
    assert_true(plan.n > 3);
    for (size_t i = 0; i < plan.n; i++)
        strncat(all, plan.segs[i].data, sizeof(all) - strlen(all) - 1);
    /* Segment 0 opens the message and carries the first delta. */
    assert_true(strncmp(plan.segs[0].data, "event: message_start\n", 21) == 0);
    assert_non_null(strstr(plan.segs[0].data, "thinking_delta"));
    assert_non_null(strstr(all, "\"signature_delta\""));
    assert_non_null(strstr(all, "\"input_json_delta\",\"partial_json\":\"\"}"));
    assert_non_null(strstr(all, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    content = json_object_get(plan.message, "content");
    assert_int_equal(json_array_size(content), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(content, 1), "text")),
                        "Running ls.");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(content, 2), "input"), "command")),
                        "ls -la /tmp");
    msrv_plan_free(&plan);
    msrv_msgreq_free(&r);

    /* max_tokens cuts the default reply. */
    body = "{\"model\":\"mm\",\"max_tokens\":2,"
           "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    assert_int_equal(msrv_msgreq_parse(body, strlen(body), &r, &err), 0);
    assert_null(msrv_config_pick(&cfg, &r));
    assert_int_equal(msrv_plan_build(&cfg, NULL, &r, &rng, &plan, &err), 0);
    assert_string_equal(plan.stop_reason, "max_tokens");
    assert_int_equal(plan.output_tokens, 2);
    msrv_plan_free(&plan);
    msrv_msgreq_free(&r);
    msrv_config_free(&cfg);
}

static void script_errors(void **state)
{
    struct msrv_config cfg;
    struct wp_err err;
    const char *bad[] = {
        "{\"turns\": [{\"content\": [{\"type\":\"image\"}]}]}",
        "{\"turns\": [{\"content\": [{\"type\":\"tool_use\",\"input\":{}}]}]}",
        "{\"ttft_ms\": {\"dist\":\"lognormal\",\"median_ms\":0}}",
        "{\"turns\": [{\"text\":\"x\",\"fault\":\"explode\"}]}",
        "[1]",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        msrv_config_init(&cfg);
        assert_int_equal(msrv_config_load_json(&cfg, bad[i], strlen(bad[i]), &err), WP_ECONFIG);
        msrv_config_free(&cfg);
    }
}

/* The scripts shipped for benchmarks load (run from the repository root). */
static void shipped_scripts_load(void **state)
{
    const char *files[] = { "tests/modelserver/scripts/bench-bash.json",
                            "tests/modelserver/scripts/faults-mixed.json",
                            "tests/sdk-msrv/script.json" };
    (void)state;

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct msrv_config cfg;
        struct wp_err err = { 0 };
        msrv_config_init(&cfg);
        if (msrv_config_load_file(&cfg, files[i], &err) < 0)
            fail_msg("%s", err.msg);
        assert_true(cfg.n_convs >= 1);
        msrv_config_free(&cfg);
    }
}

/* A conversation of n user/assistant turns after a long system prompt,
 * with a cache_control breakpoint on the last block when mark. */
static json_t *convo(int n, bool mark, size_t system_bytes)
{
    char *sys = malloc(system_bytes + 1);
    memset(sys, 's', system_bytes);
    sys[system_bytes] = '\0';
    json_t *msgs = json_array();
    for (int i = 0; i < n; i++) {
        char t[64];
        snprintf(t, sizeof(t), "question number %d", i);
        json_array_append_new(msgs, json_pack("{s:s, s:[{s:s, s:s}]}", "role", "user", "content",
                                              "type", "text", "text", t));
        if (i + 1 < n)
            json_array_append_new(msgs, json_pack("{s:s, s:[{s:s, s:s}]}", "role", "assistant",
                                                  "content", "type", "text", "text", "an answer"));
    }
    if (mark) {
        json_t *c = json_object_get(json_array_get(msgs, json_array_size(msgs) - 1), "content");
        json_object_set_new(json_array_get(c, 0), "cache_control", json_pack("{s:s}", "type", "ephemeral"));
    }
    json_t *r = json_pack("{s:s, s:i, s:s, s:o}", "model", "m", "max_tokens", 10, "system", sys,
                          "messages", msgs);
    free(sys);
    return r;
}

/* The stand-in bills prompt caching as the Messages API does. */
static void prompt_cache_billing(void **state)
{
    (void)state;
    struct msrv_cache *c = calloc(1, sizeof(*c));
    long rd, cr;
    json_t *r = convo(3, false, 8000);
    msrv_cache_bill(c, r, 1000, &rd, &cr);
    assert_int_equal(rd + cr, 0); /* no cache_control: nothing cached */
    json_decref(r);
    r = convo(3, true, 8000);
    msrv_cache_bill(c, r, 1000, &rd, &cr);
    assert_int_equal(rd, 0);
    assert_true(cr > 2000); /* the whole prompt written */
    long first = cr;
    msrv_cache_bill(c, r, 2000, &rd, &cr);
    assert_int_equal(rd, first); /* the same prompt again: all read */
    assert_int_equal(cr, 0);
    json_decref(r);
    r = convo(4, true, 8000); /* one more turn: the old prefix is read */
    msrv_cache_bill(c, r, 3000, &rd, &cr);
    assert_int_equal(rd, first);
    assert_true(cr > 0 && cr < 50);
    json_decref(r);
    r = convo(16, true, 8000); /* the last hit is more than 20 blocks back */
    msrv_cache_bill(c, r, 4000, &rd, &cr);
    assert_int_equal(rd, 0);
    json_decref(r);
    r = convo(16, true, 8000);
    msrv_cache_bill(c, r, 4000 + 5 * 60 * 1000 + 1, &rd, &cr);
    assert_int_equal(rd, 0); /* expired after 5 minutes */
    json_decref(r);
    r = convo(2, true, 100); /* under 1024 tokens: not cached */
    msrv_cache_bill(c, r, 5000, &rd, &cr);
    assert_int_equal(rd + cr, 0);
    json_decref(r);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parser_pieces_and_pipelining),
        cmocka_unit_test(parser_limits_and_errors),
        cmocka_unit_test(msgreq_validation),
        cmocka_unit_test(distributions_are_seeded),
        cmocka_unit_test(script_and_plan),
        cmocka_unit_test(script_errors),
        cmocka_unit_test(shipped_scripts_load),
        cmocka_unit_test(prompt_cache_billing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
