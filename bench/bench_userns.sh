#!/usr/bin/env bash
# What a user namespace per sandbox costs: cold boot, eager and lazy restore
# with and without it, interleaved in one run (bench/results/userns.md).
set -euo pipefail
BUILD=${1:-build}
"$BUILD/bench/userns_bench" --runs "${USERNS_BENCH_RUNS:-20}" --out bench/results
cat bench/results/userns.md
