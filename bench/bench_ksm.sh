#!/usr/bin/env bash
# KSM benchmark: many hot clones of one 200 MB Python environment, with
# merging off and on, in one run. For 1, 10 and 50 hot clones per mode:
# memory (the node's own measurement and the host's), private bytes per
# clone (median, p95), time until merged, ksmd CPU; then the hot
# claim-to-attached latency at 10 hot clones in both modes.
# A real Redis and a real node on this machine; the driver is
# bench/ksm_bench.py (sampling /proc and Redis) and build/bench/pool_bench
# (claims). Everything it starts is stopped and removed on exit.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
T=$(mktemp -d /tmp/wp-ksmbench-XXXXXX)
chmod 711 "$T"  # sandboxes in a user namespace reach state dirs below as an unprivileged id
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export NODE_PID_FILE="$T/node.pid"
cleanup() {
    # SIGTERM: the node destroys its sandboxes and puts KSM back as found.
    if [ -s "$NODE_PID_FILE" ]; then
        pid=$(cat "$NODE_PID_FILE")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Whatever a killed node left: its sandboxes (owner gone) and images.
    "$BUILD/warmpool-snap" --state-dir "$T/state" gc >/dev/null 2>&1 || true
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT
. bench/lib.sh
wp_bench_redis "$T" "$PORT"
wp_bench_hands "$BUILD" "$T"
# The snapshot bench's Python environment (stdlib imports, 200 MiB held),
# with the hands as PID 1 so claims attach as in production. The 200 MiB
# are random bytes: the snapshot bench's buffer has one non-zero byte per
# page, 255 distinct pages in all, which KSM would fold within a single
# clone and so flatter the figures; random pages merge only across clones.
for mode in off on; do
    ksm=false; [ "$mode" = on ] && ksm=true
    cat >"$T/py200-$mode.json" <<JSON
{"name":"py200$mode","rootfs":"host","workdir":"/work","ksm":$ksm,"init_sets_hostname":true,
 "init":["/bin/sh","-c","/usr/bin/python3 -c \"import json, re, os, sys, collections, itertools, functools, datetime, decimal, hashlib, random, threading, subprocess, email.parser, urllib.parse, pathlib, time\nbuf = os.urandom(200 << 20)\nopen('/tmp/py.ready', 'w').close()\nwhile True: time.sleep(1)\" & while [ ! -e /tmp/py.ready ]; do sleep 0.05; done; exec /.wp/warmpool-hands --socket /run/warmpool/hands.sock --workdir /work --ready-file /run/warmpool/hands.ready"],
 "ready_file":"/run/warmpool/hands.ready","ready_timeout_s":120,
 "binds":[{"source":"$T/wp","target":"/.wp"}],
 "limits":{"memory_mb":1024,"pids":64}}
JSON
done
python3 bench/ksm_bench.py --build "$BUILD" --redis-port "$PORT" --dir "$T" --out "$OUT"
cat "$OUT/ksm.md"
