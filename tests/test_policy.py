"""The adjacency rule: no two consecutive items from the same creator or with the same sound, within a
response and across consecutive ones; yield (take the best) only when nothing else remains."""

from __future__ import annotations

import numpy as np
import pytest

from foryou.policy import arrange


def conflicts(c1: int, s1: int, c2: int, s2: int) -> bool:
    return c1 == c2 or (s2 >= 0 and s1 == s2)


def run(creators: list[int], sounds: list[int], n: int, order: list[int] | None = None,
        last_creator: int = -1, last_sound: int = -1) -> list[int]:
    order = order if order is not None else list(range(len(creators)))
    return arrange(np.array(order, dtype=np.int64), np.array(creators, dtype=np.int32),
                   np.array(sounds, dtype=np.int32), n, last_creator, last_sound)


def test_spreads_a_creator_out() -> None:
    # best-first: three items by creator 0, then two by others
    picked = run([0, 0, 0, 1, 2], [-1] * 5, 5)
    assert picked == [0, 3, 1, 4, 2]


def test_same_sound_is_spread_out_too() -> None:
    picked = run([0, 1, 2, 3], [7, 7, 8, -1], 4)
    assert picked == [0, 2, 1, 3]


def test_no_sound_never_conflicts_on_sound() -> None:
    assert run([0, 1, 2], [-1, -1, -1], 3) == [0, 1, 2]


def test_honours_the_previous_response() -> None:
    # the last item served before was creator 0: the best item (creator 0) must not come first
    assert run([0, 1], [-1, -1], 2, last_creator=0) == [1, 0]
    # ... and the same for sounds
    assert run([0, 1], [5, 6], 2, last_sound=5) == [1, 0]
    assert run([0, 1], [5, 6], 1, last_sound=5) == [1]


def test_yields_rather_than_shortening() -> None:
    # only creator 0 is left: take them all, best first
    assert run([0, 0, 0], [-1, -1, -1], 3) == [0, 1, 2]
    assert run([0, 0], [-1, -1], 2, last_creator=0) == [0, 1]
    picked = run([0, 0, 0, 1], [-1] * 4, 4)
    assert len(picked) == 4 and sorted(picked) == [0, 1, 2, 3]
    assert picked == [0, 3, 1, 2]


def test_n_and_order() -> None:
    creators = [3, 1, 2, 0]
    assert run(creators, [-1] * 4, 2, order=[2, 0, 3, 1]) == [2, 0]
    assert run(creators, [-1] * 4, 10) == [0, 1, 2, 3]  # fewer than n: all of them
    assert run(creators, [-1] * 4, 0) == []
    assert run([], [], 5) == []


@pytest.mark.parametrize("seed", range(40))
def test_random_worlds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 40))
    creators = rng.integers(0, int(rng.integers(1, 6)), m).tolist()
    sounds = rng.integers(-1, int(rng.integers(1, 5)), m).tolist()
    order = rng.permutation(m).tolist()
    n = int(rng.integers(1, m + 3))
    last_c = int(rng.integers(-1, 3))
    last_s = int(rng.integers(-1, 3))
    picked = run(creators, sounds, n, order, last_c, last_s)
    assert len(picked) == min(n, m)  # never shorter than what is available
    assert len(set(picked)) == len(picked) and set(picked) <= set(order)
    remaining = list(order)
    prev_c, prev_s = last_c, last_s
    for pos in picked:
        ok = [p for p in remaining if not conflicts(prev_c, prev_s, creators[p], sounds[p])]
        if ok:
            assert pos == ok[0], "must take the best item that does not repeat creator or sound"
        else:
            assert pos == remaining[0], "when every item conflicts, take the best"
        remaining.remove(pos)
        prev_c, prev_s = creators[pos], sounds[pos]
