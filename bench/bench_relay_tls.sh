#!/usr/bin/env bash
# Relay TLS cost (issue 17): bash tool calls through a node's relay, one
# sandbox at a time, over mutual TLS (a node whose relay listens on
# 10.251.0.1, beyond loopback) and in plaintext (a node on 127.0.0.1), in
# alternating rounds of the same run. Inside a network namespace made
# here (a veth pair holds the address; nothing leaves it). Results:
# bench/results/relay-tls.{json,md}.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
if [ -z "${WP_IN_NETNS:-}" ]; then
    WP_IN_NETNS=1 exec unshare -n bash "$0" "$@"
fi
ip link set lo up
ip link add wprb0 type veth peer name wprb1
ip addr add 10.251.0.1/24 dev wprb0
ip link set wprb0 up; ip link set wprb1 up
OUT=bench/results
mkdir -p "$OUT"
T=$(mktemp -d /tmp/wp-relaytls-XXXXXX)
chmod 711 "$T"
. bench/lib.sh
RPORT=$(wp_free_port)
PIDS=()
trap wp_bench_cleanup EXIT
wp_bench_redis "$T" "$RPORT"
wp_bench_hands "$BUILD" "$T"
C=$T/certs
deploy/relay-certs.sh "$C" ca >/dev/null
deploy/relay-certs.sh "$C" node n1 10.251.0.1 >/dev/null
deploy/relay-certs.sh "$C" scheduler s1 >/dev/null
for e in plain tls; do wp_bench_template "$T" "$e"; done
"$BUILD/warmpool-node" --id plain --redis "127.0.0.1:$RPORT" --state-dir "$T/s-plain" --drain-timeout 0 \
    --env "$T/plain.json:2:2" --no-api-envs --log-level warn 2>"$T/plain.log" &
PIDS+=($!)
"$BUILD/warmpool-node" --id tls --redis "127.0.0.1:$RPORT" --state-dir "$T/s-tls" --drain-timeout 0 \
    --env "$T/tls.json:2:2" --no-api-envs --listen 10.251.0.1:0 --relay-tls-cert "$C/n1.pem" \
    --relay-tls-key "$C/n1.key" --relay-tls-ca "$C/ca.pem" --log-level warn 2>"$T/tls.log" &
PIDS+=($!)
hot() { redis-cli -p "$RPORT" llen "wp:env:{$1}:hot"; }
for e in plain tls; do
    for _ in $(seq 3000); do [ "$(hot $e)" -ge 2 ] && break; sleep 0.02; done
    [ "$(hot $e)" -ge 2 ] || { echo "bench_relay_tls: no hot $e sandbox" >&2; cat "$T/$e.log" >&2; exit 1; }
done
ROUNDS=${ROUNDS:-10}
run() {  # env workload calls cmd round
    local extra=()
    [ "$1" = tls ] && extra=(--relay-tls-cert "$C/s1.pem" --relay-tls-key "$C/s1.key" --relay-tls-ca "$C/ca.pem")
    for _ in $(seq 3000); do [ "$(hot $1)" -ge 1 ] && break; sleep 0.02; done
    nice -n 0 "$BUILD/bench/relay_bench" --redis "$RPORT" --env "$1" --calls "$3" --cmd "$4" \
        "${extra[@]}" --out "$T/r-$1-$2-$5.json"
}
for r in $(seq "$ROUNDS"); do
    for e in plain tls; do
        run "$e" small 100 "echo ok" "$r"
        run "$e" large 20 "seq 1 20000" "$r"
    done
done
python3 - "$T" "$ROUNDS" "$OUT" <<'PY'
import json, sys, statistics as st
T, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def pct(v, p):
    v = sorted(v); return v[max(0, -(-len(v) * p // 100) - 1)]
res = {"rounds": rounds, "workloads": {}}
for w, desc in (("small", "bash `echo ok` (3 bytes out)"), ("large", "bash `seq 1 20000` (109 KB out)")):
    d = {}
    for e in ("plain", "tls"):
        calls, conn, first = [], [], []
        for r in range(1, rounds + 1):
            j = json.load(open(f"{T}/r-{e}-{w}-{r}.json"))
            calls += j["calls_ms"]; conn += j["connect_ms"]; first.append(j["first_connect_ms"])
            d["relay_" + e] = j["relay"]
        d[e] = {"n": len(calls), "median_ms": st.median(calls), "p95_ms": pct(calls, 95),
                "connect_median_ms": st.median(conn), "connect_p95_ms": pct(conn, 95),
                "first_connect_median_ms": st.median(first)}
    d["ratio_median"] = d["tls"]["median_ms"] / d["plain"]["median_ms"]
    d["ratio_p95"] = d["tls"]["p95_ms"] / d["plain"]["p95_ms"]
    d["added_median_us"] = 1000 * (d["tls"]["median_ms"] - d["plain"]["median_ms"])
    d["desc"] = desc
    res["workloads"][w] = d
json.dump(res, open(f"{out}/relay-tls.json", "w"), indent=1)
with open(f"{out}/relay-tls.md", "w") as f:
    f.write("# Relay TLS: the cost per tool call\n\n"
            "bench/bench_relay_tls.sh: one sandbox's bash calls one after another through its\n"
            "node's relay, mutual TLS 1.3 (relay on 10.251.0.1 in a network namespace, P-256\n"
            "certificates from deploy/relay-certs.sh) against plaintext (relay on 127.0.0.1),\n"
            f"{rounds} alternating rounds of the same run. Per call: send to result; connect:\n"
            "pool_connect to the node's route answer (TCP + TLS handshake + route frame), five\n"
            "per process to the claimed sandbox; a process's first also pays OpenSSL's one-time\n"
            "set-up (a scheduler pays it once), shown apart.\n"
            "Both go over lo (a local address is routed there whatever its interface).\n\n"
            "| workload | path | calls | median ms | p95 ms | connect median ms | connect p95 ms | first connect median ms |\n"
            "|---|---|---|---|---|---|---|---|\n")
    for w, d in res["workloads"].items():
        for e in ("plain", "tls"):
            x = d[e]
            f.write(f"| {d['desc']} | {e} | {x['n']} | {x['median_ms']:.3f} | {x['p95_ms']:.3f} | "
                    f"{x['connect_median_ms']:.3f} | {x['connect_p95_ms']:.3f} | {x['first_connect_median_ms']:.3f} |\n")
    f.write("\n| workload | TLS/plain median | TLS/plain p95 | added per call (median) |\n|---|---|---|---|\n")
    for w, d in res["workloads"].items():
        f.write(f"| {d['desc']} | {d['ratio_median']:.3f} | {d['ratio_p95']:.3f} | {d['added_median_us']:.0f} µs |\n")
print(open(f"{out}/relay-tls.md").read())
PY
