#!/usr/bin/env bash
# bench_scheduler.sh BUILD - one warmpool-scheduler process on loopback,
# measured with wrk: session create and event append (rps, p50/p95/p99),
# then events/s fanned out to 100 SSE subscribers. Writes
# bench/results/scheduler.json and bench/results/scheduler.md.
set -euo pipefail
BUILD=${1:-build}
DUR=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNS:-32}
THREADS=${BENCH_THREADS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
REDIS_PID=; SCHED_PID=
cleanup() {
    [ -n "$SCHED_PID" ] && kill "$SCHED_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

KEY=sk-bench
"$BUILD/warmpool-scheduler" --listen 127.0.0.1:0 --redis "127.0.0.1:$RPORT" --api-key "bench:$KEY" \
    --rate-create 0 --rate-read 0 --log-level warn >"$TMP/sched.out" 2>"$TMP/sched.err" &
SCHED_PID=$!
for _ in $(seq 50); do grep -q listening "$TMP/sched.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(awk '/listening/ {print $2}' "$TMP/sched.out")
URL=http://127.0.0.1:$PORT
sleep 0.2

post() { curl -sf -H "x-api-key: $KEY" -H 'content-type: application/json' -d "$2" "$URL$1"; }
AGENT=$(post /v1/agents '{"name":"bench","model":"claude-sonnet-4-5"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
ENV=$(post /v1/environments '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
SESSION=$(post /v1/sessions "{\"agent\":\"$AGENT\",\"environment_id\":\"$ENV\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

run_wrk() { # path body
    WRK_PATH=$1 WRK_BODY=$2 WRK_KEY=$KEY wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" \
        -s "$HERE/wrk_post.lua" "$URL" | awk '/^RESULT / {sub(/^RESULT /, ""); print}'
}
echo "bench: session create ($DUR s, $CONNS connections)" >&2
CREATE=$(run_wrk /v1/sessions "{\"agent\":\"$AGENT\",\"environment_id\":\"$ENV\"}")
echo "bench: event append" >&2
APPEND=$(run_wrk "/v1/sessions/$SESSION/events" \
    '{"events":[{"type":"user.message","content":[{"type":"text","text":"hello"}]}]}')
echo "bench: SSE fan-out to 100 subscribers" >&2
SESSION2=$(post /v1/sessions "{\"agent\":\"$AGENT\",\"environment_id\":\"$ENV\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
FANOUT=$(python3 "$HERE/sse_fanout.py" "$PORT" "$KEY" "$SESSION2" 100 "${BENCH_EVENTS:-2000}" | awk '/^RESULT / {sub(/^RESULT /, ""); print}')

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
NCPU=$(nproc)
REDIS_V=$(redis-server --version | awk '{print $3}')
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
COMMIT=$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
cat >"$OUT/scheduler.json" <<JSON
{
  "date": "$DATE",
  "commit": "$COMMIT",
  "machine": {"cpu": "$CPU", "cpus": $NCPU, "redis": "$REDIS_V"},
  "setup": {"scheduler_processes": 1, "wrk_threads": $THREADS, "wrk_connections": $CONNS, "seconds": $DUR, "build": "$BUILD"},
  "session_create": $CREATE,
  "event_append": $APPEND,
  "sse_fanout": $FANOUT
}
JSON
python3 - "$OUT/scheduler.json" "$OUT/scheduler.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c, a, f = r["session_create"], r["event_append"], r["sse_fanout"]
md = f"""# warmpool-scheduler benchmark

{r['date']}, commit {r['commit']}, {r['machine']['cpu']} ({r['machine']['cpus']} CPUs), redis {r['machine']['redis']}.
One scheduler process and one redis-server on loopback; load from `wrk -t{r['setup']['wrk_threads']} -c{r['setup']['wrk_connections']} -d{r['setup']['seconds']}s`
(`bench/bench_scheduler.sh {r['setup']['build']}`); rate limits off. Every request is authenticated,
validated and written to Redis (one Lua script) before it is answered.

| operation | requests/s | p50 ms | p95 ms | p99 ms | non-200 |
|---|---|---|---|---|---|
| `POST /v1/sessions` | {c['rps']} | {c['p50_ms']} | {c['p95_ms']} | {c['p99_ms']} | {c['non_200']} |
| `POST /v1/sessions/{{id}}/events` (one `user.message`) | {a['rps']} | {a['p50_ms']} | {a['p95_ms']} | {a['p99_ms']} | {a['non_200']} |

SSE fan-out: {f['subscribers']} subscribers on one session, {f['events']} events appended (pipelined, one
connection): {f['delivered']} deliveries in {f['seconds']} s = **{f['events_per_s_delivered']} events/s delivered**
({f['events_per_s_per_subscriber']} events/s per subscriber; appending took {f['append_seconds']} s:
when the two times are equal, delivery kept pace with the appender and the figure is a lower bound).
The machine is shared with other work, so figures vary between runs; the subscribers and the
appender are Python asyncio clients on the same 2 CPUs.
"""
open(sys.argv[2], "w").write(md)
PY
cat "$OUT/scheduler.md"
