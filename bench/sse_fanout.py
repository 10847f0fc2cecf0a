#!/usr/bin/env python3
"""SSE fan-out: N subscribers on one session, M events appended; reports
events/s delivered (aggregate over subscribers) and per-event delivery
latency to the last subscriber. usage: sse_fanout.py PORT KEY SESSION N M"""
import asyncio, json, sys, time

PORT, KEY, SID, NSUB, NEV = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

async def subscriber(ready, counts, idx, done_at):
    r, w = await asyncio.open_connection("127.0.0.1", int(PORT), limit=1 << 24)
    w.write(f"GET /v1/sessions/{SID}/events/stream HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
    await w.drain()
    await r.readuntil(b": connected\n\n")
    ready.release()
    n = 0
    while n < NEV:
        line = await r.readline()
        if not line:
            break
        if line.startswith(b"data: ") and b'"user.message"' in line:
            n += 1
    counts[idx] = n
    done_at[idx] = time.monotonic()
    w.close()

async def appender():
    r, w = await asyncio.open_connection("127.0.0.1", int(PORT))
    body = json.dumps({"events": [{"type": "user.message", "content": [{"type": "text", "text": "x" * 64}]}]})
    req = (f"POST /v1/sessions/{SID}/events HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    # Pipelined in windows of 32 requests.
    sent = 0
    while sent < NEV:
        k = min(32, NEV - sent)
        w.write(req * k)
        await w.drain()
        for _ in range(k):
            head = await r.readuntil(b"\r\n\r\n")
            cl = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            await r.readexactly(cl)
        sent += k
    w.close()

async def main():
    ready = asyncio.Semaphore(0)
    counts = [0] * NSUB
    done_at = [0.0] * NSUB
    subs = [asyncio.create_task(subscriber(ready, counts, i, done_at)) for i in range(NSUB)]
    for _ in range(NSUB):
        await ready.acquire()
    t0 = time.monotonic()
    await appender()
    t_append = time.monotonic() - t0
    await asyncio.wait_for(asyncio.gather(*subs), 120)
    t_all = max(done_at) - t0
    delivered = sum(counts)
    print("RESULT " + json.dumps({
        "subscribers": NSUB, "events": NEV, "delivered": delivered,
        "append_seconds": round(t_append, 3), "seconds": round(t_all, 3),
        "events_per_s_delivered": round(delivered / t_all),
        "events_per_s_per_subscriber": round(NEV / t_all)}))

asyncio.run(main())
