#!/usr/bin/env bash
# The whole stack on this machine with embedded defaults: a Redis of its own,
# one node daemon, the scheduler (HTTP API + brain), and a model: Anthropic's
# API when ANTHROPIC_API_KEY is set, else the local model server. It creates
# an agent and an environment through the API (the node builds the
# environment's image and warms its pool, progress shown), runs one demo
# session whose tokens, tool calls, time to first token and sandbox tier are
# printed as they happen, and keeps serving until Ctrl-C.
#   deploy/run-local.sh [BUILD]      (make run)
set -euo pipefail
# On a terminal, run as a job of our own, the one the terminal sends Ctrl-C
# to: make (our parent) then does not get it and fail with "Error 130".
# Ctrl-C is the normal way to end this, so it ends with status 0.
if [ -t 0 ] && [ -z "${WP_RUN_JOB:-}" ]; then
    set -m
    WP_RUN_JOB=1 "$0" "$@"
    exit
fi
BUILD=${1:-build}
BUILD=$(cd "$BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${WARMPOOL_STATE:-/var/lib/warmpool}
RUN=$(mktemp -d /tmp/warmpool-run-XXXXXX)
KEY=sk-local-demo
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(port); HPORT=$(port); MPORT=$(port)
say() { printf '\033[1mwarmpool:\033[0m %s\n' "$*"; }
pids=()
ENV=""
cleanup() {
    trap - EXIT INT TERM
    say "stopping"
    # Withdraw the demo environment first: the node destroys its clones and
    # deletes its image, so runs do not pile images up in $STATE.
    if [ -n "$ENV" ]; then
        # Sessions first: each gives its sandbox back.
        for s in $(curl -s -H "x-api-key: $KEY" "http://127.0.0.1:$HPORT/v1/sessions?limit=100" |
                   python3 -c 'import json,sys; print(" ".join(x["id"] for x in json.load(sys.stdin)["data"]))' 2>/dev/null); do
            curl -s -X DELETE -H "x-api-key: $KEY" "http://127.0.0.1:$HPORT/v1/sessions/$s" >/dev/null || true
        done
        curl -s -X DELETE -H "x-api-key: $KEY" "http://127.0.0.1:$HPORT/v1/environments/$ENV" >/dev/null || true
        for _ in $(seq 150); do
            [ -z "$(ls -d "$STATE/images/$ENV"-* 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # Each tail | sed is a process group of its own (job control).
    for p in "${tails[@]}"; do
        g=$(ps -o pgid= -p "$p" 2>/dev/null | tr -d ' ')
        kill -- "-${g:-$p}" 2>/dev/null || kill "$p" 2>/dev/null || true
    done
    redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM
# Daemons run in process groups of their own (job control), logging to
# files shown with a prefix: Ctrl-C reaches only this script, whose cleanup
# still talks to them, then stops them.
set -m
start() {
    local name=$1; shift
    "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
    pids+=($!)
    tail -n +1 -F "$RUN/$name.log" 2>/dev/null | sed -u "s/^/  $(printf '%-5s' "$name") | /" >&2 &
    tails+=($!)
    disown %%   # no "[2] Terminated tail ..." when cleanup stops it
}
tails=()

# WARMPOOL_REDIS_DURABLE=1: every acknowledged event is on disk before the
# reply (appendfsync always; bench/results/durability.md says what it costs);
# else up to ~1 s of acknowledged events can be lost if Redis or the host dies.
FSYNC=everysec
[ -n "${WARMPOOL_REDIS_DURABLE:-}" ] && FSYNC=always
say "redis on 127.0.0.1:$RPORT (data in $RUN, appendfsync $FSYNC)"
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$RUN" --appendonly yes \
    --appendfsync "$FSYNC" --save '' --daemonize yes --logfile "$RUN/redis.log" >/dev/null

if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    MODEL_URL=${ANTHROPIC_BASE_URL:-https://api.anthropic.com}
    MODEL=${WARMPOOL_DEMO_MODEL:-claude-sonnet-4-5}
    say "model: $MODEL at $MODEL_URL (ANTHROPIC_API_KEY is set)"
else
    MODEL_URL="http://127.0.0.1:$MPORT"
    MODEL=claude-local-demo
    export ANTHROPIC_API_KEY=sk-local-model
    say "model: the local model server on $MODEL_URL (set ANTHROPIC_API_KEY to use Anthropic's API)"
    start model "$BUILD/wp-modelserver" --port "$MPORT" --script "$HERE/demo-model.json" \
        --log-level warn
fi

# The node serves the environments created through the API (its catalog
# reads them from Redis); sandboxes bind the hands from the build directory.
start node "$BUILD/warmpool-node" --id local --redis "127.0.0.1:$RPORT" --state-dir "$STATE" \
    --thp always --free-page-reporting off --log-level info
start api "$BUILD/warmpool-scheduler" --listen "127.0.0.1:$HPORT" --redis "127.0.0.1:$RPORT" \
    --api-key "local:$KEY" --model-url "$MODEL_URL" --brain on --hands-dir "$BUILD"
api() { curl -sS -H "x-api-key: $KEY" -H 'content-type: application/json' "$@"; }
for _ in $(seq 100); do
    api "http://127.0.0.1:$HPORT/v1/agents" >/dev/null 2>&1 && break
    sleep 0.1
done
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
AGENT=$(api -X POST "http://127.0.0.1:$HPORT/v1/agents" -d "{\"name\":\"demo\",\"model\":\"$MODEL\",
  \"system\":\"You are a concise assistant with a Linux sandbox. Use bash when it helps.\",
  \"tools\":[{\"type\":\"agent_toolset_20260401\"}]}" | field id)
ENV=$(api -X POST "http://127.0.0.1:$HPORT/v1/environments" -d '{"name":"default",
  "config":{"type":"cloud"},"metadata":{"warmpool.min_hot":"4","warmpool.max_hot":"8"}}' | field id)
say "agent $AGENT, environment $ENV: the node builds its image and warms 4 hot clones"
last=""
for _ in $(seq 1200); do
    n=$(redis-cli -p "$RPORT" llen "wp:env:{$ENV}:hot" 2>/dev/null || echo 0)
    b=$(redis-cli -p "$RPORT" hget "wp:tpl:{$ENV}" build:local 2>/dev/null || true)
    if [ "$b" != "$last" ] && [ -n "$b" ]; then say "  build: $b"; last=$b; fi
    case "$b" in failed*) say "the environment failed to build"; exit 1 ;; esac
    [ "${n:-0}" -ge 4 ] && break
    sleep 0.1
done
[ -z "$last" ] && say "  build: $(redis-cli -p "$RPORT" hget "wp:tpl:{$ENV}" build:local)"
say "hot pool ready: $(redis-cli -p "$RPORT" llen "wp:env:{$ENV}:hot") clones"
"$BUILD/warmpool" --redis "127.0.0.1:$RPORT" pool status "$ENV" | sed 's/^/    /'

say "demo session (tokens stream as the model writes them; the sandbox is claimed meanwhile)"
python3 "$HERE/demo_session.py" --api "http://127.0.0.1:$HPORT" --key "$KEY" \
    --agent "$AGENT" --env "$ENV" --redis-port "$RPORT"
say "metrics: http://127.0.0.1:$HPORT/metrics (TTFT, attach, claim, tool and model latency)"
curl -s "http://127.0.0.1:$HPORT/metrics" | grep -E '^warmpool_(ttft_seconds|claim_seconds)_(count|sum)' \
    | sed 's/^/    /' || true
say "serving: API http://127.0.0.1:$HPORT (x-api-key: $KEY), redis 127.0.0.1:$RPORT; Ctrl-C to stop"
wait
