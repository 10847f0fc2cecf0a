#!/usr/bin/env bash
# First-call benchmark: `POST /v1/sandboxes` to the first `bash` result, in
# one run, for (rows interleaved, so each sees the same machine):
#   shell-at-boot            this build: the hands start their shell when they
#                            come up; the link's route, hello and attach go out
#                            together (pipelined, issue 20); the node runs a
#                            no-op call in each new hot clone (--warm-clones)
#   shell-at-boot, not warmed  the same with a second node (own Redis) started
#                            with --warm-clones off: the clone's first call
#                            faults in the shell's code
#   shell-at-boot, one by one  the same node and hands through a second
#                            scheduler with WARMPOOL_RELAY_PIPE=off: each of the
#                            three waits for the answer before the next
#   shell-lazy               the same hands with --lazy-shell, on the node with
#                            --warm-clones off: the shell starts on the first
#                            call (before issue 20)
#   shell-at-boot, BASE      with BASE=DIR (a build dir of another revision:
#                            its node, scheduler and hands, with their own
#                            Redis): before and after in one run
# A real Redis, node and scheduler; hot clones only (each environment keeps
# HOT of them; sandboxes are made one at a time, rows in a shuffled order
# each round, and each create waits until every row's hot tier is full
# again, then SETTLE_MS: what is measured is the claim, attach and call, not
# a refill's restore competing for the CPUs). Knobs: N (sandboxes per row,
# default 60), HOT (4), SETTLE_MS (50), OUT (results dir), BASE, BASE_NAME
# (its label, default "before").
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
N=${N:-60}
HOT=${HOT:-4}
BASE=${BASE:-}
BASE_NAME=${BASE_NAME:-before}
KEY=sk-bench
. bench/lib.sh
mkdir -p "$OUT"

T=$(mktemp -d /tmp/wp-firstcall-XXXXXX)
chmod 711 "$T"
RPORT=$(wp_free_port)
PIDS=()
cleanup() {
    [ -z "${BPORT:-}" ] || redis-cli -p "$BPORT" shutdown nosave >/dev/null 2>&1 || true
    [ -z "${CPORT:-}" ] || redis-cli -p "$CPORT" shutdown nosave >/dev/null 2>&1 || true
    wp_bench_cleanup
}
trap cleanup EXIT
tmpl() { # dir name extra-hands-flag
    cat >"$1/$2.json" <<JSON
{"name":"$2","rootfs":"host","workdir":"/work","env":{"PATH":"/usr/bin:/bin"},
 "init_sets_hostname":true,"init":["/.wp/warmpool-hands","--socket","/run/warmpool/hands.sock","--workdir","/work",
         "--ready-file","/run/warmpool/hands.ready"$3],
 "ready_file":"/run/warmpool/hands.ready",
 "binds":[{"source":"$1/wp","target":"/.wp"}],
 "limits":{"memory_mb":128,"pids":64}}
JSON
}
# stack DIR BUILD REDIS-PORT NODE-ID ENV-FLAGS...: Redis, the hands, a node.
stack() {
    local d=$1 b=$2 rp=$3 id=$4
    shift 4
    mkdir -p "$d"
    chmod 711 "$d"
    wp_bench_redis "$d" "$rp"
    wp_bench_hands "$b" "$d"
    "$b/warmpool-node" --id "$id" --redis "127.0.0.1:$rp" --state-dir "$d/state" "$@" \
        --heartbeat-ttl 5 --log-level warn ${NODE_ARGS:-} 2>"$d/node.log" &
    PIDS+=($!)
}
sched() { # BUILD REDIS-PORT PORT LOG
    "$1/warmpool-scheduler" --listen "127.0.0.1:$3" --redis "127.0.0.1:$2" \
        --api-key "bench:$KEY" --rate-create 0 --rate-read 0 --log-level warn 2>"$4" &
    PIDS+=($!)
}
wait_hot() { # REDIS-PORT ENV...
    local rp=$1
    shift
    for _ in $(seq 3000); do
        local full=1
        for e in "$@"; do
            [ "$(redis-cli -p "$rp" llen "wp:env:{$e}:hot")" -ge "$HOT" ] || full=0
        done
        [ "$full" = 1 ] && return 0
        sleep 0.2
    done
    echo "bench_firstcall: the hot tier of $* did not fill" >&2
    return 1
}

tmpl "$T" shell-at-boot ''
stack "$T" "$BUILD" "$RPORT" fc-node --env "$T/shell-at-boot.json:$HOT:$HOT"
SPORT=$(wp_free_port)
SPORT_OFF=$(wp_free_port)
WARMPOOL_RELAY_PIPE=on sched "$BUILD" "$RPORT" "$SPORT" "$T/sched.log"
WARMPOOL_RELAY_PIPE=off sched "$BUILD" "$RPORT" "$SPORT_OFF" "$T/sched-off.log"
ROWS="shell-at-boot=$SPORT=$RPORT=shell-at-boot"
ROWS="$ROWS;shell-at-boot, one by one=$SPORT_OFF=$RPORT=shell-at-boot"
# The same build with the warm-up off: a node of its own (its own Redis).
CPORT=$(wp_free_port)
CSPORT=$(wp_free_port)
mkdir -p "$T/cold"
tmpl "$T/cold" shell-at-boot ''
tmpl "$T/cold" shell-lazy ',"--lazy-shell"'
stack "$T/cold" "$BUILD" "$CPORT" fc-cold --env "$T/cold/shell-at-boot.json:$HOT:$HOT" \
    --env "$T/cold/shell-lazy.json:$HOT:$HOT" --warm-clones off
WARMPOOL_RELAY_PIPE=on sched "$BUILD" "$CPORT" "$CSPORT" "$T/cold/sched.log"
ROWS="$ROWS;shell-at-boot, not warmed=$CSPORT=$CPORT=shell-at-boot"
if [ -n "$BASE" ]; then
    BPORT=$(wp_free_port)
    BSPORT=$(wp_free_port)
    mkdir -p "$T/base"
    tmpl "$T/base" shell-at-boot ''
    stack "$T/base" "$BASE" "$BPORT" fc-base --env "$T/base/shell-at-boot.json:$HOT:$HOT"
    sched "$BASE" "$BPORT" "$BSPORT" "$T/base/sched.log"
    ROWS="$ROWS;shell-at-boot, $BASE_NAME=$BSPORT=$BPORT=shell-at-boot"
fi
ROWS="$ROWS;shell-lazy=$CSPORT=$CPORT=shell-lazy"
wait_hot "$RPORT" shell-at-boot
wait_hot "$CPORT" shell-at-boot shell-lazy
[ -z "$BASE" ] || wait_hot "$BPORT" shell-at-boot
for p in "$SPORT" "$SPORT_OFF" "$CSPORT" ${BSPORT:-}; do # the schedulers listen
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),1)" 2>/dev/null && break
        sleep 0.1
    done
done
echo "bench_firstcall: $N sandboxes per row"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
nice python3 - "$KEY" "$N" "$HOT" "$OUT" "$(uname -r)" "$(nproc)" "$ROWS" "$LOAD0" "${SETTLE_MS:-50}" <<'PY'
import http.client, json, random, subprocess, sys, time
key, n, hot, out, kern, ncpu, rowspec, load0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
settle = float(sys.argv[9]) / 1e3
rows = []
for r in rowspec.split(";"):
    label, port, rport, env = r.split("=")
    rows.append({"label": label, "port": int(port), "rport": rport, "env": env,
                 "conn": http.client.HTTPConnection("127.0.0.1", int(port))})
H = {"x-api-key": key, "content-type": "application/json"}
def req(row, method, path, body=None):
    c = row["conn"]
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
    r = c.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None
def hot_len(row):
    return int(subprocess.check_output(["redis-cli", "-p", row["rport"], "llen", "wp:env:{%s}:hot" % row["env"]]).strip())
keys = ("create", "first", "second", "total", "claim", "attached")
res = {r["label"]: {**{k: [] for k in keys}, "miss": 0} for r in rows}
rng = random.Random(20)
for i in range(n):
    order = rows[:]
    rng.shuffle(order)  # no row always follows the same one
    for row in order:  # interleaved, so every row sees the same machine
        # Every row's hot tier full again: no refill of an earlier row runs
        # meanwhile (SETTLE_MS more for a lazy restore's background copy).
        for _ in range(500):
            if all(hot_len(r) >= hot for r in rows):
                break
            time.sleep(0.02)
        time.sleep(settle)
        t0 = time.monotonic()
        st, sb = req(row, "POST", "/v1/sandboxes", {"environment": row["env"]})
        t1 = time.monotonic()
        if st >= 300:
            sys.exit("create: %d %s" % (st, sb))
        st, r1 = req(row, "POST", "/v1/sandboxes/%s/execute" % sb["id"], {"name": "bash", "input": {"command": "echo first"}})
        t2 = time.monotonic()
        st2, r2 = req(row, "POST", "/v1/sandboxes/%s/execute" % sb["id"], {"name": "bash", "input": {"command": "echo second"}})
        t3 = time.monotonic()
        if st >= 300 or st2 >= 300 or "first" not in json.dumps(r1) or "second" not in json.dumps(r2):
            sys.exit("execute: %d %s / %d %s" % (st, r1, st2, r2))
        st, info = req(row, "GET", "/v1/sandboxes/%s" % sb["id"])
        d = res[row["label"]]
        if info.get("tier") != "hot":
            d["miss"] += 1
        tm = info.get("timings") or {}
        d["claim"].append(tm.get("claim_ms", 0.0))
        d["attached"].append(tm.get("attached_ms", 0.0))
        req(row, "DELETE", "/v1/sandboxes/%s" % sb["id"])
        d["create"].append((t1 - t0) * 1e3)
        d["first"].append((t2 - t1) * 1e3)
        d["second"].append((t3 - t2) * 1e3)
        d["total"].append((t2 - t0) * 1e3)
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]
out_rows = []
for row in rows:
    d = res[row["label"]]
    out_rows.append({"env": row["label"], "n": len(d["total"]), "not_hot": d["miss"],
                     **{k + "_p50_ms": pct(d[k], 50) for k in keys},
                     **{k + "_p95_ms": pct(d[k], 95) for k in keys}})
load1 = " ".join(open("/proc/loadavg").read().split()[:3])
json.dump({"kernel": kern, "cpus": int(ncpu), "load_before": load0, "load_after": load1, "runs": out_rows},
          open(out + "/firstcall.json", "w"), indent=1)
md = ["# First bash call of a new sandbox", "",
      "Kernel %s, %s CPUs, load average %s before and %s after; one node and scheduler per" % (kern, ncpu, load0, load1),
      "revision, Redis on this machine; hot clones of a host-rootfs environment, made one at a time",
      "(%d per row, rows interleaved in a shuffled order; each create waits until every hot tier is" % n,
      "full again, then %.0f ms: no refill runs meanwhile). Times in ms, client-side (Python http.client, one keep-alive" % (settle * 1e3),
      "connection per scheduler). `not hot`: sandboxes not served from the hot tier. Claimed / attached:",
      "the scheduler's own timings from the create (`timings.claim_ms`, `attached_ms`).", "",
      "Rows: `shell-at-boot`: this build, the hands start their shell as they come up, a new link's",
      "route, hello and attach go out together, and the node runs a no-op call in each new hot clone;",
      "`not warmed`: the same build, its own node and Redis, with `--warm-clones off`; `one by one`: the same node and hands through a scheduler",
      "with `WARMPOOL_RELAY_PIPE=off` (route, then hello, then attach, each after the last one's answer);",
      "`shell-lazy`: this build's hands with `--lazy-shell` on the `not warmed` node, the shell starts on the",
      "first call (before issue 20); a row naming a revision: that revision's node, scheduler and hands (own Redis).", "",
      "| row | n | not hot | create p50 / p95 | create to first result p50 / p95 | claimed p50 | attached p50 | first call p50 / p95 | second call p50 / p95 |",
      "|---|---|---|---|---|---|---|---|---|"]
for r in out_rows:
    md.append("| %s | %d | %d | %.1f / %.1f | **%.1f** / %.1f | %.1f | %.1f | %.1f / %.1f | %.1f / %.1f |" % (
        r["env"], r["n"], r["not_hot"], r["create_p50_ms"], r["create_p95_ms"], r["total_p50_ms"], r["total_p95_ms"],
        r["claim_p50_ms"], r["attached_p50_ms"],
        r["first_p50_ms"], r["first_p95_ms"], r["second_p50_ms"], r["second_p95_ms"]))
open(out + "/firstcall.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
