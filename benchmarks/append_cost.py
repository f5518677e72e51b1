"""What an append of 1,000 events costs SQLite with and without the two look-ups keyed by hash and by
user (the reason for foryou/store/log_index.py): a log of `--events` rows is filled, then 100 batches
are appended, timed, and the WAL written per event is read from the file's size. Prints a table;
writes nothing outside a temporary directory."""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path


def measure(folder: Path, events: int, lookups: bool) -> tuple[float, float]:
    """(microseconds per appended event, WAL bytes per appended event)."""
    path = folder / f"log-{lookups}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=250000", "cache_size=-65536"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, user TEXT, item TEXT, type INT, w REAL, ts REAL, "
                  "id TEXT, rid TEXT)")
    if lookups:
        conn.execute("CREATE INDEX events_user ON events (user)")
        conn.execute("CREATE TABLE keys (h INTEGER PRIMARY KEY, accepted REAL)")
    rng, seq = random.Random(0), 0

    def append(n: int) -> None:
        nonlocal seq
        rows = [(seq + i, f"u{rng.randrange(100_000)}", f"i{rng.randrange(1_000_000)}", 0, 3.5, 1.0, f"e{seq + i}",
                 None) for i in range(n)]
        seq += n
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
        if lookups:
            conn.executemany("INSERT INTO keys VALUES (?,?)", [(rng.getrandbits(63), 1.0) for _ in rows])
        conn.execute("COMMIT")

    for _ in range(events // 100_000):
        append(100_000)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    took = 0.0
    for _ in range(100):
        started = time.perf_counter()
        append(1000)
        took += time.perf_counter() - started
    wal = (folder / f"log-{lookups}.db-wal").stat().st_size
    conn.close()
    return took / 100_000 * 1e6, wal / 100_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=5_000_000, help="rows in the log before timing (default 5M)")
    a = p.parse_args()
    print(f"SQLite {sqlite3.sqlite_version}, a log of {a.events:,} events, 100 appends of 1,000\n")
    print("| Log | µs per event | WAL bytes per event |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for lookups in (False, True):
            us, wal = measure(Path(tmp), a.events, lookups)
            name = "with B-trees by hash and by user" if lookups else "the log alone"
            print(f"| {name} | {us:.1f} | {wal:,.0f} |")


if __name__ == "__main__":
    main()
