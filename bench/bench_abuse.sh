#!/usr/bin/env bash
# bench_abuse.sh [BUILD] - the scheduler under unauthenticated clients
# (bodies without a key, slowloris, one address over its cap) and under
# ten /metrics scrapers with and without the scrape cache (issue 15,
# defects 3 and 4). Writes bench/results/abuse.{md,json}.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
mkdir -p bench/results
exec python3 bench/abuse_bench.py "$BUILD" bench/results
