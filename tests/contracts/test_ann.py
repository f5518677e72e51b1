"""The one conformance suite for the `VectorIndex` protocol (foryou/retrieval/ann.py).

Every implementation must pass it. To add one, add an entry to `BACKENDS`: a function that makes an
empty index of a given dimension. `ExactIndex` is the reference the approximate ones are held to:
on small data (no more vectors than HNSW's search breadth, where it scans) they must agree exactly,
and on 20k vectors, after updates and removals, `HnswIndex` must keep recall@10 >= 0.95.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from foryou.retrieval.ann import ExactIndex, HnswIndex, VectorIndex, make_index, restore_index

BACKENDS: dict[str, Callable[[int], VectorIndex]] = {
    "exact": lambda dim: make_index(dim, "exact"),
    "hnsw": lambda dim: make_index(dim, "hnsw"),
}

DIM = 8
N = 50  # below HnswIndex's default expansion_search (128)


@pytest.fixture(params=sorted(BACKENDS))
def new(request: pytest.FixtureRequest) -> Callable[[int], VectorIndex]:
    factory: Callable[[int], VectorIndex] = BACKENDS[request.param]
    return factory


def data(n: int = N, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.choice(10_000, n, replace=False).astype(np.int64)  # sparse keys, not 0..n-1
    return keys, rng.standard_normal((n, dim)).astype(np.float32)


def filled(new: Callable[[int], VectorIndex]) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    index = new(DIM)
    keys, vecs = data()
    index.upsert(keys, vecs)
    return index, keys, vecs


def brute(keys: np.ndarray, vecs: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return [int(keys[i]) for i in np.argsort(-(vecs @ query), kind="stable")[:k]]


def queries(n: int = 10, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(99).standard_normal((n, dim)).astype(np.float32)


def test_implements_the_protocol(new: Callable[[int], VectorIndex]) -> None:
    index = new(DIM)
    assert isinstance(index, VectorIndex)
    assert index.dim == DIM and len(index) == 0
    index.upsert(np.array([], np.int64), np.empty((0, DIM), np.float32))
    index.remove(np.array([], np.int64))
    assert len(index) == 0


def test_empty_index_returns_empty_arrays(new: Callable[[int], VectorIndex]) -> None:
    keys, scores = new(DIM).search(np.ones(DIM, np.float32), 10)
    assert keys.shape == (0,) and keys.dtype == np.int64
    assert scores.shape == (0,) and scores.dtype == np.float32


def test_finds_the_exact_nearest_by_inner_product(new: Callable[[int], VectorIndex]) -> None:
    index, keys, vecs = filled(new)
    assert len(index) == N
    for q in queries():
        found, _ = index.search(q, 5)
        assert found.tolist() == brute(keys, vecs, q, 5)


def test_scores_are_dot_products_best_first(new: Callable[[int], VectorIndex]) -> None:
    index, keys, vecs = filled(new)
    by_key = dict(zip(keys.tolist(), vecs, strict=True))
    for q in queries():
        found, scores = index.search(q, 20)
        assert found.dtype == np.int64 and scores.dtype == np.float32 and len(found) == 20
        assert np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, [by_key[key] @ q for key in found.tolist()], rtol=1e-5, atol=1e-5)


def test_k_beyond_len_returns_everything_and_k_zero_nothing(new: Callable[[int], VectorIndex]) -> None:
    index, keys, _ = filled(new)
    found, scores = index.search(queries()[0], N + 100)
    assert sorted(found.tolist()) == sorted(keys.tolist()) and len(scores) == N
    assert len(index.search(queries()[0], 0)[0]) == 0


def test_upsert_replaces_an_existing_vector(new: Callable[[int], VectorIndex]) -> None:
    index, keys, _ = filled(new)
    target, e0, e1 = int(keys[7]), np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]
    index.upsert(np.array([target]), 50 * e1[None, :])  # far out along e1: the best match for e1
    assert index.search(e1, 1)[0].tolist() == [target]
    index.upsert(np.array([target]), 50 * e0[None, :])  # moved: now the best for e0, and gone from e1
    assert len(index) == N
    assert index.search(e0, 1)[0].tolist() == [target]
    found, scores = index.search(e1, N)
    assert found.tolist().count(target) == 1 and found[0] != target
    assert scores[found.tolist().index(target)] == pytest.approx(0.0, abs=1e-5)


def test_stored_gives_the_vectors_held_and_nan_rows_for_keys_not_held(new: Callable[[int], VectorIndex]) -> None:
    index = new(3)
    index.upsert(np.array([4, 9]), np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    index.upsert(np.array([9]), np.array([[7, 8, 9]], np.float32))
    index.remove(np.array([4]))
    got = index.stored(np.array([9, 4, 11]))
    assert got.shape == (3, 3) and got.dtype == np.float32
    assert np.array_equal(got[0], [7, 8, 9]) and np.isnan(got[1:]).all()
    assert index.stored(np.array([], np.int64)).shape == (0, 3)


def test_replacing_every_vector_matches_a_fresh_build(new: Callable[[int], VectorIndex]) -> None:
    index, keys, _ = filled(new)
    _, fresh = data(seed=1)
    index.upsert(keys, fresh)
    assert len(index) == N
    for q in queries():
        assert index.search(q, 5)[0].tolist() == brute(keys, fresh, q, 5)


def test_remove_makes_keys_unfindable_and_ignores_unknown_ones(new: Callable[[int], VectorIndex]) -> None:
    index, keys, vecs = filled(new)
    gone = keys[[0, 3, 17]]
    index.remove(np.array([*gone.tolist(), 123_456, -1]))
    index.remove(gone)  # already gone: a no-op
    index.remove(np.array([], np.int64))
    assert len(index) == N - 3
    keep = ~np.isin(keys, gone)
    for q in [*queries(), *vecs[[0, 3, 17]]]:  # including the removed vectors themselves
        found, _ = index.search(q, N)
        assert not set(found.tolist()) & set(gone.tolist())
        assert found[:5].tolist() == brute(keys[keep], vecs[keep], q, 5)
    index.remove(keys)
    assert len(index) == 0 and len(index.search(queries()[0], 5)[0]) == 0


BAD_UPSERTS = {
    "wrong dim": lambda k, v: (k[:2], v[:2, :-1]),
    "fewer vectors than keys": lambda k, v: (k[:3], v[:2]),
    "more vectors than keys": lambda k, v: (k[:2], v[:3]),
    "one 1-D vector": lambda k, v: (k[:1], v[0]),
    "2-D keys": lambda k, v: (k[:2, None], v[:2]),
    "float keys": lambda k, v: (k[:2].astype(np.float64), v[:2]),
    "negative key": lambda k, v: (np.array([k[0], -5]), v[:2]),
    "repeated key": lambda k, v: (np.array([k[0], k[0]]), v[:2]),
    "nan vector": lambda k, v: (k[:2], np.where(np.arange(DIM) == 1, np.nan, v[:2]).astype(np.float32)),
}


@pytest.mark.parametrize("bad", sorted(BAD_UPSERTS))
def test_bad_input_raises_and_changes_nothing(new: Callable[[int], VectorIndex], bad: str) -> None:
    index, keys, vecs = filled(new)
    before = [index.search(q, N) for q in queries(3)]
    # existing keys with fresh vectors: a partial write would move them
    bad_keys, bad_vecs = BAD_UPSERTS[bad](keys, np.random.default_rng(5).standard_normal(vecs.shape))
    with pytest.raises(ValueError):
        index.upsert(bad_keys, bad_vecs)
    with pytest.raises(ValueError):
        index.remove(keys[:2, None])
    for q in (np.ones(DIM + 1, np.float32), np.ones((1, DIM), np.float32), np.full(DIM, np.nan, np.float32)):
        with pytest.raises(ValueError):
            index.search(q, 5)
    with pytest.raises(ValueError):
        index.search(queries()[0], -1)
    assert len(index) == N
    for q, (k0, s0) in zip(queries(3), before, strict=True):
        k1, s1 = index.search(q, N)
        assert k1.tolist() == k0.tolist() and s1.tolist() == s0.tolist()


def test_bytes_round_trip_gives_the_same_results(new: Callable[[int], VectorIndex]) -> None:
    index, keys, _ = filled(new)
    index.remove(keys[:5])  # removed entries must stay removed across the trip
    blob = index.to_bytes()
    for restored in (type(index).from_bytes(blob), restore_index(blob)):
        assert type(restored) is type(index) and restored.dim == DIM and len(restored) == N - 5
        for q in queries():
            k0, s0 = index.search(q, N)
            k1, s1 = restored.search(q, N)
            assert k1.tolist() == k0.tolist() and s1.tolist() == s0.tolist()
        restored.upsert(keys[:1], np.full((1, DIM), 9, np.float32))  # still a working, writable index
        assert restored.search(np.ones(DIM, np.float32), 1)[0].tolist() == [keys[0]]
    assert index.to_bytes() == blob  # the copies are independent of the original
    other = ExactIndex if isinstance(index, HnswIndex) else HnswIndex
    for broken in (b"", blob[:-7], other(DIM).to_bytes()):
        with pytest.raises(ValueError):
            type(index).from_bytes(broken)
    with pytest.raises(ValueError):
        restore_index(b"nonsense")


def test_hnsw_settings_survive_the_round_trip() -> None:
    index = HnswIndex(DIM, connectivity=8, expansion_add=40, expansion_search=20)
    index.upsert(*data())
    restored = HnswIndex.from_bytes(index.to_bytes())
    ix = restored._index
    assert (ix.connectivity, ix.expansion_add, ix.expansion_search) == (8, 40, 20)


def test_make_index_rejects_an_unknown_kind() -> None:
    assert isinstance(make_index(4, "exact"), ExactIndex) and isinstance(make_index(4, "hnsw"), HnswIndex)
    with pytest.raises(ValueError, match="faiss"):
        make_index(4, "faiss")


def test_hnsw_recall_at_10_against_exact_through_updates_and_removals() -> None:
    rng = np.random.default_rng(7)
    n, dim, k = 20_000, 32, 10
    centres = rng.standard_normal((50, dim)).astype(np.float32)

    def sample(m: int) -> np.ndarray:
        return (centres[rng.integers(0, 50, m)] + 0.3 * rng.standard_normal((m, dim))).astype(np.float32)

    keys = rng.choice(10 * n, n, replace=False).astype(np.int64)
    moved, gone = keys[:2_000], keys[2_000:3_000]
    vecs, new_vecs = sample(n), sample(len(moved))
    hnsw, exact = HnswIndex(dim), ExactIndex(dim)
    for index in (hnsw, exact):  # the graph must stay good as vectors move and items go
        index.upsert(keys, vecs)
        index.upsert(moved, new_vecs)
        index.remove(gone)
    assert len(hnsw) == len(exact) == n - len(gone)
    current = dict(zip(keys.tolist(), vecs, strict=True)) | dict(zip(moved.tolist(), new_vecs, strict=True))
    # Queries shaped like the data, as user and item vectors of one model are. Out-of-distribution
    # queries against clustered data score far lower with inner-product HNSW.
    hits = 0
    for q in sample(200):
        found, scores = hnsw.search(q, k)
        assert not set(found.tolist()) & set(gone.tolist())
        np.testing.assert_allclose(scores, [current[key] @ q for key in found.tolist()], rtol=1e-4, atol=1e-4)
        hits += len(np.intersect1d(found, exact.search(q, k)[0]))
    assert hits / (k * 200) >= 0.95


def test_vectors_longer_than_the_first_keep_the_search_exact(new: Callable[[int], VectorIndex]) -> None:
    """A graph laid out for the first vectors' norms takes longer ones later (a model's vectors grow as it
    trains): the search stays exact and its scores the products."""
    index = new(DIM)
    keys, vecs = data()
    vecs = np.vstack([vecs[:10] * 0.01, vecs[10:] * 10]).astype(np.float32)
    index.upsert(keys[:10], vecs[:10])
    index.upsert(keys[10:], vecs[10:])
    assert index.clamped == 0 and index.longest == pytest.approx(float(np.linalg.norm(vecs, axis=1).max()))
    for q in queries():
        found, scores = index.search(q, 5)
        assert found.tolist() == brute(keys, vecs, q, 5)
        np.testing.assert_allclose(scores, vecs[[keys.tolist().index(k) for k in found.tolist()]] @ q, rtol=1e-4)


def test_a_large_graph_counts_the_vectors_it_clamps_until_laid_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from foryou.retrieval import ann

    monkeypatch.setattr(ann, "REBOUND_MOST", 20)  # "large": more than 20 vectors
    index = HnswIndex(DIM)
    keys, vecs = data()
    index.upsert(keys[:30], vecs[:30])
    index.upsert(keys[30:], vecs[30:] * 100)  # far beyond the bound: held at it, ranked low
    assert index.clamped == N - 30
    index.reserve(index.longest)
    long = np.vstack([vecs[:30], vecs[30:] * 100])
    assert index.clamped == 0 and len(index) == N and np.allclose(index.stored(keys), long)
    for q in queries():
        assert index.search(q, 5)[0].tolist() == brute(keys, long, q, 5)
    restored = HnswIndex.from_bytes(index.to_bytes())
    assert (restored.bound, restored.longest, restored.clamped) == (index.bound, index.longest, 0)


def test_clamped_counts_the_vectors_held_beyond_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from foryou.retrieval import ann

    monkeypatch.setattr(ann, "REBOUND_MOST", 2)
    index = HnswIndex(DIM)
    keys, vecs = data()
    index.upsert(keys[:3], vecs[:3])
    for _ in range(5):  # one item, long again and again: one vector held beyond the bound
        index.upsert(keys[:1], vecs[:1] * 200)
    assert index.clamped == 1
    assert HnswIndex.from_bytes(index.to_bytes()).clamped == 1
    index.upsert(keys[1:2], vecs[1:2] * 200)
    index.upsert(keys[:1], vecs[:1])  # short again
    assert index.clamped == 1
    index.remove(keys[1:2])
    assert index.clamped == 0 and HnswIndex.from_bytes(index.to_bytes()).clamped == 0
