#!/usr/bin/env bash
# Runs every bench/bench_*.sh with the build dir; each writes its results
# as JSON and Markdown under bench/results/.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
for b in bench/bench_*.sh; do
    echo "== $b"
    bash "$b" "$BUILD"
done
