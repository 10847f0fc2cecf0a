#!/usr/bin/env bash
# The whole stack on this machine with embedded defaults: a Redis of its own,
# one node daemon keeping hot sandboxes of a default environment (host /usr,
# the hands as PID 1), the scheduler's HTTP API. Then a demo: a sandbox is
# provisioned through /v1/sandboxes and runs a command; the timings and the
# tier that served it are printed. Keeps serving until Ctrl-C.
#   deploy/run-local.sh [BUILD]      (make run)
set -euo pipefail
BUILD=${1:-build}
STATE=${WARMPOOL_STATE:-/var/lib/warmpool}
RUN=$(mktemp -d /tmp/warmpool-run-XXXXXX)
KEY=sk-local-demo
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(port); HPORT=$(port)
say() { printf '\033[1mwarmpool:\033[0m %s\n' "$*"; }
pids=()
cleanup() {
    say "stopping"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

say "redis on 127.0.0.1:$RPORT (data in $RUN)"
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$RUN" --appendonly yes \
    --appendfsync everysec --save '' --daemonize yes --logfile "$RUN/redis.log" >/dev/null

mkdir -p "$STATE/wp"
cp "$BUILD/warmpool-hands" "$STATE/wp/warmpool-hands.new"
mv "$STATE/wp/warmpool-hands.new" "$STATE/wp/warmpool-hands"
cat >"$RUN/default.json" <<JSON
{"name":"default","rootfs":"host","workdir":"/work","hostname":"sandbox",
 "init":["/.wp/warmpool-hands","--socket","/run/warmpool/hands.sock","--workdir","/work",
         "--ready-file","/run/warmpool/hands.ready"],
 "ready_file":"/run/warmpool/hands.ready",
 "binds":[{"source":"$STATE/wp","target":"/.wp"}],
 "setup":["python3 -c 'import json, re, hashlib' && echo python warmed"],
 "limits":{"memory_mb":512,"pids":256,"cpu":1.0}}
JSON
say "node daemon: building the default environment and warming its pool"
"$BUILD/warmpool-node" --id local --redis "127.0.0.1:$RPORT" --state-dir "$STATE" \
    --env "$RUN/default.json:4:8" --log-level info 2> >(sed 's/^/  node | /' >&2) &
pids+=($!)
"$BUILD/warmpool-scheduler" --listen "127.0.0.1:$HPORT" --redis "127.0.0.1:$RPORT" \
    --api-key "local:$KEY" 2> >(sed 's/^/  api  | /' >&2) >/dev/null &
pids+=($!)
for _ in $(seq 600); do
    n=$(redis-cli -p "$RPORT" llen 'wp:env:{default}:hot' 2>/dev/null || echo 0)
    [ "${n:-0}" -ge 4 ] && break
    sleep 0.1
done
say "hot pool ready: $(redis-cli -p "$RPORT" llen 'wp:env:{default}:hot') clones"
api() { curl -sS -H "x-api-key: $KEY" -H 'content-type: application/json' "$@"; }
sb=$(api -w '\n%{time_total}' -X POST "http://127.0.0.1:$HPORT/v1/sandboxes" \
     -d '{"environment":"default","env":{"GREETING":"hello from warmpool"}}')
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1].split("\n")[0])["id"])' "$sb")
say "sandbox $id: create answered in $(echo "$sb" | tail -1) s (before the sandbox is attached)"
out=$(api -w '\n%{time_total}' -X POST "http://127.0.0.1:$HPORT/v1/sandboxes/$id/execute" \
      -d '{"name":"bash","input":{"command":"echo $GREETING; hostname; cat /proc/1/comm; python3 -c \"import sys; print(sys.version.split()[0])\""}}')
say "bash ran in the sandbox (execute answered in $(echo "$out" | tail -1) s):"
python3 -c 'import json,sys; print("    " + json.loads(sys.argv[1].rsplit("\n", 1)[0])["content"][0]["text"].replace("\n", "\n    "))' "$out"
api "http://127.0.0.1:$HPORT/v1/sandboxes/$id" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("    tier %s, node %s, claim %.2f ms, attached %.2f ms" % (d["tier"], d["node"],
      d["timings"].get("claim_ms", 0), d["timings"].get("attached_ms", 0)))'
api -X DELETE "http://127.0.0.1:$HPORT/v1/sandboxes/$id" >/dev/null
"$BUILD/warmpool" --redis "127.0.0.1:$RPORT" pool status default | sed 's/^/    /'
say "serving: API http://127.0.0.1:$HPORT (x-api-key: $KEY), redis 127.0.0.1:$RPORT; Ctrl-C to stop"
wait
