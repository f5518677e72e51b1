"""The embedded store's files: the schema of the shared catalogue and of each region, the columns and
indexes added since a table was first released, and how a connection and a write transaction are made."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from foryou.store.wal import KEEP_BYTES
from foryou.types import STAT_NAMES

T = TypeVar("T")

CATALOG_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, creator TEXT NOT NULL, duration_s REAL NOT NULL,
    created_at REAL NOT NULL, caption TEXT, tags TEXT NOT NULL, topic TEXT, sound TEXT, lang TEXT,
    regions TEXT, mature INTEGER NOT NULL, down INTEGER NOT NULL, ver INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS item_stats (id TEXT PRIMARY KEY, {", ".join(f"{n} REAL NOT NULL" for n in STAT_NAMES)},
    early_swipes REAL NOT NULL, pool REAL NOT NULL DEFAULT 0, first_served REAL NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trend (region TEXT, id TEXT, score REAL NOT NULL, PRIMARY KEY (region, id))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coeng_rows (id TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (region TEXT PRIMARY KEY, events INTEGER NOT NULL,
    served INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (subject TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vocab (kind TEXT, code INTEGER, name TEXT NOT NULL, PRIMARY KEY (kind, code)) WITHOUT ROWID;
"""

# user_state keeps its rowid: its rows are kilobytes, and a WITHOUT ROWID table stores rows inside the
# key's B-tree, which made batch look-ups about 5x slower.
REGION_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, interests TEXT NOT NULL, lang TEXT,
    age_band TEXT, created_at REAL NOT NULL, personalized INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_controls (user TEXT PRIMARY KEY, controls BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, user TEXT NOT NULL, item TEXT NOT NULL,
    type INTEGER NOT NULL, watch_s REAL NOT NULL, ts REAL NOT NULL, id TEXT, request_id TEXT);
CREATE TABLE IF NOT EXISTS served (seq INTEGER PRIMARY KEY, user TEXT NOT NULL, item TEXT NOT NULL,
    request_id TEXT NOT NULL, ts REAL NOT NULL, variant TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS served_user ON served (user);
CREATE TABLE IF NOT EXISTS user_state (user TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The trainer's tables, in files of their own: a region's users' model rows (`region-<code>-model.db`)
# and the shared rest (`model.db`). Its transactions on the log's file made the server's appends wait on
# SQLite's busy handler (8-12% of the server's time while ingesting), and on the catalogue's file it
# waited for the server's aggregates (10% of the trainer's time at 1M items).
REGION_MODEL_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_rows (tbl TEXT, key TEXT, row BLOB NOT NULL, ver INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, key)) WITHOUT ROWID;
"""
MODEL_SCHEMA = REGION_MODEL_SCHEMA + """
CREATE TABLE IF NOT EXISTS model_blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS model_deltas (version INTEGER PRIMARY KEY, blob BLOB NOT NULL);
"""

# Columns added after a table was first released: (table, column, declaration).
_ADDED_COLUMNS = (("item_stats", "pool", "REAL NOT NULL DEFAULT 0"),
                  ("item_stats", "first_served", "REAL NOT NULL DEFAULT 0"),
                  ("users", "personalized", "INTEGER NOT NULL DEFAULT 1"),
                  ("items", "ver", "INTEGER NOT NULL DEFAULT 0"),
                  ("served", "variant", "TEXT NOT NULL DEFAULT ''"),
                  ("model_rows", "ver", "INTEGER NOT NULL DEFAULT 0"),
                  ("events", "k", "INTEGER"),  # the idempotency key's hash (log_index.py)
                  ("events", "accepted", "REAL"),
                  ("users", "v", "INTEGER NOT NULL DEFAULT 0"),  # the user's version (`Profiles`)
                  ("users", "last_event", "INTEGER NOT NULL DEFAULT 0"))
# Indexes on added columns: (table, statement), made once the column is there.
_ADDED_INDEXES = (("items", "CREATE INDEX IF NOT EXISTS items_ver ON items (ver)"),
                  ("model_rows", "CREATE INDEX IF NOT EXISTS model_rows_ver ON model_rows (tbl, ver)"))


def connect(path: Path, schema: str, cache_mib: int = 64) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # The WAL is folded back into the database by a thread of its own (`_WalFolder`), not by whichever
    # commit finds it full: that commit would hold the server for the whole copy (40+ ms). This bound
    # (~1 GB) only matters if the thread has stopped.
    conn.execute("PRAGMA wal_autocheckpoint=250000")
    conn.execute(f"PRAGMA journal_size_limit={KEEP_BYTES}")
    conn.executescript(schema)
    for table, column, kind in _ADDED_COLUMNS:  # data directories made by earlier versions
        found = conn.execute(f"SELECT 1 FROM sqlite_master WHERE type='table' AND name='{table}'").fetchone()
        if found and column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    for table, statement in _ADDED_INDEXES:
        if conn.execute(f"SELECT 1 FROM sqlite_master WHERE type='table' AND name='{table}'").fetchone():
            conn.execute(statement)
    return conn


@contextmanager
def tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def next_seq(c: sqlite3.Connection, table: str, count: int) -> int:
    """The first of `count` new seqs of `table` ("events" or "served"), in the caller's transaction.
    Seqs are never handed out twice: an erasure may delete the newest rows, so the highest seq ever
    given is kept in meta (a reader that has taken the log up to a seq would skip a reused one)."""
    newest = c.execute(f"SELECT coalesce(max(seq), 0) FROM {table}").fetchone()[0]
    row = c.execute("SELECT value FROM meta WHERE key=?", (f"{table}_seq",)).fetchone()
    first = max(newest, int(row[0]) if row else 0) + 1
    if count:
        c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"{table}_seq", str(first + count - 1)))
    return int(first)


def chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    for start in range(0, len(values), 900):
        yield values[start:start + 900]


def marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def move_model_tables(model: sqlite3.Connection, old_path: Path) -> None:
    """Move the model tables that earlier versions kept in another file (`old_path`: the region's log,
    or the catalogue) into `model`'s file: rows already there win (a crash between the copy and the
    drop copies again)."""
    with contextlib.closing(sqlite3.connect(old_path, isolation_level=None)) as old:
        found = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables = [t for t in ("model_rows", "model_blobs", "model_deltas") if t in found]
        if not tables:
            return
        has_ver = "ver" in {r[1] for r in old.execute("PRAGMA table_info(model_rows)")}
    model.execute("ATTACH DATABASE ? AS old", (str(old_path),))
    try:
        with tx(model) as c:
            for table in tables:
                what = f"tbl, key, row, {'ver' if has_ver else '0'}" if table == "model_rows" else "*"
                c.execute(f"INSERT OR IGNORE INTO main.{table} SELECT {what} FROM old.{table}")
    finally:
        model.execute("DETACH DATABASE old")
    with contextlib.closing(sqlite3.connect(old_path, isolation_level=None)) as old:
        old.execute("PRAGMA secure_delete=ON")  # users' rows: overwritten, not left in free pages
        for table in tables:
            old.execute(f"DROP TABLE IF EXISTS {table}")
