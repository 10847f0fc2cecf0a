#!/usr/bin/env bash
# bench_faults.sh BUILD - issue 18's fault matrix: runs
# BUILD/tests/integration/test_faults (ROUNDS times, default 1; each run
# applies every fault once under steady session load) with WP_FAULTS_OUT set,
# and writes what it measured per fault (events acknowledged, lost,
# duplicated, sessions failed, time to recover; medians over the rounds)
# to bench/results/faults.json and faults.md, with a paragraph per fault on
# what happened and why. Needs root (sandboxes, a tmpfs mount).
# BENCH_FAULTS_ONLY=PATTERN runs only the matching faults (test names, e.g.
# cluster_master_killed) and replaces just their rows in faults.json/.md.
set -euo pipefail
BUILD=${1:-build}
ROUNDS=${BENCH_ROUNDS:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/results
mkdir -p "$OUT"
ROWS=$(mktemp)
LOG=$(mktemp)
trap 'rm -f "$ROWS" "$LOG"' EXIT
BIN=$BUILD/tests/integration/test_faults
[ -x "$BIN" ] || { echo "bench_faults: $BIN not built" >&2; exit 1; }
FAILED=0
[ -n "${BENCH_FAULTS_ONLY:-}" ] || unset BENCH_FAULTS_ONLY
for r in $(seq "$ROUNDS"); do
    echo "bench_faults: round $r of $ROUNDS"
    WP_FAULTS_ONLY=${BENCH_FAULTS_ONLY:-} WP_FAULTS_OUT=$ROWS nice "$BIN" >"$LOG" 2>&1 || { FAILED=$((FAILED + 1)); grep -E '^# (leak|load)|ERROR|LINE|FAILED' "$LOG" | tail -20 >&2; }
done
python3 - "$ROWS" "$OUT" "$ROUNDS" "$FAILED" "${BENCH_FAULTS_ONLY:-}" <<'PY'
import json, statistics, sys, datetime
rows_path, out, rounds, failed, only = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = [json.loads(l) for l in open(rows_path) if l.strip()]
if only:  # the other faults' rows as the last full run left them
    try:
        old = json.load(open(out + "/faults.json"))
    except (OSError, ValueError):
        old = {"rows": []}
    new = set(r["fault"] for r in rows)
    rows = [r for r in old["rows"] if r["fault"] not in new] + rows
by = {}
for r in rows:
    by.setdefault(r["fault"], []).append(r)
json.dump({"rounds": rounds, "failed_runs": failed, "rows": rows}, open(out + "/faults.json", "w"), indent=1)

def med(rs, k):
    v = [r[k] for r in rs if r[k] is not None and r[k] >= 0]
    return statistics.median(v) if v else None

def total(rs, k):
    return sum(r[k] for r in rs)

WHY = {
 "kill -9 scheduler mid-turn":
  "The killed scheduler's brain leases are not handed over (SIGKILL), so its sessions wait for the "
  "lease to expire (`--brain-lease-ms 3000` here) and the other scheduler's sweep (about once a second) "
  "to take each one over from its log: a model request the dead brain left open is closed with "
  "`span.model_request_end` `is_error: true` and asked again, a bash call without a result is run "
  "again. Input keeps being acknowledged by the live scheduler; the streams cut by the kill resume "
  "there with `Last-Event-ID`. Recovery is about the lease TTL plus a sweep.",
 "kill -9 node holding leases":
  "The node's heartbeat key (`--heartbeat-ttl 2`) expires, the other node's reaper marks its leased "
  "sandboxes `lost`; a brain learns it on its next renewal or the `wp:lost` message, a bash call "
  "cut by the death becomes an error `agent.tool_result` the model reads (tool errors column), the next "
  "call claims a new sandbox on the live node. The `/v1/sandboxes` user's execute fails, it deletes "
  "that sandbox and creates another. A claim on its way to the dead node is sent "
  "again once the node's heartbeat key is gone (before: it waited its 60 s timeout). The killed node, "
  "restarted, removes what its dead run left; the `lost` records of its sandboxes expire a minute "
  "past their lease (before: kept forever).",
 "model server: 5xx, error events, drops, stalls":
  "The stand-in is restarted (every stream in flight cut) with 20% HTTP 500s, 10% `error` events, 10% "
  "dropped connections and 10% stalls (the stream stops after 3 segments and stays open) for a "
  "while, then healthy again. Failures before any event are retried by the model client "
  "(`session.error` `retrying` in the log), a stream broken after events is closed in error and asked "
  "again by the brain (twice), a stall ends at `--model-idle-timeout 3`. A turn whose retries run out "
  "ends with `session.error` `exhausted` and `session.status_idle` `retries_exhausted`; sessions whose "
  "every attempt fails (the always-stall/500/drop conversations, checked in the test) end that way.",
 "kill -9 Redis, AOF everysec":
  "Redis is killed with SIGKILL and started again from its AOF. Redis writes the AOF (write(2)) before "
  "it sends a reply, so a process kill loses no acknowledged event whatever `appendfsync` says; "
  "`everysec` only risks what the kernel had not written to the disk when the machine itself "
  "crashes (up to about 1 s, 2 s when an fsync stalls), which a test on one running machine cannot "
  "produce. Clients reconnect, nodes write their view back, brains re-acquire with a fencing token "
  "above any earlier one; requests meanwhile get 503 and the load resends. A warm/cold claim a "
  "node was serving when the connection dropped lost its answer (pub/sub keeps nothing): the pool "
  "client now sends it again when its subscription is back (before: the tool call failed after the "
  "claim's 60 s timeout); a sandbox the node made for the first request is an orphan until its "
  "60 s lease runs out (orphans column).",
 "Redis SHUTDOWN + restart (AOF)":
  "A clean `SHUTDOWN` flushes and fsyncs the AOF: nothing is lost; the rest is the kill -9 case.",
 "kill -9 Redis, AOF always":
  "As with everysec; `always` also fsyncs before each reply, so not even a machine crash loses an "
  "acknowledged event (at the throughput cost in durability.md).",
 "disk full: node start (base layer)":
  "A third node whose state directory is a 64 KiB tmpfs: it cannot write its base layer and exits 1 "
  "with `No space left on device` in its log. Grown (remount), the next start removes the staging dir "
  "the failed one left, builds and serves a hot clone. The load on the other nodes is untouched.",
 "disk full: image build checkpoint":
  "The same node with a 400 KiB tmpfs: the base layer and the build's boot fit, criu's dump of the "
  "image does not; the build fails with criu's `No space left on device` lines in the node's "
  "`build:<env>` status, the node stays up and heartbeating, the booted sandbox and the half image "
  "are gone (criu's log is kept as `images/<image>.dump-failed.log`); grown, the build retry "
  "succeeds and the node serves. (With about 300 KiB criu cannot write its log either and the "
  "error says only `criu dump failed (-52)` with the log's path.)",
 "kill -9 one Redis Cluster master (replica promoted, WAIT 1)":
  "A Redis Cluster of 3 masters with a replica each (`cluster-node-timeout 2000`), every process with "
  "`--redis-cluster`, the schedulers in the durable mode (`--redis-wait-replicas 1`: `WAIT` on every "
  "master, so an acknowledged write is on that master's one replica). The master of a load session's "
  "slot is killed; the other masters vote its replica in after the node timeout; each process's router "
  "finds the new master in the slot map (read again every 0.5 s while a master is missing) and moves "
  "subscriptions that were on the dead node. The killed process is started again once its replica took "
  "over, as a supervisor would, and rejoins as the new master's replica: until then `WAIT 1` cannot "
  "succeed on that master, so writes to its slots answer 503 (`NOTREPLICATED`) and are resent; such a "
  "write did land on the master, so a resent `user.message` can appear twice (*extra*: the SDK sends "
  "nothing to deduplicate with). Sessions whose slots are on the two live masters never notice; brains "
  "re-acquire with a higher fencing token. Every acknowledged event is on the promoted replica. Recovery (~10 s) is the promotion (~4 s) plus the restart and resync of the killed process as its replica (~5 s), during which the promoted master's slots cannot acknowledge; when those hold the pool's keys that is longer than the sandbox lease (`--sandbox-lease 6` here), so a bash call in flight may end with an error result and a new sandbox (*tool err*, as when a node dies). An "
  "earlier version of this test ran two replicas per master (so that `WAIT 1` had a replica left after "
  "the promotion): in 1 of 13 runs one acknowledged event was missing afterwards, which fits `WAIT 1` "
  "being met by the replica the cluster did not promote (its election ranks replicas by offsets learnt "
  "from gossip); with N replicas the durable mode wants `--redis-wait-replicas N`. Found by this test "
  "and fixed: with `--redis-wait-replicas` every process sent the map's `CLUSTER SLOTS` behind a `WAIT` "
  "too, which replicas refuse and a master whose replica died answers too late, so no process ever "
  "learned the new map and nothing recovered (`CLUSTER SLOTS` is now sent without it).",
 "kill -9 Redis primary (Sentinel, WAIT 1)":
  "Three Redis (a primary, two replicas), three sentinels (`down-after-milliseconds 1000`), the "
  "schedulers in the durable mode (`--redis-wait-replicas 1`: a write is acknowledged once a replica "
  "has it). The primary is killed; the sentinels promote a replica within a few seconds; every "
  "client follows (`+switch-master`, re-resolution on reconnect); requests meanwhile get 503 and "
  "are resent. Every acknowledged event is on the new primary.",
}
L = []
L.append("# Fault matrix (issue 18)\n")
L.append("`bench/bench_faults.sh` runs `tests/integration/test_faults` (%d round%s%s) on one machine over "
         "loopback, %s UTC. Load: sessions looping user message -> scripted bash call -> result -> idle, "
         "one SSE stream per session (resumed with `Last-Event-ID` on whichever scheduler answers), and "
         "one `/v1/sandboxes` user executing every 200 ms; two schedulers, two nodes (one for the "
         "Sentinel and Cluster cases), the model stand-in. One fault at a time.%s\n"
         % (rounds, "" if rounds == 1 else "s", "" if not failed else ", %d run(s) failed a check" % failed,
            datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
            " The rows for `%s` were run again alone at that time (%d round%s); the others are from the last "
            "full run (1 round)." % (only, rounds, "" if rounds == 1 else "s") if only else ""))
L.append("Columns: *acked* user messages `POST .../events` answered 200; *lost* acknowledged but not in "
         "the history; *dup* an event id twice in a history or a stream; *extra* user messages in the "
         "history no 200 acknowledged (a resent POST whose first try landed); *failed* sessions with a "
         "turn ended by `retries_exhausted` or never ended; *errors* `session.error` events "
         "(retrying/exhausted); *tool err* error tool results; *sbx err* failed `/v1/sandboxes` "
         "executes; *recover* seconds from the fault until every session ended a turn begun after it "
         "and the sandbox user executed again (median over rounds); *orphans* sandboxes leased to no live "
         "holder (a resent claim's first request, a brain stopped by a lost Redis connection), never renewed, "
         "back to their node when the 60 s claim lease ends; *leaks* what the settle check "
         "found.\n")
L.append("The network partition of a node (nodes in network namespaces, `tests/integration/test_multinode.c`) is in `faults-partition.md`.\n")
L.append("| fault | load | acked | lost | dup | extra | failed | errors (retrying) | tool err | sbx err | stream resumes | recover s | orphans | leaks |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for f, rs in by.items():
    rec = med(rs, "recover_s")
    L.append("| %s | %s | %d | %d | %d | %d | %d | %d (%d) | %d | %d | %d | %s | %d | %d |" % (
        f, rs[-1]["load"], total(rs, "acked"), total(rs, "lost"), total(rs, "dup") + total(rs, "stream_dup"),
        total(rs, "extra_input"), total(rs, "sessions_failed"), total(rs, "errors"), total(rs, "retrying"),
        total(rs, "tool_errors"), total(rs, "sbx_err"), total(rs, "stream_resumes"),
        "%.1f" % rec if rec is not None else "-", sum(r.get("orphans", 0) for r in rs), total(rs, "leaks")))
L.append("")
for f, rs in by.items():
    L.append("**%s.** %s" % (f, WHY.get(f, "")))
    notes = sorted(set(r["note"] for r in rs if r["note"]))
    if notes:
        L.append("Run notes: " + "; ".join(notes) + ".")
    L.append("")
L.append("Not in this matrix: a network partition of a node (the multi-node netns harness, "
         "`faults-partition.md`).")
open(out + "/faults.md", "w").write("\n".join(L) + "\n")
PY
echo "bench_faults: wrote $OUT/faults.md"
[ "$FAILED" -eq 0 ] || { echo "bench_faults: $FAILED run(s) failed a check (said in faults.md)" >&2; exit 1; }
