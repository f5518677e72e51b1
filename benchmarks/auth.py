"""What API keys cost per request: whole requests through the app in-process (ASGI, no network), a
route that needs a key against `/healthz`, which needs none (the floor, measured in the same run),
with a key from `keys.db` (a SQLite lookup and a SHA-256 each time), with `FORYOU_ADMIN_KEY` (only the
hash), and with a wrong key (refused, 401); plus the two steps alone: authenticating a token and
finding the route's scope.

    .venv/bin/python benchmarks/auth.py [--requests 5000] [--no-doc]

Writes the `## API keys` section of docs/benchmarks.md (between `<!-- auth -->` markers).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness as bench
import httpx

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.http import create_app
from foryou.http.auth import required_scope, route_table
from foryou.privacy.keys import KeyRing

BEGIN, END = "<!-- auth -->\n", "<!-- /auth -->\n"
ENV_KEY = "bench-admin-key-0123456789"
ROUNDS = 5


def per_call_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def requests(app: object, path: str, token: str | None, n: int) -> list[float]:
    """Per-request seconds, one request at a time, after 200 of warm-up."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = []
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as client:
        for k in range(n + 200):
            start = time.perf_counter()
            await client.get(path)
            if k >= 200:
                out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000, help="timed requests per case (default 5000)")
    p.add_argument("--no-doc", action="store_true", help="print the section, leave docs/benchmarks.md alone")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine.open(load_settings(env={}, overrides={"server.data": tmp, "learning.enabled": False}))
        keys = KeyRing(Path(tmp), ENV_KEY)
        for k in range(50):  # a table with other keys in it, as a deployment has
            keys.create(f"other{k}", ["feed"], time.time())
        _, token = keys.create("bench", ["catalog"], time.time())
        app = create_app(engine, keys)
        cases = [("`GET /healthz`, no key (the floor)", "/healthz", None),
                 ("`GET /v1/items/{id}` (404), key from keys.db", "/v1/items/none", token),
                 ("`GET /v1/items/{id}` (404), FORYOU_ADMIN_KEY", "/v1/items/none", ENV_KEY),
                 ("`GET /v1/items/{id}`, wrong key (401)", "/v1/items/none", token[:-4] + "0000")]
        times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(ROUNDS):  # the cases interleaved, so that a slow spell of the machine hits them all
            for name, path, key in cases:
                times[name] += asyncio.run(requests(app, path, key, a.requests // ROUNDS))
        rows = []
        for name, got in times.items():
            rows.append((name, statistics.median(got) * 1e6, sorted(got)[int(len(got) * 0.99)] * 1e6))
            print(f"{name}: p50 {rows[-1][1]:.0f} us, p99 {rows[-1][2]:.0f} us", flush=True)
        table = route_table(app.router.routes)
        steps = [("authenticate, key from keys.db", per_call_us(lambda: keys.authenticate(token, time.time()), 20_000)),
                 ("authenticate, FORYOU_ADMIN_KEY",
                  per_call_us(lambda: keys.authenticate(ENV_KEY, time.time()), 20_000)),
                 ("required_scope, feed route", per_call_us(
                     lambda: required_scope(table, "GET", "/v1/users/u123/feed"), 100000))]
        keys.close()
        engine.close()
    floor = rows[0]
    md = [BEGIN, "## API keys\n\n",
          "What an API key check costs: whole requests through the app in-process (ASGI, no network), one at a "
          f"time, {a.requests:,} timed per case in {ROUNDS} interleaved rounds, each after a warm-up. The floor is "
          "`/healthz`, which needs no key, measured in the same run; the other rows add the key check (and a 404 "
          "from the item service, or the 401). keys.db holds 52 keys.\n\n",
          bench.provenance(bench.command_line("auth.py"), bench.machine()), "\n\n",
          "| Case | p50 µs | p99 µs | p50 / floor | p99 / floor |\n|---|---:|---:|---:|---:|\n"]
    for name, p50, p99 in rows:
        md.append(f"| {name} | {p50:.0f} | {p99:.0f} | {p50 / floor[1]:.2f} | {p99 / floor[2]:.2f} |\n")
    md.append("\n| Step alone | µs per call |\n|---|---:|\n")
    for name, us in steps:
        md.append(f"| {name} | {us:.1f} |\n")
    md.append("\n" + END)
    block = "".join(md)
    print(block)
    if a.no_doc:
        return
    bench.replace_section(BEGIN, END, block)


if __name__ == "__main__":
    main()
