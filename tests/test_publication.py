"""foryou/learning/publication.py: the item-side tables travel from the trainer to servers as a delta per
published version and a snapshot once the deltas outweigh it. A server that follows every version, one
that falls behind a snapshot, and a start from the store all end with the writer's exact tables; a delta
of a version never published is not taken; rows saved by an earlier version are converted."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from foryou.learning import publication
from foryou.learning.embeddings import EmbeddingTable
from foryou.learning.publication import Part, Publication, Publisher
from foryou.store import open_store

_names = itertools.count()


def tables(dim: int = 4) -> dict[str, EmbeddingTable]:
    return {name: EmbeddingTable(dim, seed=n) for n, name in enumerate(publication.TABLES)}


def state(ts: dict[str, EmbeddingTable]) -> dict[str, dict[str, tuple[bytes, bytes, float]]]:
    return {name: {k: (t.vectors[r].tobytes(), t.accum[r].tobytes(), float(t.seen[r])) for k, r in t.index.items()}
            for name, t in ts.items()}


def train(ts: dict[str, EmbeddingTable], rng: np.random.Generator, now: float) -> None:
    """Some rows trained (new ids among them), some removed: what a training step and expiry do."""
    for name, t in ts.items():
        keys = [f"{name}-{int(k)}" for k in rng.integers(0, 40, size=8)]
        rows = t.rows(keys, now)
        t.update(rows, rng.normal(size=(len(rows), t.dim)).astype(np.float32))
        if rng.random() < 0.3 and t.index:
            t.remove([next(iter(t.index))])


def test_a_publication_reads_back_as_written() -> None:
    rng = np.random.default_rng(0)
    part = Part(["a", "ünï/cödé", "", "line\nbreak"], rng.normal(size=(4, 4)).astype(np.float32),
                rng.random((4, 4)).astype(np.float32), np.array([1.0, 2.0, 3.0, 4.0]), np.array([5, 6, 7, 8]),
                ["gone", "é"])
    plain = Part(["x", "", "ÿ"], np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32), np.zeros(3),
                 np.zeros(3, np.int64), [""])
    empty = Part([], np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, np.int64))
    back = publication.decode(publication.encode(Publication(9, 4, {"item": part, "tag": empty, "creator": plain})))
    assert back.parts["creator"].keys == ["x", "", "ÿ"] and back.parts["creator"].removed == [""]
    assert (back.version, back.prev) == (9, 4)
    got = back.parts["item"]
    assert got.keys == part.keys and got.removed == part.removed
    for a, b in ((got.vectors, part.vectors), (got.accum, part.accum), (got.seen, part.seen), (got.ver, part.ver)):
        assert np.array_equal(a, b)
    assert len(back.parts["tag"]) == 0


@pytest.mark.parametrize("seed", range(3))
def test_servers_and_starts_end_with_the_writers_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    store = open_store(f"memory://publication-{next(_names)}", ["us"])
    writer, pub = tables(), Publisher(keep_s=3.0)
    follower, behind = tables(), tables()
    follower_at = behind_at = 0
    snapshots = 0
    for step in range(1, 40):
        now = float(step)
        train(writer, rng, now)
        version = pub.publish(store, writer, step * 10)
        snapshots += pub.compact(store, writer, now)
        deltas = publication.chain(store, follower_at, version)  # a server polling every version
        assert deltas is not None  # kept past each snapshot for a while: never the whole snapshot
        changed = publication.apply(follower, deltas)
        assert changed == {k for d in deltas for k in d.parts["item"].keys}
        follower_at = version
        assert state(follower) == state(writer)
        if step % 15 == 0:  # a server that polls rarely: behind the snapshots, it reads the latest
            deltas = publication.chain(store, behind_at, version)
            if deltas is None:
                found = publication.snapshot_and_after(store, version)
                assert found is not None
                publication.load(behind, *found)
            else:
                publication.apply(behind, deltas)
            behind_at = version
            assert state(behind) == state(writer)
            assert behind["item"].changed_since(0) == [k for k in behind["item"].ids if k is not None]
    assert snapshots >= 3  # the rule compacts as deltas accumulate
    fresh = tables()  # a start
    found = publication.snapshot_and_after(store, version)
    assert found is not None
    publication.load(fresh, *found)
    assert state(fresh) == state(writer)
    snap = found[0]
    assert snap is not None
    assert sum(len(b) for _, b in store.model_deltas(0)) <= 4 * snap.size  # deltas do not pile up


def test_a_version_never_published_is_not_taken() -> None:
    rng = np.random.default_rng(5)
    store = open_store(f"memory://publication-{next(_names)}", ["us"])
    writer, pub = tables(), Publisher()
    train(writer, rng, 1.0)
    pub.publish(store, writer, 10)
    pub.compact(store, writer, 1.0)
    published = state(writer)
    train(writer, rng, 2.0)
    pub.publish(store, writer, 20)  # ... and killed before version 20's dense blob and version
    assert publication.chain(store, 10, 10) == []
    store.keep_model_deltas(0, 10)  # what the next writer's load does
    assert publication.chain(store, 10, 20) is None
    found = publication.snapshot_and_after(store, 10)
    assert found is not None
    fresh = tables()
    publication.load(fresh, *found)
    assert state(fresh) == published


def test_only_removals_get_a_version_of_their_own() -> None:
    store = open_store(f"memory://publication-{next(_names)}", ["us"])
    writer, pub = tables(), Publisher()
    train(writer, np.random.default_rng(1), 1.0)
    assert pub.publish(store, writer, 7) == 7
    assert pub.publish(store, writer, 7) == 7  # nothing new: nothing written
    assert [v for v, _ in store.model_deltas(0)] == [7]
    writer["item"].remove([next(iter(writer["item"].index))])
    assert pub.publish(store, writer, 7) == 8
    follower = tables()
    found = publication.snapshot_and_after(store, 8)
    assert found is not None
    publication.load(follower, *found)
    assert state(follower) == state(writer)



def _blob_keys(store: object) -> set[str]:
    return set(store._data.blobs)  # type: ignore[attr-defined]  # the memory store's blobs, to see what is left


def test_a_snapshot_is_written_a_chunk_per_publication_and_replaces_the_last() -> None:
    rng = np.random.default_rng(3)
    store = open_store(f"memory://publication-{next(_names)}", ["us"])
    writer, pub = tables(), Publisher(keep_s=0.0, chunk_bytes=256)
    train(writer, rng, 1.0)
    pub.publish(store, writer, 1)
    assert pub.compact(store, writer, 1.0, force=True)  # all chunks at once
    first = _blob_keys(store)
    assert len(first) > 3  # the manifest and several chunks
    for step in range(2, 200):  # until the deltas outweigh it and a second snapshot completes
        train(writer, rng, float(step))
        version = pub.publish(store, writer, step)
        if pub.compact(store, writer, float(step)):
            break
        # while one is being written, a start reads the last complete snapshot and the deltas after it
        found = publication.snapshot_and_after(store, version)
        assert found is not None
        fresh = tables()
        publication.load(fresh, *found)
        assert state(fresh) == state(writer)
    else:
        pytest.fail("no second snapshot")
    snap = publication.read_snapshot(store)
    assert snap is not None and snap is not False and 1 < snap.version < version  # as of when it began
    assert not (first - {publication.SNAPSHOT_BLOB}) & _blob_keys(store)  # the first one's chunks went
    assert publication.PENDING_BLOB not in _blob_keys(store)
    for later in range(step + 1, step + 40):  # the deltas it holds go, a chunk's worth per publication
        train(writer, rng, float(later))
        version = pub.publish(store, writer, later)
        pub.compact(store, writer, float(later))
    assert min(v for v, _ in store.model_deltas(0)) > snap.version
    fresh = tables()
    found = publication.snapshot_and_after(store, version)
    assert found is not None
    publication.load(fresh, *found)
    assert state(fresh) == state(writer)


def test_the_chunks_of_a_snapshot_a_killed_writer_left_go_with_the_next() -> None:
    rng = np.random.default_rng(4)
    store = open_store(f"memory://publication-{next(_names)}", ["us"])
    writer, killed = tables(), Publisher(chunk_bytes=256)
    train(writer, rng, 1.0)
    killed.publish(store, writer, 1)
    assert not killed.compact(store, writer, 1.0)  # due: one chunk written of several, then killed
    left = _blob_keys(store)
    assert publication.PENDING_BLOB in left and publication.snapshot_and_after(store, 1) is not None
    again = Publisher(chunk_bytes=256)
    again.loaded(1, None, [])
    assert again.compact(store, writer, 2.0, force=True)
    assert not (left - {publication.PENDING_BLOB}) & _blob_keys(store)
    found = publication.snapshot_and_after(store, 1)
    assert found is not None and found[0] is not None
    fresh = tables()
    publication.load(fresh, *found)
    assert state(fresh) == state(writer)
