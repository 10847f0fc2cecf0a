#!/usr/bin/env python3
"""ttft_report.py OUT KERNEL CPUS DURATION RUN.json... -> OUT/ttft.json,
OUT/ttft.md (the README's table), OUT/ttft.svg (the plot, drawn here with
the standard library) and OUT/ttft.gp (the same plot for gnuplot).
Ratios are to the baseline of the same environment and rate."""
import json
import math
import sys

out, kernel, cpus, duration = sys.argv[1:5]
runs = [json.load(open(f)) for f in sys.argv[5:]]
MODES = ["baseline", "hot", "warm", "cold"]
LABEL = {"baseline": "baseline (cold, coupled)", "hot": "warmpool hot pool",
         "warm": "warmpool warm only", "cold": "warmpool cold only"}


def mode_of(r, path):
    # ttft_bench says "warmpool" for every brain mode; the file name says which.
    return path.split("run-")[1].split("-")[0]


for r, f in zip(runs, sys.argv[5:]):
    r["bench_mode"] = mode_of(r, f)
base = {(r["env"], r["rate"]): r for r in runs if r["bench_mode"] == "baseline"}


def ratio(r, metric, q):
    b = base.get((r["env"], r["rate"]))
    v = r[metric].get(q)
    bv = b[metric].get(q) if b else None
    if v is None or not bv:
        return None
    return v / bv


for r in runs:
    r["ratio_to_baseline"] = {m: {q: ratio(r, m, q) for q in ("p50", "p95", "p99")}
                              for m in ("ttft_ms", "first_tool_result_ms", "added_over_model_ms")}
json.dump({"kernel": kernel, "cpus": int(cpus), "duration_s": float(duration),
           "model_server": "tests/modelserver/scripts/bench-bash.json (TTFT lognormal, median 400 ms, p95 1200 ms)",
           "runs": runs}, open(f"{out}/ttft.json", "w"), indent=1)


def fmt(v):
    return "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}")


def cell(r, m, q):
    v = r[m].get(q)
    rt = r["ratio_to_baseline"][m][q]
    if v is None:
        return "-"
    return fmt(v) + ("" if r["bench_mode"] == "baseline" or rt is None else f" ({rt:.2f}x)")


md = ["# TTFT benchmark", "",
      f"Kernel {kernel}, {cpus} CPUs, one node, one scheduler, Redis and the model server on this machine.",
      f"Open-loop Poisson arrivals, {duration} s per rate. Model server: the same scripted session and TTFT",
      "distribution for every mode (lognormal, median 400 ms, p95 1200 ms): text, then a bash call.",
      "TTFT: baseline from the session's arrival (sandbox, then model); warmpool from sending the",
      "user.message. Added = TTFT minus the model server's own measured TTFT for that request.",
      "Times in ms; (x) is the ratio to the baseline at the same environment and rate.", "",
      "| env | mode | rate/s | done/arrived | TTFT p50 | p95 | p99 | first tool result p50 | p95 | added over model p50 | p95 | p99 |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in sorted(runs, key=lambda r: (r["env"], MODES.index(r["bench_mode"]), r["rate"])):
    md.append(f"| {r['env']} | {LABEL[r['bench_mode']]} | {r['rate']:g} | {r['completed']}/{r['arrivals']}"
              f"{' (' + str(r['shed']) + ' shed)' if r['shed'] else ''} | "
              + " | ".join(cell(r, m, q) for m, q in (("ttft_ms", "p50"), ("ttft_ms", "p95"), ("ttft_ms", "p99"),
                                                       ("first_tool_result_ms", "p50"), ("first_tool_result_ms", "p95"),
                                                       ("added_over_model_ms", "p50"), ("added_over_model_ms", "p95"),
                                                       ("added_over_model_ms", "p99"))) + " |")
fails = [(r["env"], r["bench_mode"], r["rate"], r["failures"][:3]) for r in runs if r["failed"]]
if fails:
    md += ["", "Failed sessions (first reasons per run):", ""]
    md += [f"- {e} {m} {rate:g}/s: " + "; ".join(why) for e, m, rate, why in fails]
open(f"{out}/ttft.md", "w").write("\n".join(md) + "\n")

# gnuplot: TTFT p50 (solid) and p95 (dashed) against the rate, one colour
# per mode, one panel per environment, log scale.
envs = sorted({r["env"] for r in runs})
# One panel per environment: (env, [(mode, [(rate, p50, p95), ...]), ...]),
# for both plots below.
panels = []
for e in envs:
    series = []
    for m in MODES:
        pts = sorted((r["rate"], r["ttft_ms"].get("p50"), r["ttft_ms"].get("p95"))
                     for r in runs if r["env"] == e and r["bench_mode"] == m and r["ttft_ms"].get("n"))
        if pts:
            series.append((m, pts))
    if series:
        panels.append((e, series))
gp = ["set terminal svg size 1200,%d dynamic background '#ffffff'" % (360 * max(1, len(envs))),
      "set output 'ttft.svg'", "set multiplot layout %d,1" % max(1, len(envs)),
      "set logscale y", "set xlabel 'arrivals per second'", "set ylabel 'TTFT ms'", "set key outside right",
      "set grid"]
for e, series in panels:
    gp.append(f"set title 'TTFT, {e}'")
    for i, (m, pts) in enumerate(series):
        gp.append(f"$d_{e}_{m} << EOD")
        gp += [f"{x:g} {p50:.3f} {p95:.3f}" for x, p50, p95 in pts]
        gp.append("EOD")
    plots = []
    for i, (m, pts) in enumerate(series):
        plots.append(f"$d_{e}_{m} using 1:2 with linespoints lc {i + 1} dt 1 title '{LABEL[m]} p50'")
        plots.append(f"$d_{e}_{m} using 1:3 with linespoints lc {i + 1} dt 2 title '{LABEL[m]} p95'")
    gp.append("plot " + ", ".join(plots))
gp.append("unset multiplot")
open(f"{out}/ttft.gp", "w").write("\n".join(gp) + "\n")


# The same plot as SVG without gnuplot (standard library only), so every
# run leaves a picture: one panel per environment, log-scaled TTFT against
# the arrival rate, p50 solid and p95 dashed, one colour per mode.
COLORS = ["#444444", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
W, PH, ML, MR, MT, MB = 1000, 300, 70, 230, 40, 45
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{PH * max(1, len(panels))}" '
       'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="#fff"/>']
for pi, (e, series) in enumerate(panels):
    y0 = pi * PH
    rates = sorted({x for _, pts in series for x, _, _ in pts})
    vals = [v for _, pts in series for _, a, b in pts for v in (a, b) if v and v > 0]
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    if hi - lo < 0.5:
        lo, hi = lo - 0.25, hi + 0.25
    pw, ph = W - ML - MR, PH - MT - MB
    xs = {x: ML + (pw * i / max(1, len(rates) - 1) if len(rates) > 1 else pw / 2) for i, x in enumerate(rates)}
    ys = lambda v: y0 + MT + ph * (1 - (math.log10(v) - lo) / (hi - lo))  # noqa: E731
    svg.append(f'<text x="{ML}" y="{y0 + 22}" font-size="14" font-weight="bold">TTFT, {e} (ms, log scale)</text>')
    svg.append(f'<rect x="{ML}" y="{y0 + MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for k in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
        for mant in (1, 2, 5):
            v = mant * 10 ** k
            if lo <= math.log10(v) <= hi:
                y = ys(v)
                svg.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{ML + pw}" y2="{y:.1f}" stroke="#eee"/>')
                svg.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for x in rates:
        svg.append(f'<text x="{xs[x]:.1f}" y="{y0 + MT + ph + 16}" text-anchor="middle">{x:g}/s</text>')
    for si, (m, pts) in enumerate(series):
        c = COLORS[si % len(COLORS)]
        for q, dash in ((1, ""), (2, ' stroke-dasharray="6,4"')):
            p = " ".join(f"{xs[pt[0]]:.1f},{ys(pt[q]):.1f}" for pt in pts if pt[q] and pt[q] > 0)
            if p:
                svg.append(f'<polyline points="{p}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        ly = y0 + MT + 18 * si
        svg.append(f'<line x1="{W - MR + 15}" y1="{ly + 6}" x2="{W - MR + 40}" y2="{ly + 6}" stroke="{c}" stroke-width="2"/>')
        svg.append(f'<text x="{W - MR + 46}" y="{ly + 10}">{LABEL[m]} (p50 solid, p95 dashed)</text>')
svg.append("</svg>")
open(f"{out}/ttft.svg", "w").write("\n".join(svg) + "\n")
