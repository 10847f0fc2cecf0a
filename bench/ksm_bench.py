#!/usr/bin/env python3
"""ksm_bench.py - driver of bench/bench_ksm.sh (read that first).

For merging off and on: start a node serving the 200 MB environment, ask
for 1, 10, then 50 hot clones, and for each step record
  - refill_s: policy set -> the hot list holds N
  - merge_s: hot list full -> KSM's pages_sharing within 5% of where it
    settles (on only)
  - ksmd CPU over the step (utime + stime of the ksmd kernel thread), and
    its rate once steady
  - the node's own figures (wp:env:{E}:mem:<node>): one shared copy,
    private bytes per clone p50/p95, their total
  - the host's used memory (MemTotal - MemAvailable) above the baseline
    taken with the image built and no clone (noisy: other work on the host)
then the hot claim-to-attached latency at 10 hot clones (build/bench/
pool_bench, 30 claims one after another).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

NODE = "bench"
MiB = 1 << 20


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check).stdout.strip()


class Bench:
    def __init__(self, a):
        self.a = a
        self.port = str(a.redis_port)
        self.node = None

    def redis(self, *args):
        return sh("redis-cli", "-p", self.port, *args)

    @staticmethod
    def used():
        m = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                m[k] = int(v.split()[0]) * 1024
        return m["MemTotal"] - m["MemAvailable"]

    @staticmethod
    def ksm(name):
        with open(f"/sys/kernel/mm/ksm/{name}") as f:
            return int(f.read())

    @staticmethod
    def ksmd_cpu_ms():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if "(ksmd)" in st:
                rest = st[st.rindex(")") + 2:].split()
                return (int(rest[11]) + int(rest[12])) * 1000 // os.sysconf("SC_CLK_TCK")
        return 0

    def hot(self, env):
        return int(self.redis("LLEN", f"wp:env:{{{env}}}:hot") or 0)

    def mem(self, env):
        flat = self.redis("HGETALL", f"wp:env:{{{env}}}:mem:{NODE}").split("\n")
        return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}

    def set_hot(self, env, n):
        self.redis("HSET", f"wp:env:{{{env}}}:policy", f"min_hot:{NODE}", str(n), f"max_hot:{NODE}", str(n))

    def wait(self, what, cond, timeout):
        end = time.time() + timeout
        while time.time() < end:
            if cond():
                return
            time.sleep(0.05)
        sys.exit(f"ksm_bench: timed out waiting for {what}; node log: {self.a.dir}/node.log")

    def start_node(self, env, mode):
        tmpl = f"{self.a.dir}/py200-{mode}.json"
        log = open(f"{self.a.dir}/node.log", "a")
        self.node = subprocess.Popen(
            [f"{self.a.build}/warmpool-node", "--id", NODE, "--redis", f"127.0.0.1:{self.port}",
             "--state-dir", f"{self.a.dir}/state", "--env", f"{tmpl}:0:0", "--hot-memory-mb", "16000",
             "--heartbeat-ttl", "5", "--log-level", "warn"], stdout=log, stderr=log)
        with open(os.environ["NODE_PID_FILE"], "w") as f:
            f.write(str(self.node.pid))
        self.wait("the image", lambda: self.redis("HGET", f"wp:node:{NODE}", f"build:{env}").startswith("ready"), 600)

    def stop_node(self):
        self.node.terminate()
        self.node.wait(timeout=120)
        os.unlink(os.environ["NODE_PID_FILE"])

    def step(self, env, mode, n, base):
        t0, cpu0 = time.time(), self.ksmd_cpu_ms()
        self.set_hot(env, n)
        self.wait(f"{n} hot clones", lambda: self.hot(env) >= n, 900)
        t_ready = time.time()
        scans0 = self.ksm("full_scans")
        samples = []  # (t, pages_sharing)
        while True:
            now = time.time()
            samples.append((now, self.ksm("pages_sharing")))
            if mode == "off":
                if now - t_ready >= 6:
                    break
            else:
                recent = [s for t, s in samples if t >= now - 5]
                stable = now - t_ready >= 5 and max(recent) - min(recent) <= 0.005 * max(recent[-1], 1)
                if (stable and self.ksm("full_scans") >= scans0 + 2) or now - t_ready > 600:
                    break
            time.sleep(0.25)
        t_merged = None
        if mode == "on":
            final = samples[-1][1]
            t_merged = next(t for t, s in samples if s >= 0.95 * final) - t_ready
        cpu_step = self.ksmd_cpu_ms() - cpu0
        # The node measures every 2 s: take figures made after settling.
        settled = time.time()
        self.wait("fresh node figures", lambda: int(self.mem(env).get("updated_ms", "0")) / 1000 > settled + 0.1, 30)
        m = self.mem(env)
        used = self.used() - base
        cpu1 = self.ksmd_cpu_ms()
        time.sleep(10)
        steady = (self.ksmd_cpu_ms() - cpu1) / 10.0
        r = {
            "mode": mode, "hot_clones": n, "clones_measured": int(m["clones"]),
            "refill_s": round(t_ready - t0, 2),
            "merge_s_after_refill": None if t_merged is None else round(t_merged, 2),
            "merge_s_from_policy": None if t_merged is None else round(t_ready - t0 + t_merged, 2),
            "ksmd_cpu_ms_step": cpu_step, "ksmd_cpu_ms_per_s_steady": round(steady, 1),
            "shared_bytes": int(m["shared_bytes"]),
            "private_p50_bytes": int(m["private_p50_bytes"]),
            "private_p95_bytes": int(m["private_p95_bytes"]),
            "private_sum_bytes": int(m["private_sum_bytes"]),
            "node_total_bytes": int(m["shared_bytes"]) + int(m["private_sum_bytes"]),
            "kernel_bytes": int(m["kernel_bytes"]),
            "merged_bytes": int(m["merged_bytes"]),
            "host_used_delta_bytes": used,
            "pages_sharing": self.ksm("pages_sharing"), "pages_shared": self.ksm("pages_shared"),
            "hot_fit": int(m["hot_fit"]),
        }
        print(f"  {mode} {n:3d} clones: refill {r['refill_s']} s, merged {r['merge_s_after_refill']} s, "
              f"shared {r['shared_bytes'] / MiB:.1f} MiB, private p50 {r['private_p50_bytes'] / MiB:.2f} "
              f"p95 {r['private_p95_bytes'] / MiB:.2f} MiB, node total {r['node_total_bytes'] / MiB:.0f} MiB, "
              f"host +{used / MiB:.0f} MiB, ksmd {cpu_step} ms", file=sys.stderr, flush=True)
        return r

    def latency(self, env, mode):
        self.set_hot(env, 10)
        self.wait("10 hot clones", lambda: self.hot(env) == 10, 300)
        time.sleep(3)
        out = f"{self.a.dir}/lat-{mode}.json"
        subprocess.run([f"{self.a.build}/bench/pool_bench", "--redis", self.port, "--env", env, "--hot", "10",
                        "--concurrency", "1", "--rounds", "30", "--out", out], check=True)
        with open(out) as f:
            hot = json.load(f)["tiers"]["hot"]
        return {"mode": mode, "n": hot["n"], "attached_median_ms": hot["attached_median_ms"],
                "attached_p95_ms": hot["attached_p95_ms"], "claim_median_ms": hot["claim_median_ms"]}

    def run(self):
        res = {"kernel": platform.release(), "cpus": os.cpu_count(),
               "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
               "environment": "python3, stdlib imports, 200 MiB of random bytes; hands as PID 1; lazy restores",
               "ksm_settings": "node defaults: pages_to_scan 5000 (fast, after refills and until new clones "
                               "were scanned twice) / 100 (steady), sleep_millisecs 20",
               "steps": [], "latency": []}
        for mode in ("off", "on"):
            env = f"py200{mode}"
            print(f"merging {mode}", file=sys.stderr, flush=True)
            self.start_node(env, mode)
            time.sleep(3)
            base = self.used()
            for n in (1, 10, 50):
                res["steps"].append(self.step(env, mode, n, base))
            res["latency"].append(self.latency(env, mode))
            self.stop_node()
        off, on = res["latency"]
        res["attach_ratio_on_off"] = round(on["attached_median_ms"] / off["attached_median_ms"], 3)
        with open(f"{self.a.out}/ksm.json", "w") as f:
            json.dump(res, f, indent=1)
        self.markdown(res)

    def markdown(self, res):
        md = ["# KSM benchmark", "",
              f"Kernel {res['kernel']}, {res['cpus']} CPUs, {res['mem_total_bytes'] / 2**30:.0f} GiB. "
              f"Environment: {res['environment']}. KSM: {res['ksm_settings']}.", "",
              "\"node total\" is what the node measures (sum of the clones' Pss plus their cgroups' kernel "
              "memory = one shared copy + every clone's private bytes); \"host\" is MemTotal - MemAvailable "
              "above the same node with no clone (noisy: other work on the machine). Private = pages only "
              "that clone maps + its kernel memory (page tables, slab).", "",
              "| merging | hot clones | refill s | merged s (after refill) | ksmd CPU ms (step) | ksmd CPU steady ms/s "
              "| shared MiB | private/clone p50 MiB | p95 MiB | node total MiB | host MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["steps"]:
            md.append(f"| {r['mode']} | {r['hot_clones']} | {r['refill_s']} | {r['merge_s_after_refill'] or '-'} "
                      f"| {r['ksmd_cpu_ms_step']} | {r['ksmd_cpu_ms_per_s_steady']} | {r['shared_bytes'] / MiB:.1f} "
                      f"| {r['private_p50_bytes'] / MiB:.2f} | {r['private_p95_bytes'] / MiB:.2f} "
                      f"| {r['node_total_bytes'] / MiB:.0f} | {r['host_used_delta_bytes'] / MiB:.0f} |")
        md += ["", "Hot claim to attached (claim, agentlink hello + attach answered), 10 hot clones, 30 claims:", "",
               "| merging | n | attached p50 ms | attached p95 ms |", "|---|---|---|---|"]
        for lat in res["latency"]:
            md.append(f"| {lat['mode']} | {lat['n']} | {lat['attached_median_ms']:.2f} | {lat['attached_p95_ms']:.2f} |")
        md += ["", f"Ratio of medians, on / off: {res['attach_ratio_on_off']}."]
        # The analysis of a reviewed run (bench/results/ksm-analysis.md) follows
        # the figures; a new run's figures may differ from what it says.
        analysis = f"{self.a.out}/ksm-analysis.md"
        if os.path.exists(analysis):
            with open(analysis) as f:
                md += ["", f.read().rstrip()]
        with open(f"{self.a.out}/ksm.md", "w") as f:
            f.write("\n".join(md) + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    Bench(p.parse_args()).run()


if __name__ == "__main__":
    main()
