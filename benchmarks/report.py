"""run.py's results as Markdown: the compact section of one scale for docs/benchmarks.md (the command, the
commit, the machine and the results tables), and the full report (that section, how it was measured,
the checks and the profiles) for stdout and benchmarks/out/report-<scale>.md.
"""

from __future__ import annotations

import argparse

from harness import Result, fmt, provenance, ratio
from profiles import profile_md
from scenarios import ScaleRun

# The introduction to the scale sections, written above them the first time (then kept as edited).
INTRO = """## Serving and ingestion

`benchmarks/run.py`, at one scale per run: (a) the floor, a trivial FastAPI route (`benchmarks/floor_app.py`)
under uvicorn with `foryou serve`'s options, to which every HTTP figure is also given as a ratio; `GET /healthz`
(framework and middleware, no engine work); (b) `GET /v1/users/{id}/feed?n=10` over HTTP at 16 connections and
(c) `engine.feeds.feed(user, 10)` in-process; (d) `POST /v1/events` in batches of 1,000 and (e) the same batches
validated and ingested in-process; "mixed": (b) while `benchmarks/ingester.py` posts 10,000 events/s; the bulk
loader, start-up and the server's resident memory. Data: `benchmarks/gen.py`'s synthetic catalogue and
interaction stream, loaded with `foryou load`; every request but `/healthz` carries an admin key from `keys.db`.

```
.venv/bin/python benchmarks/run.py --quick            # 20k items, 10k users, 200k events (~5 min)
.venv/bin/python benchmarks/run.py                    # 100k items, 100k users, 5M events (make bench)
.venv/bin/python benchmarks/run.py --items 1000000    # 1M items, 100k users, 5M events
```

Each run replaces its own scale's section below. Latency is per request (per batch of events), closed loop:
at 16 connections it includes queueing in the single-threaded server. Server CPU is in % of one core (the
harness's own for in-process rows); Other load is the CPU every other process used meanwhile. With py-spy
installed a run also profiles where the time goes (stdout and `benchmarks/out/report-*.md`).

"""


def scale_key(a: argparse.Namespace) -> str:
    return f"items={a.items} users={a.users} events={a.events}"


def _pct_or_dash(x: float) -> str:
    return fmt(100 * x, 0) + "%" if x == x else "-"


def results_table(rows: list[Result], floor: Result) -> str:
    head = ("| Measure | Conns | Req/s | Events/s | p50 ms | p99 ms | Req/s ÷ floor | p50 ÷ floor | p99 ÷ floor "
            "| Server CPU | Other load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r.name} | {r.conns} | {fmt(r.rps)} | {fmt(r.events_per_s) if r.batch else ''} "
             f"| {fmt(r.p50_ms, 2)} | {fmt(r.p99_ms, 2)} | {ratio(r.rps, floor.rps)} "
             f"| {ratio(r.p50_ms, floor.p50_ms)} | {ratio(r.p99_ms, floor.p99_ms)} "
             f"| {_pct_or_dash(r.server_cpu)} | {_pct_or_dash(r.other_cpu)} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def targets_table(run: ScaleRun) -> str:
    """Issue 13's targets (set for 1M items, 100k users, 5M events on a 2-core machine) against this run."""
    feed_http, feed4, feed_ip = run.row("(b)"), run.row("(b4)"), run.row("(c)")
    events_http, mixed = run.row("(d)"), run.row("mixed")
    load, serve, opened, mi = run.load, run.serve, run.opened, run.mixed_ingest

    def row(name: str, target: str, got: str, ok: bool) -> str:
        return f"| {name} | {target} | {got} | {'met' if ok else '**not met**'} |\n"

    ranker = feed_ip.extra.get("ranker", "?")
    http_ratio = feed_http.p99_ms / feed_http.p50_ms
    out = ["| Target (set for 1M items) | Wanted | Measured | |\n|---|---|---:|---|\n",
           row("feed in-process, p50 / p99", "<= 1.5 / 5 ms",
               f"{feed_ip.p50_ms:.2f} / {feed_ip.p99_ms:.2f} ms ({ranker} ranker)",
               feed_ip.p50_ms <= 1.5 and feed_ip.p99_ms <= 5 and ranker == "learned"),
           row("feed over HTTP, 16 conns", ">= 600 req/s, p99 <= 2.5× p50",
               f"{feed_http.rps:,.0f} req/s, p99 {http_ratio:.2f}× p50", feed_http.rps >= 600 and http_ratio <= 2.5),
           row("feed over HTTP, 4 conns, p99", "<= 25 ms", f"{feed4.p99_ms:.1f} ms", feed4.p99_ms <= 25),
           row("mixed: events accepted, feed p99", "all, <= 1.5× feed-only",
               f"{mi.get('events_per_s', 0):,.0f} of {mi.get('target_events_per_s', 0):,.0f}/s, "
               f"{mixed.p99_ms / feed_http.p99_ms:.1f}×",
               mi.get("events_per_s", 0) >= 0.98 * mi.get("target_events_per_s", 1) and not mi.get("n_failures")
               and mixed.p99_ms <= 1.5 * feed_http.p99_ms),
           row("ingest over HTTP", ">= 50,000 events/s", f"{events_http.events_per_s:,.0f} events/s",
               events_http.events_per_s >= 50_000)]
    if load:
        out.append(row("bulk loader", ">= 200,000 events/s", f"{load['events']['per_s']:,.0f} events/s",
                       load["events"]["per_s"] >= 200_000))
    if "model_lag_p99_le_s" in mi:  # measured at the mixed run's rate and connections, not the target's
        lag = mi["model_lag_p99_le_s"]
        out.append(row("model lag p99 (mixed run's load)", "<= 1 s", f"within {fmt(lag, 2)} s", lag <= 1))
    rss = max(serve["rss_all_feed"], serve["rss_all_end"])
    out.append(row("resident memory, server and trainer", "<= 2 GB", f"{rss:,.0f} MiB", rss * 1.048576 <= 2000))
    out.append(row("start-up after a clean stop", "<= 10 s",
                   f"{opened['open_s']:.1f} s Engine.open, {serve['ready_s']:.1f} s serve", serve["ready_s"] <= 10))
    return "".join(out)


def load_table(run: ScaleRun) -> str:
    load, opened, serve = run.load, run.opened, run.serve
    md = ["| Bulk load, start-up, memory | Value |\n|---|---:|\n"]
    if load:
        for what in ("items", "events"):
            d = load[what]
            md.append(f"| `foryou load --{what}`: {d['rows']:,} rows | {d['seconds']:.1f} s = "
                      f"**{d['per_s']:,.0f} {what}/s**, peak RSS {d['peak_rss_mb']:,.0f} MiB, CPU "
                      f"{d['cpu']:.0%} (other load {d['other_cpu']:.0%}) |\n")
    else:
        md.append("| bulk load | skipped (`--skip-load`: data directory reused) |\n")
    md.append(f"| `Engine.open` on the loaded data dir (fresh process) | {opened['open_s']:.2f} s "
              f"(+ {opened['import_s']:.2f} s imports), RSS {opened['rss_mb']:,.0f} MiB |\n")
    md.append(f"| `foryou serve`: spawn until /healthz answers 200 | {serve['ready_s']:.2f} s "
              f"(Engine.open inside: {serve.get('open_s', '?')} s) |\n")
    md.append(f"| Server RSS after start-up / the feed run / the end (peak) | {serve['rss_start']:,.0f} / "
              f"{serve['rss_feed']:,.0f} / {serve['rss_end']:,.0f} MiB ({serve['hwm_end']:,.0f} MiB) |\n")
    md.append(f"| Server and trainer together after the feed run / at the end | {serve['rss_all_feed']:,.0f} / "
              f"{serve['rss_all_end']:,.0f} MiB |\n")
    md.append(f"| Graceful shutdown (SIGINT, final checkpoint) | {serve['stop_s']:.2f} s |\n")
    return "".join(md)


def client_name(run: ScaleRun) -> str:
    return f"`{run.m['wrk']}`" if run.client == "wrk" else "the harness's Python client (wrk was not installed)"


def section(run: ScaleRun) -> str:
    """The scale's section of docs/benchmarks.md, markers included."""
    a, mi, floor, ceiling = run.a, run.mixed_ingest, run.floor, run.ceiling
    key = scale_key(a)
    md = [f"<!-- scale {key} -->\n",
          f"### {a.items:,} items, {a.users:,} users, {a.events:,} events\n\n",
          provenance(run.command, run.m),
          f" Load: {client_name(run)}, {a.duration:.0f} s per measurement after {a.warmup:.0f} s of warm-up.\n\n",
          results_table(run.rows, floor), "\n", targets_table(run), "\n", load_table(run), "\n"]
    if mi:
        md.append(f"Mixed run: the second client ({mi.get('connections', 4)} connections, open loop, batches of "
                  f"{a.batch}) achieved {mi['events_per_s']:,.0f} of the {mi['target_events_per_s']:,.0f} events/s "
                  f"asked (batch p50 {fmt(mi['p50_ms'], 1)} ms, p99 {fmt(mi['p99_ms'], 1)} ms, "
                  f"{mi['n_failures']} failures). ")
        if "model_lag_p99_le_s" in mi:
            p99 = mi["model_lag_p99_le_s"]
            within = f"within {fmt(p99, 2)} s" if p99 != float("inf") else "over the largest bucket (300 s)"
            md.append(f"Meanwhile 99% of the batches were learned {within} of their acceptance "
                      f"(`foryou_model_update_lag_seconds`, by bucket), and the log follower ended "
                      f"{mi['follower_behind']:,.0f} events behind. ")
    md.append(f"The load generator's own ceiling, against a raw uvloop server: {fmt(ceiling.rps)} req/s, "
              f"{ceiling.rps / floor.rps:.1f}× the floor.\n")
    if run.notes:
        md.append("\n" + " ".join(run.notes) + "\n")
    md.append(f"\n<!-- /scale {key} -->\n")
    return "".join(md)


def full_report(run: ScaleRun) -> str:
    """The section, then what the docs leave out: libraries, the load generator, the checks and repeats,
    every row's request count, errors and client CPU, and the profiles."""
    m, floor = run.m, run.floor
    md = [section(run), "\n### Details\n\n",
          f"- Machine: {m['cpu']}, {m['memory']}, {m['os']}; Python {m['python']}\n",
          f"- Libraries: {m['libs']}\n",
          "- Load generator: " + (f"`{m['wrk']}`, one thread, a Lua script (benchmarks/wrk.lua) choosing a random "
                                  "user per feed request and building fresh events (unique ids) for each POST"
                                  if run.client == "wrk" else
                                  "a uvloop raw-socket closed-loop client in the harness process") + "\n",
          f"- During the floor run the client used {fmt(100 * floor.client_cpu, 0)}% of a core and the server "
          f"{fmt(100 * floor.server_cpu, 0)}%.\n",
          *(f"- {d}\n" for d in run.details),
          "\n| Measure | Requests | Seconds | Errors | Client CPU |\n|---|---:|---:|---:|---:|\n",
          *(f"| {r.name} | {r.requests:,} | {r.seconds:.1f} | {r.errors} | {_pct_or_dash(r.client_cpu)} |\n"
            for r in run.rows)]
    if run.profiles:
        md.append("\n### Where the time goes\n\n")
        order = ("feed over HTTP", "feed, in-process", "POST", "events in-process", "bulk", "start-up")
        md.extend(profile_md(p) for p in sorted(
            run.profiles, key=lambda p: next((i for i, o in enumerate(order) if p.title.startswith(o)), 9)))
    return "".join(md)
