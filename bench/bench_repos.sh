#!/usr/bin/env bash
# Repositories benchmark (issue 16): what a session's github_repository
# resource adds to its first tool result, for a small and a large
# repository, against sessions without one in the same run.
#
# The real stack, as tests/integration/test_sched_egress.c runs it: a Redis,
# warmpool-scheduler, warmpool-node with an unrestricted-network pool and
# its egress proxy (--egress-upstream-ca, --egress-pin), the model stand-in
# (wp-modelserver: each first turn is a short text then a bash call), and
# "the internet": a network namespace of this run behind a host veth
# (198.18.16.0/30) running tests/integration/git_server.py, a private Git
# host over HTTPS (git http-backend, a certificate of this run's CA, token
# required). bench/repos_bench.py drives the sessions and writes
# bench/results/repos.{md,json}.
#
# Knobs: RUNS_NONE (20), RUNS_SMALL (20), RUNS_LARGE (10); LARGE_FILES (3000)
# of LARGE_KIB (16) KiB of random bytes each; MODEL_TTFT_MS (500): the
# stand-in's time to first token; HOT (2) hot sandboxes; MEMORY_MB (1024)
# per sandbox; OUT (results dir); NOTE (a paragraph added to the results);
# KEEP=1 keeps the scratch dir.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-bench/results}
HOT=${HOT:-2}
LARGE_FILES=${LARGE_FILES:-3000}
LARGE_KIB=${LARGE_KIB:-16}
MODEL_TTFT_MS=${MODEL_TTFT_MS:-500}
MEMORY_MB=${MEMORY_MB:-1024}
KEY=sk-bench
. bench/lib.sh
mkdir -p "$OUT"

T=$(mktemp -d /tmp/wp-repobench-XXXXXX)
chmod 711 "$T"
ID=$$
NS=wpb-git-$ID IFH=wbg$((ID % 100000))
GW=198.18.16.1 ADDR=198.18.16.2
RPORT=$(wp_free_port) SPORT=$(wp_free_port) MPORT=$(wp_free_port) GPORT=$(wp_free_port)
PIDS=()
NODE=
cleanup() {
    # The node first (SIGTERM: it tears its sandboxes and proxy down).
    if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; fi
    wp_bench_cleanup
    ip link del "$IFH" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the internet: a namespace, a CA, the Git host ------------------------
ip netns add "$NS"
ip link add "$IFH" type veth peer name eth0 netns "$NS"
ip addr add "$GW/30" dev "$IFH" && ip link set "$IFH" up
ip -n "$NS" addr add "$ADDR/30" dev eth0
ip -n "$NS" link set eth0 up && ip -n "$NS" link set lo up
ip -n "$NS" route add default via "$GW"
mkdir -p "$T/tls"
(
    cd "$T/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
        -out ca.pem -days 2 -subj /CN=bench-git-CA 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr \
        -subj /CN=git.bench.test 2>/dev/null
    echo 'subjectAltName=DNS:git.bench.test' >ext
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 \
        -extfile ext 2>/dev/null
)

# small: 5 text files in 3 commits. large: LARGE_FILES files of LARGE_KIB KiB
# from /dev/urandom (incompressible) in 60 directories, 4 commits (half,
# a third, the rest, then 5% of the files rewritten), repacked once so the
# server reuses one pack as a Git host does.
echo "bench_repos: making the repositories"
GIT_ROOT=$T/git
mkdir -p "$GIT_ROOT"
(
    set -e
    cd "$GIT_ROOT"
    export GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b
    git init -q -b main w-small && cd w-small
    printf '# small\n' >README.md && printf 'print(1)\n' >main.py && git add . && git commit -qm one
    mkdir -p src && printf 'int main(void){return 0;}\n' >src/a.c && printf 'x\n' >src/b.txt
    git add . && git commit -qm two
    printf 'MIT\n' >LICENSE && printf '# small repo\n' >README.md && git add . && git commit -qm three
    cd .. && git clone -q --bare w-small small.git && rm -rf w-small
    git init -q -b main w-large && cd w-large
    python3 - "$LARGE_FILES" "$LARGE_KIB" <<'PY'
import os, subprocess, sys
n, kib = int(sys.argv[1]), int(sys.argv[2])
def write(i):
    os.makedirs("d%02d" % (i % 60), exist_ok=True)
    with open("d%02d/f%05d.bin" % (i % 60, i), "wb") as f:
        f.write(os.urandom(kib * 1024))
cuts = [0, n // 2, n // 2 + n // 3, n]
for c in range(3):
    for i in range(cuts[c], cuts[c + 1]):
        write(i)
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "part %d" % (c + 1)], check=True)
for i in range(0, n, 20):
    write(i)
subprocess.run(["git", "commit", "-qam", "rewrite 5%"], check=True)
PY
    cd .. && git clone -q --bare w-large large.git && rm -rf w-large
    git -C large.git repack -adq
    git -C small.git repack -adq
)
LARGE_PACK=$(du -sk "$GIT_ROOT"/large.git/objects/pack | cut -f1)
LARGE_HEAD=$(git -C "$GIT_ROOT/large.git" rev-parse main)
SMALL_HEAD=$(git -C "$GIT_ROOT/small.git" rev-parse main)
GIT_TOKEN=ghs_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')BENCH
ip netns exec "$NS" python3 tests/integration/git_server.py "$GPORT" "$T/tls/srv.pem" \
    "$T/tls/srv.key" "$GIT_ROOT" "$GIT_TOKEN" "$T/git-requests.log" "$T/git.ready" &
PIDS+=($!)

# ---- the model stand-in: "Looking." then one bash call, then "Done." ----
python3 - "$T/script.json" "$MODEL_TTFT_MS" <<'PY'
import json, sys
cmd = ('cd /workspace 2>/dev/null && for d in *; do echo "REPO $d HEAD=$(git -C $d rev-parse HEAD) '
       'files=$(git -C $d ls-files | wc -l)"; done; echo listed')
json.dump({"seed": 1, "ttft_ms": float(sys.argv[2]), "tokens_per_s": 200, "chunk_tokens": 2,
           "conversations": [{"turns": [
               {"content": [{"type": "text", "text": "Looking at the workspace."},
                            {"type": "tool_use", "name": "bash", "input": {"command": cmd}}]},
               {"text": "Done."}]}]}, open(sys.argv[1], "w"))
PY
"$BUILD/wp-modelserver" --port "$MPORT" --script "$T/script.json" --log-level warn \
    2>"$T/model.log" &
PIDS+=($!)

# ---- Redis, the scheduler, the node ----------------------------------------
wp_bench_redis "$T" "$RPORT"
wp_bench_hands "$BUILD" "$T"
cat >"$T/rpool.json" <<JSON
{"name":"rpool","rootfs":"host","workdir":"/work","init_sets_hostname":true,
 "init":["/.wp/warmpool-hands","--socket","/run/warmpool/hands.sock","--workdir","/work",
         "--ready-file","/run/warmpool/hands.ready"],
 "ready_file":"/run/warmpool/hands.ready",
 "binds":[{"source":"$T/wp","target":"/.wp"}],
 "network":{"mode":"unrestricted"},
 "limits":{"memory_mb":$MEMORY_MB,"pids":64}}
JSON
ANTHROPIC_API_KEY=sk-bench-model "$BUILD/warmpool-scheduler" --listen "127.0.0.1:$SPORT" \
    --redis "127.0.0.1:$RPORT" --api-key "bench:$KEY" --rate-create 0 --rate-read 0 \
    --vault-key-file "$T/vault.key" --model-url "http://127.0.0.1:$MPORT" --log-level info \
    >"$T/sched.log" 2>&1 &
PIDS+=($!)
"$BUILD/warmpool-node" --id repo-node --redis "127.0.0.1:$RPORT" --state-dir "$T/state" \
    --drain-timeout 0 --env "$T/rpool.json:$HOT:$HOT" --heartbeat-ttl 5 --log-level warn \
    --egress-upstream-ca "$T/tls/ca.pem" --egress-pin "git.bench.test=$ADDR" \
    >"$T/node.log" 2>&1 &
NODE=$!
for _ in $(seq 600); do
    [ -e "$T/git.ready" ] && [ "$(redis-cli -p "$RPORT" llen 'wp:env:{rpool}:hot')" -ge "$HOT" ] && break
    sleep 0.2
done
[ -e "$T/git.ready" ] || { echo "bench_repos: the git server did not start" >&2; exit 1; }

nice python3 bench/repos_bench.py --sched "$SPORT" --key "$KEY" --redis "$RPORT" --hot "$HOT" \
    --git "https://git.bench.test:$GPORT" --token "$GIT_TOKEN" \
    --small-head "$SMALL_HEAD" --large-head "$LARGE_HEAD" \
    --runs-none "${RUNS_NONE:-20}" --runs-small "${RUNS_SMALL:-20}" --runs-large "${RUNS_LARGE:-10}" \
    --note "${NOTE:-}" --sched-log "$T/sched.log" --git-log "$T/git-requests.log" --out "$OUT" \
    --conditions "$(printf '%s' "{\"large_files\":$LARGE_FILES,\"large_kib\":$LARGE_KIB,\"large_pack_kib\":$LARGE_PACK,\"model_ttft_ms\":$MODEL_TTFT_MS,\"hot\":$HOT,\"memory_mb\":$MEMORY_MB}")"
