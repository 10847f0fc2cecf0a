#!/usr/bin/env python3
"""What one session costs the Redis primary (issue 18's benchmark, second half).

Driven by bench/bench_redis_calls.sh, which starts Redis, the scheduler, a node
and the model stand-in. A session here is what a harness does for one task:
create it, open its event stream, send one user.message, the model answers
with a bash tool call and then text, the session goes idle, the harness
deletes it.

Three measurements, each against Redis's own counters:
- background: INFO commandstats and the main thread's CPU over an idle
  interval of the same length as the load (heartbeats, pool upkeep, the
  brain's lease renewals), subtracted from what follows;
- calls per session: commandstats over SESSIONS sessions run CONC at a time,
  minus background, divided by SESSIONS; scripts named by a MONITOR pass over
  a few more sessions (EVALSHA carries only a digest: the EVAL that loaded it
  on the same connection names it);
- what a primary carries: the Redis main thread's CPU per session, and
  1 / that = sessions/s one core of the primary can serve at today's calls
  per session, before the primary's CPU is the limit.
"""
import argparse, hashlib, http.client, json, os, re, subprocess, sys, threading, time

P = argparse.ArgumentParser()
P.add_argument("--sched", type=int, required=True)
P.add_argument("--key", required=True)
P.add_argument("--redis", required=True)
P.add_argument("--pool", required=True)
P.add_argument("--hot", type=int, default=2)
P.add_argument("--sessions", type=int, default=60)
P.add_argument("--conc", type=int, default=4)
P.add_argument("--monitor-sessions", type=int, default=6)
P.add_argument("--lua-dir", required=True)
P.add_argument("--out", required=True)
P.add_argument("--conditions", default="{}")
A = P.parse_args()
H = {"x-api-key": A.key, "content-type": "application/json"}


def rcli(*args):
    return subprocess.check_output(["redis-cli", "-p", A.redis] + list(args), text=True)


def info(section):
    out = {}
    for line in rcli("info", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.strip().split(":", 1)
            out[k] = v
    return out


def snap():
    cs = {}
    for k, v in info("commandstats").items():
        if k.startswith("cmdstat_"):
            m = re.search(r"calls=(\d+)", v)
            cs[k[8:]] = int(m.group(1))
    cpu = info("cpu")
    main = float(cpu.get("used_cpu_user_main_thread", cpu["used_cpu_user"])) + \
        float(cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"]))
    return {"calls": cs, "cpu": main, "t": time.monotonic()}


def delta(a, b):
    keys = set(a["calls"]) | set(b["calls"])
    d = {k: b["calls"].get(k, 0) - a["calls"].get(k, 0) for k in keys}
    return {"calls": {k: v for k, v in d.items() if v}, "cpu": b["cpu"] - a["cpu"], "t": b["t"] - a["t"]}


def req(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None


def hot_len():
    return int(rcli("llen", "wp:env:{%s}:hot" % A.pool).strip() or 0)


def wait_hot():
    end = time.monotonic() + 120
    while hot_len() < A.hot and time.monotonic() < end:
        time.sleep(0.05)


api = http.client.HTTPConnection("127.0.0.1", A.sched, timeout=120)
st, ag = req(api, "POST", "/v1/agents", {"name": "callsbench", "model": "claude-bench",
                                         "tools": [{"type": "agent_toolset_20260401"}]})
assert st == 200, (st, ag)
st, env = req(api, "POST", "/v1/environments", {"name": "callsbench", "config": {"type": "cloud"},
                                                "metadata": {"warmpool.pool": A.pool}})
assert st == 200, (st, env)
ERRORS = []


def one_session():
    c = http.client.HTTPConnection("127.0.0.1", A.sched, timeout=120)
    st, s = req(c, "POST", "/v1/sessions", {"agent": ag["id"], "environment_id": env["id"]})
    if st != 200:
        ERRORS.append("create %d %s" % (st, s))
        return
    sid = s["id"]
    sc = http.client.HTTPConnection("127.0.0.1", A.sched, timeout=120)
    sc.request("GET", "/v1/sessions/%s/events/stream" % sid, headers=H)
    sr = sc.getresponse()
    st, _ = req(c, "POST", "/v1/sessions/%s/events" % sid,
                {"events": [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]})
    if st != 200 or sr.status != 200:
        ERRORS.append("send %d stream %d" % (st, sr.status))
        return
    tool = False
    while True:
        line = sr.fp.readline()
        if not line:
            ERRORS.append("%s: stream ended early" % sid)
            break
        if not line.startswith(b"data:"):
            continue
        ev = json.loads(line[5:])
        ty = ev.get("type")
        if ty == "agent.tool_result":
            tool = "calls-bench" in json.dumps(ev.get("content"))
        elif ty == "session.error":
            ERRORS.append("%s: %s" % (sid, ev.get("error")))
        elif ty == "session.status_idle" and tool:
            break
    sc.close()
    st, _ = req(c, "DELETE", "/v1/sessions/%s" % sid)
    if st != 200:
        ERRORS.append("delete %d" % st)


def run(n):
    left = [n]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            wait_hot()
            one_session()
    ts = [threading.Thread(target=worker) for _ in range(A.conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


wait_hot()
run(2)  # warm the paths once (script loads per connection), not counted
if ERRORS:
    sys.exit("warm-up sessions failed: %s" % ERRORS)

s0 = snap()
run(A.sessions)
s1 = snap()
load = delta(s0, s1)
if ERRORS:
    sys.exit("sessions failed: %s" % ERRORS[:5])
# The same length of idle time: what the processes do without sessions.
wait_hot()
b0 = snap()
time.sleep(max(load["t"], 5.0))
b1 = snap()
bg = delta(b0, b1)
scale = load["t"] / bg["t"]
per = {}
for k in set(load["calls"]) | set(bg["calls"]):
    v = (load["calls"].get(k, 0) - bg["calls"].get(k, 0) * scale) / A.sessions
    if abs(v) >= 0.05:
        per[k] = v
# commandstats counts the info/llen calls of this script too: drop them.
for k in ("info", "llen", "monitor"):
    per.pop(k, None)
cpu_per = (load["cpu"] - bg["cpu"] * scale) / A.sessions

# ---- MONITOR: which scripts, and the non-script commands by name ----------
lua = {}
for root, _, files in os.walk(A.lua_dir):
    for f in files:
        if f.endswith(".lua") and not f.startswith("_"):
            p = os.path.join(root, f)
            body = [l.strip() for l in open(p) if l.strip() and not l.strip().startswith("--")]
            lua[os.path.relpath(p, A.lua_dir)] = set(body)


def name_of(script):
    lines = set(l.strip() for l in script.split("\n") if l.strip())
    best, score = "?", 0
    for n, body in lua.items():
        s = len(lines & body)
        if s > score:
            best, score = n, s
    return best


def tokens(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == '"':
            j, buf = i + 1, []
            while j < len(s) and s[j] != '"':
                if s[j] == "\\" and j + 1 < len(s):
                    c = s[j + 1]
                    if c == "x":
                        buf.append(chr(int(s[j + 2:j + 4], 16)))
                        j += 4
                        continue
                    buf.append({"n": "\n", "r": "\r", "t": "\t"}.get(c, c))
                    j += 2
                    continue
                buf.append(s[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            i += 1
    return out


# Scripts are loaded per connection (EVAL once, then EVALSHA): flushed, each
# comes back as an EVAL that names it in the MONITOR output.
rcli("script", "flush")
mon = subprocess.Popen(["redis-cli", "-p", A.redis, "monitor"], stdout=subprocess.PIPE, text=True,
                       errors="replace")
lines = []
reader = threading.Thread(target=lambda: lines.extend(mon.stdout))
reader.start()
time.sleep(0.3)
m0 = time.monotonic()
run(A.monitor_sessions)
m_t = time.monotonic() - m0
mon.terminate()
reader.join()
sha_name, by_script, by_cmd, in_lua, last_sha = {}, {}, {}, {}, {}
for l in lines:
    m = re.match(r"^[\d.]+ \[\d+ ([^\]]+)\] (.*)$", l)
    if not m:
        continue
    t = tokens(m.group(2))
    if not t:
        continue
    cmd = t[0].lower()
    if cmd in ("info", "llen", "monitor", "script"):
        continue
    if m.group(1) == "lua":  # a command a script ran: counted apart
        in_lua[cmd] = in_lua.get(cmd, 0) + 1
        continue
    if cmd in ("eval", "evalsha") and len(t) > 1:
        if cmd == "eval":
            n = name_of(t[1])
            sha = hashlib.sha1(t[1].encode("latin-1", "replace")).hexdigest()
            sha_name[sha] = n
            key = n
            # The EVALSHA that just got NOSCRIPT (after the flush) is this
            # same call: not counted twice.
            if last_sha.get(m.group(1)) == sha:
                by_script[sha] -= 1
        else:
            key = t[1]
        last_sha[m.group(1)] = key if cmd == "evalsha" else None
        by_script[key] = by_script.get(key, 0) + 1
    else:
        by_cmd[cmd] = by_cmd.get(cmd, 0) + 1
scripts = {}
for k, v in by_script.items():
    if v <= 0:
        continue
    n = sha_name.get(k, k if "/" in k else "(sha %s...)" % k[:8])
    scripts[n] = scripts.get(n, 0) + v
# background share in the monitor window, same proportion as above
bg_total = sum(bg["calls"].values()) / bg["t"] * m_t
res = {
    "sessions": A.sessions, "concurrency": A.conc, "load_s": load["t"],
    "sessions_per_s": A.sessions / load["t"],
    "calls_per_session": sum(per.values()), "by_command": dict(sorted(per.items(), key=lambda x: -x[1])),
    "background_calls_per_s": sum(bg["calls"].values()) / bg["t"],
    "redis_cpu_ms_per_session": cpu_per * 1e3,
    "redis_background_cpu_pct": bg["cpu"] / bg["t"] * 100,
    "sessions_per_s_per_primary_core": 1.0 / cpu_per if cpu_per > 0 else None,
    "monitor": {"sessions": A.monitor_sessions, "window_s": m_t, "background_calls_est": bg_total,
                "scripts": dict(sorted(scripts.items(), key=lambda x: -x[1])),
                "commands": dict(sorted(by_cmd.items(), key=lambda x: -x[1])),
                "inside_scripts": dict(sorted(in_lua.items(), key=lambda x: -x[1])),
                "client_calls_per_session": (sum(by_script.values()) + sum(by_cmd.values()) - bg_total)
                / A.monitor_sessions},
    "conditions": json.loads(A.conditions),
}
os.makedirs(A.out, exist_ok=True)
json.dump(res, open(os.path.join(A.out, "redis-calls.json"), "w"), indent=1)

md = ["# What one session costs the Redis primary", "",
      "Generated by `bench/bench_redis_calls.sh` (issue 18's benchmark). A session: create, open its "
      "event stream, one `user.message`, the model (the stand-in) answers with a bash tool call and "
      "then text, `idle`, delete. %d sessions, %d at a time, in %.1f s (%.1f sessions/s: the node's "
      "hot pool refill, not Redis, bounds this rate here). Background (heartbeats, pool upkeep, lease "
      "renewals) measured over the same length of idle time and subtracted." %
      (A.sessions, A.conc, load["t"], A.sessions / load["t"]), "",
      "| figure | value |", "|---|---|",
      "| Redis commands per session (INFO commandstats: a script and each command it runs count) | %.1f |"
      % res["calls_per_session"],
      "| round trips per session (commands and scripts clients send; MONITOR, background subtracted) "
      "| %.1f |" % res["monitor"]["client_calls_per_session"],
      "| Redis main-thread CPU per session | %.3f ms |" % res["redis_cpu_ms_per_session"],
      "| sessions/s one primary core carries at these calls (1 / CPU per session) | %.0f |" %
      (res["sessions_per_s_per_primary_core"] or 0),
      "| background calls/s (no sessions) | %.1f |" % res["background_calls_per_s"],
      "| background Redis CPU (no sessions) | %.2f %% of a core |" % res["redis_background_cpu_pct"],
      "", "## Commands per session, by command (INFO commandstats; inside scripts included)", "", "| command | calls/session |",
      "|---|---|"]
md += ["| `%s` | %.1f |" % (k, v) for k, v in res["by_command"].items()]
md += ["", "## Scripts and commands seen by MONITOR over %d sessions (%.1f s, ~%.0f of the calls are "
       "background)" % (A.monitor_sessions, m_t, bg_total), "",
       "| script (lua/...) | calls | per session |", "|---|---|---|"]
md += ["| `%s` | %d | %.1f |" % (k, v, v / A.monitor_sessions) for k, v in res["monitor"]["scripts"].items()]
md += ["", "| command sent by a client | calls | per session |", "|---|---|---|"]
md += ["| `%s` | %d | %.1f |" % (k, v, v / A.monitor_sessions) for k, v in res["monitor"]["commands"].items()]
md += ["", "| command run inside a script | calls | per session |", "|---|---|---|"]
md += ["| `%s` | %d | %.1f |" % (k, v, v / A.monitor_sessions)
       for k, v in res["monitor"]["inside_scripts"].items()]
md += ["", "Conditions: `%s`." % A.conditions, ""]
open(os.path.join(A.out, "redis-calls.md"), "w").write("\n".join(md))
print("\n".join(md))
