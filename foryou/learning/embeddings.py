"""Collision-free embedding tables, the sparse core of the learned models (as in Monolith): a dict from
id to row over growable arrays, so two ids never share a row as they would under the hashing trick.

An id gets a row only after `min_count` occurrences (rare ids would cost memory and learn nothing), and
rows idle for longer than `ttl_s` are freed and reused. Rows train with Adagrad, whose per-coordinate
step size suits sparse features: a row touched rarely keeps a large step. Changed rows are tracked so
that a checkpoint writes only those.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat

import numpy as np

from foryou.learning.publication import Part

_GROWTH = 1.5
_EPS = 1e-8
_MOVED_MAX = 65_536  # ids a table lists as moved before its followers start afresh


class EmbeddingTable:
    def __init__(self, dim: int, min_count: int = 1, ttl_s: float = 0.0, lr: float = 0.05,
                 init_scale: float = 0.01, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = dim
        self.min_count = min_count
        self.ttl_s = ttl_s  # 0: rows never expire
        self.lr = lr
        self.init_scale = init_scale
        self.seed = seed
        self.index: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.free: list[int] = []
        self.pending: dict[str, tuple[int, float]] = {}  # ids not yet admitted: (occurrences, last seen)
        self.dirty: set[int] = set()
        self.removed: set[str] = set()  # expired since the last checkpoint
        self._rng = np.random.default_rng(seed)
        self.vectors = np.zeros((64, dim), np.float32)
        self.accum = np.zeros((64, dim), np.float32)  # Adagrad's sums of squared gradients
        self.seen = np.zeros(64, np.float64)  # when each row was last trained
        self.ver = np.zeros(64, np.int64)  # the model version that last published each row (item side)
        # Ids that gained or lost a row since `moved_base` (`RowsByCode` follows them); a wholesale
        # change (a restore, a clear) or a long list starts it afresh past a gap.
        self.moved: list[str] = []
        self.moved_base = 0

    def _alloc(self, capacity: int) -> None:
        n = len(self.vectors)
        vectors = np.zeros((capacity, self.dim), np.float32)
        accum = np.zeros((capacity, self.dim), np.float32)
        seen = np.zeros(capacity, np.float64)
        ver = np.zeros(capacity, np.int64)
        vectors[:n], accum[:n], seen[:n], ver[:n] = self.vectors, self.accum, self.seen, self.ver
        self.vectors, self.accum, self.seen, self.ver = vectors, accum, seen, ver

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the dict of ids comes on top: about 100 bytes an id)."""
        return int(self.vectors.nbytes + self.accum.nbytes + self.seen.nbytes + self.ver.nbytes)

    def _new_row(self, key: str, now: float) -> int:
        if self.free:
            row = self.free.pop()
            self.ids[row] = key
        else:
            row = len(self.ids)
            if row >= len(self.vectors):
                self._alloc(int(len(self.vectors) * _GROWTH) + 1)
            self.ids.append(key)
        self.vectors[row] = self._rng.normal(0.0, self.init_scale, self.dim)
        self.accum[row] = 0.0
        self.seen[row] = now
        self.ver[row] = 0
        self.index[key] = row
        self._moved(key)
        self.removed.discard(key)
        self.dirty.add(row)
        return row

    @property
    def generation(self) -> int:
        return self.moved_base + len(self.moved)

    def _moved(self, key: str) -> None:
        self.moved.append(key)
        if len(self.moved) > _MOVED_MAX:
            self._reset()

    def _reset(self) -> None:
        self.moved_base += len(self.moved) + 1
        self.moved = []

    def rows(self, keys: Sequence[str], now: float) -> np.ndarray:
        """Rows of `keys` for training: counts each occurrence towards admission, admits ids that
        reach `min_count`, and marks them seen at `now`. Not (yet) admitted: -1."""
        out = np.empty(len(keys), np.int64)
        index, pending, need = self.index, self.pending, self.min_count
        for n, key in enumerate(keys):
            row = index.get(key)
            if row is None:
                count = pending.get(key, (0, 0.0))[0] + 1
                if count >= need:
                    pending.pop(key, None)
                    row = self._new_row(key, now)
                else:
                    pending[key] = (count, now)
                    row = -1
            out[n] = row
        admitted = out[out >= 0]
        self.seen[admitted] = now
        return out

    def lookup(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of `keys` for serving: no admission, no change. Unknown: -1."""
        return np.fromiter(map(self.index.get, keys, repeat(-1)), np.int64)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of `rows` (a copy); zeros for -1."""
        out = self.vectors[np.maximum(rows, 0)]
        out[rows < 0] = 0.0
        return out

    def update(self, rows: np.ndarray, grads: np.ndarray, squares: np.ndarray | None = None) -> None:
        """One Adagrad step. Gradients of a row that appears several times are summed; rows of -1 (not
        admitted) are skipped. `squares`: when a gradient is itself a sum over several examples, the sum
        of their squares (by default, the square of each gradient)."""
        keep = rows >= 0
        rows, grads = rows[keep], grads[keep]
        squares = grads * grads if squares is None else squares[keep]
        if not len(rows):
            return
        # Sums per row by sorting (np.add.at is several times slower).
        order = np.argsort(rows)
        rows = rows[order]
        grads = grads[order].astype(np.float32, copy=False)
        squares = squares[order].astype(np.float32, copy=False)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        unique = rows[starts]
        total = np.add.reduceat(grads, starts, axis=0)
        # Squares of each example's gradient, not of the sum: a row seen n times in a batch then moves
        # about sqrt(n) times as far as a row seen once, rather than the same distance.
        accum = self.accum[unique] + np.add.reduceat(squares, starts, axis=0)
        self.accum[unique] = accum
        self.vectors[unique] -= self.lr * total / np.sqrt(accum + _EPS)
        self.dirty.update(unique.tolist())

    def expire(self, now: float) -> int:
        """Free the rows idle for longer than `ttl_s`, and forget pending ids as old; returns how many
        rows were freed."""
        if self.ttl_s <= 0:
            return 0
        cutoff = now - self.ttl_s
        n = len(self.ids)
        stale = [key for row in np.flatnonzero(self.seen[:n] < cutoff).tolist() if (key := self.ids[row]) is not None]
        self.pending = {k: v for k, v in self.pending.items() if v[1] >= cutoff}
        return self.remove(stale)

    def remove(self, keys: Iterable[str]) -> int:
        """Free the rows of `keys` (and forget their admission counts); returns how many rows were freed."""
        freed = 0
        for key in keys:
            self.pending.pop(key, None)
            row = self.index.pop(key, None)
            if row is None:
                continue
            self.ids[row] = None
            self.free.append(row)
            self.dirty.discard(row)
            self.removed.add(key)
            self._moved(key)
            freed += 1
        return freed

    # -- persistence: one blob per row (vector, Adagrad state, last seen) --
    def changes(self) -> tuple[list[tuple[str, bytes]], list[str]]:
        """Rows changed and ids removed since the last call, for a checkpoint; clears both."""
        rows = sorted(self.dirty)
        changed = [(key, self.encode(row)) for row in rows if (key := self.ids[row]) is not None]
        removed = sorted(self.removed)
        self.dirty.clear()
        self.removed.clear()
        return changed, removed

    # -- item-side publication: whole arrays (publication.py) --
    def take_part(self, version: int) -> Part:
        """Rows changed and ids removed since the last call, as a delta of `version`; clears both."""
        rows = np.fromiter(sorted(self.dirty), np.int64, len(self.dirty))
        self.ver[rows] = version
        part = Part([self.ids[r] for r in rows.tolist()], self.vectors[rows], self.accum[rows], self.seen[rows],
                    self.ver[rows], sorted(self.removed))
        self.dirty.clear()
        self.removed.clear()
        return part

    def whole(self) -> Part:
        """Every row, for a snapshot."""
        rows = np.fromiter(self.index.values(), np.int64, len(self.index))
        return Part(list(self.index), self.vectors[rows], self.accum[rows], self.seen[rows], self.ver[rows])

    def apply(self, part: Part) -> list[str]:
        """Take in a published part, as published (rows replaced or added, removed ids freed); returns
        the ids whose rows it put."""
        self.remove(part.removed)
        self.removed.difference_update(part.removed)
        n = len(part)
        if not n:
            return []
        if part.vectors.shape[1:] != (self.dim,):
            raise ValueError(f"published rows of width {part.vectors.shape[1:]} for a table of {self.dim}")
        if not self.index:  # an empty table (a start): whole arrays
            if n > len(self.vectors):  # with room to grow: a reallocation copies every row
                self._alloc(n + n // 8)
            self._reset()
            self.ids = list(part.keys)
            self.index = dict(zip(part.keys, range(n), strict=True))
            self.free = []
            rows = np.arange(n)
        else:  # held ids in one pass; rows for new ones without a random start (overwritten below)
            rows = np.fromiter(map(self.index.get, part.keys, repeat(-1)), np.int64, n)
            new = np.flatnonzero(rows < 0).tolist()
            if new:
                rows[new] = self._take_rows([part.keys[j] for j in new])
            self.dirty.difference_update(rows.tolist())
        self.vectors[rows], self.accum[rows] = part.vectors, part.accum
        self.seen[rows], self.ver[rows] = part.seen, part.ver
        return part.keys

    def clear(self) -> None:
        """Forget every row (the arrays stay allocated)."""
        self.index, self.ids, self.free, self.pending = {}, [], [], {}
        self.dirty.clear()
        self.removed.clear()
        self._reset()

    def _take_rows(self, keys: list[str]) -> list[int]:
        """Rows for ids not held (free rows first, then new ones), their contents left to the caller."""
        free = self.free
        reuse = [free.pop() for _ in range(min(len(free), len(keys)))]
        start = len(self.ids)
        fresh = list(range(start, start + len(keys) - len(reuse)))
        if start + len(fresh) > len(self.vectors):
            self._alloc(max(start + len(fresh), int(len(self.vectors) * _GROWTH) + 1))
        self.ids.extend([None] * len(fresh))
        rows = reuse + fresh
        for key, row in zip(keys, rows, strict=True):
            self.ids[row] = key
            self.index[key] = row
            self._moved(key)
        self.removed.difference_update(keys)
        return rows

    def changed_since(self, version: int) -> list[str]:
        """The ids whose rows a version above `version` published."""
        n = len(self.ids)
        return [key for row in np.flatnonzero(self.ver[:n] > version).tolist() if (key := self.ids[row]) is not None]

    def encode(self, row: int) -> bytes:
        return self.vectors[row].tobytes() + self.accum[row].tobytes() + self.seen[row:row + 1].tobytes()

    def restore(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Load rows saved by `changes` into an empty table, as whole arrays (row by row, a million
        item rows took 7 s of a server's start)."""
        if self.index:
            raise ValueError("restore needs an empty table")
        keys: list[str] = []
        blobs: list[bytes] = []
        for key, blob in rows:
            keys.append(key)
            blobs.append(blob)
        size = 2 * self.dim * 4 + 8
        for key, blob in zip(keys, blobs, strict=True):
            if len(blob) != size:
                raise ValueError(f"a saved row of {key!r} has {len(blob)} bytes, expected {size}")
        n = len(keys)
        if n > len(self.vectors):
            self._alloc(n)
        raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(n, size)
        width = self.dim * 4
        self.vectors[:n] = raw[:, :width].copy().view(np.float32)
        self.accum[:n] = raw[:, width:2 * width].copy().view(np.float32)
        self.seen[:n] = raw[:, 2 * width:].copy().view(np.float64)[:, 0]
        self.ver[:n] = 0
        self._reset()
        self.ids = list(keys)
        self.index = dict(zip(keys, range(n), strict=True))
        self.free = []
        self.dirty.clear()
        self.removed.clear()

    def put_rows(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Bring saved rows (as `changes` encoded them) into memory, unchanged since saved: back after
        an eviction, or in place of the row held (a server taking in a published version)."""
        width = self.dim * 4
        for key, blob in rows:
            if len(blob) != 2 * width + 8:
                raise ValueError(f"a saved row of {key!r} has {len(blob)} bytes, expected {2 * width + 8}")
            held = self.index.get(key)
            row = self._new_row(key, 0.0) if held is None else held
            self.dirty.discard(row)
            self.vectors[row] = np.frombuffer(blob, np.float32, self.dim, 0)
            self.accum[row] = np.frombuffer(blob, np.float32, self.dim, width)
            self.seen[row] = np.frombuffer(blob, np.float64, 1, 2 * width)[0]

    def seen_of(self, blob: bytes) -> float:
        """When a saved row was last trained."""
        return float(np.frombuffer(blob, np.float64, 1, 2 * self.dim * 4)[0])

    def evict(self, keys: Iterable[str]) -> int:
        """Let the rows of `keys` leave memory, saved as they are (a row changed since the last
        checkpoint stays until it is saved); returns how many left. `put_rows` brings one back."""
        gone = 0
        for key in keys:
            row = self.index.get(key)
            if row is None or row in self.dirty:
                continue
            del self.index[key]
            self.ids[row] = None
            self.free.append(row)
            self._moved(key)
            gone += 1
        return gone


class RowsByCode:
    """A table's rows by an integer code of its ids (the catalogue's item index, a vocabulary code), for
    serving: one array look-up for a feed's candidates, where a dict look-up per string id took a quarter
    of a server's time at 1M items (the dict's entries are scattered in memory). Entries are found in
    the table on first use and forgotten when their id gains or loses a row (`EmbeddingTable.moved`)."""

    def __init__(self) -> None:
        self._rows = np.full(0, -2, np.int64)  # -2: not looked up yet; -1: no row
        self._generation = -1
        self._lock = threading.Lock()  # the server's thread and an index rebuild's

    def fill(self, table: EmbeddingTable, names: Sequence[str]) -> None:
        """Look every code up at once (a start: a million item ids in ~0.3 s, instead of a miss per
        candidate over the first hour of feeds)."""
        with self._lock:
            self._rows = np.fromiter(map(table.index.get, names, repeat(-1)), np.int64, len(names))
            self._generation = table.generation

    def get(self, table: EmbeddingTable, codes: np.ndarray, names: Sequence[str],
            code_of: Mapping[str, int]) -> np.ndarray:
        with self._lock:
            rows = self._rows
            if len(rows) < len(names):
                grown = np.full(max(len(names), int(len(rows) * _GROWTH)), -2, np.int64)
                grown[:len(rows)] = rows
                self._rows = rows = grown
            if self._generation < table.moved_base:
                rows[:] = -2
            else:
                for key in table.moved[self._generation - table.moved_base:]:
                    code = code_of.get(key)
                    if code is not None:
                        rows[code] = -2
            self._generation = table.generation
            found = rows[codes]
            missing = found == -2
            if missing.any():
                look = np.unique(codes[missing])
                rows[look] = table.lookup([names[c] for c in look.tolist()])
                found = rows[codes]
            return found
