"""SQLite's write-ahead logs folded back into their databases by a thread of the store's own, not by
whichever commit finds one full: that commit would hold the server for the whole copy (40+ ms)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

FOLD_BYTES = 16 << 20  # a WAL past this is folded into its database, beside the request path
KEEP_BYTES = 64 << 20  # ... and cut back to this once folded
EVERY_S = 0.5
log = logging.getLogger("foryou.store")


class WalFolder(threading.Thread):
    """Checkpoints each database's WAL from a connection of its own, in its own thread, once the WAL
    is past FOLD_BYTES. PASSIVE: it never waits for, nor blocks, the server's readers and writers;
    SQLite's calls run without the GIL, so the copy costs the server no time on its event loop."""

    def __init__(self, paths: Sequence[Path], chores: Sequence[Callable[[], None]] = ()) -> None:
        super().__init__(name="foryou-wal", daemon=True)
        self.paths = list(paths)
        self.chores = list(chores)  # the store's other upkeep, run before each round of folds
        self.stop = threading.Event()
        self.folds = 0
        # Held around each fold, and by an erasure around its own truncating checkpoint: a fold in
        # progress would make that checkpoint fail (busy) and leave the erased rows' old pages in the WAL.
        self.locks = {path: threading.Lock() for path in self.paths}

    def run(self) -> None:
        conns: dict[Path, sqlite3.Connection] = {}
        try:
            while not self.stop.wait(EVERY_S):
                for chore in self.chores:
                    try:
                        chore()
                    except sqlite3.Error:  # retried on the next round
                        log.exception("store upkeep failed; retrying")
                for path in self.paths:
                    wal = path.with_name(path.name + "-wal")
                    with contextlib.suppress(OSError, sqlite3.Error):
                        if wal.stat().st_size < FOLD_BYTES:
                            continue
                        conn = conns.get(path) or conns.setdefault(path, sqlite3.connect(path, isolation_level=None))
                        with self.locks[path]:
                            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        self.folds += 1
        finally:
            for conn in conns.values():
                conn.close()
