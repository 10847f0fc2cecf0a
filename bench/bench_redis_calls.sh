#!/usr/bin/env bash
# bench_redis_calls.sh BUILD - what one session costs the Redis primary
# (issue 18): Redis calls per session by command and by script, the Redis
# main thread's CPU per session, and so how many sessions/s one primary core
# carries at today's calls per session. The real stack: Redis, the
# scheduler, one node with a hot pool, the model stand-in (each session: a
# bash tool call, then text). bench/redis_calls_bench.py drives it and writes
# bench/results/redis-calls.{md,json}.
#
# Knobs: SESSIONS (60), CONC (4) sessions at a time, MONITOR_SESSIONS (6),
# HOT (4) hot sandboxes, MODEL_TTFT_MS (50), OUT, KEEP=1.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
HOT=${HOT:-4}
MODEL_TTFT_MS=${MODEL_TTFT_MS:-50}
KEY=sk-bench
. bench/lib.sh
mkdir -p "$OUT"
T=$(mktemp -d /tmp/wp-callsbench-XXXXXX)
chmod 711 "$T"
RPORT=$(wp_free_port) SPORT=$(wp_free_port) MPORT=$(wp_free_port)
PIDS=()
NODE=
cleanup() {
    if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; fi
    wp_bench_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 - "$T/script.json" "$MODEL_TTFT_MS" <<'PY'
import json, sys
json.dump({"seed": 1, "ttft_ms": float(sys.argv[2]), "tokens_per_s": 500, "chunk_tokens": 4,
           "conversations": [{"turns": [
               {"content": [{"type": "text", "text": "Running it."},
                            {"type": "tool_use", "name": "bash", "input": {"command": "echo calls-bench"}}]},
               {"text": "Done."}]}]}, open(sys.argv[1], "w"))
PY
"$BUILD/wp-modelserver" --port "$MPORT" --script "$T/script.json" --log-level warn 2>"$T/model.log" &
PIDS+=($!)
wp_bench_redis "$T" "$RPORT"
wp_bench_hands "$BUILD" "$T"
wp_bench_template "$T" calls
ANTHROPIC_API_KEY=sk-bench-model "$BUILD/warmpool-scheduler" --listen "127.0.0.1:$SPORT" \
    --redis "127.0.0.1:$RPORT" --api-key "bench:$KEY" --rate-create 0 --rate-read 0 \
    --vault-key-file "$T/vault.key" --model-url "http://127.0.0.1:$MPORT" --log-level warn \
    >"$T/sched.log" 2>&1 &
PIDS+=($!)
"$BUILD/warmpool-node" --id calls-node --redis "127.0.0.1:$RPORT" --state-dir "$T/state" \
    --drain-timeout 0 --env "$T/calls.json:$HOT:$HOT" --log-level warn >"$T/node.log" 2>&1 &
NODE=$!
for _ in $(seq 600); do
    [ "$(redis-cli -p "$RPORT" llen 'wp:env:{calls}:hot')" -ge "$HOT" ] && break
    sleep 0.2
done
python3 bench/redis_calls_bench.py --sched "$SPORT" --key "$KEY" --redis "$RPORT" --pool calls \
    --hot "$HOT" --sessions "${SESSIONS:-60}" --conc "${CONC:-4}" \
    --monitor-sessions "${MONITOR_SESSIONS:-6}" --lua-dir lua --out "$OUT" \
    --conditions "{\"hot\":$HOT,\"model_ttft_ms\":$MODEL_TTFT_MS,\"redis\":\"$(redis-server --version | awk '{print $3}')\",\"nproc\":$(nproc)}"
