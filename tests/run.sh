#!/usr/bin/env bash
# Runs every test binary under BUILD/tests and every fuzz corpus replay,
# each with a time limit, and prints one closing line "N passed, N failed".
#   tests/run.sh [BUILD] [NAME-FILTER]
set -u
BUILD=${1:-build}
FILTER=${2:-}
TIMEOUT=${WP_TEST_TIMEOUT:-900} # test_pool (19 tests, real nodes) nears 600 s on a loaded machine
pass=0; fail=0; failed_bins=()

run_one() {  # name, command...
    local name=$1; shift
    local out; out=$(mktemp)
    echo "# --- $name"
    local t0=$SECONDS
    CMOCKA_MESSAGE_OUTPUT=TAP timeout -k 10 "$TIMEOUT" "$@" >"$out" 2>&1
    local rc=$?
    cat "$out"
    echo "# $name took $((SECONDS - t0)) s"  # the suite's budget: see which binary spends it
    local ok nok
    ok=$(grep -cE '^ok [0-9]+' "$out")
    nok=$(grep -cE '^not ok [0-9]+' "$out")
    if [ "$rc" -ne 0 ] && [ "$nok" -eq 0 ]; then
        nok=1   # crashed or timed out outside any test
        echo "not ok - $name exited with status $rc"
    fi
    # A skip is neither a pass nor harmless: as root (CI) every suite can
    # run, so one that skips failed to (WP_TEST_ALLOW_SKIP=1 to allow).
    local skips
    skips=$(grep -cE '# SKIP' "$out")
    if [ "$skips" -gt 0 ]; then
        ok=$((ok > skips ? ok - skips : 0))
        if [ "$(id -u)" = 0 ] && [ -z "${WP_TEST_ALLOW_SKIP:-}" ]; then
            echo "not ok - $name skipped $skips time(s) as root: $(grep -m1 -E '# SKIP' "$out")"
            nok=$((nok + 1))
        fi
    fi
    pass=$((pass + ok)); fail=$((fail + nok))
    [ "$nok" -gt 0 ] && failed_bins+=("$name")
    rm -f "$out"
}

# How criu runs here (cached per criu, kernel and CPU). Where no mode works
# every sandbox test would fail or wait on a deadline: stop at once, with
# the reason on one line.
if [ -x "$BUILD/warmpool-snap" ] && [ -z "${WP_TEST_SKIP_PROBE:-}" ]; then
    probe=$("$BUILD/warmpool-snap" probe 2>&1)
    prc=$?
    echo "# criu probe: $probe"
    if [ "$prc" -ne 0 ]; then
        why=$(printf '%s' "$probe" | sed -n 's/.*"why":"\([^"]*\)".*/\1/p')
        echo "not ok - criu does not work on this host: ${why:-$probe}"
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

for t in "$BUILD"/tests/unit/* "$BUILD"/tests/integration/*; do
    [ -x "$t" ] && [ -f "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    [ -n "$FILTER" ] && [[ "$t" != *"$FILTER"* ]] && continue
    run_one "$(basename "$(dirname "$t")")/$(basename "$t")" "$t"
done

for r in "$BUILD"/fuzz-replay/*; do
    [ -x "$r" ] && [ -f "$r" ] || continue
    case "$r" in *.d) continue ;; esac
    n=$(basename "$r")
    [ -n "$FILTER" ] && [[ "fuzz-$n" != *"$FILTER"* ]] && continue
    run_one "fuzz-replay/$n" "$r" "tests/fuzz/$n"
done

[ ${#failed_bins[@]} -gt 0 ] && echo "# failed: ${failed_bins[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
