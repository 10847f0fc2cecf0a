#!/usr/bin/env bash
# bench_sse_streams.sh BUILD - what one scheduler holds for N open SSE
# streams (one per session): Redis connections (INFO clients) before and
# while they are held, and the scheduler's RSS, for N = 1000, 5000, 10000
# (BENCH_STREAMS to change). Runs test_sched_sse_streams, which also checks
# that an event reaches every stream. Writes bench/results/sse-streams.json
# and sse-streams.md. Figures, not timings: nothing here is a pass/fail.
set -euo pipefail
BUILD=${1:-build}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/results
mkdir -p "$OUT"
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT
for n in ${BENCH_STREAMS:-1000 5000 10000}; do
    WP_SSE_STREAMS=$n WP_SSE_REPORT=$TMP CMOCKA_MESSAGE_OUTPUT=TAP \
        nice "$BUILD/tests/integration/test_sched_sse_streams" >&2
done
python3 - "$TMP" "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]
json.dump(rows, open(out + "/sse-streams.json", "w"), indent=1)
with open(out + "/sse-streams.md", "w") as f:
    f.write("# SSE streams held by one scheduler (issue 15 defect 7)\n\n")
    f.write("One stream per session on loopback, `--sse-keys-per-conn 1000` (default). Redis\n")
    f.write("connections are `connected_clients` of `INFO clients` (the scheduler's command and\n")
    f.write("pool connections, the `redis-cli` asking, and the SSE readers). Before this change\n")
    f.write("every streamed session had its own connection: N streams = N + 3 connections, and\n")
    f.write("10 000 exceeded Redis's default `maxclients` (measured with this test on the code\n")
    f.write("before, commit a482db8: 300 streams held 304 connections; the test failed).\n\n")
    f.write("| streams | Redis conns before | while held | after an event to each | scheduler RSS held (MiB) | after events (MiB) | streams missing the event |\n")
    f.write("|---|---|---|---|---|---|---|\n")
    for r in rows:
        f.write("| %d | %d | %d | %d | %.1f | %.1f | %d |\n" % (
            r["streams"], r["redis_clients_before"], r["redis_clients_held"],
            r["redis_clients_after_events"], r["sched_rss_kb_held"] / 1024,
            r["sched_rss_kb_after_events"] / 1024, r["missing"]))
PY
cat "$OUT/sse-streams.md"
