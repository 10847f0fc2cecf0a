#!/usr/bin/env bash
# Runs every bench/bench_<module>.sh with the build dir; each writes its
# results under bench/results/. `make bench` calls this.
#   bench/run.sh [BUILD]
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
rc=0
for b in bench/bench_*.sh; do
    [ -x "$b" ] || continue
    echo "== $b"
    "$b" "$BUILD" || rc=1
done
exit $rc
