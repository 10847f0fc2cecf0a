/* test_sched_multipart.c - the strict multipart/form-data parser
 * (scheduler/multipart.c) and the file resource checks of files.c:
 * what the SDKs send parses, and every malformed body is refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/testlib.h"
#include "scheduler/sched_int.h"

#define CT "multipart/form-data; boundary=XyZ"

static int parse(const char *ct, const char *body, size_t len, struct sched_mp_part *p,
                 const char **why)
{
    *why = NULL;
    int n = sched__mp_parse(ct, body, len, p, 4, why);
    if (n < 0)
        assert_non_null(*why);
    return n;
}

static void parses_what_clients_send(void **state)
{
    (void)state;
    struct sched_mp_part p[4];
    const char *why;
    /* Binary content holding CR, LF, NUL and a near-boundary. */
    static const char body[] =
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"a \\\"q\\\".bin\"\r\n"
        "Content-Type: application/octet-stream\r\n"
        "\r\n"
        "a\0b\r\n--XyQ\r\n-\r\n"
        "--XyZ\r\n"
        "content-disposition: form-data; name=expires_in_seconds\r\n"
        "\r\n"
        "3600\r\n"
        "--XyZ--\r\n";
    int n = parse(CT, body, sizeof(body) - 1, p, &why);
    assert_int_equal(n, 2);
    assert_string_equal(p[0].name, "file");
    assert_true(p[0].has_filename);
    assert_string_equal(p[0].filename, "a \"q\".bin");
    assert_string_equal(p[0].content_type, "application/octet-stream");
    assert_int_equal(p[0].len, 13);
    assert_memory_equal(p[0].data, "a\0b\r\n--XyQ\r\n-", 13);
    assert_string_equal(p[1].name, "expires_in_seconds");
    assert_false(p[1].has_filename);
    assert_int_equal(p[1].len, 4);
    assert_memory_equal(p[1].data, "3600", 4);
    /* A quoted boundary, an empty part, no CRLF after the close. */
    static const char b2[] = "--a'b c\r\nContent-Disposition: form-data; name=\"file\"; "
                             "filename=\"e\"\r\n\r\n\r\n--a'b c--";
    n = parse("Multipart/Form-Data;boundary=\"a'b c\"", b2, sizeof(b2) - 1, p, &why);
    assert_int_equal(n, 1);
    assert_int_equal(p[0].len, 0);
}

static void refuses_malformed(void **state)
{
    (void)state;
    struct sched_mp_part p[4];
    const char *why;
    static const char ok_part[] =
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\nx\r\n";
    struct {
        const char *ct, *body;
    } bad[] = {
        {"application/json", "{}"},
        {"multipart/form-data", "--\r\n"},
        {"multipart/form-data; boundary=", "--\r\n"},
        {"multipart/form-data; boundary=\"unterminated", "x"},
        {"multipart/form-data; boundary=01234567890123456789012345678901234567890123456789"
         "012345678901234567890",
         "x"},
        {"multipart/form-data; boundary=a<b", "x"},
        {"multipart/form-dataX; boundary=XyZ", "x"},
        {CT, ""},
        {CT, "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nno close"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--XyZ"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--XyZ--junk"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--XyZ--\r\nmore"},
        {CT, "--XyZ\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Disposition: "
             "form-data; name=\"g\"\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\nbogus line\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: "
             "base64\r\n\r\nx\r\n--XyZ--"},
        {CT, "--XyZ\nContent-Disposition: form-data; name=\"f\"\n\nx\n--XyZ--"},
        {CT, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n"},
        {CT, "--XyZ--\r\n--XyZ--"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int n = parse(bad[i].ct, bad[i].body, strlen(bad[i].body), p, &why);
        if (n >= 0)
            fprintf(stderr, "case %zu parsed (%d parts)\n", i, n);
        assert_int_equal(n, -1);
    }
    /* More parts than room. */
    char many[1024];
    size_t used = 0;
    for (int i = 0; i < 5; i++)
        used += (size_t)snprintf(many + used, sizeof(many) - used, "%s", ok_part);
    used += (size_t)snprintf(many + used, sizeof(many) - used, "--XyZ--");
    assert_int_equal(parse(CT, many, used, p, &why), -1);
    /* A header line longer than the bound. */
    char *longh = malloc(4096);
    int ll = snprintf(longh, 4096, "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\nX: %02000d"
                                   "\r\n\r\nx\r\n--XyZ--", 0);
    assert_int_equal(parse(CT, longh, (size_t)ll, p, &why), -1);
    free(longh);
    /* An empty body: zero parts is a valid (if useless) form. */
    assert_int_equal(parse(CT, "--XyZ--", 7, p, &why), 0);
}

static void mount_paths(void **state)
{
    (void)state;
    char out[512];
    json_t *fid = json_string("file_abc");
    json_t *bad_id = json_string("../etc");
    assert_null(sched__file_mount_path(fid, NULL, out, sizeof(out)));
    assert_string_equal(out, "/mnt/session/uploads/file_abc");
    assert_null(sched__file_mount_path(fid, json_null(), out, sizeof(out)));
    assert_non_null(sched__file_mount_path(bad_id, NULL, out, sizeof(out)));
    const char *good[] = {"/data/in.csv", "/a", "/workspace/x y.txt", NULL};
    const char *bad[] = {"relative", "/", "/a/", "/a//b", "/a/./b", "/a/../b", "/a/..",
                         "/proc/x", "/sys", "/dev/null", "/.wp/hands", "/run/warmpool/hands.sock",
                         "/a\nb", "", NULL};
    for (int i = 0; good[i]; i++) {
        json_t *mp = json_string(good[i]);
        assert_null(sched__file_mount_path(fid, mp, out, sizeof(out)));
        assert_string_equal(out, good[i]);
        json_decref(mp);
    }
    for (int i = 0; bad[i]; i++) {
        json_t *mp = json_string(bad[i]);
        if (!sched__file_mount_path(fid, mp, out, sizeof(out)))
            fprintf(stderr, "accepted %s\n", bad[i]);
        assert_non_null(sched__file_mount_path(fid, mp, out, sizeof(out)));
        json_decref(mp);
    }
    json_decref(fid);
    json_decref(bad_id);
    assert_true(sched__file_id_valid("file_0123abcXYZ"));
    assert_false(sched__file_id_valid("file_"));
    assert_false(sched__file_id_valid("file_a/b"));
    assert_false(sched__file_id_valid("sesn_abc"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_what_clients_send),
        cmocka_unit_test(refuses_malformed),
        cmocka_unit_test(mount_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
