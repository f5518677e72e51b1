"""The embedding tables: collision-free rows, admission, expiry, Adagrad, and save/restore."""

from __future__ import annotations

import numpy as np
import pytest

from foryou.learning import EmbeddingTable


def test_every_id_gets_its_own_row() -> None:
    table = EmbeddingTable(4)
    keys = [f"id{n}" for n in range(5000)]
    rows = table.rows(keys, now=1.0)
    assert len(set(rows.tolist())) == 5000  # no two ids share a row, unlike the hashing trick
    assert len(table) == 5000
    assert (table.lookup(keys) == rows).all()
    assert table.lookup(["unknown"]).tolist() == [-1]


def test_admission_after_min_count_occurrences() -> None:
    table = EmbeddingTable(4, min_count=3)
    assert table.rows(["a"], 1.0).tolist() == [-1]
    assert table.rows(["a", "b"], 2.0).tolist() == [-1, -1]
    third = table.rows(["a"], 3.0)
    assert third[0] >= 0 and len(table) == 1
    assert table.lookup(["b"]).tolist() == [-1]
    assert (table.get(np.array([-1])) == 0).all()  # not admitted: a zero vector


def test_expiry_frees_idle_rows_for_reuse() -> None:
    table = EmbeddingTable(4, ttl_s=10.0)
    old = table.rows(["old"], now=0.0)[0]
    table.rows(["kept"], now=0.0)
    table.rows(["kept"], now=15.0)  # seen again: stays
    assert table.expire(now=20.0) == 1
    assert table.lookup(["old", "kept"]).tolist()[0] == -1
    assert table.rows(["new"], now=21.0)[0] == old  # the freed row is reused
    _, removed = table.changes()
    assert removed == ["old"]


def test_adagrad_moves_against_the_gradient_and_sums_repeats() -> None:
    table = EmbeddingTable(2, lr=0.1, init_scale=0.0)
    rows = table.rows(["a", "b"], 0.0)
    before = table.get(rows)
    table.update(np.array([rows[0], rows[0], -1]), np.array([[1.0, -1.0], [1.0, -1.0], [5.0, 5.0]], np.float32))
    after = table.get(rows)
    assert after[0, 0] < before[0, 0] and after[0, 1] > before[0, 1]
    assert np.allclose(after[1], before[1])  # untouched
    # Summed to (2, -2), over the root of the summed squares (2): each coordinate moves lr x 2 / sqrt 2.
    assert np.allclose(after[0] - before[0], [-0.1 * np.sqrt(2), 0.1 * np.sqrt(2)], atol=1e-5)


def test_changes_round_trip_through_restore() -> None:
    table = EmbeddingTable(3, seed=1)
    rows = table.rows(["x", "y"], now=7.0)
    table.update(rows, np.ones((2, 3), np.float32))
    changed, _ = table.changes()
    assert sorted(k for k, _ in changed) == ["x", "y"]
    assert table.changes() == ([], [])  # cleared
    copy = EmbeddingTable(3)
    copy.restore(changed)
    assert np.array_equal(copy.get(copy.lookup(["x", "y"])), table.get(rows))
    assert np.array_equal(copy.accum[copy.lookup(["x"])], table.accum[rows[:1]])
    assert copy.seen[copy.lookup(["y"])[0]] == 7.0
    with pytest.raises(ValueError, match="bytes"):
        EmbeddingTable(4).restore(changed)


def test_growth_keeps_rows() -> None:
    table = EmbeddingTable(2, init_scale=1.0)
    first = table.get(table.rows(["first"], 0.0))
    table.rows([str(n) for n in range(1000)], 0.0)
    assert np.array_equal(table.get(table.lookup(["first"])), first)
    assert table.nbytes >= 1001 * 2 * 4 * 2


@pytest.mark.parametrize("seed", range(5))
def test_rows_by_code_follow_every_change_of_the_table(seed: int) -> None:
    """Serving looks rows up by integer code through a cache; whatever the table does between look-ups
    (rows added, removed, evicted, expired, restored, published parts taken in), the cache answers as
    the table's own look-up by id would."""
    from foryou.learning.embeddings import RowsByCode

    rng = np.random.default_rng(seed)
    names = [f"id{n}" for n in range(300)]
    code_of = {n: c for c, n in enumerate(names)}
    table, cache = EmbeddingTable(4, ttl_s=50.0), RowsByCode()
    now = 0.0
    for step in range(200):
        now += 1.0
        action = rng.integers(0, 7)
        if action <= 2:
            table.rows([names[c] for c in rng.integers(0, 300, size=10)], now)
        elif action == 3:
            table.remove([names[c] for c in rng.integers(0, 300, size=5)])
        elif action == 4:
            table.evict([names[c] for c in rng.integers(0, 300, size=5)])
        elif action == 5:
            table.expire(now)
        elif step % 40 == 0:
            other = EmbeddingTable(4, seed=step)
            other.rows([names[c] for c in rng.integers(0, 300, size=50)], now)
            table.clear()
            table.apply(other.whole())
        if len(names) < 400 and rng.random() < 0.1:  # the catalogue grows
            names.append(f"id{len(names)}")
            code_of[names[-1]] = len(names) - 1
        codes = rng.integers(0, len(names), size=40)
        assert cache.get(table, codes, names, code_of).tolist() == table.lookup([names[c] for c in codes]).tolist()
