#!/usr/bin/env bash
# bench_session_layout.sh BASE_BUILD NEW_BUILD - what the Redis Cluster
# layout of sessions costs on one single Redis: session create (object,
# then the organization's quota and index script, then PERSIST: three
# round trips where one script did it) and listing (the index, then one
# HMGET per session, pipelined, where one script read them all), with the
# scheduler of BASE_BUILD and of NEW_BUILD, alternating ROUNDS times, each
# run on a fresh Redis and scheduler. Writes bench/results/session-layout.json
# and .md: medians over the rounds and the ratio NEW/BASE.
set -euo pipefail
BASE=${1:?base build dir}
NEW=${2:?new build dir}
ROUNDS=${BENCH_ROUNDS:-5}
DUR=${BENCH_SECONDS:-5}
CONNS=${BENCH_CONNS:-16}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${BENCH_OUT:-$HERE/results}
. "$HERE/lib.sh"
T=$(mktemp -d)
TMP=$T
PIDS=(); RPORT=
RUNS=$(mktemp)
stop() { wp_bench_cleanup; PIDS=(); mkdir -p "$T"; } # each run on a fresh Redis and scratch dir
trap 'wp_bench_cleanup; rm -f "$RUNS"' EXIT
KEY=sk-bench

one() { # build label round
    local build=$1 label=$2 round=$3 port url
    RPORT=$(wp_free_port)
    wp_bench_redis "$TMP" "$RPORT"
    for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    "$build/warmpool-scheduler" --listen 127.0.0.1:0 --redis "127.0.0.1:$RPORT" \
        --api-key "bench:$KEY" --rate-create 0 --rate-read 0 --log-level warn \
        >"$TMP/sched.out" 2>"$TMP/sched.err" &
    PIDS=($!)
    for _ in $(seq 200); do grep -q listening "$TMP/sched.out" 2>/dev/null && break; sleep 0.1; done
    port=$(awk '/listening/ {print $2}' "$TMP/sched.out")
    url=http://127.0.0.1:$port
    sleep 0.2
    post() { curl -sf --retry 5 --retry-connrefused --retry-delay 1 -H "x-api-key: $KEY" -H 'content-type: application/json' -d "$2" "$url$1"; }
    id() { python3 -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t)["id"]) if t.startswith("{") else sys.exit("no object: " + t)' \
        || { echo "bench: setup failed; scheduler log:" >&2; tail -5 "$TMP/sched.err" >&2; exit 1; }; }
    local agent env
    agent=$(post /v1/agents '{"name":"bench","model":"claude-sonnet-4-5"}' | id)
    env=$(post /v1/environments '{"name":"bench","config":{"type":"cloud"}}' | id)
    wrk1() { # method path body
        WRK_METHOD=$1 WRK_PATH=$2 WRK_BODY=$3 WRK_KEY=$KEY wrk -t2 -c"$CONNS" -d"${DUR}s" \
            -s "$HERE/wrk_post.lua" "$url" | awk '/^RESULT / {sub(/^RESULT /, ""); print}'
    }
    local c l20 l100
    c=$(wrk1 POST /v1/sessions "{\"agent\":\"$agent\",\"environment_id\":\"$env\"}")
    l20=$(wrk1 GET "/v1/sessions?limit=20" "")
    l100=$(wrk1 GET "/v1/sessions?limit=100&agent_id=$agent" "")
    echo "{\"build\":\"$label\",\"round\":$round,\"create\":$c,\"list20\":$l20,\"list100\":$l100}" \
        >>"$RUNS"
    echo "bench: $label round $round: create $(echo "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rps"])') rps" >&2
    stop
}

for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then one "$BASE" base "$r"; one "$NEW" new "$r"
    else one "$NEW" new "$r"; one "$BASE" base "$r"; fi
done

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
python3 - "$RUNS" "$OUT/session-layout.json" "$OUT/session-layout.md" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git -C "$HERE/.." rev-parse --short HEAD)" "$CPU" \
    "$(nproc)" "$ROUNDS" "$DUR" "$CONNS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
date, commit, cpu, ncpu, rounds, dur, conns = sys.argv[4:11]
med = lambda xs: statistics.median(xs)
res = {}
for b in ("base", "new"):
    res[b] = {}
    for k in ("create", "list20", "list100"):
        rs = [r[k] for r in runs if r["build"] == b]
        res[b][k] = {m: med([x[m] for x in rs]) for m in ("rps", "p50_ms", "p95_ms")}
        res[b][k]["non_200"] = sum(x["non_200"] for x in rs)
json.dump({"date": date, "commit": commit, "cpu": cpu, "cpus": int(ncpu), "rounds": int(rounds),
           "seconds": int(dur), "connections": int(conns), "runs": runs, "median": res},
          open(sys.argv[2], "w"), indent=1)
names = {"create": "POST /v1/sessions", "list20": "GET /v1/sessions?limit=20",
         "list100": "GET /v1/sessions?limit=100&agent_id=..."}
rows = []
for k, n in names.items():
    b, w = res["base"][k], res["new"][k]
    rows.append(f"| {n} | {b['rps']:.0f} | {w['rps']:.0f} | {w['rps'] / b['rps']:.2f} | "
                f"{b['p50_ms']:.2f} / {b['p95_ms']:.2f} | {w['p50_ms']:.2f} / {w['p95_ms']:.2f} | "
                f"{b['non_200'] + w['non_200']} |")
md = f"""# Sessions' Redis Cluster layout on a single Redis: create and list

{date}, commit {commit}, {cpu} ({ncpu} CPUs, shared with other work). One scheduler and one
redis-server on loopback per run, fresh each run; `wrk -t2 -c{conns} -d{dur}s`; the two
builds alternate, {rounds} rounds each; medians over the rounds. base: the scheduler before
(one script creates a session; one script lists); new: the object in its own slot, then the
organization's quota + index script, then `PERSIST` (three round trips); listing reads the
index, then one `HMGET` per session, pipelined (`bench/bench_session_layout.sh`). The list
runs follow the create run, so the index holds every session created in it.

| request | base rps | new rps | new/base | base p50 / p95 ms | new p50 / p95 ms | non-200 |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
open(sys.argv[3], "w").write(md)
print(md)
PY
