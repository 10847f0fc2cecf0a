#!/usr/bin/env bash
# agentlink benchmark: round trip of a trivial tool call and of attach,
# median and p95 over 1000 calls. Writes bench/results/agentlink.{json,md}.
#   bench/bench_agentlink.sh [BUILD]
set -euo pipefail
BUILD=${1:-build}
N=${ALINK_BENCH_N:-1000}
cd "$(dirname "$0")/.."
mkdir -p bench/results
"$BUILD/bench/alink_bench" "$BUILD/warmpool-hands" --n "$N" \
    --json bench/results/agentlink.json --md bench/results/agentlink.md
cat bench/results/agentlink.md
