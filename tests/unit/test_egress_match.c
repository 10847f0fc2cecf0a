/* test_egress_match.c - the egress proxy's host rules (managed-agents-api.md
 * 17: an entry matches the request host exactly; "*.example.com" matches
 * subdomains but not example.com itself) and which allowed_hosts entries a
 * credential may carry (a bare host name, an IPv4 address or a "*."
 * wildcard; no URL, port, path or IPv6). */
#include <stdio.h>
#include <string.h>

#include "lib/testlib.h"
#include "pool/pool.h"

static void exact_and_wildcard(void **state)
{
    (void)state;
    assert_true(pool_egress_host_match("api.example.com", "api.example.com"));
    assert_true(pool_egress_host_match("api.example.com", "API.Example.COM"));
    assert_false(pool_egress_host_match("api.example.com", "example.com"));
    assert_false(pool_egress_host_match("api.example.com", "xapi.example.com"));
    assert_false(pool_egress_host_match("example.com", "api.example.com"));
    assert_true(pool_egress_host_match("*.example.com", "api.example.com"));
    assert_true(pool_egress_host_match("*.example.com", "a.b.example.com"));
    assert_false(pool_egress_host_match("*.example.com", "example.com"));
    /* A suffix is not a subdomain. */
    assert_false(pool_egress_host_match("*.example.com", "evilexample.com"));
    assert_false(pool_egress_host_match("*.example.com", "example.com.evil.net"));
    assert_true(pool_egress_host_match("203.0.113.7", "203.0.113.7"));
    assert_false(pool_egress_host_match("203.0.113.7", "203.0.113.70"));
}

static void allowed_host_entries(void **state)
{
    (void)state;
    static const char *const good[] = { "api.example.com", "localhost", "*.example.com",
                                        "203.0.113.7", "x-1.example.com", "A.B.C" };
    static const char *const bad[] = { "", "*", "*.", "*example.com", "https://example.com",
                                       "example.com:443", "example.com/path", "::1",
                                       "[2001:db8::1]", "-a.example.com", "a-.example.com",
                                       "a..example.com", ".example.com", "example.com.",
                                       "ex ample.com", "*.*.example.com", "user@example.com" };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (pool_egress_host_pattern_check(good[i]))
            fail_msg("%s refused: %s", good[i], pool_egress_host_pattern_check(good[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (!pool_egress_host_pattern_check(bad[i]))
            fail_msg("\"%s\" accepted", bad[i]);
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_non_null(pool_egress_host_pattern_check(longname));
}

static void placeholders_are_random(void **state)
{
    char a[POOL_EGRESS_PLACEHOLDER_LEN], b[POOL_EGRESS_PLACEHOLDER_LEN];
    (void)state;
    assert_int_equal(pool_egress_placeholder(a), 0);
    assert_int_equal(pool_egress_placeholder(b), 0);
    assert_int_equal(strlen(a), 7 + 32);
    assert_true(strncmp(a, "wpcred_", 7) == 0);
    assert_string_not_equal(a, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exact_and_wildcard),
        cmocka_unit_test(allowed_host_entries),
        cmocka_unit_test(placeholders_are_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
