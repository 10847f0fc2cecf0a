/* sentinel_testlib.h - Redis behind Sentinel for tests: a primary, two
 * replicas and three sentinels (real redis-server processes, `--sentinel`
 * mode) with small timeouts, so a failover takes a few seconds. */
#ifndef WP_SENTINEL_TESTLIB_H
#define WP_SENTINEL_TESTLIB_H

#include <stdbool.h>
#include <sys/types.h>

struct th_sentinel {
    char *dir;        /* logs, configs, data (th_tmpdir) */
    char master[32];  /* the master's name at the sentinels */
    int rport[3];     /* [0] starts as the primary, [1] and [2] as its replicas */
    int sent[3];
    int dead;         /* a port nobody listens on, first in list: clients must skip it */
    pid_t rpid[3], spid[3];
    char addr[32];    /* where everything listens besides loopback and is known by */
    char list[256];   /* "<addr>:<dead>,<addr>:<sent0>,..." for --redis-sentinels */
};

/* Start everything and wait (20 s) until the replicas are in sync and
 * every sentinel knows the others and both replicas. 0, or -1 (what runs
 * is left for th_sentinel_stop). */
int th_sentinel_start(struct th_sentinel *t, const char *master);
/* The same, every process bound to 127.0.0.1 and addr and known to the
 * others (replicas, sentinels, clients) by addr: a host address that
 * network namespaces reach (tests/lib/mnlib's bridge). */
int th_sentinel_start_on(struct th_sentinel *t, const char *master, const char *addr);
void th_sentinel_stop(struct th_sentinel *t);
/* One more sentinel on port watching the same master, wanting requirepass
 * when not NULL (then reached only with AUTH); waits (10 s) until it
 * names the master. Its pid (caller kills it), or -1. */
pid_t th_sentinel_add(struct th_sentinel *t, int port, const char *requirepass);
/* The primary's port as the first live sentinel names it now, or -1. */
int th_sentinel_primary(const struct th_sentinel *t);
/* Index of port in rport[], or -1. */
int th_sentinel_index(const struct th_sentinel *t, int port);

#endif
