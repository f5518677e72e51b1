"""The targets of issue 12 (hardening), measured:

  (a) feeds of users with the worst blocked keywords the caps allow (200 keywords, 400 words, phrases
      of up to 8 common words, "cat" among them: together they block nearly every item, so the sources
      run dry and every feed sweeps), against the same users without keywords, in-process, at each
      catalogue size; the floor is the users without keywords, in the same run, interleaved;
  (b) the event loop's lag over HTTP (`foryou_event_loop_lag_seconds`, a 10 ms probe in the server)
      while feeds at 16 connections, half of them for the keyword users, run beside a client posting
      batches of events; the floor is a trivial route (`/healthz`) alone;
  (c) what a known but idle user id costs once evicted: Python heap (tracemalloc) and resident memory
      per user, from the difference between rounds of new users, after a warm-up round.

    .venv/bin/python benchmarks/hardening.py                        # 20k and 1M items (~25 min)
    .venv/bin/python benchmarks/hardening.py --items 20000 --no-doc  # a quick look

Writes the `## Hardening` section of docs/benchmarks.md (between `<!-- hardening -->` markers).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import tempfile
import threading
import time
import tracemalloc
from typing import Any

import harness as bench
import numpy as np

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.types import ControlsIn, EventIn, ItemIn, UserIn, format_time

BEGIN, END = "<!-- hardening -->\n", "<!-- /hardening -->\n"
T0 = 1_767_225_600.0
WORDS = ["a", "the", "cat", "dog", "fun", "day", "my", "new", "best", "life", "love", "food", "trip", "home", "work",
         "music", "dance", "game", "car", "city"]
ADMIN = "bench-admin-key-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def worst_keywords(rng: np.random.Generator) -> list[str]:
    """As much as the caps allow: "cat", 7 phrases of 8 common words, then 2-word phrases up to 400 words."""
    out, used = ["cat"], 1
    while len(out) < 200:
        length = 8 if len(out) < 8 else 2
        if used + length > 400:
            break
        out.append(" ".join(rng.choice(WORDS, length)))
        used += length
    return out


def items(start: int, n: int, rng: np.random.Generator, creators: int) -> list[ItemIn]:
    """Items v<start>.. : captions of 10 common words each, 30 topics, two tags."""
    by, topics = rng.integers(creators, size=n), rng.integers(30, size=n)
    captions = rng.integers(len(WORDS), size=(n, 10))
    ages = rng.uniform(3, 60, size=n) * 86400
    return [ItemIn(id=f"i{start + k}", creator=f"c{by[k]}", duration_s=20.0,
                   caption=" ".join(WORDS[w] for w in captions[k]), tags=[f"topic{topics[k]}", f"sub{k % 5}"],
                   topic=f"topic{topics[k]}", created_at=format_time(T0 - float(ages[k]))) for k in range(n)]


def build(data: str, n_items: int, users: int, clock: Clock, learning: bool) -> Engine:
    """An engine over `n_items` items and `users` users with 30 views each; odd users block the worst
    keywords."""
    settings = load_settings(env={}, overrides={"server.data": data, "learning.enabled": learning,
                                                 "limits.requests_per_s": 0, "limits.new_users_per_min": 0})
    engine = Engine.open(settings, clock=clock, seed=0)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for lo in range(0, n_items, 50_000):
        engine.items.upsert(items(lo, min(50_000, n_items - lo), np.random.default_rng(lo), max(n_items // 8, 1)))
    bench.log(f"  {n_items:,} items upserted in {time.perf_counter() - started:.0f}s")
    views = rng.integers(n_items, size=users * 30)
    history = [EventIn(user=f"u{k // 30}", item=f"i{views[k]}", type="view", watch_s=float(rng.choice([0.5, 20.0])))
               for k in range(users * 30)]
    for lo in range(0, len(history), 5000):
        engine.events.ingest(history[lo:lo + 5000])
    keywords = worst_keywords(np.random.default_rng(5))
    for u in range(1, users, 2):
        engine.users.put(f"u{u}", UserIn())
        engine.users.set_controls(f"u{u}", ControlsIn(blocked_keywords=keywords))
    return engine


def keyword_feeds(n_items: int, users: int, feeds: int) -> dict[str, Any]:
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        engine = build(tmp, n_items, users, clock, learning=False)  # the feed's own work, compared
        try:
            for u in range(users):  # warm-up: served sets, controls and compiled keywords loaded
                engine.feeds.feed(f"u{u}", 10)
            rng = np.random.default_rng(1)
            lat: dict[bool, list[float]] = {True: [], False: []}
            served: dict[bool, list[int]] = {True: [], False: []}
            for _ in range(feeds):
                clock.now += 1.0
                u = int(rng.integers(users))
                started = time.perf_counter()
                got = engine.feeds.feed(f"u{u}", 10)
                lat[u % 2 == 1].append(time.perf_counter() - started)
                served[u % 2 == 1].append(len(got.items))
        finally:
            engine.close()
    out: dict[str, Any] = {"items": n_items}
    for blocked, name in ((False, "plain"), (True, "keywords")):
        ms = np.asarray(lat[blocked]) * 1000
        out[name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                     "items": float(np.mean(served[blocked]))}
    return out


def loop_lag(n_items: int, users: int, seconds: float) -> dict[str, Any]:
    """How long requests and the periodic work held the server's loop while feeds (keyword users among
    them) and event batches came at once; default settings, learning on."""
    clock = Clock()
    data = bench.OUT / "hardening-data"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    bench.OUT.mkdir(exist_ok=True)
    build(str(data), n_items, users, clock, learning=True).close()
    port = bench.free_port()
    os.environ["FORYOU_ADMIN_KEY"] = ADMIN
    server = bench.Server("hardening", bench.serve_cmd(data, port), port, "/healthz")
    try:
        client = bench.Client("python")
        floor = client.run("healthz", port, ("get", "/healthz"), 16, seconds / 3, server.pid)
        before = _holds(port)
        results: dict[str, bench.Result] = {}

        def events() -> None:
            results["events"] = client.run("events", port, ("events", users, n_items, 1000), 1, seconds, quiet=False,
                                           key=ADMIN)

        poster = threading.Thread(target=events)
        poster.start()
        results["feeds"] = client.run("feeds", port, ("feed", users, 10), 16, seconds, quiet=False, key=ADMIN)
        poster.join()
        after = _holds(port)
    finally:
        server.stop()
        os.environ.pop("FORYOU_ADMIN_KEY", None)
    kinds = {}
    for kind in ("request", "periodic"):
        got, was = after.get(kind, {}), before.get(kind, {})
        buckets = {le: n - was.get("buckets", {}).get(le, 0) for le, n in got.get("buckets", {}).items()}
        kinds[kind] = {"steps": buckets.get("+Inf", 0), "over_50ms": buckets.get("+Inf", 0) - buckets.get("0.05", 0),
                       "over_10ms": buckets.get("+Inf", 0) - buckets.get("0.01", 0), "max_s": got.get("max", 0.0)}
    return {"floor": floor, "feeds": results["feeds"], "events": results["events"], **kinds}


def _holds(port: int) -> dict[str, dict[str, Any]]:
    """Per kind of work, the server's loop-hold histogram (cumulative, by bucket) and its largest hold."""
    status, body = bench.get(port, "/metrics", key=ADMIN)
    text = body.decode()
    assert status == 200, text[:300]
    out: dict[str, dict[str, Any]] = {}
    for kind, le, n in re.findall(r'^foryou_loop_hold_seconds_bucket\{kind="(\w+)",le="([^"]+)"\} (\d+)', text, re.M):
        out.setdefault(kind, {"buckets": {}, "max": 0.0})["buckets"][le] = int(n)
    for kind, value in re.findall(r'^foryou_loop_hold_max_seconds\{kind="(\w+)"\} (\S+)', text, re.M):
        out.setdefault(kind, {"buckets": {}, "max": 0.0})["max"] = float(value)
    return out


def idle_users(rounds: int, per_round: int) -> dict[str, Any]:
    """Memory per known-but-idle user: rounds of new users, each fed once, then all evicted."""
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, overrides={"server.data": tmp, "store.user_cache": 1000})
        engine = Engine.open(settings, clock=clock, seed=0)
        rng = np.random.default_rng(0)
        engine.items.upsert(items(0, 5000, rng, 600))
        engine.events.ingest([EventIn(user=f"h{k % 500}", item=f"i{int(rng.integers(5000))}", type="view",
                                      watch_s=float(rng.choice([0.5, 20.0]))) for k in range(10_000)])
        heap, rss = [], []
        tracemalloc.start()
        for r in range(rounds + 1):
            for k in range(per_round):
                engine.feeds.feed(f"r{r}-{k}", 10)
                clock.now += 0.01
                if k % 500 == 0:
                    engine.tick(clock.now)
            clock.now += 120
            engine.tick(clock.now)
            engine.live.checkpoint()
            engine.learner.checkpoint()
            gc.collect()
            heap.append(tracemalloc.get_traced_memory()[0])
            rss.append(bench.rss_mb(os.getpid())[0] * 1e6)
        tracemalloc.stop()
        cached = len(engine.live.users)
        rows = sum(len(t) for t in engine.learner.model.users.values())
        engine.close()
    heap_per = [(heap[k + 1] - heap[k]) / per_round for k in range(rounds)]
    rss_per = [(rss[k + 1] - rss[k]) / per_round for k in range(rounds)]
    return {"heap": heap_per, "rss": rss_per, "users": (rounds + 1) * per_round, "cached": cached, "rows": rows,
            "per_round": per_round}


def section(kw: list[dict[str, Any]], lags: list[tuple[int, dict[str, Any]]], idle: dict[str, Any] | None,
            users: int, feeds: int) -> str:
    md = [BEGIN, "## Hardening\n\n",
          "The targets of issue 12: feeds of users with the worst blocked keywords the caps allow, how long "
          "requests and periodic work hold the server's event loop, and what a known but idle user costs.\n\n",
          bench.provenance(bench.command_line("hardening.py"), bench.machine()), "\n\n"]
    if kw:
        md += ["**Blocked keywords** (target: p99 at most 2x the floor's). In-process `engine.feeds.feed(user, 10)`, "
               f"learning off, {users} users with 30 views each, {feeds:,} feeds timed; every other user blocks 200 "
               "keywords (400 words: \"cat\", 7 phrases of 8 common words, 192 of 2) that together block nearly "
               "every item, so their feeds sweep the catalogue. The floor: the users without keywords, "
               "interleaved.\n\n",
               "| Items | Floor p50 ms | Floor p99 ms | Keywords p50 ms | Keywords p99 ms | p99 / floor | Items per "
               "keyword feed |\n|---:|---:|---:|---:|---:|---:|---:|\n"]
    for r in kw:
        md.append(f"| {r['items']:,} | {r['plain']['p50']:.2f} | {r['plain']['p99']:.2f} | {r['keywords']['p50']:.2f} "
                  f"| {r['keywords']['p99']:.2f} | {r['keywords']['p99'] / r['plain']['p99']:.2f} | "
                  f"{r['keywords']['items']:.1f} |\n")
    if lags:
        md += ["\n**Event-loop holds** (target: no request holds the loop for more than 50 ms). `foryou serve` over "
               "the same world (default settings, learning on), feeds at 16 connections (half for the keyword "
               "users) while another client posts batches of 1,000 events back to back; the server times every "
               "step of every task on its loop (`foryou_loop_hold_seconds`, by kind). The floor: `/healthz` alone, "
               "in the same run.\n\n",
               "| Items | Floor req/s | Feeds req/s (p50 / p99 ms) | Events/s meanwhile | Request steps over 10 / "
               "50 ms | Longest request step | Periodic steps over 50 ms | Longest periodic step |\n"
               "|---:|---:|---:|---:|---:|---:|---:|---:|\n"]
        for n, lag in lags:
            f, e, fl, r, p = lag["feeds"], lag["events"], lag["floor"], lag["request"], lag["periodic"]
            md.append(f"| {n:,} | {fl.rps:,.0f} | {f.rps:,.0f} ({f.p50_ms:.0f} / {f.p99_ms:.0f}) | "
                      f"{e.events_per_s:,.0f} | {r['over_10ms']:,} / {r['over_50ms']:,} of {r['steps']:,} | "
                      f"{r['max_s'] * 1000:.1f} ms | {p['over_50ms']:,} of {p['steps']:,} | "
                      f"{p['max_s'] * 1000:.1f} ms |\n")
    if idle is not None:
        heap = ", ".join(f"{x:.0f}" for x in idle["heap"])
        rss = ", ".join(f"{x:.0f}" for x in idle["rss"])
        md += ["\n**Idle users** (target: below 200 bytes each). In-process, learning on, `store.user_cache` 1,000: "
               f"rounds of {idle['per_round']:,} new users, each fed once, then idle (checkpointed and evicted); "
               f"{idle['users']:,} user ids in all, {idle['cached']:,} left in memory with {idle['rows']:,} learned "
               "rows; per idle user, from one round to the next (the first round, a warm-up, not counted).\n\n",
               "| Measure | Bytes per idle user, each round |\n|---|---|\n",
               f"| Python heap (tracemalloc) | {heap} |\n",
               f"| Resident memory | {rss} |\n",
               "\nResident memory grows while SQLite's page caches fill (`cache_size` 64 MiB per database "
               "file) and the served log grows; the Python heap, where an id used to stay for good, does not.\n"]
    md.append("\n" + END)
    return "".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", default="20000,1000000", help="catalogue sizes for (a), comma-separated")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--feeds", type=int, default=3000)
    p.add_argument("--lag-items", default="20000,1000000", help="catalogue sizes for (b), comma-separated")
    p.add_argument("--http-seconds", type=float, default=30.0)
    p.add_argument("--idle-rounds", type=int, default=3)
    p.add_argument("--idle-users", type=int, default=10_000, help="new users per round for (c)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: keywords, lag, idle")
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args()
    skip = set(a.skip.split(","))
    kw = []
    if "keywords" not in skip:
        for n in (int(x) for x in a.items.split(",")):
            bench.log(f"keywords at {n:,} items")
            kw.append(keyword_feeds(n, a.users, a.feeds))
            r = kw[-1]
            bench.log(f"  plain p99 {r['plain']['p99']:.2f} ms, keywords p99 {r['keywords']['p99']:.2f} ms "
                      f"({r['keywords']['p99'] / r['plain']['p99']:.2f}x)")
    lags = []
    if "lag" not in skip:
        for n in (int(x) for x in a.lag_items.split(",")):
            bench.log(f"event-loop holds over HTTP at {n:,} items")
            lag = loop_lag(n, 2000, a.http_seconds)
            lags.append((n, lag))
            bench.log(f"  longest request step {lag['request']['max_s'] * 1000:.1f} ms "
                      f"({lag['request']['over_50ms']} over 50 ms); periodic {lag['periodic']['max_s'] * 1000:.1f} ms")
    idle = None
    if "idle" not in skip:
        bench.log("memory per idle user")
        idle = idle_users(a.idle_rounds, a.idle_users)
        bench.log(f"  heap {idle['heap']}, rss {idle['rss']}")
    block = section(kw, lags, idle, a.users, a.feeds)
    print(block)
    if not a.no_doc:
        bench.replace_section(BEGIN, END, block)


if __name__ == "__main__":
    main()
