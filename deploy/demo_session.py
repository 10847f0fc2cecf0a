#!/usr/bin/env python3
"""demo_session.py - one session against a running warmpool, printed as it
happens: tokens as they stream, tool calls and their results, the time to
first token and the tier of the sandbox. Standard library only.

    demo_session.py --api http://127.0.0.1:PORT --key KEY --agent AGENT --env ENV \
                    [--redis-port N] [--prompt TEXT]
"""
import argparse
import http.client
import json
import subprocess
import sys
import time
import urllib.parse


def request(api, key, method, path, body=None):
    u = urllib.parse.urlparse(api)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, path, json.dumps(body) if body is not None else None,
              {"x-api-key": key, "content-type": "application/json",
               "anthropic-beta": "managed-agents-2026-04-01"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"demo: {method} {path}: HTTP {r.status}: {data.decode(errors='replace')}")
    return json.loads(data)


def events(api, key, sid):
    """Yield (arrival time, event) from the session's SSE stream, previews included."""
    u = urllib.parse.urlparse(api)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    c.request("GET", f"/v1/sessions/{sid}/events/stream?event_deltas%5B%5D=agent.message",
              headers={"x-api-key": key})
    r = c.getresponse()
    if r.status != 200:
        sys.exit(f"demo: stream: HTTP {r.status}")
    yield None  # the stream is open: the caller may send now
    data = []
    while True:
        line = r.fp.readline()
        if not line:
            return
        line = line.decode().rstrip("\n")
        if line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield time.monotonic(), json.loads("\n".join(data))
            data = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--redis-port", type=int, default=0)
    ap.add_argument("--prompt", default="Check the sandbox: run bash to show the hostname, "
                    "the Python version and the working directory.")
    a = ap.parse_args()
    bold = lambda s: f"\033[1m{s}\033[0m"  # noqa: E731

    s = request(a.api, a.key, "POST", "/v1/sessions", {"agent": a.agent, "environment_id": a.env})
    sid = s["id"]
    print(bold(f"session {sid}") + f" (status {s['status']})")
    stream = events(a.api, a.key, sid)
    next(stream)
    t0 = time.monotonic()
    request(a.api, a.key, "POST", f"/v1/sessions/{sid}/events",
            {"events": [{"type": "user.message", "content": [{"type": "text", "text": a.prompt}]}]})
    print(bold("user: ") + a.prompt)
    ttft = None
    in_text = False
    for t, ev in stream:
        ty = ev["type"]
        ms = (t - t0) * 1e3
        if ty == "event_delta":
            if ttft is None:
                ttft = ms
                print(bold(f"[first token after {ttft:.1f} ms]"))
            if not in_text:
                sys.stdout.write(bold("agent: "))
                in_text = True
            sys.stdout.write(ev["delta"]["content"]["text"])
            sys.stdout.flush()
        elif ty == "agent.message":
            if not in_text:  # no previews: print the whole message
                print(bold("agent: ") + ev["content"][0]["text"])
            else:
                print()
            in_text = False
        elif ty == "agent.tool_use":
            print(bold(f"[{ms:8.1f} ms] tool call ") + f"{ev['name']} {json.dumps(ev['input'])}")
        elif ty == "agent.tool_result":
            text = "".join(c.get("text", "") for c in ev.get("content") or [])
            flag = " (error)" if ev.get("is_error") else ""
            print(bold(f"[{ms:8.1f} ms] tool result{flag}:"))
            print("    " + text.replace("\n", "\n    "))
        elif ty == "session.error":
            print(bold(f"[{ms:8.1f} ms] error: ") + json.dumps(ev["error"]))
        elif ty == "session.status_idle":
            print(bold(f"[{ms:8.1f} ms] turn over: ") + ev["stop_reason"]["type"])
            break
    tier = ""
    if a.redis_port:
        tier = subprocess.run(["redis-cli", "-p", str(a.redis_port), "hget", f"wp:obj:{{{sid}}}",
                               "sbx_tier"], capture_output=True, text=True).stdout.strip()
    print(bold("summary: ") + f"time to first token {ttft:.1f} ms" if ttft is not None
          else bold("summary: ") + "no token streamed", end="")
    print(f", sandbox tier {tier}" if tier else "")


if __name__ == "__main__":
    main()
