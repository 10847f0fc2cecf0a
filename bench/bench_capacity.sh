#!/usr/bin/env bash
# Capacity curve (issue 20): offered session rate vs. hot hit rate, first
# tool result p50/p95, and sessions shed or refused, per environment, for
# four node set-ups in one run, each a full bench_ttft.sh pass in mode hot:
#   eager   eager refills into 4 KiB pages (a host with THP "madvise" where
#           lazy pages do not work, e.g. vm.unprivileged_userfaultfd=0 under
#           user namespaces), the shell started on the first call
#           (--lazy-shell), claims queued without bound (--claim-wait-max 0)
#   before  the same with lazy refills (this code before issue 20)
#   lazy    lazy refills, the shell started with the hands, claims refused
#           past 5 s (the node's defaults on a host with THP "madvise")
#   thp     the same with --thp always: the node sets the host's THP to
#           "always" while it runs and refills with eager restores, whose
#           memory lands in huge pages (bench/results/clonecpu.md)
#   fpr     thp with --free-page-reporting off: memory freed in this VM is
#           not handed back to the hypervisor while the node runs
#   auto    fpr with the hot tier left to the node's autoscaler between HOT
#           and AUTO_MAX (default 32) clones instead of fixed at HOT
#   base    auto run by the build in BASE_BUILD (another commit's build
#           dir, e.g. a worktree's): before and after a change in one run
# Knobs: RATES (default "2 5 10 15"), ENVS ("trivial py200 slow5s"),
# DURATION (10 s), HOT (hot clones asked per environment, 8), VARIANTS,
# OUT (bench/results), WARM_MB (memory touched once before the first
# variant; 0: none).
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export RATES=${RATES:-"2 5 10 15"} ENVS=${ENVS:-"trivial py200 slow5s"} DURATION=${DURATION:-10}
export HOT=${HOT:-8} MODES=hot
T=$(mktemp -d /tmp/wp-capacity-XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT
VARIANTS=${VARIANTS:-"eager before lazy thp fpr"}
THP0=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo none)
# A VM's memory costs more the first time the guest touches it (the
# hypervisor backs it then): in session 10 the variant that ran first on a
# fresh machine paid ~2x the CPU per py200 session. Touch WARM_MB (default
# half of what is available, at most 12 GiB) once, in a tmpfs, first.
WARM_MB=${WARM_MB:-$(awk '/^MemAvailable:/ { m = int($2 / 2048); print (m > 12288 ? 12288 : m) }' /proc/meminfo)}
if [ "${WARM_MB:-0}" -gt 0 ]; then
    W=$(mktemp -d /tmp/wp-capacity-warm-XXXXXX)
    if mount -t tmpfs -o "size=${WARM_MB}m" tmpfs "$W"; then
        dd if=/dev/zero of="$W/touch" bs=1M count="$WARM_MB" status=none || true
        umount "$W"
    fi
    rmdir "$W"
fi
LOADS=""
for v in $VARIANTS; do
    case $v in
        eager) na="--eager --claim-wait-max 0" ha=--lazy-shell ;;
        before) na="--claim-wait-max 0" ha=--lazy-shell ;;
        lazy) na="--refill auto" ha="" ;;
        thp) na="--thp always" ha="" ;;
        fpr) na="--thp always --free-page-reporting off" ha="" ;;
        auto|base) na="--thp always --free-page-reporting off" ha="" ;;
        *) echo "bench_capacity: unknown variant $v" >&2; exit 2 ;;
    esac
    echo "bench_capacity: $v (node: ${na:-defaults}; hands: ${ha:-defaults})"
    hmax=$HOT build=$BUILD
    case $v in auto|base) hmax=${AUTO_MAX:-32} ;; esac
    if [ "$v" = base ]; then
        build=${BASE_BUILD:?variant base needs BASE_BUILD, another commit build dir}
    fi
    NODE_ARGS="${NODE_ARGS:-} $na" HANDS_ARGS="$ha" HOT_MAX=$hmax OUT="$T/$v" RUNS_OUT="$T/runs-$v" \
        nice bash bench/bench_ttft.sh "$build" >"$T/$v.log" 2>&1 ||
        { tail -20 "$T/$v.log" >&2; exit 1; }
    LOADS="$LOADS $v:$(cut -d' ' -f1 /proc/loadavg)"
done
BASE_DESC=-
if [ -n "${BASE_BUILD:-}" ]; then
    BASE_DESC=$(git -C "$BASE_BUILD/.." log -1 --format='%h' 2>/dev/null || echo "$BASE_BUILD")
fi
python3 - "$T" "$OUT" "$(uname -r)" "$(nproc)" "$DURATION" "$HOT" "$THP0" "$LOADS" "$BASE_DESC" <<'PY'
import glob, json, os, sys
t, out, kern, ncpu, dur, hot, thp0, loads, base = sys.argv[1:10]
rows = []
order = ("eager", "before", "lazy", "thp", "fpr", "base", "auto")
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
                     "model_p50": o["model_ttft_ms"].get("p50"),
                     "busy_per_session_ms": (o["machine_busy_ms"] / o["completed"]) if o.get("machine_busy_ms") and o["completed"] else None,
                     "node_per_session_ms": (o["node_cpu_ms"] / o["completed"]) if o.get("node_cpu_ms") is not None and o["completed"] else None,
                     "sched_redis_per_session_ms": ((o["sched_cpu_ms"] + o["redis_cpu_ms"]) / o["completed"]) if o.get("sched_cpu_ms") is not None and o["completed"] else None,
                     "ours_p50": (o.get("tool_result_after_tool_use_ms") or {}).get("p50"),
                     "ours_p95": (o.get("tool_result_after_tool_use_ms") or {}).get("p95")})
rows.sort(key=lambda r: (r["env"], r["rate"], order.index(r["variant"])))
json.dump({"kernel": kern, "cpus": int(ncpu), "duration_s": float(dur), "thp_before": thp0.strip(),
           "loadavg": loads.strip(), "runs": rows},
          open(os.path.join(out, "capacity.json"), "w"), indent=1)
f = lambda x: "-" if x is None else ("%.0f" % x)
md = ["# Capacity curve", "",
      "Kernel %s, %s CPUs, load average at the end of each variant: %s; host THP before the run: %s." % (
          kern, ncpu, loads.strip(), thp0.strip()),
      "One node (restore slots: one per CPU), one scheduler, Redis and the model server on this machine;",
      "warmpool sessions (bench_ttft.sh mode hot, %s hot clones asked per environment), open-loop Poisson" % hot,
      "arrivals, %s s per rate, the model's TTFT median 400 ms." % dur,
      "`eager`: eager refills into 4 KiB pages (where lazy pages do not work), shell started on the first",
      "call, claims queued without bound; `before`: the same with lazy refills (the code before issue 20);",
      "`lazy`: lazy refills, shell started with the hands, claims refused past 5 s (retryable overloaded",
      "error): the node's defaults on a host whose THP is not \"always\"; `thp`: the same node with",
      "`--thp always`: eager refills whose memory lands in huge pages; `fpr`: `thp` with",
      "`--free-page-reporting off` (memory freed in this VM not handed back to the hypervisor);",
      "`auto`: `fpr` with the hot tier sized by the node's autoscaler between %s and AUTO_MAX clones" % hot,
      "(the other variants fix it at %s); `base`: `auto` run by another commit's build (%s)." % (hot, base),
      "Hot hit = claims served by an idle hot clone / all claims of the run (pool stats). Shed = arrivals the",
      "driver dropped at its in-flight cap; failed includes sessions whose claim was refused as overloaded",
      "(in brackets: how many of the first 20 failure reasons per run name the overload).",
      "First tool result from the user message, ms; `over TTFT` = its p50 minus the model's TTFT p50 (the",
      "issue's measure; it includes the model's own streaming of its text and tool call after the first",
      "token, ~300 ms in this script at 80 tokens/s); `after tool_use` = from the session's `agent.tool_use`",
      "event (the model's call complete) to its `agent.tool_result`: what warmpool adds (the sandbox's",
      "claim and attach, the bash run), p50 / p95. `CPU/session`: the whole machine's busy CPU from the",
      "run's start until its released sandboxes are destroyed and the hot tier is full again, over the",
      "sessions done: every process on the one machine (refills, scheduler, Redis, node, the model",
      "stand-in and the driver; other work on the machine too), ms; 2 CPUs give 2000 ms a second.",
      "`node`: of it, the node's own CPU and its reaped children's (restore helpers, criu, the clones'",
      "tasks once destroyed, the destroys); `sched+redis`: the scheduler's and Redis's.", "",
      "| env | offered /s | variant | done / arrived | shed | failed (overloaded) | hot hit | first tool result p50 / p95 | model TTFT p50 | over TTFT | after tool_use p50 / p95 | CPU/session | node | sched+redis |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    hh = "-" if r["hot_hit"] is None else "%.0f%%" % (100 * r["hot_hit"])
    over = None if r["tool_p50"] is None or r["model_p50"] is None else r["tool_p50"] - r["model_p50"]
    md.append("| %s | %g | %s | %d / %d | %d | %d (%d) | %s | %s / %s | %s | %s | %s / %s | %s | %s | %s |" % (
        r["env"], r["rate"], r["variant"], r["completed"], r["arrivals"], r["shed"], r["failed"],
        r["overloaded"], hh, f(r["tool_p50"]), f(r["tool_p95"]), f(r["model_p50"]), f(over),
        f(r["ours_p50"]), f(r["ours_p95"]), f(r["busy_per_session_ms"]),
        f(r.get("node_per_session_ms")), f(r.get("sched_redis_per_session_ms"))))
open(os.path.join(out, "capacity.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
