#!/usr/bin/env bash
# bench_prompt_cache.sh BUILD - input tokens billed per turn on a 50-turn
# session, with prompt caching (the brain's cache_control breakpoint at the
# end of each request's prompt) against what the same requests cost without
# it (the whole prompt at the full rate). Runs test_brain (Redis, the model
# stand-in, which bills caching as the Messages API does, two schedulers and
# a node); its prompt_cache_fifty_turns test writes the figures. Writes
# bench/results/prompt-cache.json and prompt-cache.md. Token counts, not
# timings.
set -euo pipefail
BUILD=${1:-build}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/results
mkdir -p "$OUT"
WP_CACHE_REPORT=$OUT/prompt-cache.json CMOCKA_MESSAGE_OUTPUT=TAP \
    nice "$BUILD/tests/integration/test_brain" >&2 || true
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(out + "/prompt-cache.json"))
t = r["turns"]
with open(out + "/prompt-cache.md", "w") as f:
    f.write("# Prompt caching on a 50-turn session (issue 15 defect 12)\n\n")
    f.write("The brain puts one `cache_control: {type: ephemeral}` breakpoint on the last block of\n")
    f.write("each model request (tools, system and history before it are the stable prefix). The\n")
    f.write("model stand-in bills it as the Messages API does (20-block lookback, 1024-token\n")
    f.write("minimum, 5-minute TTL; tokens = bytes / 4). *Without* = the whole prompt at the full\n")
    f.write("rate (what a request without `cache_control` is billed); *with* = input + 1.25 x\n")
    f.write("cache writes + 0.1 x cache reads (the API's price ratios), in input-token equivalents.\n\n")
    f.write("| turn | prompt tokens | input (full rate) | cache write | cache read | billed with | billed without |\n")
    f.write("|---|---|---|---|---|---|---|\n")
    for x in t:
        if x["turn"] in (1, 2, 3, 5, 10, 20, 30, 40, 50):
            b = x["input"] + 1.25 * x["cache_write"] + 0.1 * x["cache_read"]
            f.write("| %d | %d | %d | %d | %d | %.0f | %d |\n" % (x["turn"], x["prompt"], x["input"],
                    x["cache_write"], x["cache_read"], b, x["prompt"]))
    f.write("\nAll 50 turns: %d billed with caching, %d without (%.1f%%).\n" % (
        r["billed_with_cache"], r["billed_without"], 100.0 * r["billed_with_cache"] / r["billed_without"]))
PY
cat "$OUT/prompt-cache.md"
