/* test_snap_net.c - sandbox networking with real namespaces, veths, nft
 * and CRIU: none / unrestricted / limited, the host's own addresses never
 * reachable, two clones of a networked image, nothing left after destroy
 * or gc, clear errors for bad "network" settings.
 *
 * "The internet" is a network namespace of the test's own behind a veth on
 * the host (198.18.0.0/30, the benchmarking range, which the sandboxes'
 * filter does not block), with a second address 198.18.1.2 behind it; a
 * TCP server there answers "inet". A server on the host listening on every
 * host address stands for the node's relay, Redis and the scheduler. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"

static struct th_snap S;
static char NS[32], HOSTIF[16];
static pid_t inet_srv = -1, host_srv = -1;
static int PORT;

#define INET_ADDR "198.18.0.2"
#define INET_ADDR2 "198.18.1.2"
#define INET_GW "198.18.0.1"

/* Accepts forever, answering each connection with banner. */
static pid_t serve(const char *netns, const char *banner)
{
    int ready[2];
    pid_t pid;

    if (pipe(ready) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        char path[128];
        close(ready[0]);
        if (netns) {
            snprintf(path, sizeof(path), "/var/run/netns/%s", netns);
            int fd = open(path, O_RDONLY);
            if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
                _exit(1);
        }
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(PORT) };
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 16) < 0)
            _exit(1);
        if (write(ready[1], "r", 1) < 0)
            _exit(1);
        close(ready[1]);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0)
                continue;
            if (write(c, banner, strlen(banner)) < 0)
                continue;
            close(c);
        }
    }
    close(ready[1]);
    char r;
    if (read(ready[0], &r, 1) != 1) {
        close(ready[0]);
        return -1;
    }
    close(ready[0]);
    return pid;
}

/* From inside pid's network namespace: connect to ip:PORT and read the
 * banner within 600 ms. Returns the banner's first letter, or 0. */
static char probe(pid_t pid, const char *ip)
{
    int p[2], status;
    char c = 0;

    assert_int_equal(pipe(p), 0);
    pid_t ch = fork();
    if (ch == 0) {
        char path[64], buf[16] = "";
        close(p[0]);
        snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
        int fd = open(path, O_RDONLY);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
            _exit(2);
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(PORT) };
        inet_pton(AF_INET, ip, &a.sin_addr);
        connect(s, (struct sockaddr *)&a, sizeof(a));
        struct pollfd pf = { s, POLLIN, 0 };
        if (poll(&pf, 1, 600) == 1 && read(s, buf, 1) == 1 && write(p[1], buf, 1) < 0)
            _exit(3);
        _exit(0);
    }
    close(p[1]);
    if (read(p[0], &c, 1) != 1)
        c = 0;
    close(p[0]);
    waitpid(ch, &status, 0);
    return c;
}

/* eth0's address in pid's network namespace ("" when there is none), and
 * the number of interfaces there. */
static int netns_ifaces(pid_t pid, char addr[16])
{
    int p[2], n = 0;
    char buf[64] = "";

    addr[0] = '\0';
    assert_int_equal(pipe(p), 0);
    pid_t ch = fork();
    if (ch == 0) {
        char path[64];
        close(p[0]);
        snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
        int fd = open(path, O_RDONLY);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
            _exit(2);
        struct if_nameindex *ifs = if_nameindex(), *i;
        int k = 0;
        for (i = ifs; i && i->if_name; i++)
            k++;
        struct ifreq ifr = { 0 };
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "eth0");
        char ip[16] = "";
        if (ioctl(s, SIOCGIFADDR, &ifr) == 0)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr, ip, sizeof(ip));
        dprintf(p[1], "%d %s", k, ip);
        _exit(0);
    }
    close(p[1]);
    ssize_t r = read(p[0], buf, sizeof(buf) - 1);
    buf[r > 0 ? r : 0] = '\0';
    close(p[0]);
    waitpid(ch, NULL, 0);
    sscanf(buf, "%d %15s", &n, addr);
    return n;
}

/* Every IPv4 address of the host (all interfaces): none may answer. */
static void assert_host_unreachable(pid_t pid)
{
    struct ifaddrs *ifa, *i;
    char ip[16];

    assert_int_equal(getifaddrs(&ifa), 0);
    for (i = ifa; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
            continue;
        inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, ip, sizeof(ip));
        char c = probe(pid, ip);
        if (c)
            fail_msg("sandbox reached the host's %s (%s): '%c'", ip, i->ifa_name, c);
    }
    freeifaddrs(ifa);
}

/* Nothing of any networked sandbox left on the host. */
static void assert_no_net_state(void)
{
    char out[4096];
    struct if_nameindex *ifs = if_nameindex();

    for (struct if_nameindex *i = ifs; i && i->if_name; i++)
        if (strncmp(i->if_name, "wpn", 3) == 0)
            fail_msg("link %s left", i->if_name);
    if_freenameindex(ifs);
    if (th_sh(out, sizeof(out), "nft list table inet warmpool 2>/dev/null") == 0)
        fail_msg("nft table left:\n%s", out);
    th_sh(out, sizeof(out), "ls /run/warmpool/net 2>/dev/null");
    assert_string_equal(out, "");
}

static int group_setup(void **state)
{
    char out[512];
    (void)state;

    if (th_snap_open(&S) < 0)
        return -1;
    PORT = th_free_port();
    snprintf(NS, sizeof(NS), "wpt-inet-%d", (int)getpid());
    snprintf(HOSTIF, sizeof(HOSTIF), "wpt%d", (int)getpid() % 100000);
    if (th_sh(out, sizeof(out),
              "set -e; ip netns add %s; ip link add %s type veth peer name eth0 netns %s; "
              "ip addr add " INET_GW "/30 dev %s; ip link set %s up; "
              "ip -n %s addr add " INET_ADDR "/30 dev eth0; ip -n %s addr add " INET_ADDR2
              "/32 dev lo; ip -n %s link set eth0 up; ip -n %s link set lo up; "
              "ip -n %s route add default via " INET_GW "; ip route add 198.18.1.0/24 via " INET_ADDR,
              NS, HOSTIF, NS, HOSTIF, HOSTIF, NS, NS, NS, NS, NS) != 0) {
        fprintf(stderr, "cannot make the test's internet namespace\n");
        return -1;
    }
    inet_srv = serve(NS, "inet\n");
    host_srv = serve(NULL, "host\n");
    return inet_srv > 0 && host_srv > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    char out[256];
    (void)state;

    if (inet_srv > 0)
        kill(inet_srv, SIGKILL), waitpid(inet_srv, NULL, 0);
    if (host_srv > 0)
        kill(host_srv, SIGKILL), waitpid(host_srv, NULL, 0);
    th_sh(out, sizeof(out), "ip route del 198.18.1.0/24 2>/dev/null; ip link del %s 2>/dev/null; "
                            "ip netns del %s 2>/dev/null", HOSTIF, NS);
    th_snap_close(&S);
    return 0;
}

static struct snap_sandbox *boot_net(const char *name, const char *network)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;

    t = th_template("{\"name\":\"%s\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                    "\"touch /tmp/ready; exec sleep 1000\"],\"ready_file\":\"/tmp/ready\"%s%s}",
                    name, S.rootfs, network ? ",\"network\":" : "", network ? network : "");
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot %s: %s", name, err.msg);
    snap_template_free(t);
    return sb;
}

static void none_has_loopback_only(void **state)
{
    char addr[16];
    (void)state;

    struct snap_sandbox *sb = boot_net("none", NULL);
    assert_int_equal(netns_ifaces(sb->init_pid, addr), 1);
    assert_string_equal(addr, "");
    assert_int_equal(probe(sb->init_pid, INET_ADDR), 0);
    th_destroy_gone(&S, sb);
    sb = boot_net("none2", "{\"mode\":\"none\"}");
    assert_int_equal(netns_ifaces(sb->init_pid, addr), 1);
    th_destroy_gone(&S, sb);
    assert_no_net_state();
}

static void unrestricted_reaches_outside_never_the_host(void **state)
{
    char addr[16];
    (void)state;

    /* The servers answer where nothing filters: the host's own namespace. */
    assert_int_equal(probe(getpid(), "127.0.0.1"), 'h');
    assert_int_equal(probe(getpid(), INET_ADDR), 'i');
    struct snap_sandbox *sb = boot_net("unr", "{\"mode\":\"unrestricted\"}");
    assert_int_equal(netns_ifaces(sb->init_pid, addr), 2);
    assert_true(strncmp(addr, "10.88.", 6) == 0);
    assert_int_equal(probe(sb->init_pid, INET_ADDR), 'i');
    assert_int_equal(probe(sb->init_pid, INET_ADDR2), 'i');
    /* The host: every address it has (the veth's gateway end, the test's
     * internet gateway, eth0, loopback) with a server on all of them. */
    assert_host_unreachable(sb->init_pid);
    th_destroy_gone(&S, sb);
    assert_no_net_state();
}

static void limited_reaches_only_allowed_hosts(void **state)
{
    char addr[16];
    (void)state;

    struct snap_sandbox *sb =
        boot_net("lim", "{\"mode\":\"limited\",\"allowed_hosts\":[\"" INET_ADDR "\"]}");
    assert_int_equal(probe(sb->init_pid, INET_ADDR), 'i');
    assert_int_equal(probe(sb->init_pid, INET_ADDR2), 0);
    assert_host_unreachable(sb->init_pid);
    /* A prefix admits the second address; the first one is not in it. */
    struct snap_sandbox *sb2 =
        boot_net("lim2", "{\"mode\":\"limited\",\"allowed_hosts\":[\"198.18.1.0/24\"]}");
    assert_int_equal(probe(sb2->init_pid, INET_ADDR2), 'i');
    assert_int_equal(probe(sb2->init_pid, INET_ADDR), 0);
    /* Two sandboxes at once: distinct addresses, and neither reaches the
     * other (sandbox to sandbox is not forwarded). */
    char addr2[16];
    netns_ifaces(sb->init_pid, addr);
    netns_ifaces(sb2->init_pid, addr2);
    assert_string_not_equal(addr, addr2);
    th_destroy_gone(&S, sb);
    th_destroy_gone(&S, sb2);
    assert_no_net_state();
}

/* The image build (setup) runs with the network; two clones restored at
 * once each get their own address and both reach the allowed host. */
static void clones_of_networked_image_each_have_network(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb, *c[2];
    struct wp_err err;
    char a[2][16];
    (void)state;

    t = th_template("{\"name\":\"netimg\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\",\"-c\","
                    "\"touch /tmp/ready; exec sleep 1000\"],\"ready_file\":\"/tmp/ready\","
                    "\"setup\":[\"python3 -c \\\"import socket; s=socket.create_connection(('"
                    INET_ADDR "', %d), timeout=3); open('/work/got','wb').write(s.recv(16))\\\"\"],"
                    "\"workdir\":\"/work\","
                    "\"network\":{\"mode\":\"limited\",\"allowed_hosts\":[\"" INET_ADDR "\"]}}",
                    PORT);
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    char *got = th_read_in(sb, "/work/got");
    assert_non_null(got);
    assert_string_equal(got, "inet\n");
    free(got);
    if (snap_checkpoint(S.ctx, sb, t, "netimg", 0, NULL, &err) < 0)
        fail_msg("checkpoint: %s", err.msg);
    snap_template_free(t);
    assert_no_net_state();
    struct snap_restore_job *job[2];
    for (int i = 0; i < 2; i++) {
        struct snap_restore_opts ro = { .lazy = i == 1 };
        if (snap_restore_start(S.ctx, "netimg", &ro, &job[i], &err) < 0)
            fail_msg("restore start: %s", err.msg);
    }
    for (int i = 0; i < 2; i++)
        if (snap_restore_finish(S.ctx, job[i], &c[i], &err) < 0)
            fail_msg("restore: %s", err.msg);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(netns_ifaces(c[i]->init_pid, a[i]), 2);
        assert_int_equal(probe(c[i]->init_pid, INET_ADDR), 'i');
        assert_int_equal(probe(c[i]->init_pid, INET_ADDR2), 0);
    }
    assert_string_not_equal(a[0], a[1]);
    assert_host_unreachable(c[0]->init_pid);
    th_destroy_gone(&S, c[0]);
    /* The other clone keeps working after its sibling's release. */
    assert_int_equal(probe(c[1]->init_pid, INET_ADDR), 'i');
    th_destroy_gone(&S, c[1]);
    assert_no_net_state();
    assert_int_equal(snap_image_delete(S.ctx, "netimg", &err), 0);
}

/* A process that booted a networked sandbox died without destroying it:
 * gc (a restarted node) removes its veth, nft objects and slot. */
static void gc_releases_network_of_dead_owner(void **state)
{
    struct wp_err err;
    int status;
    (void)state;

    pid_t ch = fork();
    if (ch == 0) {
        struct snap_config cfg = { .state_dir = S.state };
        struct snap_ctx *ctx;
        struct snap_template *t;
        struct snap_sandbox *sb;
        char json[512];
        snprintf(json, sizeof(json),
                 "{\"name\":\"orph\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                 "\"touch /tmp/ready; exec sleep 1000\"],\"ready_file\":\"/tmp/ready\","
                 "\"network\":{\"mode\":\"unrestricted\"}}",
                 S.rootfs);
        if (snap_ctx_open(&cfg, &ctx, &err) < 0 ||
            snap_template_parse(json, strlen(json), &t, &err) < 0 ||
            snap_boot(ctx, t, "orphan-net", NULL, NULL, &sb, &err) < 0)
            _exit(1);
        _exit(0);
    }
    waitpid(ch, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(snap_gc(S.ctx, &err) >= 1);
    assert_true(th_sandbox_gone(&S, "orphan-net", 0));
    assert_no_net_state();
}

static void bad_network_settings_get_clear_errors(void **state)
{
    static const struct {
        const char *network, *want;
    } cases[] = {
        { "\"on\"", "\"network\" must be an object" },
        { "{}", "network.mode must be" },
        { "{\"mode\":\"bridge\"}", "network.mode \"bridge\" must be" },
        { "{\"mode\":\"none\",\"dns\":true}", "unknown network field \"dns\"" },
        { "{\"mode\":\"unrestricted\",\"allowed_hosts\":[\"a.b\"]}", "only for mode \"limited\"" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":\"a.b\"}", "must be an array" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[\"*.example.com\"]}", "wildcards cannot be enforced" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[\"https://example.com\"]}", "bare hostname" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[\"example.com:443\"]}", "bare hostname" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[\"2001:db8::1\"]}", "bare hostname" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[\"10.0.0.0/33\"]}", "bare hostname" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[\"-bad.example\"]}", "bare hostname" },
        { "{\"mode\":\"limited\",\"allowed_hosts\":[7]}", "allowed_hosts[0] must be a string" },
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[512];
        struct snap_template *t = NULL;
        struct wp_err err = { 0 };
        snprintf(json, sizeof(json), "{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                                     "\"network\":%s}", cases[i].network);
        assert_true(snap_template_parse(json, strlen(json), &t, &err) < 0);
        assert_null(t);
        if (!strstr(err.msg, cases[i].want))
            fail_msg("network %s: got \"%s\", want \"%s\"", cases[i].network, err.msg, cases[i].want);
    }
    /* The field changes the digest only when set. */
    struct snap_template *a = th_template("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"]}");
    struct snap_template *b = th_template("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                                          "\"network\":{\"mode\":\"none\"}}");
    struct snap_template *c = th_template("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                                          "\"network\":{\"mode\":\"limited\",\"allowed_hosts\":"
                                          "[\"deb.debian.org\",\"198.18.0.0/15\"]}}");
    assert_string_equal(a->digest, b->digest);
    assert_string_not_equal(a->digest, c->digest);
    assert_int_equal(c->network.n_hosts, 2);
    snap_template_free(a);
    snap_template_free(b);
    snap_template_free(c);
}

/* While sandboxes have network the host forwards for them, and for
 * nothing else it did not forward before: two namespaces of the test's
 * own, each behind its own host interface, stand for a host's other
 * networks. */
static void host_forwards_only_sandbox_traffic(void **state)
{
    char out[1024], a[32], b[32], ha[16], hb[16];
    (void)state;

    th_sh(out, sizeof(out), "cat /proc/sys/net/ipv4/ip_forward");
    bool was_on = out[0] == '1';
    snprintf(a, sizeof(a), "wpt-a-%d", (int)getpid());
    snprintf(b, sizeof(b), "wpt-b-%d", (int)getpid());
    snprintf(ha, sizeof(ha), "wpa%d", (int)getpid() % 100000);
    snprintf(hb, sizeof(hb), "wpb%d", (int)getpid() % 100000);
    assert_int_equal(th_sh(out, sizeof(out),
                           "set -e; for x in %s:%s:1 %s:%s:2; do n=${x%%%%:*}; r=${x#*:}; h=${r%%%%:*}; "
                           "i=${x##*:}; ip netns add $n; ip link add $h type veth peer name eth0 netns $n; "
                           "ip addr add 10.99.$i.1/24 dev $h; ip link set $h up; "
                           "ip -n $n addr add 10.99.$i.2/24 dev eth0; ip -n $n link set eth0 up; "
                           "ip -n $n route add default via 10.99.$i.1; done",
                           a, ha, b, hb),
                     0);
    struct snap_sandbox *sb = boot_net("fwd", "{\"mode\":\"unrestricted\"}");
    th_sh(out, sizeof(out), "cat /proc/sys/net/ipv4/ip_forward");
    assert_int_equal(out[0], '1'); /* on, for the sandbox */
    int rc = th_sh(out, sizeof(out), "ip netns exec %s busybox ping -c 1 -W 1 10.99.2.2", a);
    if (was_on)
        assert_int_equal(rc, 0); /* the host forwarded before: still does */
    else
        assert_int_not_equal(rc, 0); /* it did not: it does not now either */
    assert_int_equal(probe(sb->init_pid, INET_ADDR), 'i'); /* the sandbox's own, forwarded */
    th_destroy_gone(&S, sb);
    th_sh(out, sizeof(out), "cat /proc/sys/net/ipv4/ip_forward");
    assert_int_equal(out[0], was_on ? '1' : '0');
    th_sh(out, sizeof(out), "ip link del %s; ip link del %s; ip netns del %s; ip netns del %s", ha, hb,
          a, b);
    assert_no_net_state();
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_network_settings_get_clear_errors),
        cmocka_unit_test(none_has_loopback_only),
        cmocka_unit_test(unrestricted_reaches_outside_never_the_host),
        cmocka_unit_test(limited_reaches_only_allowed_hosts),
        cmocka_unit_test(clones_of_networked_image_each_have_network),
        cmocka_unit_test(gc_releases_network_of_dead_owner),
        cmocka_unit_test(host_forwards_only_sandbox_traffic),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
