/* test_relay_tls.c - the agentlink relay beyond loopback is mutual TLS
 * (issue 17). Real processes: Redis, a node, a scheduler with the brain,
 * the model stand-in, all inside a network namespace this test makes, in
 * which the node's relay listens on 10.251.0.1, an address of a veth
 * there: not loopback by the rule (127.0.0.0/8, ::1), so TLS by
 * default. (On one host the kernel still carries packets to a local
 * address over lo: what this tests is the rule and what is on the wire.)
 * Certificates come from deploy/relay-certs.sh, the operators' helper. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ev.h>

#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"
#include "pool/pool.h"

#define KEY "sk-acme"
#define ADDR "10.251.0.1"

static struct th_redis R;
static struct th_sched S;
static struct msrv_proc M;
static char *DIR_, CERTS[1100], ROGUE[1100];
static pid_t NODE;
static int RELAY_PORT;
static char ENV_ID[64], AGENT_ID[64], MURL[128];

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":5,\"tokens_per_s\":500,\"chunk_tokens\":4,"
    "\"conversations\":["
    " {\"match\":\"run bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"echo secret-$((6*7))-out\"}}]},"
    "   {\"text\":\"Done.\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int certs(const char *dir, const char *args)
{
    char out[512], path[4300];
    const char *b = th_build_dir();
    /* BUILD is <repo>/build or <repo>/build/asan */
    snprintf(path, sizeof(path), "%s/../deploy/relay-certs.sh", b);
    if (access(path, X_OK) != 0)
        snprintf(path, sizeof(path), "%s/../../deploy/relay-certs.sh", b);
    return th_sh(out, sizeof(out), "%s %s %s >/dev/null", path, dir, args);
}

/* The scheduler's relay identity as flags (static strings). */
static const char *flag(const char *dir, const char *file)
{
    static char buf[8][1200];
    static int i;
    char *b = buf[i++ % 8];
    snprintf(b, sizeof(buf[0]), "%s/%s", dir, file);
    return b;
}

static int group_setup(void **state)
{
    char tmpl[1024], env[1200], out[256], log[1100], st[1100];
    (void)state;

    /* Our own network namespace: lo, and a veth pair whose one end holds
     * the relay's non-loopback address. Nothing leaves it. */
    if (unshare(CLONE_NEWNET) < 0)
        return -1;
    if (th_sh(out, sizeof(out),
              "ip link set lo up && ip link add wprt0 type veth peer name wprt1 && "
              "ip addr add " ADDR "/24 dev wprt0 && ip link set wprt0 up && ip link set wprt1 up") != 0)
        return -1;
    DIR_ = th_tmpdir("relaytls");
    snprintf(CERTS, sizeof(CERTS), "%s/certs", DIR_);
    snprintf(ROGUE, sizeof(ROGUE), "%s/rogue", DIR_);
    if (certs(CERTS, "ca") || certs(CERTS, "node n1 " ADDR) || certs(CERTS, "scheduler s1") ||
        certs(CERTS, "node elsewhere 10.251.0.9") || certs(ROGUE, "ca") ||
        certs(ROGUE, "scheduler s1") || certs(ROGUE, "node n1 " ADDR))
        return -1;

    if (th_redis_start(&R, 0) < 0)
        return -1;
    if (th_model_spawn_script(&M, DIR_, script, NULL, MURL, sizeof(MURL)) < 0)
        return -1;
    if (th_sched_start(&S, R.port, "--model-url", MURL, "--relay-tls-cert", flag(CERTS, "s1.pem"),
                       "--relay-tls-key", flag(CERTS, "s1.key"), "--relay-tls-ca",
                       flag(CERTS, "ca.pem"), NULL) < 0)
        return -1;
    json_t *ag = th_call(S.port, KEY, "POST", "/v1/agents",
                         "{\"name\":\"t\",\"model\":\"claude-test\","
                         "\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}", 200);
    json_t *en = th_call(S.port, KEY, "POST", "/v1/environments",
                         "{\"name\":\"tls-env\",\"config\":{\"type\":\"cloud\"},"
                         "\"metadata\":{\"warmpool.pool\":\"tlspool\"}}", 200);
    if (!ag || !en)
        return -1;
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(ag);
    json_decref(en);

    if (th_hands_template(DIR_, "tlspool", "box", tmpl, sizeof(tmpl)) < 0)
        return -1;
    snprintf(env, sizeof(env), "%s:1:1", tmpl);
    snprintf(log, sizeof(log), "%s/node-n1.log", DIR_);
    snprintf(st, sizeof(st), "%s/state-n1", DIR_);
    NODE = th_node_start("n1", R.port, st, log, "--env", env, "--listen", ADDR ":0",
                         "--relay-tls-cert", flag(CERTS, "n1.pem"), "--relay-tls-key",
                         flag(CERTS, "n1.key"), "--relay-tls-ca", flag(CERTS, "ca.pem"),
                         (char *)NULL);
    if (NODE < 0 || !th_wait_hot(R.port, "tlspool", 1, 60))
        return -1;
    th_sh(out, sizeof(out), "redis-cli -p %d hget wp:node:n1 relay", R.port);
    if (strncmp(out, ADDR ":", strlen(ADDR) + 1) != 0)
        return -1;
    RELAY_PORT = atoi(out + strlen(ADDR) + 1);
    return RELAY_PORT > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = th_sched_stop(&S) == 0 ? 0 : -1, st = 0;
    if (NODE > 0) {
        /* A clean exit (under ASan: no leak of the relay's TLS pumps). */
        kill(NODE, SIGTERM);
        waitpid(NODE, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "node exit status %d; its log:\n", st);
            char cmd[1200];
            snprintf(cmd, sizeof(cmd), "tail -30 %s/node-n1.log >&2", DIR_);
            if (system(cmd) != 0)
                fprintf(stderr, "(no node log)\n");
            rc = -1;
        }
    }
    msrv_stop(&M);
    th_redis_stop(&R);
    pool_relay_tls_teardown();
    th_rmtree(DIR_);
    free(DIR_);
    return rc;
}

/* ---- a sniffer on lo: every TCP payload to or from a port ---- */

static int sniff_open(void)
{
    int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK, htons(ETH_P_IP));
    assert_true(fd >= 0);
    struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP),
                               .sll_ifindex = (int)if_nametoindex("lo") };
    assert_int_equal(bind(fd, (struct sockaddr *)&sll, sizeof(sll)), 0);
    int big = 16 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
    return fd;
}

/* Appends payloads of segments with port as source or destination to
 * out (cap); the first payload sent to port goes to first (once). */
static size_t sniff_drain(int fd, int port, char *out, size_t cap, unsigned char *first)
{
    unsigned char pkt[70000];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, pkt, sizeof(pkt), 0);
        if (n <= 0)
            break;
        struct iphdr *ip = (struct iphdr *)pkt;
        if (n < (ssize_t)sizeof(*ip) || ip->protocol != IPPROTO_TCP)
            continue;
        size_t ihl = (size_t)ip->ihl * 4, tot = ntohs(ip->tot_len);
        struct tcphdr *tcp = (struct tcphdr *)(pkt + ihl);
        size_t thl = (size_t)tcp->doff * 4;
        if (tot > (size_t)n || ihl + thl > tot)
            continue;
        if (ntohs(tcp->source) != port && ntohs(tcp->dest) != port)
            continue;
        size_t plen = tot - ihl - thl;
        if (plen && ntohs(tcp->dest) == port && *first == 0)
            *first = pkt[ihl + thl];
        if (len + plen < cap) {
            memcpy(out + len, pkt + ihl + thl, plen);
            len += plen;
        }
    }
    return len;
}

/* ---- tests ---- */

/* A session's bash call goes to the sandbox through the relay on
 * 10.251.0.1, over mutual TLS: the result comes back, and no byte of the
 * command, its output or the route frame is readable on the wire, while
 * the same capture does read the plaintext API traffic. */
/* A new session on scheduler port runs "please run bash": its
 * agent.tool_result (owned), or NULL after 30 s. */
static json_t *bash_turn(int port, char *sid, size_t cap)
{
    char body[256], path[128];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT_ID, ENV_ID);
    json_t *s = th_call(port, KEY, "POST", "/v1/sessions", body, 200);
    assert_non_null(s);
    snprintf(sid, cap, "%s", s_(s, "id"));
    json_decref(s);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    json_decref(th_call(port, KEY, "POST", path,
                        "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\","
                        "\"text\":\"please run bash\"}]}]}", 200));
    json_t *res = NULL;
    for (int i = 0; i < 300 && !res; i++, th_msleep(100)) {
        snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=100", sid);
        json_t *h = th_call(port, KEY, "GET", path, NULL, 200);
        json_t *data = json_object_get(h, "data");
        for (size_t k = 0; k < json_array_size(data); k++)
            if (!strcmp(s_(json_array_get(data, k), "type"), "agent.tool_result"))
                res = json_incref(json_array_get(data, k));
        json_decref(h);
    }
    return res;
}

static void tool_call_over_mutual_tls(void **state)
{
    (void)state;
    int sn = sniff_open();
    char sid[64], path[128];
    json_t *res = bash_turn(S.port, sid, sizeof(sid));
    assert_non_null(res);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_string_equal(s_(json_array_get(json_object_get(res, "content"), 0), "text"),
                        "secret-42-out");
    json_decref(res);

    static char relay[1 << 20], api[1 << 20];
    unsigned char first = 0, api_first = 0;
    size_t n = sniff_drain(sn, RELAY_PORT, relay, sizeof(relay), &first);
    close(sn);
    /* again, for the API port (a new capture of the next request) */
    sn = sniff_open();
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_decref(th_call(S.port, KEY, "GET", path, NULL, 200));
    size_t na = sniff_drain(sn, S.port, api, sizeof(api), &api_first);
    close(sn);
    print_message("# relay bytes captured %zu, first client byte 0x%02x\n", n, first);
    assert_true(na > 0 && memmem(api, na, sid, strlen(sid)));     /* the sniffer reads plaintext */
    assert_true(n > 1000);                                        /* and saw the relay */
    assert_int_equal(first, 0x16);                                /* a TLS handshake record */
    assert_null(memmem(relay, n, "secret-", 7));                  /* not the output */
    assert_null(memmem(relay, n, "echo ", 5));                    /* nor the command */
    assert_null(memmem(relay, n, "\"route\"", 7));                /* nor the route frame */
    assert_null(memmem(relay, n, "tlspool", 7));
}

/* A scheduler with no relay identity: the session's tool call fails with
 * an error that names what to configure; nothing goes out in plaintext. */
static void scheduler_without_identity_says_so(void **state)
{
    (void)state;
    struct th_sched bare;
    char sid[64];
    assert_int_equal(th_sched_start(&bare, R.port, "--model-url", MURL, NULL), 0);
    json_t *res = bash_turn(bare.port, sid, sizeof(sid));
    th_sched_stop(&bare);
    assert_non_null(res);
    const char *text = s_(json_array_get(json_object_get(res, "content"), 0), "text");
    print_message("# tool result without a relay identity: %s\n", text);
    assert_true(json_is_true(json_object_get(res, "is_error")));
    assert_non_null(strstr(text, "relay-tls-cert"));
    json_decref(res);
}

/* ---- pool_connect from this process, to the node or to a fake relay ---- */

struct got {
    bool done;
    int status;
    int fd;
    char msg[256];
};

static void got_cb(void *ctx, int status, int fd, const struct wp_err *err)
{
    struct got *g = ctx;
    g->done = true;
    g->status = status;
    g->fd = fd;
    snprintf(g->msg, sizeof(g->msg), "%s", err ? err->msg : "");
}

static void use_identity(const char *dir, const char *name, const char *ca_dir)
{
    struct pool_relay_tls_conf c = { .mode = POOL_RELAY_TLS_AUTO };
    struct wp_err err;
    snprintf(c.cert, sizeof(c.cert), "%s/%s.pem", dir, name);
    snprintf(c.key, sizeof(c.key), "%s/%s.key", dir, name);
    snprintf(c.ca, sizeof(c.ca), "%s/ca.pem", ca_dir);
    assert_int_equal(pool_relay_tls_setup(&c, &err), 0);
}

static struct got dial(int port)
{
    struct ev_loop *loop = ev_loop_new(0);
    struct pool_claim_result res = { .token = 999999 };
    struct got g = { .fd = -1 };
    struct wp_err err;
    snprintf(res.relay, sizeof(res.relay), ADDR ":%d", port);
    snprintf(res.sandbox, sizeof(res.sandbox), "sbx_nosuch");
    snprintf(res.rkey, sizeof(res.rkey), "0123456789abcdef0123456789abcdef");
    if (pool_connect(loop, &res, "tlspool", got_cb, &g, &err) < 0) {
        g.done = true;
        g.status = err.code;
        snprintf(g.msg, sizeof(g.msg), "%s", err.msg);
    }
    for (int i = 0; i < 1000 && !g.done; i++)
        ev_run(loop, EVRUN_ONCE);
    if (g.fd >= 0)
        close(g.fd);
    pool_relay_tls_teardown(); /* the pumps on this loop go with it */
    ev_loop_destroy(loop);
    return g;
}

static int node_log_count(const char *needle)
{
    char out[32];
    th_sh(out, sizeof(out), "grep -c '%s' %s/node-n1.log", needle, DIR_);
    return atoi(out);
}

/* The node's relay with a scheduler certificate of its CA: TLS comes up
 * and the node itself answers the route (no such lease). With a
 * certificate from another CA, or none, the node refuses the handshake. */
static void node_refuses_other_ca(void **state)
{
    (void)state;
    use_identity(CERTS, "s1", CERTS);
    struct got g = dial(RELAY_PORT);
    assert_true(g.done);
    assert_int_equal(g.status, WP_ENOTFOUND); /* the node's own answer, through TLS */

    int before = node_log_count("relay TLS handshake with");
    use_identity(ROGUE, "s1", CERTS); /* trusts the node, but is not trusted */
    g = dial(RELAY_PORT);
    assert_true(g.status < 0 && g.status != WP_ENOTFOUND);
    print_message("# another CA's client: %s\n", g.msg);
    assert_non_null(strstr(g.msg, "unknown ca")); /* the node's alert */
    for (int i = 0; i < 50 && node_log_count("relay TLS handshake with") <= before; i++)
        th_msleep(50);
    assert_true(node_log_count("relay TLS handshake with") > before);

    /* No relay TLS identity at all: refused here, before dialling. */
    struct pool_relay_tls_conf none = { .mode = POOL_RELAY_TLS_AUTO };
    assert_int_equal(pool_relay_tls_setup(&none, NULL), 0);
    g = dial(RELAY_PORT);
    assert_int_equal(g.status, WP_ECONFIG);
    assert_non_null(strstr(g.msg, "not on loopback"));
}

/* A plaintext client: the route frame gets no route answer, only the
 * end of the connection (or a TLS alert). */
static void plaintext_client_gets_nothing(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)RELAY_PORT) };
    inet_pton(AF_INET, ADDR, &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char route[] = "{\"t\":\"route\",\"env\":\"tlspool\",\"sandbox\":\"x\",\"token\":\"1\","
                         "\"key\":\"0123456789abcdef0123456789abcdef\"}";
    unsigned char hdr[4] = { 0, 0, 0, (unsigned char)(sizeof(route) - 1) };
    assert_int_equal(write(fd, hdr, 4), 4);
    assert_int_equal(write(fd, route, sizeof(route) - 1), (ssize_t)sizeof(route) - 1);
    char buf[4096];
    int n = th_read_all(fd, buf, sizeof(buf), 5000);
    close(fd);
    assert_true(n == 0 || (unsigned char)buf[0] == 0x15); /* EOF or a TLS alert */
    assert_null(memmem(buf, (size_t)(n > 0 ? n : 0), "route", 5));
}

/* The scheduler's side checks the node: a relay whose certificate names
 * another address, or comes from another CA, is refused by the client.
 * The fake relays are `openssl s_server` on the relay address. */
static void client_checks_the_node(void **state)
{
    (void)state;
    const char *cases[][3] = {
        { CERTS, "elsewhere", "IP address mismatch" },
        { ROGUE, "n1", "unable to get local issuer" },
    };
    for (int i = 0; i < 2; i++) {
        int port = th_free_port();
        pid_t pid = fork();
        if (pid == 0) {
            char p[16], cert[1200], key[1200];
            snprintf(p, sizeof(p), "%d", port);
            snprintf(cert, sizeof(cert), "%s/%s.pem", cases[i][0], cases[i][1]);
            snprintf(key, sizeof(key), "%s/%s.key", cases[i][0], cases[i][1]);
            int dn = open("/dev/null", O_RDWR);
            dup2(dn, 0);
            dup2(dn, 1);
            dup2(dn, 2);
            execlp("openssl", "openssl", "s_server", "-accept", p, "-cert", cert, "-key", key,
                   "-tls1_3", "-quiet", (char *)NULL);
            _exit(127);
        }
        /* listening? (it binds the wildcard; a probe that just closes is
         * a failed handshake to it, and it goes on accepting) */
        bool up = false;
        for (int k = 0; k < 100 && !up; k++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            up = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
            close(fd);
            if (!up)
                th_msleep(50);
        }
        assert_true(up);
        use_identity(CERTS, "s1", CERTS);
        struct got g = dial(port);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        print_message("# fake relay with %s/%s: %s\n", i ? "rogue" : "certs", cases[i][1], g.msg);
        assert_true(g.status < 0);
        assert_non_null(strstr(g.msg, "relay TLS"));
        assert_non_null(strstr(g.msg, cases[i][2]));
    }
}

/* Start-up: a node told to listen beyond loopback without TLS material
 * refuses to start and says what to do; `relay-tls off` starts it, warned.
 * Half a relay identity is refused by the scheduler too. */
static void startup_rules(void **state)
{
    (void)state;
    char out[2048], bin[4300], st[1100];
    snprintf(bin, sizeof(bin), "%s/warmpool-node", th_build_dir());
    snprintf(st, sizeof(st), "%s/state-x", DIR_);
    int rc = th_sh(out, sizeof(out),
                   "%s --id x --redis 127.0.0.1:%d --state-dir %s --no-api-envs --env %s/tlspool.json "
                   "--listen " ADDR ":0 2>&1", bin, R.port, st, DIR_);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "not loopback"));
    assert_non_null(strstr(out, "relay-tls off"));

    /* off: it starts (warned); stopped once its relay is registered */
    char log[1100];
    snprintf(log, sizeof(log), "%s/node-x.log", DIR_);
    char env[1200];
    snprintf(env, sizeof(env), "%s/tlspool.json:0:0", DIR_);
    pid_t x = th_node_start("x", R.port, st, log, "--env", env, "--no-api-envs", "--listen",
                            ADDR ":0", "--relay-tls", "off", (char *)NULL);
    assert_true(x > 0);
    bool up = false;
    for (int i = 0; i < 100 && !up; i++, th_msleep(100)) {
        th_sh(out, sizeof(out), "redis-cli -p %d hget wp:node:x relay", R.port);
        up = strncmp(out, ADDR ":", strlen(ADDR) + 1) == 0;
    }
    kill(x, SIGTERM);
    waitpid(x, NULL, 0);
    assert_true(up);
    th_sh(out, sizeof(out), "grep -c 'relay-tls off: relays beyond loopback are plaintext' %s", log);
    assert_true(atoi(out) >= 1);

    snprintf(bin, sizeof(bin), "%s/warmpool-scheduler", th_build_dir());
    rc = th_sh(out, sizeof(out), "%s --relay-tls-cert %s/s1.pem 2>&1", bin, CERTS);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "relay-tls-key"));
    rc = th_sh(out, sizeof(out), "%s --relay-tls maybe 2>&1", bin);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "auto, on or off"));
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (network namespace, sandboxes)\n");
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tool_call_over_mutual_tls),
        cmocka_unit_test(scheduler_without_identity_says_so),
        cmocka_unit_test(node_refuses_other_ca),
        cmocka_unit_test(plaintext_client_gets_nothing),
        cmocka_unit_test(client_checks_the_node),
        cmocka_unit_test(startup_rules),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
