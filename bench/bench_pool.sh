#!/usr/bin/env bash
# Pool benchmark: claim -> attached and answering (agentlink hello +
# attach), by tier, at 1, 10 and 50 concurrent claims with 10 hot clones;
# 100 concurrent hot claims; the node's refill rate. A real Redis and a
# real node on this machine; sandboxes run the hands as PID 1.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
T=$(mktemp -d /tmp/wp-poolbench-XXXXXX)
chmod 711 "$T"  # sandboxes in a user namespace reach state dirs below as an unprivileged id
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${NODE:-}" ] && kill "$NODE" 2>/dev/null && wait "$NODE" 2>/dev/null || true
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT
. bench/lib.sh
wp_bench_redis "$T" "$PORT"
wp_bench_hands "$BUILD" "$T"
wp_bench_template "$T" bench
"$BUILD/warmpool-node" --id bench-node --redis "127.0.0.1:$PORT" --state-dir "$T/state" \
    --env "$T/bench.json:10:10" --heartbeat-ttl 5 --log-level warn 2>"$T/node.log" &
NODE=$!
hot() { redis-cli -p "$PORT" llen 'wp:env:{bench}:hot'; }
wait_hot() { for _ in $(seq 6000); do [ "$(hot)" -ge "$1" ] && return 0; sleep 0.01; done; echo "bench_pool: hot tier never reached $1" >&2; cat "$T/node.log" >&2; exit 1; }
wait_hot 10
for c in 1 10 50; do
    rounds=20; [ "$c" = 50 ] && rounds=5
    "$BUILD/bench/pool_bench" --redis "$PORT" --env bench --hot 10 --concurrency "$c" \
        --rounds "$rounds" --out "$T/c$c.json"
done
"$BUILD/bench/pool_bench" --redis "$PORT" --env bench --hot 10 --concurrency 1 --rounds 20 \
    --relay --out "$T/r1.json"
"$BUILD/bench/pool_bench" --redis "$PORT" --env bench --hot 10 --concurrency 10 --rounds 20 \
    --relay --out "$T/r10.json"
redis-cli -p "$PORT" hset 'wp:env:{bench}:policy' min_hot:bench-node 100 max_hot:bench-node 100 >/dev/null
start=$(date +%s.%N)
wait_hot 100
refill_s=$(python3 -c "import time; print(round(time.time() - $start, 3))")
"$BUILD/bench/pool_bench" --redis "$PORT" --env bench --hot 100 --concurrency 100 --rounds 3 \
    --out "$T/c100.json"
python3 - "$T" "$OUT" "$refill_s" <<'PY'
import json, sys, platform, os
t, out, refill = sys.argv[1], sys.argv[2], float(sys.argv[3])
res = {"kernel": platform.release(), "cpus": os.cpu_count(),
       "refill_90_clones_s": refill, "refill_clones_per_s": round(90 / refill, 1),
       "runs": [json.load(open(f"{t}/{c}.json")) for c in ("c1", "c10", "c50", "c100", "r1", "r10")]}
json.dump(res, open(f"{out}/pool.json", "w"), indent=1)
md = ["# pool benchmark", "",
      f"Kernel {res['kernel']}, {res['cpus']} CPUs. One node, a Redis on loopback; sandboxes run",
      "the hands as PID 1 (host /usr, lazy restores). \"attached\" = claim + agentlink connect,",
      "hello and attach answered by the sandbox. Times in ms.", "",
      "| path | concurrent claims | hot clones | tier | n | claim p50 | claim p95 | attached p50 | attached p95 | all attached p50 |",
      "|---|---|---|---|---|---|---|---|---|---|"]
for r in res["runs"]:
    for tier, v in r["tiers"].items():
        if v["n"]:
            md.append(f"| {r['path']} | {r['concurrency']} | {r['hot_target']} | {tier} | {v['n']} | {v['claim_median_ms']:.2f} | {v['claim_p95_ms']:.2f} | {v['attached_median_ms']:.2f} | {v['attached_p95_ms']:.2f} | {r['all_attached_ms']['median']:.1f} |")
md += ["", f"Refill: 90 clones restored in {refill:.2f} s on one node ({res['refill_clones_per_s']} clones/s)."]
open(f"{out}/pool.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
