"""What feed policy costs per request: in-process `engine.feeds.feed(user, 10)` with the policy's
defaults, against the same engine with every policy step off (the floor, measured in the same run), and
for a user with 200 blocked keywords. Learning is off in both, so that only the policy differs.

    .venv/bin/python benchmarks/policy.py [--items 20000] [--feeds 2000] [--no-doc]

Writes the `## Feed policy` section of docs/benchmarks.md (between `<!-- policy -->` markers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import harness as bench
import numpy as np

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.types import ControlsIn, EventIn, ItemIn, UserIn, format_time

BEGIN, END = "<!-- policy -->\n", "<!-- /policy -->\n"
T0 = 1_767_225_600.0
PLAIN = {"policy.explore_share": 0.0, "policy.pool_share": 0.0, "policy.mmr_lambda": 0.0,
         "policy.topic_run_cap": 1_000_000, "policy.sensitive_topics": "", "policy.topic_lift_gain": 0.0}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def world(items: int, rng: np.random.Generator) -> list[ItemIn]:
    """Items over 30 topics; 2% of them uploaded just now (so the new-video pools have members)."""
    out = []
    for k in range(items):
        topic = f"topic{int(rng.integers(30))}"
        age = 0.0 if k % 50 == 0 else float(rng.uniform(3, 60)) * 86400
        out.append(ItemIn(id=f"v{k}", creator=f"c{int(rng.integers(items // 8))}", duration_s=20.0,
                          caption=f"a {topic} video number {k}", tags=[topic, f"{topic}-sub{k % 5}"], topic=topic,
                          sound=f"s{int(rng.integers(items // 15))}" if k % 3 == 0 else None,
                          created_at=format_time(T0 - age)))
    return out


def run(items: list[ItemIn], overrides: dict[str, Any], users: int, feeds: int, keywords: bool) -> dict[str, float]:
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, overrides={"server.data": tmp, "learning.enabled": False, **overrides})
        engine = Engine.open(settings, clock=clock, seed=0)
        try:
            engine.items.upsert(items)
            rng = np.random.default_rng(1)
            history = [EventIn(user=f"u{u}", item=f"v{int(rng.integers(len(items)))}", type="view",
                               watch_s=float(rng.choice([0.5, 20.0]))) for u in range(users) for _ in range(30)]
            for lo in range(0, len(history), 5000):
                engine.events.ingest(history[lo:lo + 5000])
            if keywords:
                for u in range(users):
                    engine.users.put(f"u{u}", UserIn())
                    engine.users.set_controls(f"u{u}", ControlsIn(blocked_keywords=[f"word{j}" for j in range(199)]
                                                                  + ["topic3"]))
            for u in range(min(users, 300)):  # warm-up: every user's served set and controls loaded
                engine.feeds.feed(f"u{u}", 10)
            lat = []
            for _ in range(feeds):
                clock.now += 1.0
                started = time.perf_counter()
                engine.feeds.feed(f"u{int(rng.integers(users))}", 10)
                lat.append(time.perf_counter() - started)
        finally:
            engine.close()
    arr = np.asarray(lat) * 1000
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--feeds", type=int, default=2000)
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args()
    items = world(a.items, np.random.default_rng(0))
    cases = [("policy off (the floor)", PLAIN, False), ("policy defaults", {}, False),
             ("policy defaults, 200 blocked keywords", {}, True)]
    rows = []
    for name, overrides, keywords in cases:
        r = run(items, overrides, a.users, a.feeds, keywords)
        print(f"{name}: p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms", flush=True)
        rows.append((name, r))
    floor = rows[0][1]
    md = [BEGIN, "## Feed policy\n\n",
          f"What the feed policy costs: in-process `engine.feeds.feed(user, 10)` on {a.items:,} synthetic items over "
          f"30 topics (2% uploaded just now, so the exposure pools have members), {a.users:,} users with 30 views "
          f"each, {a.feeds:,} timed feeds after a warm-up, learning off. The floor is the same engine with every "
          "policy step off (no exploration or pool slots, no similarity penalty, no topic caps or lift), measured "
          "in the same run.\n\n",
          bench.provenance(bench.command_line("policy.py"), bench.machine()), "\n\n",
          "| Case | p50 ms | p99 ms | p50 / floor | p99 / floor |\n|---|---:|---:|---:|---:|\n"]
    for name, r in rows:
        md.append(f"| {name} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p50'] / floor['p50']:.2f} | "
                  f"{r['p99'] / floor['p99']:.2f} |\n")
    md.append("\n" + END)
    block = "".join(md)
    print(block)
    if a.no_doc:
        return
    bench.replace_section(BEGIN, END, block)


if __name__ == "__main__":
    main()
