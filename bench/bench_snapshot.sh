#!/usr/bin/env bash
# Snapshot benchmark: boot, dump, eager and lazy restore, concurrent restores.
set -euo pipefail
BUILD=${1:-build}
"$BUILD/bench/snap_bench" --runs "${SNAP_BENCH_RUNS:-20}" --out bench/results
cat bench/results/snapshot.md
