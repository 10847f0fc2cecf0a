/* net.c - networked sandboxes: a veth to the host, NAT and filtering in
 * warmpool's own nftables table.
 *
 * Addresses: slot N of 10.88.0.0/16 is the /30 10.88.0.0 + 4N: the host
 * end "wpn<N>" holds .1, the sandbox's "eth0" holds .2 with a default route
 * via .1. Point-to-point links, not a bridge, so sandboxes share no L2 and
 * reach each other only through the forward hook (where 10/8 is dropped).
 * Slots are machine-wide: a file SLOT_DIR/<N> (holding the sandbox's dir
 * and the network namespace its host end lives in) created with link() is
 * the allocation, whatever state dir a process uses; SLOT_DIR/.lock
 * serialises allocation, nft changes and release. The table, the links and
 * net.ipv4.ip_forward belong to a network namespace: a node run in a
 * namespace of its own (a container, the multi-node tests) keeps them
 * there, so "the first" and "the last" sandbox are counted per namespace.
 *
 * Filtering (table `inet warmpool`, created with the first networked
 * sandbox and deleted with the last; nothing else of the host's ruleset is
 * touched): input drops everything from "wpn*" (the host's own addresses,
 * loopback services, IPv6 link-local included), forward lets replies in
 * and nothing else, and sends a sandbox's packets to its chain s<N>
 * through the map `sbx` (ifname -> jump s<N>): DNS to the nameservers in
 * `dns4`, then `blocked4` (private, link-local, CGNAT, loopback, multicast)
 * dropped, then everything (unrestricted) or set a<N> (limited). Postrouting
 * masquerades 10.88.0.0/16. The sysctl net.ipv4.ip_forward is turned on
 * with the first sandbox and its earlier value put back with the last.
 *
 * The nft binary (Debian package nftables) applies each change as one
 * atomic transaction.
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <net/route.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

#define SLOT_DIR "/run/warmpool/net"
#define MAX_SLOTS 16384 /* 10.88.0.0/16 in /30s */
#define NET_BASE 0x0a580000u /* 10.88.0.0 */
#define TABLE "inet warmpool"
#define MAX_NS 3

static const char *const nft_paths[] = { "/usr/sbin/nft", "/sbin/nft", NULL };

static const char *nft_bin(void)
{
    for (const char *const *p = nft_paths; *p; p++)
        if (access(*p, X_OK) == 0)
            return *p;
    return NULL;
}

void snap__net_addrs(int slot, char host[16], char sbx[16])
{
    struct in_addr a;
    a.s_addr = htonl(NET_BASE + 4u * (unsigned)slot + 1);
    inet_ntop(AF_INET, &a, host, 16);
    a.s_addr = htonl(NET_BASE + 4u * (unsigned)slot + 2);
    inet_ntop(AF_INET, &a, sbx, 16);
}

/* Run `nft -f -` on text. Its stderr (the reason) goes into err. Works in
 * a daemon whose loop reaps every child: ECHILD then means "exited", and
 * silence on stderr means success. */
static int nft_run(const char *text, struct wp_err *err)
{
    const char *bin = nft_bin();
    int in[2] = { -1, -1 }, eo[2] = { -1, -1 }, status = 0, rc = 0;
    char msg[512];
    size_t n = 0;
    pid_t pid;

    if (!bin)
        return wp_err_set(err, WP_ECONFIG, "network: nft not found (install Debian's nftables)");
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(eo, O_CLOEXEC) < 0) {
        rc = wp_err_errno(err, "pipe");
        goto out;
    }
    pid = fork();
    if (pid < 0) {
        rc = wp_err_errno(err, "fork nft");
        goto out;
    }
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(eo[1], 1);
        dup2(eo[1], 2);
        wp_close_fds_from(3);
        execl(bin, bin, "-f", "-", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(eo[1]);
    in[0] = eo[1] = -1;
    /* A ruleset change is a few KiB: far below the pipe's buffer. */
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(in[1], text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(in[1]);
    in[1] = -1;
    for (;;) {
        ssize_t r = read(eo[0], msg + n, sizeof(msg) - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == sizeof(msg) - 1) {
            char sink[256];
            while (read(eo[0], sink, sizeof(sink)) > 0)
                ;
            break;
        }
    }
    msg[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (msg[i] == '\n')
            msg[i] = ' ';
    while (waitpid(pid, &status, 0) < 0) {
        if (errno == EINTR)
            continue;
        status = n ? 1 << 8 : 0; /* ECHILD: reaped by the owner's loop */
        break;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rc = wp_err_set(err, WP_ECHILD, "nft: %s", n ? msg : "failed");
out:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (eo[i] >= 0)
            close(eo[i]);
    }
    return rc;
}

/* The IPv4 nameservers of the host's resolv.conf a sandbox can use: not
 * loopback (a host-local resolver is one of the host's own services). */
static int host_nameservers(char ns[MAX_NS][16])
{
    char *text = NULL, *save = NULL;
    int n = 0;

    if (wp_read_file("/etc/resolv.conf", 1 << 16, &text, NULL, NULL) < 0)
        return 0;
    for (char *l = strtok_r(text, "\n", &save); l && n < MAX_NS; l = strtok_r(NULL, "\n", &save)) {
        char ip[64];
        struct in_addr a;
        if (sscanf(l, " nameserver %63s", ip) != 1 || inet_pton(AF_INET, ip, &a) != 1 ||
            (ntohl(a.s_addr) >> 24) == 127)
            continue;
        inet_ntop(AF_INET, &a, ns[n++], 16);
    }
    free(text);
    return n;
}

/* Appends to a bounded text; false once it would overflow. */
static bool cat(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool cat(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(buf);
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap - len;
}

/* The table, its sets, map and base chains. Base chains are flushed and
 * refilled in the same transaction, so re-running it is idempotent and
 * never leaves a moment without the rules; per-sandbox objects stay. */
static bool base_rules(char *b, size_t cap, char ns[MAX_NS][16], int n_ns, bool host_forwards)
{
    bool ok = cat(b, cap,
        "add table " TABLE "\n"
        "add set " TABLE " blocked4 { type ipv4_addr; flags interval; auto-merge; }\n"
        "flush set " TABLE " blocked4\n"
        "add element " TABLE " blocked4 { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, "
        "169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/3 }\n"
        "add set " TABLE " dns4 { type ipv4_addr; }\n"
        "add map " TABLE " sbx { type ifname : verdict; }\n"
        "add map " TABLE " sbxin { type ifname : verdict; }\n"
        "add chain " TABLE " input { type filter hook input priority -10; policy accept; }\n"
        "flush chain " TABLE " input\n"
        /* e<N> is empty unless the sandbox was confined to the egress
         * proxy (snap_net_egress_only): then it accepts that one port. */
        "add rule " TABLE " input iifname \"wpn*\" iifname vmap @sbxin\n"
        "add rule " TABLE " input iifname \"wpn*\" drop\n"
        "add chain " TABLE " forward { type filter hook forward priority -10; policy accept; }\n"
        "flush chain " TABLE " forward\n"
        "add rule " TABLE " forward oifname \"wpn*\" ct state established,related accept\n"
        "add rule " TABLE " forward oifname \"wpn*\" drop\n"
        "add rule " TABLE " forward iifname \"wpn*\" iifname vmap @sbx\n"
        "add rule " TABLE " forward iifname \"wpn*\" drop\n"
        /* Forwarding is on for the sandboxes' sake: where the host did not
         * forward before, it forwards nothing else (a drop in any base
         * chain is final; an accept here would not be). */
        "%s"
        "add chain " TABLE " postrouting { type nat hook postrouting priority srcnat; policy accept; }\n"
        "flush chain " TABLE " postrouting\n"
        "add rule " TABLE " postrouting ip saddr 10.88.0.0/16 oifname != \"wpn*\" masquerade\n",
        host_forwards ? "" : "add rule " TABLE " forward drop\n");
    for (int i = 0; i < n_ns; i++)
        ok = ok && cat(b, cap, "add element " TABLE " dns4 { %s }\n", ns[i]);
    return ok;
}

/* Resolve the allowed hosts into "a, b, c" (IPv4 addresses and prefixes)
 * and /etc/hosts lines pinning each name to what was allowed. */
static int resolve_hosts(const struct snap_network *net, char *elems, size_t ecap, char *hosts,
                         size_t hcap, struct wp_err *err)
{
    for (int i = 0; i < net->n_hosts; i++) {
        const char *h = net->hosts[i];
        struct in_addr a;
        if (strchr(h, '/') || inet_pton(AF_INET, h, &a) == 1) {
            if (!cat(elems, ecap, "%s%s", elems[0] ? ", " : "", h))
                return wp_err_set(err, WP_ETOOBIG, "network: too many allowed addresses");
            continue;
        }
        struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *res = NULL;
        int g = getaddrinfo(h, NULL, &hints, &res);
        if (g != 0) {
            /* Fails closed: the name stays unreachable. A sandbox is not
             * refused for a resolver's hiccup or a mirror this node lacks. */
            log_warn("network: allowed host %s does not resolve (%s): not reachable", h,
                     gai_strerror(g));
            continue;
        }
        int k = 0;
        for (struct addrinfo *r = res; r && k < 16; r = r->ai_next, k++) {
            char ip[16];
            inet_ntop(AF_INET, &((struct sockaddr_in *)r->ai_addr)->sin_addr, ip, sizeof(ip));
            if (!cat(elems, ecap, "%s%s", elems[0] ? ", " : "", ip) ||
                (k == 0 && !cat(hosts, hcap, "%s %s\n", ip, h))) {
                freeaddrinfo(res);
                return wp_err_set(err, WP_ETOOBIG, "network: too many allowed addresses");
            }
        }
        freeaddrinfo(res);
    }
    return 0;
}

/* Name resolution inside the sandbox: the host's nameservers, DNS after
 * files, and (limited) each allowed name pinned to the address allowed,
 * so the sandbox connects where the filter lets it. Written into the
 * overlay (the clone's own upper layer at a restore). */
static int write_etc(const struct snap_sandbox *sb, char ns[MAX_NS][16], int n_ns,
                     const char *pins, struct wp_err *err)
{
    char text[1024] = "", hosts[4096];
    int rc;

    /* Resolved inside the root: an image whose /etc is a symlink (made by
     * a setup command, say) cannot send these host-root writes elsewhere. */
    if ((rc = wp_mkdir_in_root(sb->root, "/etc", 0755, err)) < 0)
        return rc;
    for (int i = 0; i < n_ns; i++)
        cat(text, sizeof(text), "nameserver %s\n", ns[i]);
    if ((rc = wp_write_file_in_root(sb->root, "/etc/resolv.conf", text, strlen(text), 0644, err)) < 0)
        return rc;
    snprintf(text, sizeof(text), "passwd: files\ngroup: files\nhosts: files dns\n");
    if ((rc = wp_write_file_in_root(sb->root, "/etc/nsswitch.conf", text, strlen(text), 0644, err)) < 0)
        return rc;
    snprintf(hosts, sizeof(hosts), "127.0.0.1 localhost\n::1 localhost\n%s", pins);
    return wp_write_file_in_root(sb->root, "/etc/hosts", hosts, strlen(hosts), 0644, err);
}

static int lock_slots(struct wp_err *err)
{
    int fd;

    if (wp_mkdir_p(SLOT_DIR, 0700, err) < 0)
        return wp_err_wrap(err, "network");
    fd = open(SLOT_DIR "/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return wp_err_errno(err, "open " SLOT_DIR "/.lock");
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int rc = wp_err_errno(err, "lock " SLOT_DIR "/.lock");
            close(fd);
            return rc;
        }
    }
    return fd;
}

static void unlock_slots(int fd)
{
    if (fd >= 0)
        close(fd); /* drops the flock */
}

/* This process's network namespace (its inode; 0 if unknown). */
static unsigned long self_netns(void)
{
    struct stat st;
    return stat("/proc/self/ns/net", &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* The host's network namespace (PID 1's): where records of earlier
 * releases, which do not say, were made. 0 if unknown. */
static unsigned long init_netns(void)
{
    struct stat st;
    return stat("/proc/1/ns/net", &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* Slot s's record: the sandbox dir (the slot file, as earlier releases
 * wrote and read it, so their gc does not take ours for orphans) and its
 * namespace, from the file beside it, ".ns-<s>" = "<inode> <dir>" (valid
 * when it names the same dir; else the host's, PID 1's, for a record of an
 * earlier release, or 0 if unknown). 0, or -1 when unreadable. */
static int slot_read(int s, char *dir, size_t cap, unsigned long *ns)
{
    char path[128], *t = NULL, *n = NULL;
    snprintf(path, sizeof(path), SLOT_DIR "/%d", s);
    if (wp_read_file(path, 1024, &t, NULL, NULL) < 0)
        return -1;
    snprintf(dir, cap, "%s", t);
    free(t);
    *ns = 0;
    snprintf(path, sizeof(path), SLOT_DIR "/.ns-%d", s);
    if (wp_read_file(path, 1100, &n, NULL, NULL) == 0) {
        unsigned long ino;
        int off = 0;
        if (sscanf(n, "%lu %n", &ino, &off) == 1 && off > 0 && strcmp(n + off, dir) == 0)
            *ns = ino;
        free(n);
    }
    if (*ns == 0)
        *ns = init_netns();
    return 0;
}

/* A free slot, taken by linking a file naming dir: atomic machine-wide. */
static int alloc_slot(const char *dir, struct wp_err *err)
{
    char tmp[128], path[128];
    int rc = WP_ESTATE;

    snprintf(tmp, sizeof(tmp), SLOT_DIR "/.new-%d", (int)getpid());
    unlink(tmp);
    if (wp_write_file(tmp, dir, strlen(dir), 0600, err) < 0)
        return wp_err_wrap(err, "network");
    for (int s = 0; s < MAX_SLOTS; s++) {
        snprintf(path, sizeof(path), SLOT_DIR "/%d", s);
        if (link(tmp, path) == 0) {
            rc = s;
            break;
        }
        if (errno != EEXIST) {
            rc = wp_err_errno(err, "network: link %s", path);
            break;
        }
    }
    unlink(tmp);
    if (rc == WP_ESTATE)
        return wp_err_set(err, WP_ESTATE, "network: all %d address slots are in use", MAX_SLOTS);
    /* Its namespace, beside it (lock held: nobody reads it before). */
    char rec[700];
    snprintf(path, sizeof(path), SLOT_DIR "/.ns-%d", rc);
    snprintf(rec, sizeof(rec), "%lu %s", self_netns(), dir);
    if (wp_write_file(path, rec, strlen(rec), 0600, NULL) < 0)
        log_warn("network: cannot record slot %d's namespace; it counts in every one", rc);
    return rc;
}

/* Slots whose host end is in namespace ns (one whose namespace is unknown
 * counts everywhere: its table is kept rather than pulled from under it). */
static int count_slots(unsigned long ns)
{
    DIR *d = opendir(SLOT_DIR);
    struct dirent *e;
    int n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d))) {
        char dir[600];
        unsigned long sns;
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        n += slot_read(atoi(e->d_name), dir, sizeof(dir), &sns) < 0 || sns == 0 || sns == ns;
    }
    closedir(d);
    return n;
}

#define FWD_SYSCTL "/proc/sys/net/ipv4/ip_forward"

/* A sysctl is written in place (no temporary file and rename). */
static int sysctl_write(const char *path, const char *v)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return -errno;
    if (write(fd, v, strlen(v)) < 0)
        rc = -errno;
    close(fd);
    return rc;
}
/* The value found before our first sandbox, per namespace. */
static void fwd_saved(char *out, size_t cap)
{
    snprintf(out, cap, SLOT_DIR "/.ip_forward-%lu", self_netns());
}

/* Forwarding on, remembering the value found (once) for the last release. */
static int forwarding_on(struct wp_err *err)
{
    char *v = NULL;
    struct stat st;
    int rc;

    if ((rc = wp_read_file(FWD_SYSCTL, 16, &v, NULL, err)) < 0)
        return wp_err_wrap(err, "network");
    bool on = v[0] == '1';
    char saved[128];
    fwd_saved(saved, sizeof(saved));
    if (!on && stat(saved, &st) < 0)
        wp_write_file(saved, v, strlen(v), 0600, NULL);
    free(v);
    if (!on && (rc = sysctl_write(FWD_SYSCTL, "1\n")) < 0)
        return wp_err_set(err, rc, "network: enable %s: %s", FWD_SYSCTL, strerror(-rc));
    return 0;
}

static void forwarding_restore(void)
{
    char *v = NULL, saved[128];

    fwd_saved(saved, sizeof(saved));
    if (wp_read_file(saved, 16, &v, NULL, NULL) < 0)
        return;
    if (v[0] == '0')
        sysctl_write(FWD_SYSCTL, "0\n");
    free(v);
    unlink(saved);
}

/* nft text removing slot s's objects; a missing one fails the batch, so
 * the caller retries line by line. */
static void slot_rules_del(int s, char *b, size_t cap)
{
    snprintf(b, cap,
             "delete element " TABLE " sbx { \"wpn%d\" }\n"
             "delete element " TABLE " sbxin { \"wpn%d\" }\n"
             "delete chain " TABLE " s%d\n"
             "delete chain " TABLE " e%d\n"
             "delete set " TABLE " a%d\n",
             s, s, s, s, s);
}

static void link_delete(const char *name);

/* Remove slot s (lock held): its veth, nft objects, file; the table and
 * forwarding setting with the last slot. */
static void release_slot(int s)
{
    char text[512], path[128], ifname[IFNAMSIZ], dir[600];
    unsigned long ns = 0, self = self_netns();

    snprintf(path, sizeof(path), SLOT_DIR "/%d", s);
    if (slot_read(s, dir, sizeof(dir), &ns) == 0 && ns && ns != self) {
        /* Its link and rules are another namespace's (gone with it, or
         * removed there with that namespace's last sandbox): not ours to
         * touch, and a same-named link here is someone else's. */
        log_info("network slot=%d was set up in another network namespace: record removed", s);
        unlink(path);
        snprintf(path, sizeof(path), SLOT_DIR "/.ns-%d", s);
        unlink(path);
        return;
    }
    snprintf(ifname, sizeof(ifname), "wpn%d", s);
    link_delete(ifname);
    slot_rules_del(s, text, sizeof(text));
    if (nft_run(text, NULL) < 0) {
        for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            char one[200];
            snprintf(one, sizeof(one), "%s\n", l);
            nft_run(one, NULL);
        }
    }
    unlink(path);
    snprintf(path, sizeof(path), SLOT_DIR "/.ns-%d", s);
    unlink(path);
    int left = count_slots(self);
    log_debug("network slot=%d released, %d left in this namespace", s, left);
    if (left == 0) {
        log_info("network: the last networked sandbox of this namespace is gone: table removed");
        nft_run("delete table " TABLE "\n", NULL);
        forwarding_restore();
    }
}

int snap__net_prepare(struct snap_ctx *ctx, const struct snap_sandbox *sb,
                      const struct snap_network *net, int *slot_out, struct wp_err *err)
{
    enum { TEXT_CAP = 32768 };
    char *text = NULL;
    char ns[MAX_NS][16], elems[8192] = "", pins[2048] = "", rec[700] = "", num[16];
    int n_ns, lock = -1, slot = -1, rc;

    (void)ctx;
    *slot_out = -1;
    if (net->mode == SNAP_NET_NONE)
        return 0;
    if (!nft_bin())
        return wp_err_set(err, WP_ECONFIG,
                          "network: nft not found (install Debian's nftables); sandboxes with "
                          "network mode other than none cannot be set up");
    n_ns = host_nameservers(ns);
    if (n_ns == 0)
        log_warn("network: no non-loopback IPv4 nameserver in /etc/resolv.conf; sandbox=%s "
                 "has no DNS", sb->id);
    /* Before the lock: resolving may take a while. */
    if (net->mode == SNAP_NET_LIMITED &&
        (rc = resolve_hosts(net, elems, sizeof(elems), pins, sizeof(pins), err)) < 0)
        return wp_err_wrap(err, "sandbox %s", sb->id);
    if ((lock = lock_slots(err)) < 0)
        return lock;
    if ((slot = alloc_slot(sb->dir, err)) < 0) {
        rc = slot;
        goto fail;
    }
    snprintf(rec, sizeof(rec), "%s/net.slot", sb->dir);
    snprintf(num, sizeof(num), "%d\n", slot);
    if ((rc = wp_write_file(rec, num, strlen(num), 0600, err)) < 0 ||
        (rc = forwarding_on(err)) < 0)
        goto fail;
    text = calloc(1, TEXT_CAP);
    if (!text) {
        rc = wp_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    /* A saved value means we turned forwarding on: the host did not forward. */
    char saved[128];
    fwd_saved(saved, sizeof(saved));
    bool host_forwards = access(saved, F_OK) != 0;
    bool ok = base_rules(text, TEXT_CAP, ns, n_ns, host_forwards) &&
              cat(text, TEXT_CAP,
                  "add chain " TABLE " s%d\n"
                  "flush chain " TABLE " s%d\n"
                  "add rule " TABLE " s%d ip daddr @dns4 udp dport 53 accept\n"
                  "add rule " TABLE " s%d ip daddr @dns4 tcp dport 53 accept\n"
                  "add rule " TABLE " s%d ip daddr @blocked4 drop\n",
                  slot, slot, slot, slot, slot);
    if (net->mode == SNAP_NET_UNRESTRICTED) {
        ok = ok && cat(text, TEXT_CAP, "add rule " TABLE " s%d meta nfproto ipv4 accept\n", slot);
    } else {
        ok = ok && cat(text, TEXT_CAP,
                       "add set " TABLE " a%d { type ipv4_addr; flags interval; auto-merge; }\n"
                       "flush set " TABLE " a%d\n",
                       slot, slot);
        if (elems[0])
            ok = ok && cat(text, TEXT_CAP, "add element " TABLE " a%d { %s }\n", slot, elems);
        ok = ok && cat(text, TEXT_CAP, "add rule " TABLE " s%d ip daddr @a%d accept\n", slot, slot);
    }
    ok = ok && cat(text, TEXT_CAP,
                   "add element " TABLE " sbx { \"wpn%d\" : jump s%d }\n"
                   "add chain " TABLE " e%d\n"
                   "flush chain " TABLE " e%d\n"
                   "add element " TABLE " sbxin { \"wpn%d\" : jump e%d }\n",
                   slot, slot, slot, slot, slot, slot);
    if (!ok) {
        rc = wp_err_set(err, WP_ETOOBIG, "network: ruleset too large");
        goto fail;
    }
    if ((rc = nft_run(text, err)) < 0)
        goto fail;
    unlock_slots(lock);
    lock = -1;
    if ((rc = write_etc(sb, ns, n_ns, pins, err)) < 0)
        goto fail;
    free(text);
    *slot_out = slot;
    log_debug("network sandbox=%s slot=%d mode=%s", sb->id, slot,
              net->mode == SNAP_NET_LIMITED ? "limited" : "unrestricted");
    return 0;
fail:
    if (slot >= 0) {
        if (lock < 0)
            lock = lock_slots(NULL);
        release_slot(slot);
        unlink(rec);
    }
    unlock_slots(lock);
    free(text);
    return wp_err_wrap(err, "sandbox %s network", sb->id);
}

/* ---- netlink and ioctls: the veth (child side, no exec, no setns) ---- */

static void nl_attr(struct nlmsghdr *h, size_t cap, int type, const void *data, size_t len)
{
    struct rtattr *a = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
    size_t need = RTA_LENGTH(len);

    if (NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(need) > cap)
        return; /* our messages are fixed and small: cannot happen */
    a->rta_type = (unsigned short)type;
    a->rta_len = (unsigned short)need;
    if (len)
        memcpy(RTA_DATA(a), data, len);
    h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(need);
}

static struct rtattr *nl_nest(struct nlmsghdr *h, size_t cap, int type)
{
    struct rtattr *a = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
    nl_attr(h, cap, type, NULL, 0);
    return a;
}

static void nl_end(struct nlmsghdr *h, struct rtattr *a)
{
    a->rta_len = (unsigned short)((char *)h + h->nlmsg_len - (char *)a);
}

/* Send one request and wait for its ack: 0 or -errno. */
static int nl_talk(int fd, struct nlmsghdr *h)
{
    char buf[4096];
    struct sockaddr_nl sa = { .nl_family = AF_NETLINK };

    h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    h->nlmsg_seq = 1;
    if (sendto(fd, h, h->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return -errno;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        for (struct nlmsghdr *r = (struct nlmsghdr *)buf; NLMSG_OK(r, (size_t)n);
             r = NLMSG_NEXT(r, n))
            if (r->nlmsg_type == NLMSG_ERROR)
                return ((struct nlmsgerr *)NLMSG_DATA(r))->error;
    }
}

/* A veth: `name` where the netlink socket lives, `peer` in peer_ns. */
static int veth_create(int nl, const char *name, const char *peer, int peer_ns)
{
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
        char attrs[512];
    } req;
    struct ifinfomsg pi = { .ifi_family = AF_UNSPEC };

    memset(&req, 0, sizeof(req));
    req.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    req.h.nlmsg_type = RTM_NEWLINK;
    req.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    req.i.ifi_family = AF_UNSPEC;
    nl_attr(&req.h, sizeof(req), IFLA_IFNAME, name, strlen(name) + 1);
    struct rtattr *li = nl_nest(&req.h, sizeof(req), IFLA_LINKINFO);
    nl_attr(&req.h, sizeof(req), IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nl_nest(&req.h, sizeof(req), IFLA_INFO_DATA);
    struct rtattr *p = nl_nest(&req.h, sizeof(req), VETH_INFO_PEER);
    /* The peer's attributes follow its own ifinfomsg. */
    memcpy((char *)&req + req.h.nlmsg_len, &pi, sizeof(pi));
    req.h.nlmsg_len += NLMSG_ALIGN(sizeof(pi));
    nl_attr(&req.h, sizeof(req), IFLA_IFNAME, peer, strlen(peer) + 1);
    nl_attr(&req.h, sizeof(req), IFLA_NET_NS_FD, &peer_ns, sizeof(peer_ns));
    nl_end(&req.h, p);
    nl_end(&req.h, data);
    nl_end(&req.h, li);
    return nl_talk(nl, &req.h);
}

/* Delete a link of the current network namespace by name; a missing one
 * is fine (it went with its sandbox's namespace). */
static void link_delete(const char *name)
{
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
        char attrs[64];
    } req;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);

    if (fd < 0)
        return;
    memset(&req, 0, sizeof(req));
    req.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    req.h.nlmsg_type = RTM_DELLINK;
    req.i.ifi_family = AF_UNSPEC;
    nl_attr(&req.h, sizeof(req), IFLA_IFNAME, name, strlen(name) + 1);
    int rc = nl_talk(fd, &req.h);
    if (rc < 0 && rc != -ENODEV)
        log_warn("network: delete link %s: %s", name, strerror(-rc));
    close(fd);
}

static int if_config(int s, const char *name, const char *addr, const char *gw)
{
    struct ifreq ifr;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;

    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
        return -errno;
    inet_pton(AF_INET, "255.255.255.252", &sin->sin_addr);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0)
        return -errno;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return -errno;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return -errno;
    if (gw) {
        struct rtentry rt;
        memset(&rt, 0, sizeof(rt));
        ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
        sin = (struct sockaddr_in *)&rt.rt_gateway;
        sin->sin_family = AF_INET;
        inet_pton(AF_INET, gw, &sin->sin_addr);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = ifr.ifr_name;
        if (ioctl(s, SIOCADDRT, &rt) < 0)
            return -errno;
    }
    return 0;
}

int snap__net_host_fds(struct snap__net_fds *f)
{
    f->nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    f->inet = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (f->nl < 0 || f->inet < 0) {
        snap__net_close_fds(f);
        return -1;
    }
    return 0;
}

void snap__net_close_fds(struct snap__net_fds *f)
{
    if (f->nl >= 0)
        close(f->nl);
    if (f->inet >= 0)
        close(f->inet);
    f->nl = f->inet = -1;
}

int snap__net_attach(int slot, struct snap__net_fds *f, char *msg, size_t cap)
{
    char host_if[IFNAMSIZ], host[16], sbx[16];
    int ns = -1, s = -1, rc;

    snprintf(host_if, sizeof(host_if), "wpn%d", slot);
    snap__net_addrs(slot, host, sbx);
    ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ns < 0 || s < 0) {
        snprintf(msg, cap, "network: sandbox namespace: %s", strerror(errno));
        rc = -1;
        goto out;
    }
    /* The host end is made through the socket opened in the host's
     * namespace, the peer goes straight into ours: no setns, no exec. */
    rc = veth_create(f->nl, host_if, "eth0", ns);
    if (rc < 0) {
        snprintf(msg, cap, "network: create veth %s: %s", host_if, strerror(-rc));
        goto out;
    }
    if ((rc = if_config(f->inet, host_if, host, NULL)) < 0) {
        snprintf(msg, cap, "network: configure %s: %s", host_if, strerror(-rc));
        goto out;
    }
    if ((rc = if_config(s, "eth0", sbx, host)) < 0) {
        snprintf(msg, cap, "network: configure eth0 (%s via %s): %s", sbx, host, strerror(-rc));
        goto out;
    }
    /* No IPv6 on the sandbox's link: nothing is routed for it, and the
     * host drops it; this also spares the link-local chatter. */
    sysctl_write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1\n");
    rc = 0;
out:
    if (ns >= 0)
        close(ns);
    if (s >= 0)
        close(s);
    return rc;
}

static int read_slot_file(const char *path)
{
    char *t = NULL;
    int s = -1;

    if (wp_read_file(path, 32, &t, NULL, NULL) < 0)
        return -1;
    if (sscanf(t, "%d", &s) != 1 || s < 0 || s >= MAX_SLOTS)
        s = -1;
    free(t);
    return s;
}

/* Whether SLOT_DIR/<s> names dir (so the slot is still this sandbox's). */
static bool slot_owned_by(int s, const char *dir)
{
    char rec[600];
    unsigned long ns;

    return slot_read(s, rec, sizeof(rec), &ns) == 0 && strcmp(rec, dir) == 0;
}

int snap__net_release(struct snap_ctx *ctx, const char *id, struct wp_err *err)
{
    char dir[600], rec[700];
    int s, lock;

    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", ctx->state_dir, id);
    snprintf(rec, sizeof(rec), "%s/net.slot", dir);
    s = read_slot_file(rec);
    if (s < 0)
        return 0;
    if ((lock = lock_slots(err)) < 0)
        return lock;
    if (slot_owned_by(s, dir))
        release_slot(s);
    unlock_slots(lock);
    unlink(rec);
    return 0;
}

int snap_net_egress_only(struct snap_ctx *ctx, const struct snap_sandbox *sb, int port,
                         char host[16], char sbx[16], struct wp_err *err)
{
    char rec[700], text[1024];
    int s, lock, rc;

    (void)ctx;
    snprintf(rec, sizeof(rec), "%s/net.slot", sb->dir);
    if ((s = read_slot_file(rec)) < 0)
        return wp_err_set(err, WP_ESTATE, "sandbox %s has no network to confine", sb->id);
    if (port <= 0 || port > 65535)
        return wp_err_set(err, WP_EINVAL_INPUT, "egress port %d out of range", port);
    snap__net_addrs(s, host, sbx);
    /* Forwarding: nothing (DNS neither: the proxy resolves), refused
     * rather than dropped: a resolver or client in the sandbox fails at
     * once instead of waiting out its timeout (git's own lookup of the
     * host name cost every clone 10 s). Input: the proxy's port on the
     * host end, from the sandbox's own address only (the interface and
     * the address together: one sandbox cannot pass for another).
     * Established flows towards the outside die with it. */
    snprintf(text, sizeof(text),
             "flush chain " TABLE " s%d\n"
             "add rule " TABLE " s%d meta l4proto tcp reject with tcp reset\n"
             "add rule " TABLE " s%d reject\n"
             "flush chain " TABLE " e%d\n"
             "add rule " TABLE " e%d ip saddr %s ip daddr %s tcp dport %d accept\n",
             s, s, s, s, s, sbx, host, port);
    if ((lock = lock_slots(err)) < 0)
        return lock;
    rc = slot_owned_by(s, sb->dir) ? nft_run(text, err)
                                   : wp_err_set(err, WP_ESTATE, "network slot %d is not sandbox %s's", s, sb->id);
    unlock_slots(lock);
    return rc < 0 ? wp_err_wrap(err, "sandbox %s egress", sb->id) : 0;
}

int snap__net_sweep(void)
{
    DIR *d = opendir(SLOT_DIR);
    struct dirent *e;
    int lock, n = 0;

    if (!d)
        return 0;
    lock = lock_slots(NULL);
    if (lock < 0) {
        closedir(d);
        return 0;
    }
    while ((e = readdir(d))) {
        char dir[600];
        unsigned long ns;
        struct stat st;
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        if (slot_read(atoi(e->d_name), dir, sizeof(dir), &ns) < 0)
            continue;
        bool gone = dir[0] == '/' && stat(dir, &st) < 0 && errno == ENOENT;
        if (gone) {
            log_info("gc: releasing network slot=%s of a removed sandbox", e->d_name);
            release_slot(atoi(e->d_name));
            n++;
        }
    }
    closedir(d);
    unlock_slots(lock);
    return n;
}
