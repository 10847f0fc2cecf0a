#!/usr/bin/env bash
# TTFT benchmark (`make bench-ttft`): time to first token and to the first
# tool result of agent sessions under open-loop Poisson arrivals, on this
# machine, against the same model-server latency distribution in every
# mode. A real Redis, a real node with three environments, a real
# scheduler, and build/wp-modelserver playing tests/modelserver/scripts/
# bench-bash.json (the first reply streams text, then calls bash).
#
# Modes:
#   baseline  a coupled harness (bench/ttft_bench itself): cold sandbox via
#             /v1/sandboxes on an environment whose policy is tiers=cold,
#             attached, and only then the model call
#   hot       warmpool sessions with a hot pool (tiers=hot,warm,cold)
#   warm      warmpool sessions, hot tier off (tiers=warm,cold, no hot clones)
#   cold      warmpool sessions, cold boots only (tiers=cold)
# hot/warm/cold need the scheduler's brain; without one they are skipped
# after a one-session probe.
#
# Knobs (environment): FULL=1 (rates 1 5 10 25 50 100, 20 s each), RATES,
# DURATION (s per rate), MODES, ENVS, MAX_INFLIGHT (sessions at once; more
# arrivals are counted as shed), TIMEOUT (s per session), HOT (hot clones
# per environment in mode hot: the pool's min_hot), HOT_MAX (its max_hot,
# default HOT; above HOT the node's autoscaler sizes the tier),
# SCRIPT (the model server's script; bench-bash-first.json calls bash
# before any text, streamed fast), SCHED_MODEL_ARGS (how the scheduler reaches
# the model server; default: detected from warmpool-scheduler --help),
# NODE_ARGS (extra warmpool-node flags, e.g. --insecure-allow-unconfined),
# HANDS_ARGS (extra warmpool-hands flags in every template, e.g. --lazy-shell),
# OUT (results dir, default bench/results), RUNS_OUT (also keep each run's
# JSON there, with the claims it made by tier: bench_capacity.sh reads them).
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if [ "${FULL:-0}" = 1 ]; then
    RATES=${RATES:-"1 5 10 25 50 100"}
    DURATION=${DURATION:-20}
else
    RATES=${RATES:-"1 5"}
    DURATION=${DURATION:-10}
fi
MODES=${MODES:-"baseline hot warm cold"}
ENVS=${ENVS:-"trivial py200 slow5s"}
MAX_INFLIGHT=${MAX_INFLIGHT:-48}
TIMEOUT=${TIMEOUT:-60}
HOT=${HOT:-8}
HOT_MAX=${HOT_MAX:-$HOT}
SCRIPT=${SCRIPT:-tests/modelserver/scripts/bench-bash.json}
KEY=sk-bench

T=$(mktemp -d /tmp/wp-ttftbench-XXXXXX)
chmod 711 "$T"  # sandboxes in a user namespace reach state dirs below as an unprivileged id
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
MPORT=$(free_port)
SPORT=$(free_port)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$T" --logfile "$T/redis.log" >/dev/null
"$BUILD/wp-modelserver" --port "$MPORT" --script "$SCRIPT" \
    --seed 1 --no-auth --log-level warn 2>"$T/msrv.log" &
PIDS+=($!)

# Environments: every sandbox runs the hands as PID 1 over the host's /usr.
mkdir -p "$T/wp"
cp "$BUILD/warmpool-hands" "$T/wp/"
HANDS_EXTRA=""
[ -n "${HANDS_ARGS:-}" ] && HANDS_EXTRA=",\"$HANDS_ARGS\""
tmpl() { # name setup-json-array memory_mb
    cat >"$T/$1.json" <<JSON
{"name":"$1","rootfs":"host","workdir":"/work","env":{"PATH":"/usr/bin:/bin"},
 "init_sets_hostname":true,"init":["/.wp/warmpool-hands","--socket","/run/warmpool/hands.sock","--workdir","/work",
         "--ready-file","/run/warmpool/hands.ready"$HANDS_EXTRA],
 "ready_file":"/run/warmpool/hands.ready","setup":$2,
 "binds":[{"source":"$T/wp","target":"/.wp"}],
 "limits":{"memory_mb":$3,"pids":64}}
JSON
}
tmpl trivial '[]' 128
# 200 MB touched by a Python process that lives on in the sandbox (and in
# its image), next to the hands.
tmpl py200 '["nohup /usr/bin/python3 -c \"import json, re, collections\nb = bytearray(200 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nopen(\\\"/tmp/py.ready\\\", \\\"w\\\").close()\nimport time\nwhile True: time.sleep(3600)\" >/dev/null 2>&1 & while [ ! -e /tmp/py.ready ]; do sleep 0.05; done"]' 512
tmpl slow5s '["sleep 5"]' 128
NODE_ENVS=()
for e in $ENVS; do NODE_ENVS+=(--env "$T/$e.json:0:0"); done
"$BUILD/warmpool-node" --id bench-node --redis "127.0.0.1:$RPORT" --state-dir "$T/state" \
    "${NODE_ENVS[@]}" --heartbeat-ttl 5 --log-level warn ${NODE_ARGS:-} 2>"$T/node.log" &
PIDS+=($!)
NODE_PID=$!

if [ -z "${SCHED_MODEL_ARGS+x}" ]; then
    # The brain's flag for the model's base URL, whatever it is called.
    flag=$("$BUILD/warmpool-scheduler" --help | grep -o -- '--model[a-z-]*url' | head -1 || true)
    SCHED_MODEL_ARGS=${flag:+$flag http://127.0.0.1:$MPORT}
fi
# shellcheck disable=SC2086
"$BUILD/warmpool-scheduler" --listen "127.0.0.1:$SPORT" --redis "127.0.0.1:$RPORT" \
    --api-key "bench:$KEY" --rate-create 0 --rate-read 0 --log-level warn \
    $SCHED_MODEL_ARGS 2>"$T/sched.log" &
PIDS+=($!)
SCHED_PID=$!

WP="$BUILD/warmpool --redis 127.0.0.1:$RPORT"
hot() { redis-cli -p "$RPORT" llen "wp:env:{$1}:hot"; }
wait_images() {
    for _ in $(seq 3000); do
        local ready=0 n=0
        for e in $ENVS; do
            n=$((n + 1))
            s=$(redis-cli -p "$RPORT" hget wp:node:bench-node "build:$e")
            case "$s" in ready*) ready=$((ready + 1)) ;; failed*) echo "bench_ttft: image $e: $s" >&2; cat "$T/node.log" >&2; exit 1 ;; esac
        done
        [ "$ready" = "$n" ] && return 0
        sleep 0.2
    done
    echo "bench_ttft: images not built in 10 minutes" >&2
    exit 1
}
policy() { # env tiers min_hot [max_hot]
    $WP pool set "$1" "tiers=$2" >/dev/null
    $WP pool set "$1" --node bench-node "min_hot=$3" "max_hot=${4:-$3}" >/dev/null
    for _ in $(seq 1200); do
        [ "$(hot "$1")" = "$3" ] && return 0
        sleep 0.1
    done
    echo "bench_ttft: $1: hot tier never reached $3" >&2
}
# Busy CPU time of the whole machine so far (user, nice, system, irq,
# softirq, steal), in clock ticks.
cpu_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# CPU of a process and of the children it has reaped (clock ticks): the
# node's is every restore and destroy (helpers, criu, the clones' tasks once
# reaped), whatever else runs on the machine.
tree_cpu() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}'; }
REDIS_PID=""
refill_wait() { # env n: until the hot tier holds n again (60 s at most)
    for _ in $(seq 600); do
        [ "$(hot "$1")" -ge "$2" ] 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench_ttft: $1: hot tier not back at $2 within 60 s" >&2
}
for _ in $(seq 100); do curl -sf "127.0.0.1:$SPORT/metrics" >/dev/null && break; sleep 0.1; done
echo "bench_ttft: building images for $ENVS (first run only takes a while)"
wait_images

AGENT=""
declare -A ENV_ID
api() { curl -sf -H "x-api-key: $KEY" -H 'content-type: application/json' "$@"; }
jget() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
warmpool_setup() {
    AGENT=$(api -X POST "127.0.0.1:$SPORT/v1/agents" \
        -d '{"name":"ttft-bench","model":"claude-bench","tools":[{"type":"agent_toolset_20260401"}]}' | jget id)
    for e in $ENVS; do
        ENV_ID[$e]=$(api -X POST "127.0.0.1:$SPORT/v1/environments" \
            -d "{\"name\":\"$e\",\"config\":{\"type\":\"cloud\"},\"metadata\":{\"warmpool.pool\":\"$e\"}}" | jget id)
    done
}

run() { # mode env rate out [extra]
    local mode=$1 env=$2 rate=$3 out=$4
    shift 4
    local args=(--sched "http://127.0.0.1:$SPORT" --key "$KEY" --msrv "http://127.0.0.1:$MPORT"
                --env "$env" --rate "$rate" --duration "$DURATION" --max-inflight "$MAX_INFLIGHT"
                --timeout "$TIMEOUT" --out "$out")
    if [ "$mode" = baseline ]; then
        "$BUILD/bench/ttft_bench" --mode baseline "${args[@]}" "$@"
    else
        "$BUILD/bench/ttft_bench" --mode warmpool --agent "$AGENT" --environment-id "${ENV_ID[$env]}" \
            "${args[@]}" "$@"
    fi
}

# "hot warm cold": claims of an environment so far (absent counters are 0).
claim_counts() {
    redis-cli -p "$RPORT" hmget "wp:env:{$1}:stats" claims_hot claims_warm claims_cold |
        sed 's/^$/0/' | tr '\n' ' '
}
RUNS=()
brain=unknown
for mode in $MODES; do
    if [ "$mode" != baseline ] && [ "$brain" = unknown ]; then
        warmpool_setup
        first=$(echo $ENVS | cut -d' ' -f1)
        policy "$first" hot,warm,cold 1
        # One session first: is there a brain that answers?
        if run probe "$first" 50 "$T/probe.json" --duration 0.1 --timeout 20 >/dev/null 2>&1 &&
            python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["completed"] > 0 else 1)' "$T/probe.json"; then
            brain=yes
        else
            brain=no
            echo "bench_ttft: no session got a first token (is the brain in this scheduler, and" \
                 "SCHED_MODEL_ARGS right: '${SCHED_MODEL_ARGS}'?); skipping hot/warm/cold" >&2
        fi
    fi
    [ "$mode" != baseline ] && [ "$brain" = no ] && continue
    for e in $ENVS; do
        case $mode in
            baseline|cold) policy "$e" cold 0 ;;
            warm) policy "$e" warm,cold 0 ;;
            hot) policy "$e" hot,warm,cold "$HOT" "$HOT_MAX" ;;
        esac
        for r in $RATES; do
            # Each rate starts from a full hot tier (the run before it may
            # have drained it): the curve shows what a rate sustains.
            [ "$mode" = hot ] && refill_wait "$e" "$HOT"
            f="$T/run-$mode-$e-$r.json"
            echo "bench_ttft: mode=$mode env=$e rate=$r/s for ${DURATION}s"
            before=$(claim_counts "$e")
            [ -n "$REDIS_PID" ] || REDIS_PID=$(redis-cli -p "$RPORT" info server | tr -d '\r' | awk -F: '/^process_id:/{print $2}')
            busy0=$(cpu_busy) node0=$(tree_cpu "$NODE_PID") sched0=$(tree_cpu "$SCHED_PID") redis0=$(tree_cpu "$REDIS_PID")
            run "$mode" "$e" "$r" "$f" || true
            [ -f "$f" ] && RUNS+=("$f")
            after=$(claim_counts "$e")
            # Let the node destroy what the run released, and refill what
            # it claimed, before the next (counted in the run's CPU: a
            # session's sandbox goes, and its replacement is made).
            sleep 2
            [ "$mode" = hot ] && refill_wait "$e" "$HOT"
            busy1=$(cpu_busy) node1=$(tree_cpu "$NODE_PID") sched1=$(tree_cpu "$SCHED_PID") redis1=$(tree_cpu "$REDIS_PID")
            if [ -f "$f" ] && [ -n "${RUNS_OUT:-}" ]; then
                mkdir -p "$RUNS_OUT"
                tck=$(getconf CLK_TCK)
                python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); b=[int(x or 0) for x in sys.argv[2].split()]; a=[int(x or 0) for x in sys.argv[3].split()]; o["claims"]={t: a[i]-b[i] for i, t in enumerate(["hot","warm","cold"])}; o["machine_busy_ms"], o["node_cpu_ms"], o["sched_cpu_ms"], o["redis_cpu_ms"] = map(int, sys.argv[5:9]); json.dump(o, open(sys.argv[4], "w"))' \
                    "$f" "$before" "$after" "$RUNS_OUT/$(basename "$f")" "$(( (busy1 - busy0) * 1000 / tck ))" \
                    "$(( (node1 - node0) * 1000 / tck ))" "$(( (sched1 - sched0) * 1000 / tck ))" "$(( (redis1 - redis0) * 1000 / tck ))"
            fi
        done
        [ "$mode" = hot ] && policy "$e" hot,warm,cold 0
    done
done
curl -s "127.0.0.1:$SPORT/metrics" >"$T/metrics.txt" || true

python3 bench/ttft_report.py "$OUT" "$(uname -r)" "$(nproc)" "$DURATION" "${RUNS[@]}"
# ttft_report.py draws bench/results/ttft.svg itself; ttft.gp is the same
# plot for gnuplot users (gnuplot ttft.gp -> ttft.svg).
echo "bench_ttft: plot $OUT/ttft.svg"
cat "$OUT/ttft.md"
