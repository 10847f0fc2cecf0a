#!/usr/bin/env bash
# Egress proxy benchmark: what going through warmpool-egress (TLS terminated
# with the node's CA, the placeholder replaced, TLS again upstream) adds to
# one HTTPS request, against the same request sent straight from the host in
# the same run. "The internet" is a namespace with tests/integration/
# egress_server.py (its certificate from a CA of this run); the client
# stands in a namespace of its own behind a veth, as a confined sandbox
# does. Each request is a fresh curl (one request per connection, as the
# proxy serves them); curl's time_total, so process start is not counted.
# Series interleaved: direct, through the proxy (leaf certificate cached),
# and through the proxy to a host name it has not seen (a leaf signed).
# Writes bench/results/egress.{md,json}.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=bench/results
RUNS=${EGRESS_BENCH_RUNS:-100}
NEW=${EGRESS_BENCH_NEW:-40}
mkdir -p "$OUT"
T=$(mktemp -d /tmp/wp-egrbench-XXXXXX)
ID=$$
NSC=wpb-c-$ID NSI=wpb-i-$ID IFC=wbc$((ID % 100000)) IFI=wbi$((ID % 100000))
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SP=$(free_port) HP=$(free_port) PP=$(free_port)
cleanup() {
    [ -n "${PX:-}" ] && kill "$PX" 2>/dev/null && wait "$PX" 2>/dev/null || true
    [ -n "${SRV:-}" ] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null || true
    ip link del "$IFC" 2>/dev/null || true
    ip link del "$IFI" 2>/dev/null || true
    ip netns del "$NSC" 2>/dev/null || true
    ip netns del "$NSI" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

ip netns add "$NSI"
ip link add "$IFI" type veth peer name eth0 netns "$NSI"
ip addr add 198.18.8.1/30 dev "$IFI" && ip link set "$IFI" up
ip -n "$NSI" addr add 198.18.8.2/30 dev eth0
ip -n "$NSI" link set eth0 up && ip -n "$NSI" link set lo up
ip -n "$NSI" route add default via 198.18.8.1
ip netns add "$NSC"
ip link add "$IFC" type veth peer name eth0 netns "$NSC"
ip addr add 10.89.7.1/30 dev "$IFC" && ip link set "$IFC" up
ip -n "$NSC" addr add 10.89.7.2/30 dev eth0
ip -n "$NSC" link set eth0 up && ip -n "$NSC" link set lo up

mkdir -p "$T/tls" && cd "$T/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj /CN=bench-internet-CA 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr \
    -subj /CN=api.bench.test 2>/dev/null
echo 'subjectAltName=DNS:api.bench.test,DNS:*.bench.test' >ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 \
    -extfile ext 2>/dev/null
cd - >/dev/null

ip netns exec "$NSI" python3 tests/integration/egress_server.py "$SP" "$HP" "$T/tls/srv.pem" \
    "$T/tls/srv.key" "$T/arrived.log" "$T/srv.ready" &
SRV=$!
PINS=(--pin "api.bench.test=198.18.8.2")
for i in $(seq "$NEW"); do PINS+=(--pin "n$i.bench.test=198.18.8.2"); done
"$BUILD/warmpool-egress" --port "$PP" --control "$T/ctl.sock" --ca-dir "$T/ca" \
    --upstream-ca "$T/tls/ca.pem" --log-level warn "${PINS[@]}" 2>"$T/egress.log" &
PX=$!
for _ in $(seq 100); do [ -e "$T/srv.ready" ] && [ -S "$T/ctl.sock" ] && break; sleep 0.05; done
SECRET=sk-bench-secret PH=wpcred_00112233445566778899aabbccddeeff
python3 - "$T/ctl.sock" "$PH" "$SECRET" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
cmd = {"t": "add", "sandbox": "bench", "host": "10.89.7.1", "addr": "10.89.7.2",
       "network": {"type": "unrestricted"},
       "credentials": [{"placeholder": sys.argv[2], "secret": sys.argv[3],
                        "injection_location": {"header": True, "body": False},
                        "networking": {"type": "limited", "allowed_hosts": ["*.bench.test"]}}]}
s.sendall((json.dumps(cmd) + "\n").encode())
r = s.makefile().readline()
assert json.loads(r)["ok"], r
PY

direct() {
    curl -sS -o /dev/null -w '%{time_total}\n' --cacert "$T/tls/ca.pem" \
        --resolve "api.bench.test:$SP:198.18.8.2" -H "Authorization: Bearer direct-token" \
        "https://api.bench.test:$SP/ok"
}
proxied() { # $1: host name
    ip netns exec "$NSC" curl -sS -o /dev/null -w '%{time_total}\n' --cacert "$T/ca/ca.pem" \
        --proxy "http://10.89.7.1:$PP" -H "Authorization: Bearer $PH" "https://$1:$SP/ok"
}
direct >/dev/null && proxied api.bench.test >/dev/null # warm both paths once
: >"$T/direct" && : >"$T/proxied" && : >"$T/new"
for i in $(seq "$RUNS"); do
    direct >>"$T/direct"
    proxied api.bench.test >>"$T/proxied"
    if [ "$i" -le "$NEW" ]; then proxied "n$i.bench.test" >>"$T/new"; fi
done
# Every proxied request must have arrived with the secret, none with the placeholder.
arrived=$(grep -c "Authorization: Bearer $SECRET" "$T/arrived.log")
leaked=$(grep -c "$PH" "$T/arrived.log" || true)

python3 - "$T" "$OUT" "$RUNS" "$NEW" "$arrived" "$leaked" <<'PY'
import json, math, sys, platform, datetime
t, out, runs, new, arrived, leaked = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def load(n): return [float(x) * 1e3 for x in open(f"{t}/{n}").read().split()]
def pct(v, p):
    v = sorted(v); return v[max(0, math.ceil(p / 100 * len(v)) - 1)]
series = {"direct from the host": load("direct"), "through the proxy, leaf cached": load("proxied"),
          "through the proxy, new host (leaf signed)": load("new")}
base = pct(series["direct from the host"], 50)
rows, js = [], {"runs": runs, "new_hosts": new, "arrived_with_secret": arrived,
                "placeholder_arrived": leaked, "series": {}}
for name, v in series.items():
    m, p95 = pct(v, 50), pct(v, 95)
    rows.append(f"| {name} | {len(v)} | {m:.2f} | {p95:.2f} | {m / base:.2f}x |")
    js["series"][name] = {"n": len(v), "median_ms": round(m, 3), "p95_ms": round(p95, 3),
                          "ratio_median": round(m / base, 3)}
md = f"""# Egress proxy: what one HTTPS request pays for going through warmpool-egress

`bench/bench_egress.sh` ({datetime.date.today()}, {platform.node()}, 2 vCPUs shared).
One HTTPS GET per fresh curl (the proxy serves one request per connection), curl's
`time_total` in ms; the three series interleaved in one run. "Direct" goes from the host
straight to the server; "through the proxy" from a namespace behind a veth (as a confined
sandbox), CONNECT, TLS with the node's CA, the placeholder replaced in a header, TLS again
upstream (verified against the run's test CA). "New host": a name the proxy has not signed a
leaf for yet (EC P-256 leaf signed on the request's path).

| series | n | median ms | p95 ms | median vs direct |
|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Proxied requests that arrived with the secret: {arrived} (of {runs + new + 1} sent);
with the placeholder: {leaked}.

What the proxy adds is a second TLS handshake (the sandbox's, with the node's CA) and a TCP
connection more per request, on one loop; the upstream handshake is the one the direct
request does too. Clients that keep connections open pay it once per connection elsewhere,
here once per request (the proxy closes after each answer).
"""
open(f"{out}/egress.md", "w").write(md)
json.dump(js, open(f"{out}/egress.json", "w"), indent=1)
print(md)
PY
