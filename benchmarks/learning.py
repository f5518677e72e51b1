#!/usr/bin/env python3
"""Learned models trained online (foryou/learning/): what training, its memory and its place in the
request path cost. One run measures

  1. training throughput: `Learner.learn_many` alone on the KuaiRand-Pure subset converted to events, at
     250, 1,000 and 5,000 events a batch (and on the synthetic data at 1,000), then `engine.events.append`
     (store + live state + learning) with learning on and off (the floor), and a cProfile of learn_many;
  2. memory and speed of the embedding tables: bytes per id (arrays, plus dict/list/set by tracemalloc)
     at the default width, and rows/s of `EmbeddingTable.rows` (admission, look-up) and `update`;
  3. in-process `engine.feeds.feed` p50/p99 with the learned models and with learning off (the floor);
  4. the model-update lag while `benchmarks/ingester.py` posts 10,000 events/s and wrk fetches feeds from
     `foryou serve` (`foryou_model_lag_seconds` scraped from /metrics every 0.5 s), learning on and off;
  plus `foryou load` with learning on and off. The results go to the `## Learned models` section of
  docs/benchmarks.md (replaced on each run; the rest of the file is left as it is); the full report, with
  the profiles, to stdout and benchmarks/out/report-learning.md.

    python benchmarks/learning.py --quick     # shorter runs, fewer ids (~5 min)
    python benchmarks/learning.py             # ~9 min; --rev HEAD: the committed foryou/

Reuses harness.py (servers, wrk client, quiet waits) and scenarios.py's bulk load. Everything written goes
under benchmarks/out/ (ignored by git) and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import harness as bench
import numpy as np
import orjson
import profiles
from gen import generate
from scenarios import run_load

OUT, log, pct, nan = bench.OUT, bench.log, bench.pct, float("nan")

KUAIRAND = Path(os.environ.get("KUAIRAND_PURE", "/work/shared/data/kuairand_pure_subset"))
BEGIN, END = "<!-- learning -->\n", "<!-- /learning -->\n"


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def setting_env(**values: str) -> Any:
    """FORYOU_LEARNING_<KEY>=value for this process and its children while inside."""
    names = {f"FORYOU_LEARNING_{k.upper()}": v for k, v in values.items()}
    old = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


SCRATCH = OUT / "learning-scratch"


def scratch_engine(on: bool, catalogue: Any, t0: float) -> tuple[Any, _Clock]:
    """A fresh engine in event time under benchmarks/out/, the catalogue upserted."""
    from foryou.config import load_settings
    from foryou.engine import Engine

    d = SCRATCH
    shutil.rmtree(d, ignore_errors=True)
    clock = _Clock()
    clock.now = t0
    engine = Engine.open(load_settings(overrides={"server.data": str(d), "learning.enabled": on}), clock=clock)
    engine.items.upsert(list(catalogue.items))
    return engine, clock


def other_load(busy0: float, cpu0: float, wall: float) -> float:
    """Cores that other processes used since (busy0, cpu0), over `wall` seconds."""
    return max(0.0, (bench.system_busy() - busy0 - (bench.self_cpu() - cpu0)) / wall)


def done(engine: Any) -> None:
    engine.store.close()
    shutil.rmtree(SCRATCH, ignore_errors=True)


def dataset(items: Path, events: Path) -> tuple[Any, list[Any]]:
    from foryou.evaluation.dataset import load

    ds = load(items, events)
    return ds.catalogue, ds.events.records(ds.catalogue)


def time_batches(name: str, catalogue: Any, records: list[Any], batch: int, learn_only: bool, on: bool = True,
                 profile_from: int = 0) -> dict[str, Any]:
    """Feeds `records` in batches to learn_many (learn_only) or to events.append; times only those calls.
    With profile_from, the batches from that position are profiled instead of timed."""
    engine, clock = scratch_engine(on, catalogue, records[0].ts)
    learner, region = engine.learner, engine.live.catalog.regions[0]
    lat: list[float] = []
    prof = cProfile.Profile()
    try:
        bench.wait_quiet()
        busy0, cpu0, wall0 = bench.system_busy(), bench.self_cpu(), time.perf_counter()
        for lo in range(0, len(records), batch):
            part = records[lo:lo + batch]
            seqs = list(range(lo + 1, lo + len(part) + 1))
            clock.now = part[-1].ts
            profiled = bool(profile_from) and lo >= profile_from
            if profiled:
                prof.enable()
            t = time.perf_counter()
            if learn_only:
                learner.learn_many(region, part, seqs)
            else:
                engine.events.append(part)
            if profiled:
                prof.disable()
            else:
                lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - wall0
        busy, n = sum(lat), min(len(records), profile_from or len(records))
        lat.sort()
        out = {"name": name, "batch": batch, "events": n, "per_s": n / busy, "p50_ms": 1000 * pct(lat, 0.5),
               "p99_ms": 1000 * pct(lat, 0.99), "examples": learner.examples, "bad": learner.bad_steps,
               "healthy": learner.healthy, "other": other_load(busy0, cpu0, wall)}
        if profile_from:
            title = f"`learn_many`, {name}: {len(records) - profile_from:,} events in batches of {batch}, after "
            out["profile"] = profiles.cprofile_summary(prof, title + f"{profile_from:,} learned", top=10)
    finally:
        done(engine)
    log(f"  {'learn_many' if learn_only else 'append'}, {name}, learning {on}, {batch}/batch: "
        f"{out['per_s']:,.0f} events/s, batch p99 {out['p99_ms']:.1f} ms "
        f"(examples {out['examples']:,}, bad steps {out['bad']}, other load {out['other']:.2f})")
    return out


def table_memory(name: str, dim: int, n: int) -> dict[str, Any]:
    """Bytes per id of one table holding n string ids (tracemalloc), then rows/s (untraced)."""
    from foryou.learning.embeddings import EmbeddingTable

    keys = [f"{name[0]}{k:07d}" for k in range(n)]  # made before tracing: the ids are the caller's
    chunk, now = 4096, 1.7e9
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    table = EmbeddingTable(dim)
    for lo in range(0, n, chunk):
        table.rows(keys[lo:lo + chunk], now)
    with_dirty = tracemalloc.get_traced_memory()[0] - base
    table.dirty.clear()  # as after a checkpoint
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    out: dict[str, Any] = {"name": name, "dim": dim, "n": n, "exact": 2 * dim * 4 + 8, "arrays": table.nbytes / n,
                           "python": (traced - table.nbytes) / n, "dirty": (with_dirty - traced) / n,
                           "key": sys.getsizeof(keys[-1])}
    del table
    bench.wait_quiet()
    table = EmbeddingTable(dim)
    rng = np.random.default_rng(1)
    timings = {"admit": 0.0, "known": 0.0, "update": 0.0}
    for lo in range(0, n, chunk):
        t = time.perf_counter()
        table.rows(keys[lo:lo + chunk], now)
        timings["admit"] += time.perf_counter() - t
    for lo in range(0, n, chunk):
        t = time.perf_counter()
        rows = table.rows(keys[lo:lo + chunk], now)
        timings["known"] += time.perf_counter() - t
        rows = rows[rng.integers(0, len(rows), len(rows))]  # repeats, as in a batch
        grads = rng.normal(0, 0.1, (len(rows), dim)).astype(np.float32)
        t = time.perf_counter()
        table.update(rows, grads)
        timings["update"] += time.perf_counter() - t
    out.update({k: n / v for k, v in timings.items()})
    mib = (out["arrays"] + out["python"]) * 1e6 / 2**20
    log(f"  {name} (width {dim}): {mib:,.0f} MiB per million ids; admit {out['admit']:,.0f} rows/s, "
        f"update {out['update']:,.0f} rows/s")
    return out


def feed_latency(base: Path, on: bool, users: int, seconds: float, max_feeds: int) -> dict[str, Any]:
    """engine.feeds.feed(random user, 10) in-process, on a fresh copy of the loaded directory."""
    from foryou.config import load_settings
    from foryou.engine import Engine

    work = OUT / "learning-work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    engine = Engine.open(load_settings(overrides={"server.data": str(work), "learning.enabled": on}))
    rng = np.random.default_rng(11)
    try:
        for u in rng.integers(0, users, 300).tolist():
            engine.feeds.feed(f"u{u}", 10)
        lat: list[float] = []
        bench.wait_quiet()
        busy0, cpu0, wall0 = bench.system_busy(), bench.self_cpu(), time.perf_counter()
        while len(lat) < max_feeds and time.perf_counter() < wall0 + seconds:
            uid = f"u{rng.integers(users)}"
            t = time.perf_counter()
            engine.feeds.feed(uid, 10)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - wall0
        lat.sort()
        out = {"on": on, "feeds": len(lat), "p50_ms": 1000 * pct(lat, 0.5), "p99_ms": 1000 * pct(lat, 0.99),
               "healthy": engine.learner.healthy, "examples": engine.learner.examples,
               "other": other_load(busy0, cpu0, wall)}
    finally:
        engine.store.close()  # no checkpoint: the copy is thrown away
        shutil.rmtree(work, ignore_errors=True)
    log(f"  feed in-process, learning {'on' if on else 'off'}: p50 {out['p50_ms']:.2f} ms, "
        f"p99 {out['p99_ms']:.2f} ms (healthy {out['healthy']})")
    return out


def scrape(port: int, key: str | None = None) -> dict[str, float]:
    status, raw = bench.get(port, "/metrics", timeout=10, key=key)
    out = {}
    for line in raw.decode().splitlines() if status == 200 else []:
        if line.startswith(("foryou_model_", "foryou_events_ingested_total")):
            k, v = line.split()
            out[k[7:]] = float(v)
    return out


def mixed(base: Path, on: bool, conns: int, a: argparse.Namespace, client: bench.Client,
          key: str | None = None) -> dict[str, Any]:
    """foryou serve on a fresh copy of the loaded directory (its keys.db, and so `key`, included); ingester at
    --rate while wrk fetches feeds; /metrics every 0.5 s."""
    work, spy_path = OUT / "learning-work", OUT / f"profile-learning-mixed-{'on' if on else 'off'}-{conns}.txt"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    port = bench.free_port()
    with setting_env(enabled=str(on).lower(), join_window_s=str(a.join_window)):
        srv = bench.Server(f"learning-serve-{'on' if on else 'off'}", bench.serve_cmd(work, port), port, "/healthz",
                           cwd=bench.CODE.dir)
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(OSError, ValueError):
                samples.append({"t": time.perf_counter(), **scrape(port, key)})

    try:
        start = scrape(port, key)
        feed_mode = ("feed", a.users, 10)
        client.run("warm-up", port, feed_mode, conns, 2.0, key=key)
        bench.wait_quiet()
        ingest_s = a.mixed_s + 3
        ing = subprocess.Popen([bench.PY, str(bench.BENCH / "ingester.py"), "--port", str(port), "--rate", str(a.rate),
                                "--batch", "1000", "--seconds", str(ingest_s), "--users", str(a.users),
                                "--items", str(a.items), "--connections", "4", *(["--key", key] if key else [])],
                               cwd=bench.ROOT, stdout=subprocess.PIPE, text=True)
        thread = threading.Thread(target=scraper, daemon=True)
        thread.start()
        time.sleep(1.5)
        spy = profiles.start_pyspy(srv.pid, a.mixed_s, spy_path, rate=50) if profiles.pyspy_available() else None
        t0 = time.perf_counter()
        feed = client.run("mixed", port, feed_mode, conns, a.mixed_s, srv.pid, quiet=False, key=key)
        t1 = time.perf_counter()
        text, _ = ing.communicate(timeout=ingest_s + 120)
        if spy is not None:
            spy.wait(timeout=60)
        stop.set()
        thread.join()
        end = scrape(port, key)
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    ingest: dict[str, Any] = next((orjson.loads(ln[11:]) for ln in text.splitlines()
                                   if ln.startswith("INGESTJSON ")), {})
    # While the feeds ran (the ingester may run longer), from the last scrape before to the first after.
    lo = max([k for k, s in enumerate(samples) if s["t"] <= t0], default=0)
    hi = min([k for k, s in enumerate(samples) if s["t"] >= t1], default=len(samples) - 1)
    win = samples[lo:hi + 1]
    lags = sorted(s["model_lag_seconds"] for s in win if s.get("model_version", 0) > start.get("model_version", 0))
    key = "events_ingested_total"
    rate = (win[-1][key] - win[0][key]) / (win[-1]["t"] - win[0]["t"]) if len(win) > 1 and key in win[0] else nan
    out = {"on": on, "conns": conns, "start": start, "end": end, "ingest": ingest, "feed": feed, "rate": rate,
           "samples": len(samples), "fresh": len(lags), "lag_p50": pct(lags, 0.5), "lag_p99": pct(lags, 0.99),
           "lag_max": max(lags, default=float("nan")),
           "profile": profiles.parse_pyspy(spy_path, f"`foryou serve`, mixed run, learning {'on' if on else 'off'}, "
                                                  f"{conns} feed conns"),
           "healthy_all": bool(win) and all(s.get("model_healthy") == 1.0 for s in win)}
    log(f"  mixed, learning {on}, {conns} conns: ingest {rate:,.0f} events/s "
        f"(batch p99 {ingest.get('p99_ms', float('nan')):.0f} ms), lag p99 {out['lag_p99']:.3f} s "
        f"max {out['lag_max']:.3f} s, feed p99 {feed.p99_ms:.1f} ms")
    return out


# ---------------------------------------------------------------- report

def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def section(a: argparse.Namespace, m: dict[str, str], command: str, learn: list[dict[str, Any]],
            append: list[dict[str, Any]], memory: list[dict[str, Any]], load: dict[str, Any],
            feeds: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """The `## Learned models` section of docs/benchmarks.md: what is measured, the command, the results."""
    k1000 = next(r for r in learn if r["name"] == "KuaiRand" and r["batch"] == 1000)
    md = [BEGIN, "## Learned models\n\n",
          "What online training costs (`foryou/learning/`): `Learner.learn_many` alone, and ingestion "
          "(`events.append`, the bulk loader) with learning on and off (the floor); the embedding tables' memory "
          "and speed; the in-process feed with the learned models in the path; and the model-update lag while "
          f"{a.rate:,.0f} events/s are posted to `foryou serve` as it serves feeds. Data: the KuaiRand-Pure subset "
          f"(`foryou convert-kuairand`: {k1000['events']:,} events learned of {a.kuairand_events:,}) and "
          f"`benchmarks/gen.py` at {a.items:,} items, {a.users:,} users, {a.events:,} events.\n\n",
          bench.provenance(command, m), "\n\n",
          "| Target | Wanted | Measured | |\n|---|---|---:|---|\n",
          f"| training throughput, `learn_many` alone, KuaiRand, 1,000/batch | >= 50,000 events/s "
          f"| {k1000['per_s']:,.0f} events/s | {met(k1000['per_s'] >= 50_000)} |\n",
          *(f"| model-update lag, {a.rate:,.0f} events/s posted, feeds at {r['conns']} conn(s) "
            f"(`foryou_model_lag_seconds`, p99 / max) | <= 1 s | {r['lag_p99']:.3f} s / {r['lag_max']:.3f} s "
            f"| {met(r['lag_max'] <= 1.0)} |\n"
            f"| the same, end to end: POST of a batch until its answer (it is learned before), p99; ingest rate "
            f"reached | <= 1 s at {a.rate:,.0f}/s | {r['ingest'].get('p99_ms', nan) / 1000:.3f} s; {r['rate']:,.0f} "
            f"events/s | {met(r['ingest'].get('p99_ms', 1e9) <= 1000 and r['rate'] >= 0.95 * a.rate)} |\n"
            for r in runs if r["on"]),
          "\n| Training throughput | Events/batch | Events/s | Batch p50 ms | Batch p99 ms | Other load |\n"
          "|---|---:|---:|---:|---:|---:|\n"]
    for r in learn + append:
        what = (f"`learn_many`, {r['name']}" if "append" not in r else
                f"`events.append`, KuaiRand, learning {'on' if r['append'] else 'off (floor)'}")
        md.append(f"| {what} | {r['batch']:,} | **{r['per_s']:,.0f}** | {bench.fmt(r['p50_ms'], 2)} "
                  f"| {bench.fmt(r['p99_ms'], 2)} | {r['other']:.2f} |\n")
    ap_on, ap_off = append
    md.append(f"\nWith learning on, `events.append` runs at {ap_on['per_s'] / ap_off['per_s']:.2f}× the floor's "
              f"events/s. Bulk loader (`foryou load --events`, {a.events:,} synthetic events): "
              f"{load['on']['per_s']:,.0f} events/s with learning on"
              + (f", {load['off']['per_s']:,.0f} with learning off ({load['on']['per_s'] / load['off']['per_s']:.2f}×)"
                 if load.get("off") else "") + ".\n\n")
    md.append("| Embedding table | Width (floats) | MiB per million ids | Dirty set MiB/M | Admit rows/s "
              "| Known rows/s | Update rows/s |\n|---|---:|---:|---:|---:|---:|---:|\n")
    for r in memory:
        md.append(f"| {r['name']} | {r['dim']} | **{(r['arrays'] + r['python']) * 1e6 / 2**20:,.0f}** "
                  f"| {r['dirty'] * 1e6 / 2**20:,.0f} | {r['admit']:,.0f} | {r['known']:,.0f} | {r['update']:,.0f} |\n")
    md.append(f"\n{memory[0]['n']:,} string ids per table (arrays, with up to a third of growth slack, plus the id "
              f"-> row dict and row -> id list); the id strings ({memory[0]['key']} bytes each here) come on top "
              "where nothing else holds them, the dirty set until the next checkpoint.\n\n")
    f_off = feeds[1]
    md.append("| In-process `engine.feeds.feed(user, 10)` | Feeds | p50 ms | p99 ms | p50 ÷ floor | p99 ÷ floor "
              "| Other load |\n|---|---:|---:|---:|---:|---:|---:|\n")
    for r in feeds:
        md.append(f"| learning {'on' if r['on'] else 'off (floor)'} | {r['feeds']:,} | {r['p50_ms']:.2f} "
                  f"| {r['p99_ms']:.2f} | {r['p50_ms'] / f_off['p50_ms']:.2f}× | {r['p99_ms'] / f_off['p99_ms']:.2f}× "
                  f"| {r['other']:.2f} |\n")
    md.append("\n| `foryou serve`, ingesting and serving | Feed conns | Events/s during the feed run (whole ingester "
              "run) | Batch p50 / p99 ms | Lag p50 / p99 / max s (samples) | Feed req/s | Feed p50 / p99 ms "
              "| Server CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in runs:
        ing, fd = r["ingest"], r["feed"]
        lag = f"{r['lag_p50']:.3f} / {r['lag_p99']:.3f} / {r['lag_max']:.3f} ({r['fresh']})" if r["on"] else "-"
        md.append(f"| learning {'on' if r['on'] else 'off (floor)'} | {r['conns']} | {r['rate']:,.0f} "
                  f"({ing.get('events_per_s', 0):,.0f}) | {bench.fmt(ing.get('p50_ms', nan))} / "
                  f"{bench.fmt(ing.get('p99_ms', nan))} | {lag} | {fd.rps:,.0f} | {fd.p50_ms:.2f} / {fd.p99_ms:.2f} "
                  f"| {fd.server_cpu:.0%} |\n")
    md.append(f"\nbenchmarks/ingester.py posts batches of 1,000 (open loop) while wrk fetches feeds for "
              f"{a.mixed_s:.0f} s, with `learning.join_window_s` = {a.join_window:g} s so that joins close within "
              "the run. Lag: `foryou_model_lag_seconds`, from a batch's durable append to the end of its training "
              "step; the batch latency (POST until its answer, after which the batch is learned) bounds it end to "
              "end. Ingester failures: " + ", ".join(str(r["ingest"].get("n_failures", "?")) for r in runs) + ".\n")
    unhealthy = [r for r in learn + append + feeds + runs if r.get("on", r.get("append", True))
                 and (r.get("bad") or r.get("healthy") is False or r.get("healthy_all") is False)]
    if unhealthy:
        md.append(f"\nThe model was not healthy throughout (bad steps or `healthy` false) in {len(unhealthy)} of "
                  "these runs: see the run's log.\n")
    md.append("\n" + END)
    return "".join(md)


def details(prof: Any, memory: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """What the docs leave out: the model's state before and after the mixed runs, the tables' memory split,
    and the profiles (stdout and benchmarks/out/report-learning.md)."""

    def moved(r: dict[str, Any], key: str) -> str:
        return f"{key} {r['start'].get('model_' + key, nan):,.0f} -> {r['end'].get('model_' + key, nan):,.0f}"

    md = ["\n### Details\n\n"]
    md.extend(f"- Mixed run, learning on, {r['conns']} conns: " + ", ".join(moved(r, k) for k in (
        "version", "examples", "bad_steps", "healthy")) + f"; {r['samples']} scrapes\n" for r in runs if r["on"])
    md.extend(f"- {r['name']} table: {r['exact']} bytes/row in the arrays (exact), "
              f"{r['arrays'] * 1e6 / 2**20:,.0f} MiB/M ids with growth slack, dict + list "
              f"{r['python'] * 1e6 / 2**20:,.0f} MiB/M\n" for r in memory)
    md.append("\n")
    if prof is not None:
        md.append(profiles.profile_md(prof))
    md.extend(profiles.profile_md(r["profile"]) for r in runs if r["on"] and r["profile"])
    return "".join(md)


def update_doc(sec: str) -> None:
    """Replace the marked section; else insert it before run.py's first scale section (text above that is
    kept by run.py), or append."""
    text = bench.DOC.read_text() if bench.DOC.exists() else "# Benchmarks\n\n"
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + sec + text[end + len(END):]
    elif (first := text.find("<!-- scale ")) >= 0:
        text = text[:first] + sec + "\n" + text[first:]
    else:
        text = text.rstrip("\n") + "\n\n" + sec
    bench.DOC.write_text(text)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer events and ids, shorter runs")
    p.add_argument("--items", type=int, default=20_000, help="synthetic scale (default: run.py --quick's)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--limit", type=int, help="events per learn_many run (default all; --quick 60,000)")
    p.add_argument("--ids", type=int, help="ids per table for the memory rows (default 1,000,000; --quick 250,000)")
    p.add_argument("--mixed-s", type=float, help="seconds of each mixed run (default 30; --quick 12)")
    p.add_argument("--feed-s", type=float, help="seconds of each in-process feed run (default 10; --quick 4)")
    p.add_argument("--max-feeds", type=int, default=5000)
    p.add_argument("--rate", type=float, default=10_000, help="events/s posted during the mixed runs")
    p.add_argument("--join-window", type=float, default=5.0,
                   help="learning.join_window_s of the mixed runs' server (default 5, so that joins close within "
                        "the run as they do in a steady state; the setting's default is 60)")
    p.add_argument("--conns", type=int, default=16,
                   help="wrk connections fetching feeds during the mixed runs (a third run, learning on, uses 1)")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--skip-load", action="store_true", help="reuse the loaded directory of an earlier run")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--quiet-wait", type=float, help="wait up to S s for a quiet machine (default 5; --quick 2)")
    p.add_argument("--nice", type=int, default=-10)
    p.add_argument("--rev", help="benchmark foryou/ as committed at this revision (see run.py)")
    a = p.parse_args(argv)
    q = a.quick
    a.limit = a.limit or (60_000 if q else 0)
    a.ids = a.ids or (250_000 if q else 1_000_000)
    a.mixed_s = a.mixed_s or (12.0 if q else 30.0)
    a.feed_s = a.feed_s or (4.0 if q else 10.0)
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else (2.0 if q else 5.0)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    command = bench.command_line("learning.py", argv)
    kind = a.client if a.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    client, bench.QUIET["limit_s"] = bench.Client(kind), a.quiet_wait
    with contextlib.suppress(OSError):
        os.nice(a.nice - os.nice(0))
    OUT.mkdir(parents=True, exist_ok=True)
    if a.rev:
        bench.use_revision(a.rev)
    m, started = bench.machine(), time.perf_counter()

    kr = OUT / "kuairand"
    if not (kr / "events.jsonl").exists():
        log("converting KuaiRand-Pure")
        subprocess.run([bench.PY, "-m", "foryou.cli", "convert-kuairand", "--src", str(KUAIRAND), "--out", str(kr)],
                       cwd=bench.CODE.dir, check=True)
    log("1. training throughput")
    catalogue, records = dataset(kr / "items.jsonl", kr / "events.jsonl")
    a.kuairand_events = len(records)
    part = records[:a.limit] if a.limit else records
    learn = [time_batches("KuaiRand", catalogue, part, b, True) for b in (250, 1000, 5000)]
    append = [time_batches("KuaiRand", catalogue, part, 1000, False, on) | {"append": on} for on in (True, False)]
    at = 20_000 if a.quick else 40_000
    prof = time_batches("KuaiRand", catalogue, records[:at + at // 2], 1000, True, profile_from=at)["profile"]
    src = OUT / f"gen-{a.items}i-{a.users}u-{a.events}e-s7"
    items_path, events_path = generate(src, a.items, a.users, a.events, seed=7)
    catalogue, records = dataset(items_path, events_path)
    learn.append(time_batches("synthetic", catalogue, records[:a.limit] if a.limit else records, 1000, True))
    del catalogue, records, part

    log("2. embedding tables")
    from foryou.config import LearningSettings
    from foryou.learning.model import Model

    model = Model(["r"], LearningSettings().dim)
    memory = [table_memory(name, t.dim, a.ids) for name, t in
              (("user", model.users["r"]), ("item", model.items), ("creator", model.creators), ("tag", model.tags))]

    log("3. bulk load (learning on, then off)")
    base = OUT / f"learning-data-{a.items}i-{a.users}u-{a.events}e-s7"
    load: dict[str, Any] = {}
    if not (a.skip_load and (base / "LOADED").exists()):
        load["on"] = run_load(base, items_path, events_path, False, 1800)["events"]
        (base / "LOADED").write_text("ok\n")
        with setting_env(enabled="false"):
            load["off"] = run_load(OUT / "learning-data-off", items_path, events_path, False, 1800)["events"]
        shutil.rmtree(OUT / "learning-data-off", ignore_errors=True)
    else:
        load["on"] = {"per_s": float("nan")}

    log("4. feed latency in-process, learning on and off")
    feeds = [feed_latency(base, on, a.users, a.feed_s, a.max_feeds) for on in (True, False)]
    log(f"5. mixed: {a.rate:,.0f} events/s + feeds over HTTP, learning on and off")
    key = bench.make_key(base)  # in the loaded directory: each run's copy holds it
    runs = [mixed(base, on, conns, a, client, key) for on, conns in ((True, a.conns), (False, a.conns), (True, 1))]

    sec = section(a, m, command, learn, append, memory, load, feeds, runs)
    full = sec + details(prof, memory, runs)
    print(full)
    (OUT / "report-learning.md").write_text(full, encoding="utf-8")
    if not a.no_doc:
        update_doc(sec)
        log(f"updated {bench.DOC}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
