"""Maximum-inner-product search over item vectors, behind one small protocol.

Scoring every catalogue item against a user vector is fine for tens of thousands of items and far
too slow for millions, so retrieval goes through a `VectorIndex`: `HnswIndex` wraps usearch's HNSW
graph for large catalogues, and `ExactIndex` is the numpy brute force that small catalogues use and
that the HNSW index is checked against. Keys are catalogue item indexes (int64). Both take upserts,
since item vectors move as the model trains, and both serialise to bytes, since rebuilding a graph
over a million vectors takes minutes while loading one takes about a second.
"""

from __future__ import annotations

import struct
from typing import Protocol, Self, runtime_checkable

import numpy as np
from usearch.index import Index, Matches


@runtime_checkable
class VectorIndex(Protocol):
    """Item vectors keyed by int64; `search` returns (keys int64, scores float32), best score first."""

    dim: int
    longest: float  # the longest vector put in

    @property
    def clamped(self) -> int: ...  # vectors held beyond the bound on norms the index was laid out for

    def reserve(self, norm: float) -> None: ...  # lay the index out for vectors up to `norm` long
    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def stored(self, keys: np.ndarray) -> np.ndarray: ...  # the vectors held for keys; a NaN row if none
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def __len__(self) -> int: ...
    def to_bytes(self) -> bytes: ...
    @classmethod
    def from_bytes(cls, data: bytes) -> Self: ...


def _dim(dim: int) -> int:
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return dim


def _keys(keys: np.ndarray) -> np.ndarray:
    k = np.asarray(keys)
    if k.ndim != 1 or (k.size and k.dtype.kind not in "iu"):
        raise ValueError(f"keys must be a 1-D integer array, got shape {k.shape} of {k.dtype}")
    return k.astype(np.int64, copy=False)


def _checked(keys: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a whole upsert before anything is touched, so a bad batch changes nothing."""
    k = _keys(keys)
    v = np.asarray(vectors, dtype=np.float32)
    if v.shape != (len(k), dim):
        raise ValueError(f"{len(k)} keys need vectors of shape ({len(k)}, {dim}), got {v.shape}")
    if (k < 0).any():  # usearch keys are uint64 and -1 is its free-slot marker
        raise ValueError("keys must be non-negative item indexes")
    if len(np.unique(k)) != len(k):
        raise ValueError("a key appears twice in one upsert")
    if not np.isfinite(v).all():  # one NaN poisons every distance it takes part in
        raise ValueError("vectors must be finite")
    return k, np.ascontiguousarray(v)


def _query(query: np.ndarray, k: int, dim: int) -> np.ndarray:
    q = np.asarray(query, dtype=np.float32)
    if q.shape != (dim,) or not np.isfinite(q).all():
        raise ValueError(f"query must be a finite vector of shape ({dim},), got {q.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return np.ascontiguousarray(q)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.float32)


_EXACT = struct.Struct("<8sQQ")  # magic, dim, count; then the keys and the rows
# magic, dim, expansion_add, expansion_search, bound, longest, number of keys clamped; then those keys
# (int64) and usearch's own bytes
_HNSW = struct.Struct("<8sQQQddQ")
HEADROOM = 2.0  # an HNSW graph's bound on norms: this times the longest vector it was laid out for
REBOUND_MOST = 1_000  # vectors up to which a graph is rebuilt at once around a longer vector: ~20 ms on the
# caller's thread, a tick's budget (2,000: 44 ms; 20,000: 0.75 s, a stall of the server's event loop)


class ExactIndex:
    """Brute force: live rows are packed at the front of a growable matrix (removal swaps in the last row)."""

    MAGIC = b"FYEXACT1"

    clamped = 0  # a scan needs no bound on norms

    def __init__(self, dim: int) -> None:
        self.dim = _dim(dim)
        self.longest = 0.0
        self._vecs = np.empty((0, dim), np.float32)
        self._keys = np.empty(0, np.int64)  # key of each row
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row)

    def reserve(self, norm: float) -> None:
        pass

    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        k, v = _checked(keys, vectors, self.dim)
        self.longest = max(self.longest, float(np.linalg.norm(v, axis=1).max()) if len(v) else 0.0)
        rows = np.fromiter((self._row.get(key, -1) for key in k.tolist()), np.int64, len(k))
        old = rows >= 0
        self._vecs[rows[old]] = v[old]
        n, new = len(self._row), k[~old]
        end = n + len(new)
        if end > len(self._vecs):  # double, so a stream of small upserts stays amortised O(1) per row
            cap = max(end, 2 * len(self._vecs))
            vecs, ks = np.empty((cap, self.dim), np.float32), np.empty(cap, np.int64)
            vecs[:n], ks[:n] = self._vecs[:n], self._keys[:n]
            self._vecs, self._keys = vecs, ks
        self._vecs[n:end], self._keys[n:end] = v[~old], new
        self._row.update(zip(new.tolist(), range(n, end), strict=True))

    def remove(self, keys: np.ndarray) -> None:
        for key in _keys(keys).tolist():
            row = self._row.pop(key, None)
            last = len(self._row)
            if row is not None and row != last:
                self._vecs[row], moved = self._vecs[last], int(self._keys[last])
                self._keys[row], self._row[moved] = moved, row

    def stored(self, keys: np.ndarray) -> np.ndarray:
        rows = np.fromiter((self._row.get(key, -1) for key in _keys(keys).tolist()), np.int64, len(keys))
        out = np.full((len(rows), self.dim), np.nan, np.float32)
        out[rows >= 0] = self._vecs[rows[rows >= 0]]
        return out

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _query(query, k, self.dim)
        n = len(self._row)
        if (k := min(k, n)) == 0:
            return _empty()
        scores = self._vecs[:n] @ q
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._keys[top], scores[top]

    def to_bytes(self) -> bytes:
        n = len(self._row)
        return _EXACT.pack(self.MAGIC, self.dim, n) + self._keys[:n].tobytes() + self._vecs[:n].tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        if len(data) < _EXACT.size or data[:8] != cls.MAGIC:
            raise ValueError("not an ExactIndex serialisation")
        _, dim, n = _EXACT.unpack_from(data)
        if len(data) != _EXACT.size + n * 8 + n * dim * 4:
            raise ValueError("truncated ExactIndex serialisation")
        index, keys = cls(dim), np.frombuffer(data, np.int64, n, _EXACT.size)
        index.upsert(keys, np.frombuffer(data, np.float32, n * dim, _EXACT.size + n * 8).reshape(n, dim))
        return index


class HnswIndex:
    """usearch's HNSW graph, searched for the largest inner products by way of nearest neighbours in L2
    (Bachrach et al., RecSys 2014): each vector x is held with one more coordinate, sqrt(M^2 - |x|^2)
    for a bound M on the norms, and a query q is asked as (q, 0), so that |x' - q'|^2 = M^2 + |q|^2 -
    2 x.q orders items exactly as x.q does. Inner product is no metric, and a graph walk over it stops
    short: at 1M items it found 48% of a user's true 400 best, and 99% this way, a third faster
    (`benchmarks/ann_recall.py`). M is twice the longest vector of the first insert; a longer one
    later has the graph rebuilt around a new bound while it is small (`REBOUND_MOST`), and beyond that
    is held at M (ranked as if its product were lower by (|x|^2 - M^2) / 2) and counted in `clamped`
    while held, for the owner to build a new index (`reserve` first). The search's beam is 128 wide at
    least (usearch's default 64 gave recall@10 0.955-0.975 on the conformance suite's clustered data,
    128 gave 0.988-0.999, by hand); a feed asks 400, which widens it to that."""

    MAGIC = b"FYHNSW02"

    def __init__(self, dim: int, connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 128) -> None:
        self.dim = _dim(dim)
        self.bound = 0.0  # M
        self.longest = 0.0  # the longest vector put in
        self._clamped: set[int] = set()  # keys held longer than the bound (at it)
        self._index = self._new(connectivity, expansion_add, expansion_search)

    def _new(self, connectivity: int, expansion_add: int, expansion_search: int) -> Index:
        return Index(ndim=self.dim + 1, metric="l2sq", dtype="f32", connectivity=connectivity,
                     expansion_add=expansion_add, expansion_search=expansion_search, multi=False)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def clamped(self) -> int:
        return len(self._clamped)

    def _held(self, v: np.ndarray, norms: np.ndarray) -> np.ndarray:
        extra = np.sqrt(np.maximum(self.bound * self.bound - norms.astype(np.float64) ** 2, 0.0))
        return np.ascontiguousarray(np.hstack([v, extra[:, None].astype(np.float32)]))

    def reserve(self, norm: float) -> None:
        """Lay the graph out for vectors up to `norm` long (HEADROOM beyond it): a graph holding
        vectors is rebuilt around the new bound, and what was clamped is not any more."""
        if norm <= self.bound:
            return
        keys = np.asarray(self._index.keys, dtype=np.int64)
        vecs = self.stored(keys)
        ix = self._index
        self.bound = float(norm) * HEADROOM
        self._clamped.clear()
        self._index = self._new(ix.connectivity, ix.expansion_add, ix.expansion_search)
        if len(keys):
            self._index.add(keys, self._held(vecs, np.linalg.norm(vecs, axis=1)), threads=0 if len(keys) >= 256 else 1)

    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        k, v = _checked(keys, vectors, self.dim)
        norms = np.linalg.norm(v, axis=1)
        top = float(norms.max()) if len(v) else 0.0
        self.longest = max(self.longest, top)
        if top > self.bound and len(self) <= REBOUND_MOST:
            self.reserve(top)
        over = norms > self.bound
        self._clamped.difference_update(k[~over].tolist())
        self._clamped.update(k[over].tolist())
        # usearch refuses to re-add a key, so replacing is remove-then-add: the old node is tombstoned
        # (never returned again) and its slot is reused by the add.
        present = np.asarray(self._index.contains(k), dtype=bool)
        if present.any():
            self._index.remove(k[present])
        if len(k):  # a large batch spread over all cores; a few in this thread (a pool's hand-offs cost more)
            self._index.add(k, self._held(v, norms), threads=0 if len(k) >= 256 else 1)

    def remove(self, keys: np.ndarray) -> None:
        k = _keys(keys)
        k = k[k >= 0]  # negative keys can't be present, and usearch would wrap them to uint64
        if len(k):
            self._index.remove(k)
            self._clamped.difference_update(k.tolist())

    def stored(self, keys: np.ndarray) -> np.ndarray:
        k = _keys(keys)
        out = np.full((len(k), self.dim), np.nan, np.float32)
        if len(k):
            got = self._index.get(k.astype(np.uint64))  # a tuple: a vector, or None where absent
            for row, vector in enumerate(got if isinstance(got, tuple) else [got]):
                if vector is not None:
                    out[row] = vector[:self.dim]
        return out

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _query(query, k, self.dim)
        n = len(self)
        if (k := min(k, n)) == 0:  # usearch rejects count=0
            return _empty()
        # where the beam would span the whole index anyway, a linear scan costs no more and is exact
        matches = self._index.search(np.append(q, np.float32(0.0)), count=k,
                                     exact=n <= max(k, self._index.expansion_search))
        assert isinstance(matches, Matches)  # one query in, one Matches out
        # the distance is M^2 + |q|^2 - 2 x.q: hand back the inner product itself
        base = self.bound * self.bound + float(q.astype(np.float64) @ q)
        scores = ((base - matches.distances.astype(np.float64)) / 2).astype(np.float32)
        return matches.keys.astype(np.int64), scores

    def to_bytes(self) -> bytes:
        ix, blob = self._index, self._index.save()  # no path given: usearch returns the bytes
        assert blob is not None
        clamped = np.array(sorted(self._clamped), np.int64)
        return _HNSW.pack(self.MAGIC, self.dim, ix.expansion_add, ix.expansion_search, self.bound, self.longest,
                          len(clamped)) + clamped.tobytes() + blob

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        if len(data) < _HNSW.size or data[:8] != cls.MAGIC:
            raise ValueError("not an HnswIndex serialisation (or one of an earlier version, built again)")
        _, dim, ex_add, ex_search, bound, longest, n_clamped = _HNSW.unpack_from(data)
        start = _HNSW.size + 8 * n_clamped
        if len(data) < start:
            raise ValueError("truncated HnswIndex serialisation")
        clamped = np.frombuffer(data, np.int64, n_clamped, _HNSW.size).tolist()
        # A memoryview slice, as usearch copies what it loads anyway. The graph and its connectivity come
        # from usearch's bytes, which don't hold the expansion settings, hence our header.
        try:
            ix = Index.restore(memoryview(data)[start:], expansion_add=ex_add, expansion_search=ex_search)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"corrupt HnswIndex serialisation: {e}") from e
        if ix is None or ix.ndim != dim + 1:
            raise ValueError("corrupt HnswIndex serialisation")
        index = cls(dim, ix.connectivity, ex_add, ex_search)
        index._index, index.bound, index.longest, index._clamped = ix, bound, longest, set(clamped)
        return index


_KINDS: dict[str, type[ExactIndex] | type[HnswIndex]] = {"exact": ExactIndex, "hnsw": HnswIndex}


def make_index(dim: int, kind: str) -> VectorIndex:
    """An empty index: "exact" for small catalogues, "hnsw" for large ones."""
    if kind not in _KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind](dim)


def restore_index(data: bytes) -> VectorIndex:
    """Rebuild whichever kind of index `to_bytes` produced."""
    for cls in _KINDS.values():
        if data[:8] == cls.MAGIC:
            return cls.from_bytes(data)
    raise ValueError("not a serialised VectorIndex")
