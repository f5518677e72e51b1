"""Start-up after a clean stop: `Engine.open` with the catalogue snapshot the stop saved, against the
same open rebuilding the catalogue from the store (the snapshot file removed), each in a fresh process.
The world is benchmarks/hardening.py's (captions of ten common words, 30 topics), learning on.

    .venv/bin/python benchmarks/startup.py                   # 1M items (~5 min, mostly building the world)
    .venv/bin/python benchmarks/startup.py --items 100000

Prints the times; writes nothing to docs/ (docs/benchmarks.md quotes the 1M run).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import harness as bench
from hardening import Clock, build

from foryou import snapshot

OPEN = """
import sys, time
from foryou.config import load_settings
from foryou.engine import Engine
settings = load_settings(env={}, overrides={"server.data": sys.argv[1]})
started = time.perf_counter()
engine = Engine.open(settings)
print(f"{time.perf_counter() - started:.2f} {len(engine.live.catalog)}")
engine.store.close()
"""


def timed_open(data: str) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", OPEN, data], capture_output=True, text=True, check=True)
    seconds, items = out.stdout.split()
    return float(seconds), int(items)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=200)
    a = p.parse_args()
    data = bench.OUT / f"startup-{a.items}"
    if data.exists():
        shutil.rmtree(data)
    bench.OUT.mkdir(exist_ok=True)
    build(str(data), a.items, a.users, Clock(), learning=True).close()  # a clean stop: the snapshot is saved
    with_snapshot, items = timed_open(str(data))
    (data / snapshot.FILE).unlink()
    rebuilt, _ = timed_open(str(data))
    m = bench.machine()
    print(f"{items:,} items on {m['cpu']} at {m['commit']}: Engine.open {with_snapshot:.1f} s from the snapshot, "
          f"{rebuilt:.1f} s rebuilding the catalogue ({rebuilt / with_snapshot:.1f}x)")


if __name__ == "__main__":
    main()
