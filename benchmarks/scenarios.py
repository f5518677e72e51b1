"""The scenarios of `benchmarks/run.py`, one scale at a time, in the order they run:

  bulk load (`foryou load`, items then events, each in a fresh process), `Engine.open` in a fresh process,
  (c) the feed in-process, the load generator's ceiling and (a) the floor (a trivial FastAPI route),
  `foryou serve`: `GET /healthz`, (b) the feed over HTTP, (d) `POST /v1/events`, the mixed run (feeds
  while benchmarks/ingester.py posts at a fixed rate), a graceful stop and the floor again, then (e) the
  event batches in-process; py-spy and cProfile on the way when asked.

`run_scale` runs them all and returns a `ScaleRun`, which report.py turns into Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import random
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness as bench
import orjson
from gen import generate
from profiles import Profile, cprofile_summary, parse_pyspy, pyspy_available, pyspy_cmd, start_pyspy


@dataclass
class ScaleRun:
    """Everything one run of run.py measured at one scale."""

    a: argparse.Namespace
    m: dict[str, str]
    command: str
    client: str  # "wrk" or "python"
    rows: list[bench.Result]  # floor, healthz, (b), (b4), (c), (d), (e), mixed
    floor: bench.Result
    floors: list[bench.Result]  # the floor before and after the ForYou server
    ceiling: bench.Result
    load: dict[str, Any] | None  # None with --skip-load
    opened: dict[str, Any]
    serve: dict[str, Any]
    mixed_ingest: dict[str, Any]
    profiles: list[Profile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what qualifies the numbers (they go to the docs)
    details: list[str] = field(default_factory=list)  # checks and repeats (stdout and the full report only)

    def row(self, prefix: str) -> bench.Result:
        return next(r for r in self.rows if r.name.startswith(prefix))


def run_load(data: Path, items: Path, events: Path, profile: bool, timeout: float) -> dict[str, Any]:
    """`foryou load` twice (items, then events) into a fresh data directory, each in its own process."""
    if data.exists():
        shutil.rmtree(data)
    out: dict[str, Any] = {}
    for what, path in (("items", items), ("events", events)):
        rows = sum(1 for _ in path.open("rb"))
        cmd = [bench.PY, "-m", "foryou.cli", "load", "--data", str(data), f"--{what}", str(path), "--quiet"]
        bench.log(f"bulk load: {what} ({rows:,} rows)")
        bench.wait_quiet()
        busy0 = bench.system_busy()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=bench.CODE.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        spy = None
        if profile and what == "events" and pyspy_available():
            time.sleep(min(3.0, max(0.5, rows / 400_000)))
            if proc.poll() is None:
                spy = start_pyspy(proc.pid, timeout, bench.OUT / "profile-bulk.txt", rate=50)  # the whole load
        text = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        took = time.perf_counter() - started
        if took >= timeout:
            raise RuntimeError(f"foryou load --{what} ran past --load-timeout ({timeout:.0f}s) and was killed; "
                               f"see {bench.OUT / 'profile-bulk.txt'} for where it spent its time")
        if spy is not None:
            spy.wait(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"foryou load failed: {' '.join(cmd)}\n{text[-3000:]}")
        own = usage.ru_utime + usage.ru_stime
        out[what] = {"rows": rows, "seconds": took, "per_s": rows / took, "peak_rss_mb": usage.ru_maxrss / 1024,
                     "cpu": own / took, "other_cpu": max(0.0, (bench.system_busy() - busy0 - own) / took),
                     "output": text.strip().splitlines()[-1] if text.strip() else ""}
        bench.log(f"  {rows:,} {what} in {took:.1f}s = {rows / took:,.0f}/s ({out[what]['output']})")
    return out


_OPEN_SNIPPET = """
import json, resource, sys, time
t0 = time.perf_counter()
from foryou.config import load_settings
from foryou.engine import Engine
t1 = time.perf_counter()
engine = Engine.open(load_settings(overrides={"server.data": sys.argv[1]}))
t2 = time.perf_counter()
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")][0] / 1024
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "rss_mb": rss,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "items": len(engine.live.catalog)}))
engine.store.close()
"""


def run_open(data: Path) -> dict[str, Any]:
    """Engine.open on the loaded data directory, in a fresh process (no checkpoint on exit)."""
    proc = subprocess.run([bench.PY, "-c", _OPEN_SNIPPET, str(data)], cwd=bench.CODE.dir, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"Engine.open failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


def profile_open(data: Path) -> Profile | None:
    """A second Engine.open under py-spy (the timed one above runs without it)."""
    out = bench.OUT / "profile-open.txt"
    out.unlink(missing_ok=True)
    subprocess.run([pyspy_cmd(), "record", "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out),
                    "--", bench.PY, "-c", _OPEN_SNIPPET, str(data)], cwd=bench.CODE.dir, capture_output=True,
                   timeout=900)
    return parse_pyspy(out, "start-up: `Engine.open` on the loaded data directory (fresh process)")


def model_lag(port: int, key: str | None) -> dict[str, Any]:
    """The server's model-lag histogram (cumulative counts by bucket bound) and how many events its log
    follower has yet to take."""
    status, body = bench.get(port, "/metrics", key=key)
    text = body.decode()
    assert status == 200, text[:300]
    buckets = {float(le): int(n) for le, n in
               re.findall(r'^foryou_model_update_lag_seconds_bucket\{le="([^"]+)"\} (\d+)', text, re.M)}
    behind = re.search(r"^foryou_log_follower_events_behind (\S+)", text, re.M)
    return {"buckets": buckets, "behind": float(behind.group(1)) if behind else float("nan")}


def settle(port: int, key: str | None, most_s: float = 180.0) -> float:
    """Wait (at most `most_s`) until the server's model is less than 1,000 events behind its log, so that
    the mixed run's model lag is not the backlog the ingest runs before it left; returns how long."""
    started = time.monotonic()
    while time.monotonic() - started < most_s:
        status, body = bench.get(port, "/metrics", key=key)
        behind = re.search(r"^foryou_model_events_behind (\S+)", body.decode(), re.M)
        if status != 200 or behind is None or float(behind.group(1)) < 1000:
            break
        time.sleep(1.0)
    return time.monotonic() - started


def lag_p99(before: dict[float, int], after: dict[float, int]) -> float:
    """The bucket bound under which 99% of the batches learned between two scrapes were (inf: above
    the largest bound; nan: none learned)."""
    counts = {le: after[le] - before.get(le, 0) for le in sorted(after)}
    total = counts.get(float("inf"), 0)
    if total == 0:
        return float("nan")
    return next(le for le, n in counts.items() if n >= 0.99 * total)


def uvicorn_floor(port: int) -> list[str]:
    return [bench.PY, "-m", "uvicorn", "--app-dir", str(bench.BENCH), "floor_app:app", "--host", "127.0.0.1", "--port",
            str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def sanity(port: int, users: int, items: int, key: str | None = None) -> str:
    """One feed and one small event batch through the real API, checked, before timing anything."""
    status, raw = bench.get(port, "/v1/users/u1/feed?n=10&explain=true", timeout=60, key=key)
    if status != 200:
        raise RuntimeError(f"feed answered {status}: {raw[:500]!r}")
    served: list[dict[str, Any]] = orjson.loads(raw)["items"]
    ranker = served[0]["explain"]["ranker"] if served else "none"
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    payload = bench.events_body(random.Random(1), f"s{time.time_ns()}", 0, 10, users, items, ts)
    status, raw = bench.post(port, "/v1/events", payload, key=key)
    if status != 200:
        raise RuntimeError(f"events answered {status}: {raw[:500]!r}")
    return f"feed returned {len(served)} items, ranked by the {ranker} ranker; events: {raw.decode()}"


def _open_engine(data: Path) -> Any:
    from foryou.config import load_settings
    from foryou.engine import Engine

    return Engine.open(load_settings(overrides={"server.data": str(data)}))


def inprocess_feed(data: Path, users: int, seconds: float, warmup: float, max_feeds: int,
                   profile: bool) -> tuple[bench.Result, list[Profile]]:
    """(c): engine.feeds.feed(random user, 10), one call at a time, after a warm-up."""
    rng = random.Random(11)
    profiles: list[Profile] = []
    engine = _open_engine(data)
    try:
        feed = engine.feeds.feed
        ranker = "learned" if engine.feeds._learned(engine.feeds.config()) is not None else "hand-set"
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            feed(f"u{rng.randrange(users)}", 10)
        lat: list[float] = []
        bench.wait_quiet()
        busy0, cpu0 = bench.system_busy(), bench.self_cpu()
        t_end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while len(lat) < max_feeds and time.perf_counter() < t_end:
            uid = f"u{rng.randrange(users)}"
            t = time.perf_counter()
            feed(uid, 10)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        lat.sort()
        own = bench.self_cpu() - cpu0
        row = bench.Result("(c) feed, in-process", 1, len(lat), total, bench.pct(lat, 0.5) * 1000,
                           bench.pct(lat, 0.99) * 1000, server_cpu=own / total,
                           other_cpu=max(0.0, (bench.system_busy() - busy0 - own) / total),
                           extra={"mean_ms": 1000 * sum(lat) / len(lat), "ranker": ranker})
        if profile:
            n = min(500, max(50, len(lat)))
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                feed(f"u{rng.randrange(users)}", 10)
            prof.disable()
            profiles.append(cprofile_summary(prof, f"feed, in-process ({n} feeds)"))
    finally:
        engine.close()
    return row, profiles


def inprocess_ingest(data: Path, users: int, items: int, seconds: float, warmup: float, batch: int,
                     profile: bool) -> tuple[bench.Result, list[Profile]]:
    """(e): what `POST /v1/events` does with a body, in-process: parse, the plain path's checks
    (`plain_events`; the API's models for anything else) and the append, per batch; building the JSON
    bodies is not timed."""
    import orjson

    from foryou.ingest import plain_events
    from foryou.types import EventBatch

    def ingest(raw: bytes) -> None:
        events = plain_events(orjson.loads(raw)["events"], engine.live.catalog.index, engine.live.clock(), set())
        service = engine.events
        service.append(service.check(events) if events is not None
                       else service.validate(EventBatch.model_validate_json(raw).events))

    rng = random.Random(13)
    prefix = f"ip{time.time_ns() % 10**12}"
    counter = [0]

    def payload() -> bytes:
        counter[0] += 1
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return bench.events_body(rng, prefix, counter[0] * batch, batch, users, items, ts)

    profiles: list[Profile] = []
    engine = _open_engine(data)
    try:
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            ingest(payload())
        lat: list[float] = []
        bench.wait_quiet()
        busy0, cpu0, wall0 = bench.system_busy(), bench.self_cpu(), time.perf_counter()
        t_end = time.perf_counter() + seconds
        while len(lat) < 10 or (len(lat) < 500 and time.perf_counter() < t_end):
            raw = payload()
            t = time.perf_counter()
            ingest(raw)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - wall0
        own = bench.self_cpu() - cpu0
        busy = sum(lat)
        lat.sort()
        row = bench.Result(f"(e) POST body checks + append in-process, {batch}/batch", 1, len(lat), busy,
                           bench.pct(lat, 0.5) * 1000, bench.pct(lat, 0.99) * 1000, batch=batch, server_cpu=own / wall,
                           other_cpu=max(0.0, (bench.system_busy() - busy0 - own) / wall))
        if profile:
            bodies = [payload() for _ in range(20)]
            prof = cProfile.Profile()
            prof.enable()
            for raw in bodies:
                ingest(raw)
            prof.disable()
            profiles.append(cprofile_summary(prof, f"events in-process, checks + append (20 batches of {batch})"))
    finally:
        engine.close()
    return row, profiles


def run_scale(a: argparse.Namespace, client_kind: str, command: str) -> ScaleRun:
    """Every scenario at the scale of `a` (see run.py's options), in order."""
    client = bench.Client(client_kind)
    profile = not a.no_profile
    notes: list[str] = []
    details: list[str] = []
    others = sorted(k for k in os.environ if k.startswith("FORYOU_") and k != "FORYOU_LEARNING_DUEL")
    if others:
        notes.append(f"FORYOU_* variables set in the environment: {', '.join(others)}.")
    if not a.duel:
        os.environ["FORYOU_LEARNING_DUEL"] = "false"
        notes.append("The learned model's duel was off (FORYOU_LEARNING_DUEL=false, in every process): the learned "
                     "model served once trained, as the targets ask (`--duel` keeps it on).")
    if a.user_cache:
        os.environ["FORYOU_STORE_USER_CACHE"] = str(a.user_cache)
        notes.append(f"Run with store.user_cache = {a.user_cache:,} (FORYOU_STORE_USER_CACHE) in every process.")
    key = f"{a.items}i-{a.users}u-{a.events}e-s{a.seed}"
    src, data = bench.OUT / f"gen-{key}", bench.OUT / f"data-{key}"
    m = bench.machine()

    bench.log(f"data: {a.items:,} items, {a.users:,} users, {a.events:,} events -> {src}")
    t = time.perf_counter()
    items_path, events_path = generate(src, a.items, a.users, a.events, seed=a.seed)
    bench.log(f"  generated (or reused) in {time.perf_counter() - t:.1f}s")

    load = None
    if a.skip_load and (data / "LOADED").exists():
        notes.append("The data directory was reused from an earlier run (`--skip-load`): it also holds that "
                     "run's served items and ingested events.")
    else:
        load = run_load(data, items_path, events_path, profile, a.load_timeout)
        (data / "LOADED").write_text("ok\n")

    bench.log("Engine.open in a fresh process")
    opened = run_open(data)
    bench.log(f"  {opened['open_s']:.2f}s, RSS {opened['rss_mb']:.0f} MiB, {opened['items']:,} items")

    profiles: list[Profile] = []
    if profile and pyspy_available():
        open_prof = profile_open(data)
        if open_prof:
            profiles.append(open_prof)
    # (c) first, so that it and (b) see the same state (the ingest runs below change users' interests)
    bench.log("in-process feed")
    feed_ip, got = inprocess_feed(data, a.users, a.duration, a.warmup, a.max_feeds, profile)
    profiles.extend(got)
    bench.log(f"  p50 {feed_ip.p50_ms:.2f} ms, p99 {feed_ip.p99_ms:.2f} ms ({feed_ip.requests:,} feeds)")

    bench.log("API key: foryou keys create --scopes admin")
    api_key = bench.make_key(data)
    if api_key is None:
        notes.append("The revision measured has no API keys: requests went without one.")

    def spy(srv: bench.Server, title: str, mode: tuple[Any, ...], conns: int, fname: str) -> None:
        if not (profile and pyspy_available()):
            return
        path = bench.OUT / f"profile-{fname}.txt"
        proc = start_pyspy(srv.pid, a.profile_seconds, path)
        client.run("profiled", srv.port, mode, conns, a.profile_seconds + 1, key=api_key)
        proc.wait(timeout=a.profile_seconds + 60)
        got = parse_pyspy(path, title)
        if got:
            profiles.append(got)

    with contextlib.ExitStack() as stack:
        # the client's ceiling and the floor
        port = bench.free_port()
        ceiling_srv = bench.Server("ceiling", [bench.PY, str(bench.BENCH / "ceiling_server.py"), str(port)], port, "/")
        stack.callback(ceiling_srv.stop)
        ceiling = client.run("client ceiling (raw uvloop server)", port, ("get", "/"), a.conns,
                             max(3.0, a.duration / 2), ceiling_srv.pid)
        ceiling_srv.stop()
        bench.log(f"ceiling: {ceiling.rps:,.0f} req/s")

        def measure_floor() -> bench.Result:
            port = bench.free_port()
            floor_srv = bench.Server("floor", uvicorn_floor(port), port, "/ping")
            stack.callback(floor_srv.stop)
            client.run("warm-up", port, ("get", "/ping"), a.conns, a.warmup)
            got = client.run("(a) floor: FastAPI trivial route", port, ("get", "/ping"), a.conns, a.duration,
                             floor_srv.pid)
            floor_srv.stop()
            bench.log(f"floor: {got.rps:,.0f} req/s, p50 {got.p50_ms:.2f} ms, p99 {got.p99_ms:.2f} ms")
            return got

        floors = [measure_floor()]  # measured again after the ForYou server: the better run is the floor

        # the ForYou server
        port = bench.free_port()
        bench.log("foryou serve: starting")
        srv = bench.Server("foryou-serve", bench.serve_cmd(data, port), port, "/healthz", cwd=bench.CODE.dir)
        stack.callback(srv.stop)
        serve: dict[str, Any] = {"ready_s": srv.ready_s}
        serve["rss_start"], _ = bench.rss_mb(srv.pid)
        for line in srv.log_path.read_text().splitlines():
            if " in " in line and "items loaded" in line:
                serve["open_s"] = line.rsplit(" in ", 1)[1].split("s;")[0]
        bench.log(f"  ready in {srv.ready_s:.2f}s, RSS {serve['rss_start']:.0f} MiB")
        details.append("Sanity check before timing: " + sanity(srv.port, a.users, a.items, api_key) + ".")

        healthz = client.run("GET /healthz (ForYou app, no engine work)", port, ("get", "/healthz"), a.conns,
                             a.duration, srv.pid)
        bench.log(f"healthz: {healthz.rps:,.0f} req/s")
        feed_mode = ("feed", a.users, 10)
        client.run("warm-up", port, feed_mode, a.conns, a.warmup, key=api_key)
        feed_http = client.run(f"(b) feed over HTTP, n=10, {a.conns} conns", port, feed_mode, a.conns,
                               a.duration, srv.pid, key=api_key)
        serve["rss_feed"], _ = bench.rss_mb(srv.pid)
        serve["rss_all_feed"] = bench.rss_tree_mb(srv.pid)  # with the trainer
        feed_http4 = client.run("(b4) feed over HTTP, n=10, 4 conns", port, feed_mode, 4, a.duration, srv.pid,
                                key=api_key)
        bench.log(f"feed/http: {feed_http.rps:,.0f} req/s, p50 {feed_http.p50_ms:.2f} ms, "
                  f"p99 {feed_http.p99_ms:.2f} ms")
        spy(srv, f"feed over HTTP ({a.conns} conns), server process", feed_mode, a.conns, "feed")

        events_mode = ("events", a.users, a.items, a.batch)
        events_http = client.run(f"(d) POST /v1/events, {a.batch}/batch, {a.ingest_conns} conns", port,
                                 events_mode, a.ingest_conns, a.duration, srv.pid, key=api_key)
        bench.log(f"events/http: {events_http.events_per_s:,.0f} events/s, p50 {events_http.p50_ms:.1f} ms")
        spy(srv, f"POST /v1/events over HTTP ({a.batch}/batch), server process", events_mode, a.ingest_conns,
            "events")

        # mixed: feeds while another client ingests at a fixed rate, once the trainer caught up
        settled = settle(port, api_key)
        details.append(f"Before the mixed run the trainer took {settled:.0f} s to catch up with the ingest runs.")
        bench.log(f"trainer caught up in {settled:.0f} s")
        ingest_s = a.duration + a.warmup + 2
        ing = subprocess.Popen([bench.PY, str(bench.BENCH / "ingester.py"), "--port", str(port),
                                "--rate", str(a.mixed_rate), "--batch", str(a.batch), "--seconds", str(ingest_s),
                                "--users", str(a.users), "--items", str(a.items), "--connections", "4",
                                *(["--key", api_key] if api_key else [])],
                               cwd=bench.ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0 + a.warmup)
        lag_before = model_lag(port, api_key)
        mixed = client.run(f"mixed: (b) while another client posts {a.mixed_rate:,.0f} events/s", port, feed_mode,
                           a.conns, a.duration, srv.pid, key=api_key)
        lag_after = model_lag(port, api_key)
        out, _ = ing.communicate(timeout=ingest_s + 120)
        mixed_ingest: dict[str, Any] = {}
        for line in out.splitlines():
            if line.startswith("INGESTJSON "):
                mixed_ingest = orjson.loads(line[11:])
                mixed_ingest["connections"] = 4
        mixed_ingest["model_lag_p99_le_s"] = lag_p99(lag_before["buckets"], lag_after["buckets"])
        mixed_ingest["follower_behind"] = lag_after["behind"]
        bench.log(f"mixed: feed p99 {mixed.p99_ms:.1f} ms; ingest {mixed_ingest.get('events_per_s', 0):,.0f} events/s")
        serve["rss_end"], serve["hwm_end"] = bench.rss_mb(srv.pid)
        serve["rss_all_end"] = bench.rss_tree_mb(srv.pid)
        serve["stop_s"] = srv.stop()
        floors.append(measure_floor())
        floor = max(floors, key=lambda r: r.rps)
        details.append("The floor was measured before and after the ForYou server: "
                       + " and ".join(f"{r.rps:,.0f} req/s (p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms)"
                                      for r in floors) + "; the better run is the floor.")

    if load and profile and pyspy_available():
        bulk_prof = parse_pyspy(bench.OUT / "profile-bulk.txt", "bulk load (`foryou load --events`), the whole run")
        if bulk_prof:
            profiles.append(bulk_prof)

    bench.log("in-process ingest")
    ingest_ip, got = inprocess_ingest(data, a.users, a.items, a.duration, a.warmup, a.batch, profile)
    profiles.extend(got)
    bench.log(f"  {ingest_ip.events_per_s:,.0f} events/s, p50 {ingest_ip.p50_ms:.1f} ms")

    rows = [floor, healthz, feed_http, feed_http4, feed_ip, events_http, ingest_ip, mixed]
    for r in rows:
        if r.errors:
            notes.append(f"{r.name}: {r.errors} failed requests (non-200 or socket errors).")
    if mixed_ingest.get("n_failures"):
        notes.append(f"Mixed-run ingester failures: {mixed_ingest['failures']}.")
    return ScaleRun(a, m, command, client_kind, rows, floor, floors, ceiling, load, opened, serve, mixed_ingest,
                    profiles, notes, details)
