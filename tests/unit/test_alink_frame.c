/* test_alink_frame.c - agentlink frame codec and message validation, pure
 * (no sockets), plus the doublestar matcher of the glob tool. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/testlib.h"
#include "agentlink/agentlink.h"
#include "agentlink/alink_int.h"
#include "base/buf.h"
#include "base/err.h"

static void frame(struct wp_buf *b, const char *json)
{
    uint32_t n = (uint32_t)strlen(json);
    uint8_t h[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};

    assert_int_equal(wp_buf_append(b, h, 4), 0);
    assert_int_equal(wp_buf_append(b, json, n), 0);
}

static void decode_need_more_and_whole(void **state)
{
    struct wp_buf b;
    const uint8_t *p = NULL;
    size_t plen = 0;
    (void)state;

    wp_buf_init(&b, 1 << 20);
    frame(&b, "{\"t\":\"hello\",\"v\":1}");
    /* Every strict prefix (truncated frame) needs more, and never reads past len. */
    for (size_t i = 0; i < b.len; i++) {
        uint8_t *copy = malloc(i ? i : 1);
        memcpy(copy, b.data, i);
        assert_int_equal(alink_frame_decode(copy, i, 1024, &p, &plen), 0);
        free(copy);
    }
    assert_int_equal(alink_frame_decode((uint8_t *)b.data, b.len, 1024, &p, &plen), (int)b.len);
    assert_int_equal(plen, b.len - 4);
    assert_ptr_equal(p, (uint8_t *)b.data + 4);
    wp_buf_free(&b);
}

static void decode_oversized(void **state)
{
    uint8_t h[4] = {0, 0x10, 0, 1}; /* 1 MiB + 1 */
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    const uint8_t *p;
    size_t plen = 0;
    (void)state;

    assert_int_equal(alink_frame_decode(h, 4, 1 << 20, &p, &plen), WP_ETOOBIG);
    assert_int_equal(plen, (1u << 20) + 1);
    assert_int_equal(alink_frame_decode(huge, 4, 1 << 20, &p, &plen), WP_ETOOBIG);
    assert_int_equal(plen, 0xffffffffu);
    /* Exactly at the maximum is fine (header only: need more). */
    uint8_t at[4] = {0, 0x10, 0, 0};
    assert_int_equal(alink_frame_decode(at, 4, 1 << 20, &p, &plen), 0);
}

static void decode_interleaved(void **state)
{
    struct wp_buf b;
    const uint8_t *p;
    size_t plen, off = 0;
    int n = 0, rc;
    (void)state;

    wp_buf_init(&b, 1 << 20);
    frame(&b, "{\"t\":\"cancel\",\"id\":1}");
    frame(&b, "{}");
    frame(&b, "{\"t\":\"cancel\",\"id\":3}");
    while ((rc = alink_frame_decode((uint8_t *)b.data + off, b.len - off, 1024, &p, &plen)) > 0) {
        off += (size_t)rc;
        n++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(n, 3);
    assert_int_equal(off, b.len);
    wp_buf_free(&b);
}

static void encode_roundtrip(void **state)
{
    struct wp_buf b;
    struct alink_msg m;
    struct wp_err err;
    const uint8_t *p;
    size_t plen;
    json_t *r;
    (void)state;

    wp_buf_init(&b, 1 << 20);
    r = alink_msg_result(42, "a\0b\xff", 4, true);
    assert_int_equal(alink_frame_encode(&b, r, 1024, &err), 0);
    json_decref(r);
    assert_int_equal(alink_frame_decode((uint8_t *)b.data, b.len, 1024, &p, &plen), (int)b.len);
    assert_int_equal(alink_msg_parse(p, plen, &m, NULL, &err), 0);
    assert_int_equal(m.type, ALINK_MSG_RESULT);
    assert_int_equal(m.id, 42);
    assert_true(m.is_error);
    /* NUL and the invalid byte became U+FFFD. */
    assert_int_equal(m.text_len, 8);
    assert_memory_equal(m.text, "a\xef\xbf\xbd" "b\xef\xbf\xbd", 8);
    alink_msg_free(&m);
    /* Over the maximum: refused, nothing appended. */
    size_t before = b.len;
    char big[2000];
    memset(big, 'x', sizeof(big));
    r = alink_msg_chunk(1, "output", big, sizeof(big));
    assert_int_equal(alink_frame_encode(&b, r, 1024, &err), WP_ETOOBIG);
    assert_int_equal(b.len, before);
    json_decref(r);
    wp_buf_free(&b);
}

static void expect_bad(const char *json, uint64_t want_id)
{
    struct alink_msg m;
    struct wp_err err;
    uint64_t id = 99;

    if (alink_msg_parse((const uint8_t *)json, strlen(json), &m, &id, &err) != WP_EPROTO)
        fail_msg("accepted: %s", json);
    assert_null(m.json);
    assert_int_equal(id, want_id);
}

static void expect_ok(const char *json, enum alink_msg_type t)
{
    struct alink_msg m;
    struct wp_err err;

    if (alink_msg_parse((const uint8_t *)json, strlen(json), &m, NULL, &err) != 0)
        fail_msg("rejected: %s: %s", json, err.msg);
    assert_int_equal(m.type, t);
    alink_msg_free(&m);
}

static void message_validation(void **state)
{
    (void)state;
    expect_ok("{\"t\":\"hello\",\"v\":1}", ALINK_MSG_HELLO);
    expect_ok("{\"t\":\"attach\",\"id\":1,\"session\":\"s\",\"env\":{\"A\":\"b\"},"
              "\"workdir\":\"/w\",\"hostname\":\"h\",\"seed\":\"00\"}",
              ALINK_MSG_ATTACH);
    expect_ok("{\"t\":\"call\",\"id\":2,\"tool\":\"bash\",\"input\":{},\"timeout_ms\":5,"
              "\"stream\":true}",
              ALINK_MSG_CALL);
    expect_ok("{\"t\":\"chunk\",\"id\":2,\"stream\":\"output\",\"data\":\"x\"}", ALINK_MSG_CHUNK);
    expect_ok("{\"t\":\"result\",\"id\":2,\"content\":\"\",\"is_error\":false}", ALINK_MSG_RESULT);
    expect_ok("{\"t\":\"cancel\",\"id\":2}", ALINK_MSG_CANCEL);
    expect_ok("{\"t\":\"error\",\"code\":\"x\"}", ALINK_MSG_ERROR);

    expect_bad("", 0);
    expect_bad("nul\0", 0);
    expect_bad("[]", 0);
    expect_bad("{\"t\":1}", 0);
    expect_bad("{\"v\":1}", 0);
    expect_bad("{\"t\":\"hello\"}", 0);
    expect_bad("{\"t\":\"hello\",\"v\":0}", 0);
    expect_bad("{\"t\":\"hello\",\"v\":1,\"v\":1}", 0);
    expect_bad("{\"t\":\"zap\",\"id\":4}", 4);
    expect_bad("{\"t\":\"call\",\"id\":0,\"tool\":\"bash\",\"input\":{}}", 0);
    expect_bad("{\"t\":\"call\",\"id\":1.5,\"tool\":\"bash\",\"input\":{}}", 0);
    expect_bad("{\"t\":\"call\",\"id\":3,\"input\":{}}", 3);
    expect_bad("{\"t\":\"call\",\"id\":3,\"tool\":\"bash\"}", 3);
    expect_bad("{\"t\":\"call\",\"id\":3,\"tool\":\"bash\",\"input\":{},\"timeout_ms\":-1}", 3);
    expect_bad("{\"t\":\"call\",\"id\":3,\"tool\":\"bash\",\"input\":{},\"stream\":1}", 3);
    expect_bad("{\"t\":\"attach\",\"id\":5}", 5);
    expect_bad("{\"t\":\"attach\",\"id\":5,\"session\":\"s\",\"env\":[]}", 5);
    expect_bad("{\"t\":\"attach\",\"id\":5,\"session\":\"s\",\"env\":{\"A\":1}}", 5);
    expect_bad("{\"t\":\"attach\",\"id\":5,\"session\":\"s\",\"env\":{\"\":\"x\"}}", 5);
    expect_bad("{\"t\":\"attach\",\"id\":5,\"session\":\"s\",\"workdir\":7}", 5);
    expect_bad("{\"t\":\"result\",\"id\":6}", 6);
    expect_bad("{\"t\":\"result\",\"id\":6,\"content\":\"\",\"is_error\":\"no\"}", 6);
    expect_bad("{\"t\":\"chunk\",\"id\":6}", 6);
    expect_bad("{\"t\":\"cancel\"}", 0);
    expect_bad("{\"t\":\"error\"}", 0);
    expect_bad("{\"t\":\"call\",\"id\":3,\"tool\":\"bash\",\"input\":{\"command\":\"a\\u0000\"}}", 0);
}

static void glob_matching(void **state)
{
    (void)state;
    assert_true(alink__glob_match("*.c", "a.c"));
    assert_false(alink__glob_match("*.c", "d/a.c"));
    assert_true(alink__glob_match("**/*.c", "a.c"));
    assert_true(alink__glob_match("**/*.c", "d/e/a.c"));
    assert_true(alink__glob_match("src/**", "src/a/b"));
    assert_true(alink__glob_match("src/**/b", "src/b"));
    assert_true(alink__glob_match("src/**/**/b", "src/x/y/b"));
    assert_false(alink__glob_match("src/**/b", "lib/b"));
    assert_true(alink__glob_match("a?c/[xy].go", "abc/x.go"));
    assert_false(alink__glob_match("a/*", "a"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(decode_need_more_and_whole),
        cmocka_unit_test(decode_oversized),
        cmocka_unit_test(decode_interleaved),
        cmocka_unit_test(encode_roundtrip),
        cmocka_unit_test(message_validation),
        cmocka_unit_test(glob_matching),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
