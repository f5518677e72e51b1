"""What an erasure costs on a large region: `SQLiteStore.erase_user` of one user (36 events) on a
region of N events from many users, split into its parts: the deletes (the floor: what any erasure
needs) and the rebuild of the two indexes keyed by user that leaves no stale copy of the id.

    .venv/bin/python benchmarks/erasure.py [--events 1000000] [--no-doc]

Writes the `## Erasure` section of docs/benchmarks.md (between `<!-- erasure -->` markers).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import harness as bench

from foryou.store.sqlite import SQLiteStore
from foryou.types import EventRecord, UserRecord

BEGIN, END = "<!-- erasure -->\n", "<!-- /erasure -->\n"
USERS = 100_000
VICTIM_EVENTS = 36


def fill(store: SQLiteStore, events: int, seed: int) -> None:
    rng = random.Random(seed)
    users = [f"u{k}" for k in range(USERS)] + ["victim"]
    store.append_events("us", [], [UserRecord(u, "us") for u in users])
    every = max(events // VICTIM_EVENTS, 1)
    batch: list[EventRecord] = []
    for k in range(events):
        user = "victim" if k % every == 0 and k // every < VICTIM_EVENTS else users[rng.randrange(USERS)]
        batch.append(EventRecord(user, f"i{rng.randrange(20_000)}", "view", 5.0, 1.7e9 + k, f"e{k}"))
        if len(batch) == 10_000:
            store.append_events("us", batch, [])
            batch = []
    store.append_events("us", batch, [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="events in the region (default 1,000,000)")
    p.add_argument("--no-doc", action="store_true", help="print the section, leave docs/benchmarks.md alone")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(tmp, ["us"])
        fill(store, a.events, seed=0)
        store.merge_log("us")  # the log's look-ups as the upkeep thread leaves them
        conn, index = store._region["us"], store._lookups["us"].conn
        started = time.perf_counter()
        store.erase_user("us", "victim", [f"e{k}" for k in range(VICTIM_EVENTS)])
        whole = time.perf_counter() - started
        started = time.perf_counter()
        index.execute("REINDEX event_users_user")
        conn.execute("REINDEX served_user")
        rebuild = time.perf_counter() - started
        store.close()
    deletes = max(whole - rebuild, 0.0)
    md = [BEGIN, "## Erasure\n\n",
          f"What erasing a user costs: `SQLiteStore.erase_user` of one user ({VICTIM_EVENTS} events) on a region of "
          f"{a.events:,} events from {USERS:,} users. The rebuild of the two user indexes is timed again alone on "
          "the same store; the rest is the deletes and the WAL checkpoint, the floor any erasure pays.\n\n",
          bench.provenance(bench.command_line("erasure.py"), bench.machine()), "\n\n",
          "| Part | seconds | per million events in the region |\n|---|---:|---:|\n",
          f"| whole erasure | {whole:.2f} | {whole / a.events * 1e6:.2f} |\n",
          f"| index rebuild alone | {rebuild:.2f} | {rebuild / a.events * 1e6:.2f} |\n",
          f"| the rest (deletes, checkpoint) | {deletes:.2f} | {deletes / a.events * 1e6:.2f} |\n",
          "\n" + END]
    block = "".join(md)
    print(block)
    if not a.no_doc:
        bench.replace_section(BEGIN, END, block)


if __name__ == "__main__":
    main()
