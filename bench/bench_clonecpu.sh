#!/usr/bin/env bash
# CPU per clone of the 200 MB Python environment, split by process (our
# set-up, the helper, criu swrk, the restored tasks, the lazy-pages daemon,
# the destroy): eager, and lazy before/after issue 20's lazy-pages wait,
# interleaved in one run (bench/results/clonecpu.md).
set -euo pipefail
BUILD=${1:-build}
"$BUILD/bench/clonecpu_bench" --runs "${CLONECPU_RUNS:-20}" --out bench/results
cat bench/results/clonecpu.md
