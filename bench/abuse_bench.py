#!/usr/bin/env python3
"""abuse_bench.py BUILD OUTDIR - the scheduler under the two abuses of issue 15
that cost memory or Redis time, on loopback, with its default limits:

 A. unauthenticated clients (defect 3): N connections that announce a 4 MiB
    body without a key (or with a wrong one), and N slowloris connections that
    send a header one byte at a time. Figures: connections the server still
    holds after 1 s and after its header timeout, scheduler RSS before, at the
    peak and after, and what one address gets past --max-conns-per-addr.
 B. /metrics scrapes (defect 4): ten scrapers at 1 Hz against a pool of
    20 nodes x 500 sandboxes (synthetic records in Redis: no real node could
    hold that here), with the scrape cache (--metrics-cache 1, the default) and
    without it (0). Figures: pool scans Redis ran (EVALSHA/EVAL calls), Redis
    CPU seconds, scrape latency p50/p95.
Writes OUTDIR/abuse.md and abuse.json."""
import json, os, resource, socket, statistics, subprocess, sys, tempfile, time

BUILD, OUT = sys.argv[1], sys.argv[2]
N = int(os.environ.get("ABUSE_CONNS", "1500"))
SCRAPE_SECONDS = int(os.environ.get("ABUSE_SCRAPE_SECONDS", "15"))
_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))  # the scheduler inherits it too


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def redis(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout


def info(port, section):
    d = {}
    for line in redis(port, "info", section).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            d[k] = v.strip()
    return d


def start_sched(tmp, rport, *extra):
    out = open(f"{tmp}/sched.out", "w")
    p = subprocess.Popen([f"{BUILD}/warmpool-scheduler", "--listen", "127.0.0.1:0", "--redis",
                          f"127.0.0.1:{rport}", "--api-key", "bench:sk-bench", "--log-level", "warn",
                          *extra], stdout=out, stderr=open(f"{tmp}/sched.err", "a"))
    for _ in range(100):
        txt = open(f"{tmp}/sched.out").read()
        if "listening" in txt:
            return p, int(txt.split("listening")[1].split()[0].rsplit(":", 1)[-1])
        time.sleep(0.05)
    raise SystemExit("abuse_bench: scheduler did not start")


def held(sockets):
    """How many of these connections the server has not closed."""
    n = 0
    for s in sockets:
        s.setblocking(False)
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
        except BlockingIOError:
            n += 1
            continue
        except OSError:
            pass
    return n


def part_a(tmp, rport):
    sched, port = start_sched(tmp, rport)
    time.sleep(0.3)
    res = {"rss_before_kib": rss_kib(sched.pid)}
    # 1. A body announced without a key (or a wrong one): answered at the head.
    conns, peak = [], res["rss_before_kib"]
    head = ("POST /v1/agents HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\n"
            "Content-Length: 4194304\r\n\r\n")
    chunk = b"a" * 65536
    for i in range(N):
        s = socket.socket()
        s.bind((f"127.0.0.{1 + i % 4}", 0))  # four addresses: under the per-address cap
        s.connect(("127.0.0.1", port))
        key = "" if i % 2 == 0 else "x-api-key: sk-wrong\r\n"
        s.sendall(head.format(key=key).encode())
        try:
            s.setblocking(False)
            s.send(chunk)
        except OSError:
            pass
        conns.append(s)
        if i % 100 == 0:
            peak = max(peak, rss_kib(sched.pid))
    time.sleep(1)
    res["body_conns"] = N
    res["body_held_after_1s"] = held(conns)
    res["body_rss_peak_kib"] = max(peak, rss_kib(sched.pid))
    res["body_would_hold_mib"] = N * 4  # what reading each body first would have held
    for s in conns:
        s.close()
    # 2. Slowloris: a header one byte at a time, kept alive.
    conns = []
    for i in range(N):
        s = socket.socket()
        s.bind((f"127.0.0.{1 + i % 4}", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"G")
        conns.append(s)
    t0 = time.time()
    res["slow_conns"] = N
    res["slow_held_after_1s"] = None
    while time.time() - t0 < 13:
        for s in conns:
            try:
                s.send(b"E")
            except OSError:
                pass
        time.sleep(1)
        if res["slow_held_after_1s"] is None:
            res["slow_held_after_1s"] = held(conns)
            res["slow_rss_kib"] = rss_kib(sched.pid)
    res["slow_held_after_13s"] = held(conns)
    for s in conns:
        s.close()
    # 3. One address past --max-conns-per-addr (2000 by default).
    conns, refused = [], 0
    for i in range(2100):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        conns.append(s)
    time.sleep(0.5)
    for s in conns:
        s.setblocking(False)
        try:
            d = s.recv(4096)
            if d.startswith(b"HTTP/1.1 503"):
                refused += 1
        except BlockingIOError:
            pass
    res["one_addr_opened"] = len(conns)
    res["one_addr_refused_503"] = refused
    for s in conns:
        s.close()
    time.sleep(0.5)
    res["rss_after_kib"] = rss_kib(sched.pid)
    sched.terminate()
    sched.wait()
    return res


def fake_pool(rport, nodes=20, per_node=500, envs=10):
    """Records as nodes publish them (pool/node.c), for the scrape to read."""
    cmds = []
    for n in range(nodes):
        node = f"fake{n}"
        cmds.append(f"SADD wp:nodes {node}")
        cmds.append(f"HSET wp:node:{node} addr 127.0.0.1:1 " +
                    " ".join(f"target:e{e} 5" for e in range(envs)))
        cmds.append(f"SET wp:node:{node}:alive 1")
        for i in range(per_node):
            e, sb = f"e{i % envs}", f"sb-{n}-{i}"
            cmds.append(f"SADD wp:node:{node}:sbs \"{e} {sb}\"")
            cmds.append(f"HSET wp:env:{{{e}}}:sb:{sb} state hot node {node}")
    subprocess.run(["redis-cli", "-p", str(rport)], input="\n".join(cmds) + "\n", text=True,
                   capture_output=True, check=True)


def scrape(port):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    while s.recv(1 << 20):
        pass
    s.close()
    return (time.perf_counter() - t0) * 1e3


def part_b(tmp, rport):
    res = {}
    for label, cache in (("cache 1 s (default)", "1"), ("no cache", "0")):
        sched, port = start_sched(tmp, rport, "--metrics-cache", cache)
        time.sleep(0.3)
        scrape(port)
        redis(rport, "config", "resetstat")
        cpu0 = float(info(rport, "cpu")["used_cpu_sys"]) + float(info(rport, "cpu")["used_cpu_user"])
        lat, t_end = [], time.time() + SCRAPE_SECONDS
        while time.time() < t_end:
            tick = time.time()
            for _ in range(10):  # ten Prometheus servers, each once a second
                lat.append(scrape(port))
            time.sleep(max(0, 1 - (time.time() - tick)))
        st = info(rport, "commandstats")
        calls = sum(int(v.split("calls=")[1].split(",")[0]) for k, v in st.items()
                    if k in ("cmdstat_evalsha", "cmdstat_eval"))
        cpu1 = float(info(rport, "cpu")["used_cpu_sys"]) + float(info(rport, "cpu")["used_cpu_user"])
        lat.sort()
        res[label] = {"scrapes": len(lat), "redis_scripts": calls, "redis_cpu_s": round(cpu1 - cpu0, 3),
                      "p50_ms": round(statistics.median(lat), 2),
                      "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2)}
        sched.terminate()
        sched.wait()
    return res


def main():
    tmp = tempfile.mkdtemp(prefix="wp-abuse-")
    rport = free_port()
    subprocess.run(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--daemonize", "yes", "--dir", tmp, "--logfile",
                    f"{tmp}/redis.log"], check=True)
    for _ in range(50):
        try:
            redis(rport, "ping")
            break
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    try:
        a = part_a(tmp, rport)
        fake_pool(rport)
        b = part_b(tmp, rport)
    finally:
        subprocess.run(["redis-cli", "-p", str(rport), "shutdown", "nosave"], capture_output=True)
    json.dump({"unauthenticated": a, "metrics": b}, open(f"{OUT}/abuse.json", "w"), indent=1)
    md = ["# the scheduler under abuse (issue 15, defects 3 and 4)", "",
          "Generated by `bench/bench_abuse.sh` on loopback, the scheduler with its default limits",
          f"(4 MiB bodies, 10 000 connections, 2 000 per address, 10 s header timeout). {os.cpu_count()} CPUs.", "",
          "## Unauthenticated clients", "",
          "| what | connections | still held after 1 s | held later | scheduler RSS |", "|---|---|---|---|---|",
          f"| idle scheduler | - | - | - | {a['rss_before_kib'] / 1024:.1f} MiB |",
          f"| 4 MiB body announced, no key or a wrong one (64 KiB sent) | {a['body_conns']} | {a['body_held_after_1s']} | - | "
          f"peak {a['body_rss_peak_kib'] / 1024:.1f} MiB (reading bodies first: up to {a['body_would_hold_mib']} MiB) |",
          f"| slowloris: a header a byte a second | {a['slow_conns']} | {a['slow_held_after_1s']} | "
          f"{a['slow_held_after_13s']} after 13 s | {a['slow_rss_kib'] / 1024:.1f} MiB while held |",
          f"| one address, {a['one_addr_opened']} connections | {a['one_addr_opened']} | - | "
          f"{a['one_addr_refused_503']} refused with 503 | after all: {a['rss_after_kib'] / 1024:.1f} MiB |", "",
          "## /metrics: ten scrapers at 1 Hz, a pool of 20 nodes x 500 sandboxes", "",
          "| scheduler | scrapes | pool scans Redis ran | Redis CPU | scrape p50 | scrape p95 |", "|---|---|---|---|---|---|"]
    for k, v in b.items():
        md.append(f"| {k} | {v['scrapes']} | {v['redis_scripts']} | {v['redis_cpu_s']:.2f} s | "
                  f"{v['p50_ms']:.1f} ms | {v['p95_ms']:.1f} ms |")
    md += ["", "## Reading it", "",
           "- A client without a valid key is answered from the head (401, or 413 past the 1 MiB an",
           "  unverified token may send) and closed: no body byte is buffered, so the scheduler's memory",
           "  does not grow with what unauthenticated clients announce. Slowloris connections are held",
           "  (a few KiB each) until the header timeout and then all closed; one address gets",
           "  --max-conns-per-addr connections and a 503 past them.",
           "- The scrape cache makes Redis's work independent of the number of scrapers: one pool scan",
           "  per cache period (fewer when scrapes land inside one), where each scrape used to run the",
           "  scan, a Lua script that blocks Redis for its whole length.", ""]
    open(f"{OUT}/abuse.md", "w").write("\n".join(md))
    print("\n".join(md))


main()
