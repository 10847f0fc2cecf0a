#!/usr/bin/env bash
# Capacity curve (issue 20): offered session rate vs. hot hit rate, first
# tool result p50/p95, and sessions shed or refused, per environment, for
# three node set-ups in one run, each a full bench_ttft.sh pass in mode hot:
#   eager   eager refills (what a node does where lazy pages do not work,
#           e.g. vm.unprivileged_userfaultfd=0 under user namespaces: the
#           issue's machine), the shell started on the first call
#           (--lazy-shell), claims queued without bound (--claim-wait-max 0)
#   before  the same with lazy refills (this code before issue 20, where
#           lazy pages work)
#   after   lazy refills, the shell started with the hands, claims refused
#           past 5 s (the node's defaults now)
# Knobs: RATES (default "2 5 10"), ENVS ("trivial py200"), DURATION (10 s),
# HOT (hot clones asked per environment, 8), OUT (bench/results).
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export RATES=${RATES:-"2 5 10"} ENVS=${ENVS:-"trivial py200"} DURATION=${DURATION:-10}
export HOT=${HOT:-8} MODES=hot
T=$(mktemp -d /tmp/wp-capacity-XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT
VARIANTS="eager before after"
for v in $VARIANTS; do
    case $v in
        eager) na="--eager --claim-wait-max 0" ha=--lazy-shell ;;
        before) na="--claim-wait-max 0" ha=--lazy-shell ;;
        after) na="" ha="" ;;
    esac
    echo "bench_capacity: $v (node: ${na:-defaults}; hands: ${ha:-defaults})"
    NODE_ARGS="${NODE_ARGS:-} $na" HANDS_ARGS="$ha" OUT="$T/$v" RUNS_OUT="$T/runs-$v" \
        nice bash bench/bench_ttft.sh "$BUILD" >"$T/$v.log" 2>&1 ||
        { tail -20 "$T/$v.log" >&2; exit 1; }
done
python3 - "$T" "$OUT" "$(uname -r)" "$(nproc)" "$DURATION" "$HOT" <<'PY'
import glob, json, os, sys
t, out, kern, ncpu, dur, hot = sys.argv[1:7]
rows = []
order = ("eager", "before", "after")
for v in order:
    for f in sorted(glob.glob(os.path.join(t, "runs-" + v, "*.json"))):
        o = json.load(open(f))
        c = o.get("claims", {})
        n = sum(c.values())
        fails = o.get("failures") or []
        rows.append({"variant": v, "env": o["env"], "rate": o["rate"], "arrivals": o["arrivals"],
                     "completed": o["completed"], "failed": o["failed"], "shed": o["shed"],
                     "overloaded": sum(1 for x in fails if "overloaded" in str(x)),
                     "claims": c, "hot_hit": (c.get("hot", 0) / n) if n else None,
                     "tool_p50": o["first_tool_result_ms"].get("p50"),
                     "tool_p95": o["first_tool_result_ms"].get("p95"),
                     "model_p50": o["model_ttft_ms"].get("p50")})
rows.sort(key=lambda r: (r["env"], r["rate"], order.index(r["variant"])))
json.dump({"kernel": kern, "cpus": int(ncpu), "duration_s": float(dur), "runs": rows},
          open(os.path.join(out, "capacity.json"), "w"), indent=1)
f = lambda x: "-" if x is None else ("%.0f" % x)
md = ["# Capacity curve", "",
      "Kernel %s, %s CPUs (shared with other work), one node (restore slots: one per CPU), one scheduler," % (kern, ncpu),
      "Redis and the model server on this machine; warmpool sessions (bench_ttft.sh mode hot, %s hot clones" % hot,
      "asked per environment), open-loop Poisson arrivals, %s s per rate, the model's TTFT median 400 ms." % dur,
      "`eager`: eager refills (as where lazy pages do not work), shell started on the first call, claims",
      "queued without bound; `before`: the same with lazy refills (the code before issue 20 on this machine);",
      "`after`: lazy refills, shell started with the hands, claims refused past 5 s (retryable overloaded error).",
      "Hot hit = claims served by an idle hot clone / all claims of the run (pool stats). Shed = arrivals the",
      "driver dropped at its in-flight cap; failed includes sessions whose claim was refused as overloaded",
      "(in brackets: how many of the first 20 failure reasons per run name the overload).",
      "First tool result from the user message, ms.", "",
      "| env | offered /s | variant | done / arrived | shed | failed (overloaded) | hot hit | first tool result p50 / p95 | model TTFT p50 |",
      "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    hh = "-" if r["hot_hit"] is None else "%.0f%%" % (100 * r["hot_hit"])
    md.append("| %s | %g | %s | %d / %d | %d | %d (%d) | %s | %s / %s | %s |" % (
        r["env"], r["rate"], r["variant"], r["completed"], r["arrivals"], r["shed"], r["failed"],
        r["overloaded"], hh, f(r["tool_p50"]), f(r["tool_p95"]), f(r["model_p50"])))
open(os.path.join(out, "capacity.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
