#!/usr/bin/env python3
"""The soak (issue 13's target): `foryou serve` on a loaded data directory for `--minutes`, with feeds
over HTTP at `--conns` connections (closed loop) while `benchmarks/ingester.py` offers `--rate` events/s
(open loop), minute by minute: feed throughput and p50/p99, resident memory of the server and its trainer,
the log follower's backlog. The target: each minute's throughput and p99 within 10% of the first
minute's, memory flat after the warm-up minute, every offered event accepted.

    .venv/bin/python benchmarks/run.py --quick --no-doc     # makes and loads the 20k data directory
    .venv/bin/python benchmarks/soak.py --minutes 30        # then the soak on a copy of it (~31 min)

The data directory is copied first (the soak's events do not change the one run.py reuses). Writes the
`## Soak` section of docs/benchmarks.md (between `<!-- soak -->` markers) unless `--no-doc`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import harness as bench
import orjson
from scenarios import lag_p99, model_lag


def children_rss_mb(pid: int) -> float:
    """Resident memory of `pid`'s child processes (the trainer), MiB."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(bench.rss_mb(int(k))[0] for k in kids)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--conns", type=int, default=4, help="feed connections")
    p.add_argument("--rate", type=float, default=5_000, help="events/s offered (half the mixed run's 10,000)")
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args()
    loaded = bench.OUT / f"data-{a.items}i-{a.users}u-{a.events}e-s7"
    if not (loaded / "LOADED").exists():
        raise SystemExit(f"{loaded} is not loaded: run benchmarks/run.py with the same scale first")
    data = bench.OUT / "soak-data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(loaded, data)
    client = bench.Client("wrk" if a.client == "wrk" or (a.client == "auto" and shutil.which("wrk")) else "python")
    key = bench.make_key(data)
    port = bench.free_port()
    srv = bench.Server("foryou-soak", bench.serve_cmd(data, port), port, "/healthz")
    # Its trainer loads beside the first requests (~10 s at 1M items): events it has not started
    # to read yet would be counted as model lag.
    trainer_s = srv.wait_for("ForYou trainer:")
    bench.log(f"serve ready in {srv.ready_s:.1f} s, its trainer {trainer_s:.1f} s later; soak: {a.minutes} min, "
              f"feeds at {a.conns} conns, {a.rate:,.0f} events/s offered")
    seconds = 60 * a.minutes
    ing = subprocess.Popen([bench.PY, str(bench.BENCH / "ingester.py"), "--port", str(port), "--rate", str(a.rate),
                            "--batch", "1000", "--seconds", str(seconds + 5), "--users", str(a.users),
                            "--items", str(a.items), "--connections", "4", *(["--key", key] if key else [])],
                           cwd=bench.ROOT, stdout=subprocess.PIPE, text=True)
    minutes: list[dict[str, Any]] = []
    try:
        time.sleep(2)
        for minute in range(1, a.minutes + 1):
            before = model_lag(port, key)
            r = client.run(f"minute {minute}", port, ("feed", a.users, 10), a.conns, 60.0, srv.pid, quiet=False,
                           key=key)
            rss, _ = bench.rss_mb(srv.pid)
            after = model_lag(port, key)
            row = {"minute": minute, "rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms, "errors": r.errors,
                   "server_mb": rss, "trainer_mb": children_rss_mb(srv.pid), "behind": after["behind"],
                   "lag_p99": lag_p99(before["buckets"], after["buckets"])}
            minutes.append(row)
            bench.log(f"minute {minute}: {r.rps:,.0f} feeds/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, server "
                      f"{rss:,.0f} MiB, trainer {row['trainer_mb']:,.0f} MiB, follower {row['behind']:.0f} behind, "
                      f"99% of batches learned within {row['lag_p99']:g} s")
        out, _ = ing.communicate(timeout=120)
    finally:
        if ing.poll() is None:
            ing.kill()
        srv.stop()
    ingest = next((orjson.loads(line[11:]) for line in out.splitlines() if line.startswith("INGESTJSON ")), {})
    block = render(a, minutes, ingest, client.kind)
    print(block)
    if not a.no_doc:
        bench.replace_section("<!-- soak -->", "<!-- /soak -->", block)
        bench.log(f"updated {bench.DOC}")


def render(a: argparse.Namespace, rows: list[dict[str, Any]], ingest: dict[str, Any], client: str) -> str:
    first, later = rows[0], rows[1:]
    worst_rps = min((r["rps"] for r in later), default=first["rps"])
    worst_p99 = max((r["p99"] for r in later), default=first["p99"])
    warm = rows[min(1, len(rows) - 1)]
    warm_mb = warm["server_mb"] + warm["trainer_mb"]
    mem_growth = rows[-1]["server_mb"] + rows[-1]["trainer_mb"] - warm_mb
    worst_lag = max(r["lag_p99"] for r in rows)
    offered = a.rate * (60 * a.minutes + 5)  # what the ingester was asked to post, on its schedule
    verdict = [
        ("feed throughput, every minute within 10% of the first", f"lowest {worst_rps:,.0f} of {first['rps']:,.0f} "
         f"req/s ({worst_rps / first['rps'] - 1:+.1%})", worst_rps >= 0.9 * first["rps"]),
        ("feed p99, every minute within 10% of the first", f"highest {worst_p99:.1f} of {first['p99']:.1f} ms "
         f"({worst_p99 / first['p99'] - 1:+.1%})", worst_p99 <= 1.1 * first["p99"]),
        ("memory flat after the first minute (server + trainer)", f"{mem_growth:+,.0f} MiB from minute "
         f"{warm['minute']} to {rows[-1]['minute']}", abs(mem_growth) <= 0.1 * warm_mb),
        ("model lag p99 <= 1 s every minute (`foryou_model_update_lag_seconds`, by bucket)",
         f"highest: 99% within {worst_lag:g} s", worst_lag <= 1.0),
        ("every offered event accepted", f"{ingest.get('events', 0):,} of {offered:,.0f} offered, "
         f"{ingest.get('n_failures', '?')} failed batches", ingest.get("events", 0) >= 0.99 * offered
         and not ingest.get("n_failures")),
    ]
    m = bench.machine()
    lines = [
        "<!-- soak -->",
        "## Soak",
        "",
        bench.provenance(bench.command_line("soak.py"), m) + f" Load: {client} client for feeds; "
        f"`benchmarks/ingester.py` offering {a.rate:,.0f} events/s in batches of 1,000.",
        "",
        "| Target | Measured | |",
        "|---|---|---|",
        *(f"| {what} | {got} | {'met' if ok else '**not met**'} |" for what, got, ok in verdict),
        "",
        f"Events: {ingest.get('events_per_s', 0):,.0f}/s accepted on average (batch p50 "
        f"{ingest.get('p50_ms', float('nan')):,.0f} ms, p99 {ingest.get('p99_ms', float('nan')):,.0f} ms).",
        "",
        "| Minute | Feeds/s | p50 ms | p99 ms | Errors | Server MiB | Trainer MiB | Follower behind | Lag p99 <= s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['minute']} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | "
          f"{r['server_mb']:,.0f} | {r['trainer_mb']:,.0f} | {r['behind']:,.0f} | {r['lag_p99']:g} |" for r in rows
          if r["minute"] in (1, 2, len(rows)) or r["minute"] % 5 == 0),  # every minute is in the log
        "<!-- /soak -->",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
