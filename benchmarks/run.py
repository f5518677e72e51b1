#!/usr/bin/env python3
"""ForYou benchmarks: one run prints, side by side,

  (a) the floor: a trivial FastAPI route under the same uvicorn options (uvloop + httptools, no access log)
  (b) GET /v1/users/{id}/feed?n=10 over HTTP at 16 concurrent connections
  (c) feed in-process (engine.feeds.feed)
  (d) POST /v1/events in batches of 1,000 over HTTP
  (e) the same batches validated and ingested in-process
  plus the mixed run (feeds over HTTP while another client ingests 10,000 events/s), bulk-loader
  throughput (`foryou load`), start-up time (Engine.open, and `foryou serve` until /healthz answers),
  resident memory, and a profile of where the time goes. Latency and throughput are given with their
  ratio to the floor. The results go into docs/benchmarks.md (one section per scale); the full report,
  with the profiles, to stdout and benchmarks/out/report-<scale>.md.

    python benchmarks/run.py --quick                      # 20k items, 10k users, 200k events (~5 min)
    python benchmarks/run.py                              # 100k items, 100k users, 5M events
    python benchmarks/run.py --items 1000000              # 1M items, 100k users, 5M events

Synthetic data (benchmarks/gen.py) and the loaded data directory live under benchmarks/out/ (ignored
by git). Servers listen on 127.0.0.1 only; every request loop is bounded in time. The command line is
here; the shared machinery is in harness.py (and profiles.py), the scenarios in scenarios.py, the
Markdown in report.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import harness as bench
import report
import scenarios
from profiles import pyspy_available


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--quick", action="store_true", help="20k items, 10k users, 200k events, short runs")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 15; --quick 5)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before the feed runs (default 3; --quick 1)")
    p.add_argument("--conns", type=int, default=16, help="connections for the GET rows")
    p.add_argument("--ingest-conns", type=int, default=2, help="connections for POST /v1/events")
    p.add_argument("--batch", type=int, default=1000, help="events per POST")
    p.add_argument("--mixed-rate", type=float, default=10_000, help="events/s ingested during the mixed run")
    p.add_argument("--max-feeds", type=int, default=5000, help="bound on in-process feed calls")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-profile", action="store_true", help="skip py-spy and cProfile")
    p.add_argument("--profile-seconds", type=float, help="seconds of py-spy per profile (default 10; --quick 5)")
    p.add_argument("--skip-load", action="store_true", help="reuse an already loaded data directory")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duel", action="store_true",
                   help="keep the learned model's duel on: by default it is off (FORYOU_LEARNING_DUEL=false), so that "
                        "the learned model serves as soon as it is trained, as the targets ask (a bulk-loaded "
                        "directory gives the duel no live traffic to decide on)")
    p.add_argument("--user-cache", type=int,
                   help="set store.user_cache (FORYOU_STORE_USER_CACHE) for every process (default: the server's)")
    p.add_argument("--load-timeout", type=float, default=3600.0, help="kill a bulk load that runs longer")
    p.add_argument("--rev", help="benchmark foryou/ as committed at this git revision (default: the working tree)")
    p.add_argument("--nice", type=int, default=-10,
                   help="niceness for the harness and everything it starts (inherited), so that other work on the "
                        "machine disturbs the measurements less; negative values need root (ignored otherwise)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each measurement wait up to this many seconds for other processes to go idle")
    a = p.parse_args(argv)
    if a.quick:
        explicit = set(argv if argv is not None else sys.argv[1:])
        if "--items" not in explicit:
            a.items = 20_000
        if "--users" not in explicit:
            a.users = 10_000
        if "--events" not in explicit:
            a.events = 200_000
    a.duration = a.duration or (5.0 if a.quick else 15.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 3.0)
    a.profile_seconds = a.profile_seconds or (5.0 if a.quick else 10.0)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    command = bench.command_line("run.py", argv)
    client_kind = a.client if a.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if client_kind == "wrk" and not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk, or use --client python", file=sys.stderr)
        return 2
    bench.QUIET["limit_s"] = a.quiet_wait
    if a.nice:
        try:
            os.nice(a.nice - os.nice(0))
        except OSError:
            bench.log(f"cannot set niceness {a.nice} (not root?): running at {os.nice(0)}")
    if not a.no_profile and not pyspy_available():
        bench.log("py-spy not found (pip install py-spy into the venv): server and loader profiles are skipped")
    bench.OUT.mkdir(parents=True, exist_ok=True)
    if a.rev:
        bench.use_revision(a.rev)
    run = scenarios.run_scale(a, client_kind, command)
    full = report.full_report(run)
    print(full)
    path = bench.OUT / f"report-{report.scale_key(a).replace(' ', '-')}.md"
    path.write_text(full, encoding="utf-8")
    bench.log(f"full report: {path}")
    if not a.no_doc:
        bench.replace_scale_section(report.section(run), report.scale_key(a), report.INTRO)
        bench.log(f"updated {bench.DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
