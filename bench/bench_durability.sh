#!/usr/bin/env bash
# bench_durability.sh BUILD - what an acknowledged event costs under each
# Redis persistence setting: POST /v1/sessions/{id}/events (one
# user.message) with wrk against one scheduler, Redis with AOF off, AOF
# `appendfsync everysec` (the default deployment) and AOF `appendfsync
# always` (the durable mode: an acknowledged event is on disk), and
# everysec with one replica and --redis-wait-replicas 1 (wait1: an
# acknowledged event is on the replica too, so a failover keeps it). The modes
# run in turn, ROUNDS times, so drift of the machine hits them alike.
# Writes bench/results/durability.json and durability.md.
set -euo pipefail
BUILD=${1:-build}
DUR=${BENCH_SECONDS:-8}
CONNS=${BENCH_CONNS:-32}
ROUNDS=${BENCH_ROUNDS:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
REDIS_PID=; SCHED_PID=; REPLICA_PID=
stop() {
    [ -n "$SCHED_PID" ] && kill "$SCHED_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
    [ -n "$REPLICA_PID" ] && kill "$REPLICA_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    SCHED_PID=; REDIS_PID=; REPLICA_PID=
}
trap 'stop; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KEY=sk-bench

run_mode() { # mode -> one RESULT line of wrk
    local mode=$1 dir=$TMP/$1 rport aof wait=()
    rm -rf "$dir"; mkdir -p "$dir"
    rport=$(free_port)
    case $mode in
        off) aof=(--appendonly no) ;;
        everysec) aof=(--appendonly yes --appendfsync everysec) ;;
        always) aof=(--appendonly yes --appendfsync always) ;;
        wait1) aof=(--appendonly yes --appendfsync everysec); wait=(--redis-wait-replicas 1) ;;
    esac
    redis-server --port "$rport" --bind 127.0.0.1 --save '' "${aof[@]}" --dir "$dir" \
        >"$dir/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    if [ "$mode" = wait1 ]; then
        local qport; qport=$(free_port); mkdir -p "$dir/replica"
        redis-server --port "$qport" --bind 127.0.0.1 --save '' --appendonly yes \
            --appendfsync everysec --dir "$dir/replica" --replicaof 127.0.0.1 "$rport" \
            >"$dir/replica.log" 2>&1 &
        REPLICA_PID=$!
        for _ in $(seq 100); do
            redis-cli -p "$qport" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
            sleep 0.1
        done
    fi
    "$BUILD/warmpool-scheduler" --listen 127.0.0.1:0 --redis "127.0.0.1:$rport" "${wait[@]}" --api-key "bench:$KEY" \
        --rate-create 0 --rate-read 0 --log-level warn --vault-key-file "$dir/vault.key" \
        >"$dir/sched.out" 2>"$dir/sched.err" &
    SCHED_PID=$!
    for _ in $(seq 50); do grep -q listening "$dir/sched.out" 2>/dev/null && break; sleep 0.1; done
    local url=http://127.0.0.1:$(awk '/listening/ {print $2}' "$dir/sched.out")
    post() { curl -sf -H "x-api-key: $KEY" -H 'content-type: application/json' -d "$2" "$url$1"; }
    id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
    local agent env session
    agent=$(post /v1/agents '{"name":"bench","model":"claude-sonnet-4-5"}' | id)
    env=$(post /v1/environments '{"name":"bench"}' | id)
    session=$(post /v1/sessions "{\"agent\":\"$agent\",\"environment_id\":\"$env\"}" | id)
    WRK_PATH=/v1/sessions/$session/events \
    WRK_BODY='{"events":[{"type":"user.message","content":[{"type":"text","text":"hello"}]}]}' \
    WRK_KEY=$KEY wrk -t2 -c"$CONNS" -d"${DUR}s" -s "$HERE/wrk_post.lua" "$url" \
        | awk '/^RESULT / {sub(/^RESULT /, ""); print}'
    stop
}

: >"$TMP/results"
for r in $(seq "$ROUNDS"); do
    for mode in off everysec always wait1; do
        echo "bench: durability round $r, $mode ($DUR s, $CONNS connections)" >&2
        echo "$mode $(run_mode "$mode")" >>"$TMP/results"
    done
done

DISK=$(df -P "$TMP" | awk 'NR==2 {print $1}')
python3 - "$TMP/results" "$OUT/durability.json" "$OUT/durability.md" "$DUR" "$CONNS" "$DISK" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, js = line.split(" ", 1)
    rows.setdefault(mode, []).append(json.loads(js))
out = {}
for mode, rs in rows.items():
    out[mode] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")}
    out[mode]["rounds"] = len(rs)
    out[mode]["non_200"] = sum(r["non_200"] for r in rs)
json.dump({"seconds": int(sys.argv[4]), "connections": int(sys.argv[5]), "disk": sys.argv[6],
           "modes": out}, open(sys.argv[2], "w"), indent=2)
base = out["everysec"]
md = [f"# What an acknowledged event costs, by Redis persistence",
      "",
      f"`bench/bench_durability.sh`: `POST /v1/sessions/{{id}}/events` (one `user.message`), wrk with "
      f"{sys.argv[5]} connections for {sys.argv[4]} s, one scheduler, one Redis on loopback "
      f"(data dir on {sys.argv[6]}); the three modes in turn, medians over "
      f"{base['rounds']} rounds. An event is acknowledged once Redis has it: in memory (AOF off: "
      "lost on any Redis restart), in the AOF fsynced within a second (everysec: up to ~1 s of "
      "acknowledged events lost on a crash of the host or of Redis before the fsync), or fsynced "
      "before the reply (always: nothing acknowledged is lost), or on a replica too before the "
      "reply (wait1: one replica, `--redis-wait-replicas 1`, the primary everysec; a Sentinel "
      "failover keeps every acknowledged event; `always` does not, replication being "
      "asynchronous).",
      "",
      "| Redis persistence | req/s | p50 ms | p95 ms | p99 ms | req/s vs everysec | p50 vs everysec |",
      "|---|---|---|---|---|---|---|"]
for mode in ("off", "everysec", "always", "wait1"):
    m = out[mode]
    md.append(f"| {mode} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['p99_ms']:.2f} | "
              f"{m['rps'] / base['rps']:.2f}x | {m['p50_ms'] / base['p50_ms']:.2f}x |")
open(sys.argv[3], "w").write("\n".join(md) + "\n")
PY
cat "$OUT/durability.md"
