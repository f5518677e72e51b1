"""foryou/seen.py: the compact served-or-viewed set answers exactly as a Python set would, whatever the
order and repetition of additions, and holds 4 bytes an item."""

from __future__ import annotations

import numpy as np
import pytest

from foryou.seen import Seen


@pytest.mark.parametrize("seed", range(10))
def test_answers_as_a_set_would(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seen, expected = Seen(), set()
    for _ in range(300):
        if rng.random() < 0.2:
            batch = rng.integers(0, 500, size=int(rng.integers(0, 40))).tolist()
            seen.update(batch)
            expected.update(batch)
        else:
            x = int(rng.integers(0, 500))
            seen.add(x)
            expected.add(x)
        probe = rng.integers(-5, 510, size=64)
        assert seen.mask(probe).tolist() == [int(p) in expected for p in probe]
        x = int(rng.integers(-5, 510))
        assert (x in seen) == (x in expected)  # also before pending additions are merged
    assert len(seen) == len(expected)
    assert list(seen) == sorted(expected)
    assert seen.nbytes() == 4 * len(expected)


def test_empty_and_copies() -> None:
    empty = Seen()
    assert len(empty) == 0 and 3 not in empty
    assert empty.mask(np.array([1, 2])).tolist() == [False, False]
    assert empty.mask(np.zeros(0, np.int64)).tolist() == []
    a = Seen([5, 1, 5, 3])
    b = a.copy()
    b.add(7)
    assert list(a) == [1, 3, 5] and list(b) == [1, 3, 5, 7]
    assert a == Seen([3, 1, 5]) and a != b
    a.update(np.array([9, 1]))
    assert 9 in a and 9 not in b
