#!/usr/bin/env bash
# Refills per second of the 200 MB Python environment at a real node (issue
# 20: a node's capacity is what one clone costs to make). Each round starts
# the node once per variant of the lazy-pages wait (WARMPOOL_CRIU_LAZY_READY:
# `poll`, the way before issue 20, and `status-fd`), interleaved, on one state
# dir (the image is built once), asks for N hot clones and times the node
# filling its hot tier from empty; the node's own CPU and its reaped
# children's (helpers, criu, lazy-pages daemons) are read from /proc. Writes
# bench/results/refill.{json,md}.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=bench/results
N=${REFILL_CLONES:-10}
ROUNDS=${REFILL_ROUNDS:-3}
T=$(mktemp -d /tmp/wp-refill-XXXXXX)
chmod 711 "$T"
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PIDS=()
. bench/lib.sh
trap wp_bench_cleanup EXIT
wp_bench_redis "$T" "$RPORT"
python3 - "$T/py200.json" <<'PY'
import json, sys
init = ("import json, re, os, sys, collections, itertools, functools, datetime, decimal, hashlib, "
        "random, threading, subprocess, email.parser, urllib.parse, pathlib\n"
        "buf = bytearray(200 << 20)\n"
        "for i in range(0, len(buf), 4096): buf[i] = (i >> 12) & 0xff or 1\n"
        "open('/tmp/ready', 'w').close()\nimport time\nwhile True: time.sleep(1)")
json.dump({"name": "py200", "rootfs": "host", "init": ["/usr/bin/python3", "-c", init],
           "ready_file": "/tmp/ready", "limits": {"memory_mb": 1024}}, open(sys.argv[1], "w"))
PY
hot() { redis-cli -p "$RPORT" llen 'wp:env:{py200}:hot'; }
# utime+stime+cutime+cstime of pid, in clock ticks.
ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
# A first node builds the image (its build's CPU stays out of the rounds).
"$BUILD/warmpool-node" --id refill-node --redis "127.0.0.1:$RPORT" --state-dir "$T/state" \
    --env "$T/py200.json:0:0" --heartbeat-ttl 5 --drain-timeout 0 --log-level warn 2>>"$T/node-build.log" &
PIDS=($!)
for _ in $(seq 1200); do
    [ "$(redis-cli -p "$RPORT" hget wp:node:refill-node build:py200)" = ready ] && break
    sleep 0.1
done
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()
redis-cli -p "$RPORT" flushall >/dev/null
: >"$T/runs.txt"
for r in $(seq "$ROUNDS"); do
    for v in poll status-fd; do
        WARMPOOL_CRIU_LAZY_READY=$v "$BUILD/warmpool-node" --id refill-node --redis "127.0.0.1:$RPORT" \
            --state-dir "$T/state" --env "$T/py200.json:0:0" --heartbeat-ttl 5 --drain-timeout 0 \
            --log-level warn 2>>"$T/node-$v.log" &
        node=$!
        PIDS=("$node")
        # The node registered (its image is on disk): then the fill.
        for _ in $(seq 600); do
            [ "$(redis-cli -p "$RPORT" hexists wp:node:refill-node capacity)" = 1 ] && break
            sleep 0.1
        done
        sleep 1
        c0=$(ticks "$node")
        t0=$(date +%s.%N)
        redis-cli -p "$RPORT" hset 'wp:env:{py200}:policy' min_hot:refill-node "$N" max_hot:refill-node "$N" >/dev/null
        ok=0
        for _ in $(seq 12000); do
            [ "$(hot)" -ge "$N" ] && { ok=1; break; }
            sleep 0.01
        done
        t1=$(date +%s.%N)
        # Every lazy-pages daemon done (the node reaps them): the fill's CPU.
        for _ in $(seq 300); do pgrep -f "criu.*lazy-pages.*$T" >/dev/null || break; sleep 0.05; done
        c1=$(ticks "$node")
        [ "$ok" = 1 ] || { echo "bench_refill: hot tier never reached $N ($v)" >&2; tail -5 "$T/node-$v.log" >&2; exit 1; }
        echo "$v $t0 $t1 $c0 $c1" >>"$T/runs.txt"
        redis-cli -p "$RPORT" hset 'wp:env:{py200}:policy' min_hot:refill-node 0 max_hot:refill-node 0 >/dev/null
        kill "$node"
        wait "$node" 2>/dev/null || true
        PIDS=()
        redis-cli -p "$RPORT" flushall >/dev/null
    done
done
python3 - "$T/runs.txt" "$OUT" "$N" "$(getconf CLK_TCK)" <<'PY'
import json, os, platform, statistics, sys
runs, out, n, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = {}
for line in open(runs):
    v, t0, t1, c0, c1 = line.split()
    res.setdefault(v, []).append((n / (float(t1) - float(t0)), (float(c1) - float(c0)) / hz * 1000 / n))
load = os.getloadavg()[0]
doc = {"kernel": platform.release(), "cpus": os.cpu_count(), "clones": n, "load1": load,
       "variants": {v: {"refills_per_s": [round(x[0], 2) for x in r],
                        "node_cpu_ms_per_clone": [round(x[1], 1) for x in r]} for v, r in res.items()}}
json.dump(doc, open(f"{out}/refill.json", "w"), indent=1)
md = ["# Refills per second: the 200 MB Python environment at a node", "",
      f"Kernel {doc['kernel']}, {doc['cpus']} CPUs, load average {load:.1f} at the end (shared machine). "
      f"One node (restore slots: one per CPU, lazy refills), its hot tier filled from 0 to {n} clones, "
      f"{len(res['poll'])} rounds, the two variants interleaved. `node CPU per clone`: the node's and its "
      "reaped children's (helpers, criu swrk, lazy-pages daemons) user + system time over the fill "
      "/ clones; the clones' own processes are not in it.", "",
      "| lazy-pages wait | refills/s (median) | each round | node CPU per clone, ms (median) |", "|---|---|---|---|"]
med = {}
for v in ("poll", "status-fd"):
    r = res[v]
    med[v] = statistics.median(x[0] for x in r)
    md.append(f"| {v} | {med[v]:.2f} | {', '.join(f'{x[0]:.2f}' for x in r)} | "
              f"{statistics.median(x[1] for x in r):.0f} |")
md += ["", f"Ratio status-fd / poll, refills/s (medians): x{med['status-fd'] / med['poll']:.2f}."]
open(f"{out}/refill.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
