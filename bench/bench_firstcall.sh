#!/usr/bin/env bash
# First-call benchmark: `POST /v1/sandboxes` to the first `bash` result,
# with the shell started when the hands come up (in the image, so every
# clone holds one) against the same environment whose hands start their
# shell on the first call (`--lazy-shell`, the old way), in one run.
# A real Redis, node and scheduler; hot clones only (each environment keeps
# HOT of them; sandboxes are made one at a time, a pause lets the pool
# refill). Knobs: N (sandboxes per environment, default 60), HOT (4),
# OUT (results dir).
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
N=${N:-60}
HOT=${HOT:-4}
KEY=sk-bench
. bench/lib.sh
mkdir -p "$OUT"

T=$(mktemp -d /tmp/wp-firstcall-XXXXXX)
chmod 711 "$T"
RPORT=$(wp_free_port)
SPORT=$(wp_free_port)
PIDS=()
trap wp_bench_cleanup EXIT
wp_bench_redis "$T" "$RPORT"
wp_bench_hands "$BUILD" "$T"
tmpl() { # name extra-hands-flag
    cat >"$T/$1.json" <<JSON
{"name":"$1","rootfs":"host","workdir":"/work","env":{"PATH":"/usr/bin:/bin"},
 "init_sets_hostname":true,"init":["/.wp/warmpool-hands","--socket","/run/warmpool/hands.sock","--workdir","/work",
         "--ready-file","/run/warmpool/hands.ready"$2],
 "ready_file":"/run/warmpool/hands.ready",
 "binds":[{"source":"$T/wp","target":"/.wp"}],
 "limits":{"memory_mb":128,"pids":64}}
JSON
}
tmpl shell-at-boot ''
tmpl shell-lazy ',"--lazy-shell"'
"$BUILD/warmpool-node" --id fc-node --redis "127.0.0.1:$RPORT" --state-dir "$T/state" \
    --env "$T/shell-at-boot.json:$HOT:$HOT" --env "$T/shell-lazy.json:$HOT:$HOT" \
    --heartbeat-ttl 5 --log-level warn ${NODE_ARGS:-} 2>"$T/node.log" &
PIDS+=($!)
"$BUILD/warmpool-scheduler" --listen "127.0.0.1:$SPORT" --redis "127.0.0.1:$RPORT" \
    --api-key "bench:$KEY" --rate-create 0 --rate-read 0 --log-level warn 2>"$T/sched.log" &
PIDS+=($!)
for _ in $(seq 3000); do
    a=$(redis-cli -p "$RPORT" llen 'wp:env:{shell-at-boot}:hot')
    b=$(redis-cli -p "$RPORT" llen 'wp:env:{shell-lazy}:hot')
    [ "$a" -ge "$HOT" ] && [ "$b" -ge "$HOT" ] && break
    sleep 0.2
done
echo "bench_firstcall: $N sandboxes per environment"
nice python3 - "$SPORT" "$KEY" "$RPORT" "$N" "$HOT" "$OUT" "$(uname -r)" "$(nproc)" <<'PY'
import http.client, json, subprocess, sys, time
port, key, rport, n, hot, out, kern, ncpu = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8]
conn = http.client.HTTPConnection("127.0.0.1", int(port))
H = {"x-api-key": key, "content-type": "application/json"}
def req(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None
def hot_len(env):
    return int(subprocess.check_output(["redis-cli", "-p", rport, "llen", "wp:env:{%s}:hot" % env]).strip())
envs = ["shell-at-boot", "shell-lazy"]
res = {e: {"create": [], "first": [], "second": [], "total": [], "claim": [], "attached": [], "miss": 0} for e in envs}
for i in range(n):
    for e in envs:  # interleaved, so both see the same machine
        for _ in range(200):
            if hot_len(e) >= hot:
                break
            time.sleep(0.02)
        t0 = time.monotonic()
        st, sb = req("POST", "/v1/sandboxes", {"environment": e})
        t1 = time.monotonic()
        if st >= 300:
            sys.exit("create: %d %s" % (st, sb))
        st, r1 = req("POST", "/v1/sandboxes/%s/execute" % sb["id"], {"name": "bash", "input": {"command": "echo first"}})
        t2 = time.monotonic()
        st2, r2 = req("POST", "/v1/sandboxes/%s/execute" % sb["id"], {"name": "bash", "input": {"command": "echo second"}})
        t3 = time.monotonic()
        if st >= 300 or st2 >= 300 or "first" not in json.dumps(r1) or "second" not in json.dumps(r2):
            sys.exit("execute: %d %s / %d %s" % (st, r1, st2, r2))
        st, info = req("GET", "/v1/sandboxes/%s" % sb["id"])
        if info.get("tier") != "hot":
            res[e]["miss"] += 1
        tm = info.get("timings") or {}
        res[e]["claim"].append(tm.get("claim_ms", 0.0))
        res[e]["attached"].append(tm.get("attached_ms", 0.0))
        req("DELETE", "/v1/sandboxes/%s" % sb["id"])
        d = res[e]
        d["create"].append((t1 - t0) * 1e3)
        d["first"].append((t2 - t1) * 1e3)
        d["second"].append((t3 - t2) * 1e3)
        d["total"].append((t2 - t0) * 1e3)
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]
rows = []
for e in envs:
    d = res[e]
    rows.append({"env": e, "n": len(d["total"]), "not_hot": d["miss"],
                 **{k + "_p50_ms": pct(d[k], 50) for k in ("create", "first", "second", "total", "claim", "attached")},
                 **{k + "_p95_ms": pct(d[k], 95) for k in ("create", "first", "second", "total", "claim", "attached")}})
json.dump({"kernel": kern, "cpus": int(ncpu), "runs": rows}, open(out + "/firstcall.json", "w"), indent=1)
md = ["# First bash call of a new sandbox", "",
      "Kernel %s, %s CPUs; one node, one scheduler, Redis on this machine; hot clones of a" % (kern, ncpu),
      "host-rootfs environment, made one at a time (%d per row, interleaved). `shell-at-boot`: the hands start" % n,
      "their shell when they come up, so the image and every clone hold it; `shell-lazy`: the same hands with",
      "`--lazy-shell`, the shell starts on the first call (before issue 20). Times in ms, client-side",
      "(Python http.client, one keep-alive connection). `not hot`: sandboxes not served from the hot tier.",
      "Claimed / attached: the scheduler's own timings from the create (`timings.claim_ms`, `attached_ms`).", "",
      "| environment | n | not hot | create p50 / p95 | create to first result p50 / p95 | claimed p50 | attached p50 | first call p50 / p95 | second call p50 / p95 |",
      "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    md.append("| %s | %d | %d | %.1f / %.1f | **%.1f** / %.1f | %.1f | %.1f | %.1f / %.1f | %.1f / %.1f |" % (
        r["env"], r["n"], r["not_hot"], r["create_p50_ms"], r["create_p95_ms"], r["total_p50_ms"], r["total_p95_ms"],
        r["claim_p50_ms"], r["attached_p50_ms"],
        r["first_p50_ms"], r["first_p95_ms"], r["second_p50_ms"], r["second_p95_ms"]))
open(out + "/firstcall.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
