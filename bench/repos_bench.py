#!/usr/bin/env python3
"""repos_bench.py - the driver of bench/bench_repos.sh (which starts the stack).

Three series interleaved run by run: sessions without a repository, with a
small one, with a large one (a github_repository resource with its token).
Each run: POST /v1/sessions, subscribe to the session's event stream (with
event_deltas[]=agent.message), send one user.message, and take the client's
monotonic clock at the send, at the first token (first event_delta or
agent.message) and at the first agent.tool_result. The tool result is checked
(the repository is there at the expected HEAD, or there is none). The
session is deleted and the next run waits until the pool has HOT hot
sandboxes again, so every run claims a hot one. The brain's own
"repositories ready in X ms" and "attached ... in X ms" come from the
scheduler's log. Writes OUT/repos.md and OUT/repos.json.
"""
import argparse
import datetime
import http.client
import json
import math
import os
import platform
import re
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
for a in ("sched", "key", "redis", "git", "token", "small-head", "large-head", "sched-log",
          "git-log", "out", "conditions"):
    ap.add_argument("--" + a, required=True)
ap.add_argument("--note", default="")
for a in ("hot", "runs-none", "runs-small", "runs-large"):
    ap.add_argument("--" + a, type=int, required=True)
A = ap.parse_args()
H = {"x-api-key": A.key, "content-type": "application/json"}
PORT = int(A.sched)


def req(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None


def hot_len():
    out = subprocess.check_output(["redis-cli", "-p", A.redis, "llen", "wp:env:{rpool}:hot"])
    return int(out.strip() or 0)


def wait_hot():
    end = time.monotonic() + 60
    while hot_len() < A.hot and time.monotonic() < end:
        time.sleep(0.05)


api = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
st, ag = req(api, "POST", "/v1/agents", {"name": "repobench", "model": "claude-bench",
                                         "tools": [{"type": "agent_toolset_20260401"}]})
assert st == 200, (st, ag)
st, env = req(api, "POST", "/v1/environments", {"name": "repobench", "config": {"type": "cloud"},
                                                "metadata": {"warmpool.pool": "rpool"}})
assert st == 200, (st, env)

SERIES = [("none", A.runs_none, None, None), ("small", A.runs_small, "small", A.small_head),
          ("large", A.runs_large, "large", A.large_head)]


def one_run(repo, head):
    body = {"agent": ag["id"], "environment_id": env["id"]}
    if repo:
        body["resources"] = [{"type": "github_repository", "url": "%s/%s.git" % (A.git, repo),
                              "authorization_token": A.token}]
    t_create = time.monotonic()
    st, s = req(api, "POST", "/v1/sessions", body)
    if st != 200:
        sys.exit("create: %d %s" % (st, s))
    sid = s["id"]
    t_created = time.monotonic()
    sc = http.client.HTTPConnection("127.0.0.1", PORT, timeout=300)
    sc.request("GET", "/v1/sessions/%s/events/stream?event_deltas%%5B%%5D=agent.message" % sid,
               headers=H)
    sr = sc.getresponse()
    if sr.status != 200:
        sys.exit("stream: %d" % sr.status)
    t_send = time.monotonic()
    st, _ = req(api, "POST", "/v1/sessions/%s/events" % sid,
                {"events": [{"type": "user.message",
                             "content": [{"type": "text", "text": "look at the workspace"}]}]})
    if st != 200:
        sys.exit("send: %d" % st)
    t_tok = t_tool = None
    text, errors = "", []
    while True:
        line = sr.fp.readline()
        if not line:
            sys.exit("session %s: the stream ended early" % sid)
        if not line.startswith(b"data:"):
            continue
        now = time.monotonic()
        ev = json.loads(line[5:])
        ty = ev.get("type")
        if t_tok is None and ty in ("event_delta", "agent.message"):
            t_tok = now
        elif ty == "agent.tool_result" and t_tool is None:
            t_tool = now
            text = "".join(c.get("text", "") for c in ev.get("content") or [])
        elif ty == "session.error":
            errors.append(ev.get("error", {}).get("type"))
        elif ty == "session.status_idle" and t_tool is not None:
            break
    sc.close()
    req(api, "DELETE", "/v1/sessions/%s" % sid)
    want = "REPO %s HEAD=%s" % (repo, head) if repo else None
    if errors or t_tok is None or (want and want not in text) or (not want and "REPO" in text) \
            or "listed" not in text:
        sys.exit("session %s (%s): errors %s, tool result %r" % (sid, repo or "none", errors, text))
    ms = lambda a, b: (b - a) * 1e3
    return sid, {"first_token_ms": ms(t_send, t_tok), "first_tool_result_ms": ms(t_send, t_tool),
                 "create_to_tool_result_ms": ms(t_create, t_tool), "create_ms": ms(t_create, t_created),
                 "files": int(re.search(r"files=(\d+)", text).group(1)) if repo else 0}


res = {name: [] for name, *_ in SERIES}
sids = {name: [] for name, *_ in SERIES}
wait_hot()
one_run(None, None)  # warm the scheduler's and node's paths once, not counted
for i in range(max(n for _, n, _, _ in SERIES)):
    for name, n, repo, head in SERIES:
        if i >= n:
            continue
        wait_hot()
        sid, r = one_run(repo, head)
        res[name].append(r)
        sids[name].append(sid)
    print("bench_repos: round %d done" % (i + 1), flush=True)

# The brain's own timings, from the scheduler's log, per session.
log = open(A.sched_log, errors="replace").read()
ready = {m.group(1): float(m.group(2))
         for m in re.finditer(r"session=(\S+) repositories ready in ([\d.]+) ms", log)}
attached = {m.group(1): float(m.group(2))
            for m in re.finditer(r"session=(\S+) sandbox \S+ attached tier=\S+ in ([\d.]+) ms", log)}
tiers = {m.group(1): m.group(2)
         for m in re.finditer(r"session=(\S+) sandbox \S+ attached tier=(\S+)", log)}
for name in res:
    for sid, r in zip(sids[name], res[name]):
        r["repos_ready_ms"] = ready.get(sid)
        r["attached_ms"] = attached.get(sid)
        r["tier"] = tiers.get(sid)


def pct(v, p):
    v = sorted(x for x in v if x is not None)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)] if v else float("nan")


KEYS = ("first_token_ms", "first_tool_result_ms", "create_to_tool_result_ms", "attached_ms",
        "repos_ready_ms")
summary = {}
for name in res:
    summary[name] = {"n": len(res[name]),
                     "not_hot": sum(1 for r in res[name] if r["tier"] != "hot")}
    for k in KEYS:
        summary[name][k] = {"p50": pct([r[k] for r in res[name]], 50),
                            "p95": pct([r[k] for r in res[name]], 95)}
base = summary["none"]
for name in ("small", "large"):
    s = summary[name]
    for k in ("first_token_ms", "first_tool_result_ms", "create_to_tool_result_ms"):
        s[k]["added_p50"] = s[k]["p50"] - base[k]["p50"]
        s[k]["ratio_p50"] = s[k]["p50"] / base[k]["p50"]
        s[k]["added_p95"] = s[k]["p95"] - base[k]["p95"]

cond = json.loads(A.conditions)
git_reqs = sum(1 for _ in open(A.git_log)) if os.path.exists(A.git_log) else 0
load = os.getloadavg()
meta = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
        "kernel": platform.release(), "cpus": os.cpu_count(), "loadavg_end": [round(x, 2) for x in load],
        "git_requests": git_reqs, **cond}
json.dump({"meta": meta, "summary": summary, "runs": res}, open(A.out + "/repos.json", "w"), indent=1)

f = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else "%.0f" % x
rows = []
for name in res:
    s = summary[name]
    rows.append("| %s | %d | %d | %s / %s | **%s** / %s | %s / %s | %s / %s | %s / %s |" % (
        name, s["n"], s["not_hot"], f(s["first_token_ms"]["p50"]), f(s["first_token_ms"]["p95"]),
        f(s["first_tool_result_ms"]["p50"]), f(s["first_tool_result_ms"]["p95"]),
        f(s["create_to_tool_result_ms"]["p50"]), f(s["create_to_tool_result_ms"]["p95"]),
        f(s["attached_ms"]["p50"]), f(s["attached_ms"]["p95"]),
        f(s["repos_ready_ms"]["p50"]), f(s["repos_ready_ms"]["p95"])))
added = []
for name in ("small", "large"):
    s = summary[name]
    added.append("| %s | %+.0f ms (%.2fx) | %+.0f ms | %+.0f ms (%.2fx) | %+.0f ms |" % (
        name, s["first_tool_result_ms"]["added_p50"], s["first_tool_result_ms"]["ratio_p50"],
        s["first_tool_result_ms"]["added_p95"], s["first_token_ms"]["added_p50"],
        s["first_token_ms"]["ratio_p50"], s["first_token_ms"]["added_p95"]))
mb = cond["large_files"] * cond["large_kib"] / 1024
md = """# Repositories: what a github_repository resource adds to the first tool result

`bench/bench_repos.sh` ({date}, {host}, kernel {kernel}, {cpus} vCPUs **shared with other
engineers' builds and tests**: load average {l1:.1f} / {l5:.1f} / {l15:.1f} at the end). The real stack on this
machine: Redis, warmpool-scheduler, one warmpool-node (pool `rpool`: host rootfs, unrestricted
network, {hot} hot sandboxes, {mem} MB), its egress proxy, the model stand-in (wp-modelserver,
TTFT {ttft:.0f} ms fixed, 200 tokens/s; first turn: "Looking at the workspace." and one bash call
that lists /workspace's repositories with their HEAD and file count), and a private Git host
(tests/integration/git_server.py: git http-backend over HTTPS, token required) in a network
namespace behind a veth, reached through the node's egress proxy which injects the token.

Series, interleaved run by run, each session served a hot sandbox:
- **none**: a session without resources (its sandbox is not confined to the proxy);
- **small**: one `github_repository` (5 files, 3 commits);
- **large**: one `github_repository` of {lf} files of {lk} KiB from /dev/urandom ({mb:.1f} MiB at HEAD,
  incompressible) in 60 directories, 4 commits (the last rewrites 5% of the files); the server's
  pack is {pack:.1f} MiB.

Times in ms on the client's monotonic clock (Python, http.client; the event stream is open before
the message is sent): from sending the `user.message` to the first token (first `event_delta` of
agent.message) and to the first `agent.tool_result`; "create to tool result" adds the
`POST /v1/sessions` and the stream's subscription. Attached and repositories ready: the brain's own
timings from the scheduler's log (claim to attached; clone command sent to its result). p50 / p95.

| series | n | not hot | first token | first tool result | create to tool result | attached | repositories ready |
|---|---|---|---|---|---|---|---|
{rows}

Added against `none` in the same run (p50 difference and ratio of p50s; p95 difference):

| series | first tool result p50 | first tool result p95 | first token p50 | first token p95 |
|---|---|---|---|---|
{added}

Git host requests served: {gr}.
{note}""".format(date=meta["date"], host=meta["host"], kernel=meta["kernel"], cpus=meta["cpus"], l1=load[0],
           l5=load[1], l15=load[2], hot=cond["hot"], mem=cond["memory_mb"], ttft=cond["model_ttft_ms"],
           lf=cond["large_files"], lk=cond["large_kib"], mb=mb, pack=cond["large_pack_kib"] / 1024,
           rows="\n".join(rows), added="\n".join(added), gr=git_reqs, note=("\n" + A.note + "\n") if A.note else "")
open(A.out + "/repos.md", "w").write(md)
print(md)
