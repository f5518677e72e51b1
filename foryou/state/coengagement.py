"""Co-engagement as bounded top lists: for each item, the `K` items most often positively engaged
right after it by the same user, kept as two arrays (neighbour index, count), one row per item.

Counting pairs as rows of a table (item, item, count) grew without bound (18 million rows at 5
million events, 1M items) and each checkpoint upserted its deltas into random pages of that table:
8 of the 18 s that a checkpoint of 200,000 events took at 1M items, and a quarter of a server's CPU
under load. A row per item, rewritten whole when it changes, bounds both, and a feed reads the
neighbours from memory instead of the store.

Each row is a Space-Saving summary (Metwally et al., 2005): a neighbour already in the row counts
up; a new one takes the weakest slot (an empty slot first) and that slot's count plus its own, so
any neighbour seen more than 1/K of the time the item was co-engaged stays. Pairs of a batch are
merged before they are counted, so a row that is full may end a little differently when the same
events come in other batches (a replay after a crash); rows that are not full are exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

K = 20  # neighbours kept per item (a feed asks at most for 80 across four items: sources.coengagement)
_LOW = (1 << 32) - 1


def count_pairs(nb: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Count one for each pair (a[k] -> b[k]) in the rows `nb` (neighbour indexes, -1 empty) and `w`
    (counts), in place."""
    if not len(a):
        return
    keys, counts = np.unique((a.astype(np.int64) << 32) | b.astype(np.int64), return_counts=True)
    a, b, c = keys >> 32, (keys & _LOW).astype(nb.dtype), counts.astype(w.dtype)
    hit = nb[a] == b[:, None]
    pair, slot = np.nonzero(hit)  # a pair is in its row at most once: (row, slot) are distinct
    w[a[pair], slot] += c[pair]
    new = ~hit.any(axis=1)
    a, b, c = a[new], b[new], c[new]
    if not len(a):
        return
    # New neighbours take their row's weakest slot, one per row at a time: the k-th new neighbour of
    # each row in round k (`a` is sorted, so a row's new neighbours are contiguous).
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.r_[starts, len(a)]))
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
    for lo, hi in itertools.pairwise(bounds):
        take = order[lo:hi]
        rows = a[take]
        weakest = np.argmin(w[rows], axis=1)
        w[rows, weakest] += c[take]
        nb[rows, weakest] = b[take]


def top(nb_row: np.ndarray, w_row: np.ndarray, limit: int) -> list[int]:
    """A row's neighbours, strongest first (ties: lower index first)."""
    present = nb_row >= 0
    if not present.any():
        return []
    items, counts = nb_row[present], w_row[present]
    return items[np.lexsort((items, -counts))][:limit].tolist()


PAIRED = 4  # a strong positive is co-engaged with its user's previous ones, at most this many
MOST_USERS = 200_000  # users whose previous positives are held (the least recently active leave first)


class Positives:
    """Each user's last strong positives (item indexes), as the log follower met them: what the next
    one is co-engaged with. It holds at most `most` users, and nothing of it is saved (it would name
    users): a pair across a restart, or across a user's long absence, is not counted."""

    def __init__(self, most: int = MOST_USERS) -> None:
        self.most = most
        self.users: dict[str, list[int]] = {}  # least recently active first

    def pairs(self, users: Sequence[str], idx: Sequence[int]) -> list[int]:
        """Take each user's positive `idx[k]`, in order; returns the pairs (earlier, later), flat."""
        held, out = self.users, list[int]()
        for user, i in zip(users, idx, strict=True):
            mine = held.pop(user, None) or []
            for other in mine:
                if other != i:
                    out += (other, i)
            if i in mine:
                mine.remove(i)
            mine.append(i)
            held[user] = mine[-PAIRED:]
        for _ in range(len(held) - self.most):
            del held[next(iter(held))]
        return out

    def forget(self, user: str) -> None:
        self.users.pop(user, None)


class CoEngagement:
    """The rows of every item, grown with the catalogue, and which rows changed since `take_dirty`."""

    def __init__(self, k: int = K) -> None:
        self.k = k
        self.nb = np.full((0, k), -1, np.int32)
        self.w = np.zeros((0, k), np.float32)
        self.dirty: set[int] = set()

    def ensure(self, n: int) -> None:
        if n > len(self.nb):
            size = max(n, 2 * len(self.nb), 1024)
            nb = np.full((size, self.k), -1, np.int32)
            w = np.zeros((size, self.k), np.float32)
            nb[: len(self.nb)], w[: len(self.w)] = self.nb, self.w
            self.nb, self.w = nb, w

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Count the pairs a[k] -> b[k] (item indexes)."""
        if len(a):
            self.ensure(int(max(a.max(), b.max())) + 1)
            count_pairs(self.nb, self.w, a, b)
            self.dirty.update(np.unique(a).tolist())

    def neighbours(self, idx: int, limit: int) -> list[int]:
        if idx >= len(self.nb):
            return []
        return top(self.nb[idx], self.w[idx], limit)

    def take_dirty(self) -> tuple[np.ndarray, np.ndarray]:
        """The changed rows (item indexes, rows encoded as `encode` does), as of now; forgotten here."""
        idx = np.fromiter(sorted(self.dirty), np.int64, len(self.dirty))
        self.dirty = set()
        return idx, encode(self.nb[idx], self.w[idx])

    def load(self, idx: np.ndarray, rows: list[bytes]) -> None:
        """Rows as saved (`encode`), for the items `idx`."""
        if not len(idx):
            return
        self.ensure(int(idx.max()) + 1)
        nb, w = decode(rows, self.k)
        self.nb[idx], self.w[idx] = nb, w

    def put(self, idx: int, neighbours: list[tuple[int, float]]) -> None:
        """One item's row from (neighbour, count) pairs, strongest kept (data saved as pair counts by
        versions before these rows); marked changed, so that the next checkpoint saves it."""
        self.ensure(idx + 1)
        best = sorted(neighbours, key=lambda bw: (-bw[1], bw[0]))[: self.k]
        self.nb[idx] = -1
        self.w[idx] = 0.0
        for slot, (b, count) in enumerate(best):
            self.nb[idx, slot], self.w[idx, slot] = b, count
        self.dirty.add(idx)


def encode(nb: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rows as bytes, one row of the result per item: K int32 indexes then K float32 counts."""
    return np.concatenate([nb.astype("<i4").view(np.uint8), w.astype("<f4").view(np.uint8)], axis=1)


def decode(rows: list[bytes], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of rows saved by `encode` (rows of another width are cut or padded to `k`)."""
    width = 8 * k
    if all(len(r) == width for r in rows):
        return decode_array(np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), width), k)
    nb, w = np.full((len(rows), k), -1, np.int32), np.zeros((len(rows), k), np.float32)
    for r, row in enumerate(rows):
        n = len(row) // 8
        items, counts = np.frombuffer(row, "<i4", n), np.frombuffer(row, "<f4", n, 4 * n)
        best = np.lexsort((items, -counts))[:k]
        nb[r, : len(best)], w[r, : len(best)] = items[best], counts[best]
    return nb, w


def decode_array(raw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of rows as `encode` returned them, one uint8 row of width 8 * `k` per item."""
    if not len(raw):
        return np.full((0, k), -1, np.int32), np.zeros((0, k), np.float32)
    return raw[:, : 4 * k].copy().view("<i4").astype(np.int32), raw[:, 4 * k:].copy().view("<f4").astype(np.float32)
