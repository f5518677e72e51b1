"""A paced event producer for the mixed run: POST /v1/events batches on a fixed schedule (open loop),
from a few keep-alive connections so that one slow answer does not stall the schedule. Prints one JSON
line with what it achieved.

    python benchmarks/ingester.py --port 8000 --rate 10000 --batch 1000 --seconds 20 --users N --items M --key KEY
"""

from __future__ import annotations

import argparse
import http.client
import random
import threading
import time
from datetime import UTC, datetime

import orjson


def body(rng: random.Random, prefix: str, start: int, batch: int, users: int, items: int, ts: str) -> bytes:
    events = []
    for k in range(batch):
        r = rng.random()
        e: dict[str, object] = {"id": f"{prefix}-{start + k}", "user": f"u{rng.randrange(users)}",
                                "item": f"i{rng.randrange(items)}", "type": "view", "ts": ts}
        if r < 0.88:
            e["watch_s"] = round(rng.random() * 40, 2)
        else:
            e["type"] = "like" if r < 0.95 else "share" if r < 0.97 else "follow" if r < 0.99 else "comment"
        events.append(e)
    return orjson.dumps({"events": events})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=10_000, help="events per second")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--key", help="API key with the events scope, sent as 'Authorization: Bearer <key>'")
    a = p.parse_args()

    interval = a.batch / a.rate
    total = max(1, int(a.seconds / interval))
    prefix = f"m{time.time_ns()}"
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    lateness: list[float] = []
    failures: list[str] = []
    t0 = time.perf_counter() + 0.05
    deadline = t0 + a.seconds + 30  # bounded even if the server stalls
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {a.key}"} if a.key else {})}

    def worker(wid: int) -> None:
        rng = random.Random(wid * 7919 + time.time_ns())
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        while True:
            with lock:
                k = state["next"]
                if k >= total:
                    break
                state["next"] = k + 1
            ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            payload = body(rng, f"{prefix}-{wid}", k * a.batch, a.batch, a.users, a.items, ts)
            due = t0 + k * interval
            now = time.perf_counter()
            if now > deadline:
                break
            if due > now:
                time.sleep(due - now)
            sent = time.perf_counter()
            try:
                conn.request("POST", "/v1/events", payload, headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failures.append(str(resp.status))
            except OSError as exc:
                failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
                continue
            done = time.perf_counter()
            with lock:
                latencies.append(done - sent)
                lateness.append(max(0.0, sent - due))
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    print("INGESTJSON " + orjson.dumps({
        "batches": len(lat), "events": len(lat) * a.batch, "seconds": elapsed,
        "events_per_s": len(lat) * a.batch / elapsed, "target_events_per_s": a.rate,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "max_late_ms": max(lateness, default=0.0) * 1000, "failures": failures[:5], "n_failures": len(failures),
    }).decode(), flush=True)


if __name__ == "__main__":
    main()
