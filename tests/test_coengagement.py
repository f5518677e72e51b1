"""Co-engagement rows (foryou/state/coengagement.py): bounded top lists per item, counted by
Space-Saving, checked against exact counts in worlds whose answer is known by construction, and the
pair table of earlier versions converted at the first start."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from factories import Clock

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.state.coengagement import CoEngagement, count_pairs, decode, encode
from foryou.types import EventIn, ItemIn

T0 = 1_700_000_000.0


def fresh(rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((rows, k), -1, np.int32), np.zeros((rows, k), np.float32)


def as_dict(nb: np.ndarray, w: np.ndarray, row: int) -> dict[int, float]:
    return {int(b): float(c) for b, c in zip(nb[row], w[row], strict=True) if b >= 0}


@pytest.mark.parametrize("seed", range(20))
def test_rows_that_do_not_fill_count_exactly_whatever_the_batches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, rows = 8, 30
    a = rng.integers(0, rows, 2000)
    b = (a + rng.integers(1, k + 1, len(a))) % 97  # at most k distinct neighbours a row
    want = Counter(zip(a.tolist(), b.tolist(), strict=True))
    cuts = np.sort(rng.choice(np.arange(1, len(a)), rng.integers(0, 30), replace=False))
    nb, w = fresh(rows, k)
    for part_a, part_b in zip(np.split(a, cuts), np.split(b, cuts), strict=True):
        count_pairs(nb, w, part_a, part_b)
    for row in range(rows):
        assert as_dict(nb, w, row) == {bb: float(c) for (aa, bb), c in want.items() if aa == row}


@pytest.mark.parametrize("seed", range(20))
def test_a_full_row_keeps_its_heavy_neighbours_and_every_count(seed: int) -> None:
    """Space-Saving's guarantees: a row's counts sum to the pairs it counted; each kept count is at
    least the true one; a neighbour counted more than 1/k of the row's pairs is kept."""
    rng = np.random.default_rng(seed)
    k = 5
    heavy = rng.integers(0, 1000, 3)
    stream = np.concatenate([rng.choice(heavy, 600), rng.integers(0, 1000, 1400)])
    rng.shuffle(stream)
    nb, w = fresh(1, k)
    for part in np.array_split(stream, rng.integers(1, 200)):
        count_pairs(nb, w, np.zeros(len(part), np.int64), part)
    got = as_dict(nb, w, 0)
    truth = Counter(stream.tolist())
    assert sum(got.values()) == len(stream)
    assert all(c >= truth[b] for b, c in got.items())
    assert {b for b, c in truth.items() if c > len(stream) / k} <= set(got)


def test_neighbours_strongest_first_and_limited() -> None:
    coeng = CoEngagement(k=6)
    pairs = [(0, 3)] * 2 + [(0, 1)] * 5 + [(0, 4)] * 3 + [(0, 2)] * 3 + [(7, 0)]
    coeng.add(np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs]))
    assert coeng.neighbours(0, 10) == [1, 2, 4, 3]  # 5, then 3 and 3 (lower index first), then 2
    assert coeng.neighbours(0, 2) == [1, 2]
    assert coeng.neighbours(7, 10) == [0]
    assert coeng.neighbours(5, 10) == [] and coeng.neighbours(10_000, 10) == []
    assert coeng.dirty == {0, 7}
    idx, rows = coeng.take_dirty()
    assert idx.tolist() == [0, 7] and coeng.dirty == set()
    again = CoEngagement(k=6)
    again.load(idx, [r.tobytes() for r in rows])
    assert again.neighbours(0, 10) == [1, 2, 4, 3] and again.neighbours(7, 10) == [0]


def test_rows_of_another_width_keep_their_strongest() -> None:
    nb = np.asarray([[5, 6, 7, -1]], np.int32)
    w = np.asarray([[1.0, 9.0, 4.0, 0.0]], np.float32)
    narrow_nb, narrow_w = decode([encode(nb, w)[0].tobytes()], 2)
    assert narrow_nb.tolist() == [[6, 7]] and narrow_w.tolist() == [[9.0, 4.0]]
    wide_nb, _ = decode([encode(nb, w)[0].tobytes()], 6)
    assert wide_nb[0, :3].tolist() == [6, 7, 5] and (wide_nb[0, 3:] == -1).all()


def test_pairs_saved_by_earlier_versions_become_rows(tmp_path: Path) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    with Engine.open(settings, clock=Clock(T0), seed=0) as engine:
        engine.items.upsert([ItemIn(id=f"v{k}", creator="c", duration_s=10.0) for k in range(30)])
        engine.events.ingest([EventIn(user="u", item="v0", type="like"), EventIn(user="u", item="v1", type="like")])
    db = sqlite3.connect(tmp_path / "d" / "catalog.db")
    with db:  # the table and rows a version before the rows left behind
        db.execute("CREATE TABLE coeng (a TEXT, b TEXT, w REAL NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID")
        db.executemany("INSERT INTO coeng VALUES (?,?,?)",
                       [("v5", f"v{k}", float(k)) for k in range(6, 30)] + [("v6", "v5", 2.0), ("v6", "gone", 9.0)])
    db.close()
    for _ in range(2):  # converted at the first start; the second finds the rows
        with Engine.open(settings, clock=Clock(T0), seed=0) as engine:
            index = engine.live.catalog.index
            assert engine.live.neighbours(index["v5"], 100) == [index[f"v{k}"] for k in range(29, 9, -1)]
            assert engine.live.neighbours(index["v6"], 100) == [index["v5"]]
            assert engine.live.neighbours(index["v0"], 100) == [index["v1"]]  # counted by this version
            assert list(engine.store.legacy_coengagement(5)) == []
