"""A region log's two look-ups, by idempotency key and by user, kept in a database file of their own
(`region-<code>-index.db`) and filled behind the log.

Why: a B-tree keyed by a hash or by a user id takes about one random page per appended event. At 5M
events the two of them wrote 9 KB of WAL per event and cost 24 µs of each event's append; the log
itself, appended in seq order, writes 70 bytes and costs 1.8 µs (`benchmarks/append_cost.py`, SQLite
3.40; at 1M events: 25.4 against 2.4 µs, 8.2 KB against 59 bytes). So an append writes only the log
(with each event's key hash and acceptance time in its row), and `merge` copies the log's tail into
the look-ups in large sorted runs, from the store's upkeep thread: its SQL runs without the GIL, and a
write transaction on this file never holds the log's writers. A look-up reads the merged part and the
tail past it (`Tail`, rows past `through`)."""

from __future__ import annotations

import bisect
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS event_keys (h INTEGER PRIMARY KEY, accepted REAL NOT NULL);
CREATE TABLE IF NOT EXISTS event_users (seq INTEGER PRIMARY KEY, user TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS event_users_user ON event_users (user, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
MERGE_AT = 100_000  # tail rows that start a merge; bigger runs touch each index page fewer times
MERGE_AFTER_S = 10.0  # ... or a tail this old, so that a quiet log is not left unmerged
RUN = 200_000  # rows one merge takes at most (a merge run at 5M events: ~1 s, all off the GIL)


def connect(path: Path, log: Path) -> sqlite3.Connection:
    """A connection to the look-ups' file, with the region's log attached (as `log`) for reading."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA secure_delete=ON")  # an erased user's rows are overwritten, not left in free pages
    conn.executescript(SCHEMA)
    conn.execute("ATTACH DATABASE ? AS log", (str(log),))
    return conn


def through(conn: sqlite3.Connection) -> int:
    """The seq up to which the log is merged."""
    row = conn.execute("SELECT value FROM meta WHERE key='through'").fetchone()
    return 0 if row is None else int(row[0])


def merge(conn: sqlite3.Connection, limit: int | None = RUN) -> int:
    """Copy up to `limit` of the log's rows past `through` into the look-ups, in one transaction;
    returns how many. The caller holds the region's lock: an erasure must not run between this
    reading the log and committing (it would leave the erased user's rows in the index). Deferred
    BEGIN: the write lock is taken on this file only, never on the log's."""
    conn.execute("BEGIN")
    try:
        start = through(conn)
        newest = conn.execute("SELECT coalesce(max(seq), 0) FROM log.events").fetchone()[0]
        end = newest if limit is None else min(newest, start + limit)
        if end <= start:
            conn.execute("ROLLBACK")
            return 0
        now = time.time()
        conn.execute("INSERT OR IGNORE INTO event_keys SELECT k, coalesce(accepted, ?) FROM log.events "
                     "WHERE seq>? AND seq<=? AND k IS NOT NULL ORDER BY k", (now, start, end))
        conn.execute("INSERT OR IGNORE INTO event_users SELECT seq, user FROM log.events WHERE seq>? AND seq<=?",
                     (start, end))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('through', ?)", (str(end),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return int(end - start)


class Tail:
    """The log's rows past `through`, as this handle last read them: what the look-ups do not hold yet."""

    def __init__(self) -> None:
        self.seen = 0  # the highest seq read
        self.rows: deque[tuple[int, str, int | None]] = deque()  # (seq, user, key), in seq order
        self.keys: dict[int, tuple[int, float]] = {}  # key -> (seq, accepted)
        self.users: dict[str, list[int]] = {}

    def read(self, log: sqlite3.Connection, merged: int) -> None:
        """Drop rows merged (seq <= `merged`), then read the log's new rows."""
        self._drop(merged)
        q = "SELECT seq, user, k, coalesce(accepted, 0) FROM events WHERE seq>?"
        for seq, user, key, accepted in log.execute(q, (max(self.seen, merged),)):
            self.add(seq, user, key, accepted)

    def _drop(self, merged: int) -> None:
        """Forget the rows through `merged`. A merge takes most of the tail at once (100,000 rows or
        more), and the request whose read finds it pays for this: the rows left are kept, not those
        merged dropped one by one. A key or user forgotten meanwhile (an erasure) stays forgotten."""
        rows = self.rows
        if not rows or rows[0][0] > merged:
            return
        if rows[-1][0] <= merged:
            rows.clear()
            self.keys.clear()
            self.users.clear()
            return
        # One copy and a bisection: walking a deque by index from its end costs a walk of its blocks
        # per step (quadratic: 14% of a server's event loop while ingesting at 1M items, py-spy).
        whole = list(rows)
        kept = whole[bisect.bisect_right(whole, merged, key=itemgetter(0)):]
        keys, users = self.keys, self.users
        self.rows = deque(kept)
        self.keys = {key: keys[key] for _, _, key in kept if key is not None and key in keys}
        left: dict[str, list[int]] = {}
        for seq, user, _ in kept:
            if user in users:
                left.setdefault(user, []).append(seq)
        self.users = left

    def add(self, seq: int, user: str, key: int | None, accepted: float) -> None:
        self.rows.append((seq, user, key))
        if key is not None:
            self.keys[key] = (seq, accepted)
        self.users.setdefault(user, []).append(seq)
        self.seen = max(self.seen, seq)

    def add_many(self, first: int, users: Sequence[str], keys: Sequence[int | None], accepted: float) -> None:
        """`add` for the rows of one append: seqs `first`, `first + 1`, ..."""
        seqs = range(first, first + len(users))
        self.rows.extend(zip(seqs, users, keys, strict=True))
        self.keys.update({key: (seq, accepted) for key, seq in zip(keys, seqs, strict=True) if key is not None})
        by_user = self.users
        for user, seq in zip(users, seqs, strict=True):
            by_user.setdefault(user, []).append(seq)
        if users:
            self.seen = max(self.seen, first + len(users) - 1)

    def forget(self, user: str, keys: Iterable[int]) -> int:
        """An erased user's rows (their log rows are gone; the seqs would point at nothing); returns how
        many of `keys` were held."""
        self.users.pop(user, None)
        return sum(self.keys.pop(key, None) is not None for key in keys)

    def forget_before(self, accepted: float) -> int:
        """Keys accepted before `accepted` (retention); returns how many. Read again after a restart,
        until merged: a key is remembered at least as long as asked, never less."""
        old = [k for k, (_, at) in self.keys.items() if at < accepted]
        for key in old:
            del self.keys[key]
        return len(old)


class Merger:
    """Decides when a region's tail is merged: at MERGE_AT rows, or once rows have waited MERGE_AFTER_S."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.waiting_since: float | None = None

    def due(self) -> bool:
        behind = self.conn.execute("SELECT coalesce(max(seq), 0) FROM log.events").fetchone()[0] - through(self.conn)
        if behind <= 0:
            self.waiting_since = None
            return False
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
        return bool(behind >= MERGE_AT or now - self.waiting_since >= MERGE_AFTER_S)

    def run(self, limit: int | None = RUN) -> int:
        merged = merge(self.conn, limit)
        self.waiting_since = None
        return merged


class Lookups:
    """One region's look-ups as a store handle sees them: the merged file, the tail past it, and (for
    the one handle per process that merges) the merger, with the lock that keeps an erasure and a
    merge apart."""

    def __init__(self, path: Path, log_path: Path, log: sqlite3.Connection, merges: bool) -> None:
        self.conn = connect(path, log_path)
        self.log = log  # the handle's own connection to the region's log
        self.tail = Tail()
        self.lock = threading.Lock()
        self.merger = Merger(connect(path, log_path)) if merges else None

    def read(self) -> Tail:
        """The tail, read up to now."""
        self.tail.read(self.log, through(self.conn))
        return self.tail

    def known(self, keys: Sequence[int]) -> set[int]:
        """Those of `keys` (idempotency key hashes) the log holds."""
        tail = self.read()  # first: a merge meanwhile moves rows from the tail to the look-up
        found = tail.keys.keys() & keys
        for chunk in _chunks(keys):
            q = f"SELECT h FROM event_keys WHERE h IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.conn.execute(q, chunk))
        return found

    def user_seqs(self, user: str) -> list[int]:
        """The seqs of the user's events in the log: the look-up's and the tail's."""
        tail = self.read()
        seqs = {r[0] for r in self.conn.execute("SELECT seq FROM event_users WHERE user=?", (user,))}
        seqs.update(tail.users.get(user, ()))
        return sorted(seqs)

    def merge(self, limit: int | None = RUN) -> None:
        """Merge the tail now (`limit` None: all of it), or, with a limit, when it is due."""
        if self.merger is not None and (limit is None or self.merger.due()):
            with self.lock:
                self.merger.run(limit)

    def adopt_old(self) -> None:
        """Versions before this module kept the look-ups in the log's file: move the keys over, and
        drop the by-user index (its rows are made again by the first merge, from the log)."""
        if self.log.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='event_keys'").fetchone():
            with _write(self.conn):
                self.conn.execute("INSERT OR IGNORE INTO event_keys SELECT h, accepted FROM log.event_keys")
            self.log.execute("DROP TABLE event_keys")
        self.log.execute("DROP INDEX IF EXISTS events_user")

    def drop_seqs(self, seqs: Sequence[int]) -> None:
        """Look-up rows of log rows deleted (retention; the tail's are dropped as it is merged)."""
        with _write(self.conn):
            for chunk in _chunks(seqs):
                self.conn.execute(f"DELETE FROM event_users WHERE seq IN ({','.join('?' * len(chunk))})", chunk)

    def forget_before(self, accepted: float) -> int:
        """Idempotency keys accepted before `accepted`; returns how many."""
        with _write(self.conn):
            removed = int(self.conn.execute("DELETE FROM event_keys WHERE accepted<?", (accepted,)).rowcount)
        return removed + self.tail.forget_before(accepted)

    def erase(self, user: str, keys: Sequence[int]) -> int:
        """An erased user's look-up rows and keys (the caller holds `lock`); returns the keys deleted."""
        with _write(self.conn):
            self.conn.execute("DELETE FROM event_users WHERE user=?", (user,))
            removed = sum(self.conn.execute("DELETE FROM event_keys WHERE h=?", (k,)).rowcount for k in keys)
        return removed + self.tail.forget(user, keys)

    def close(self) -> None:
        if self.merger is not None:  # a clean stop leaves no tail to read at the next start
            self.merge(None)
            self.merger.conn.close()
        self.conn.close()


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction on the look-ups' file. Deferred: IMMEDIATE would also lock the log attached."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), 900):
        yield values[start:start + 900]
