#!/usr/bin/env bash
# criu modes: dump, eager and lazy restore in the default and the
# no-breakpoints mode, interleaved; the ratio is what the fallback costs.
set -euo pipefail
BUILD=${1:-build}
"$BUILD/bench/criu_bench" --runs "${CRIU_BENCH_RUNS:-30}" --out bench/results
cat bench/results/criu-modes.md
