"""The heuristic ranker: smoothed per-item rates shifted by user affinity; value = sum P(action) x weight."""

from __future__ import annotations

import math

import numpy as np
import pytest
from factories import item

from foryou.catalog import RANK_TAGS, STATS, Catalog
from foryou.config import ValueWeights
from foryou.interest import TAG, TOPIC, UserState, code_of, item_features, key, kind_of, learn_one
from foryou.ranking import HEADS, HeuristicRanker, value
from foryou.ranking.heuristic import affinity

TAU = 72 * 3600 / math.log(2)
T = 1_700_000_000.0
DEFAULT = {"complete": 0.3, "like": 0.03, "comment": 0.005, "share": 0.003, "follow": 0.002}


def world() -> Catalog:
    cat = Catalog(("us",))
    cat.put(item("cat-a", creator="alice", tags=("cats",), topic="cats"))  # 0
    cat.put(item("car-b", creator="bob", tags=("cars",), topic="cars"))  # 1: identical apart from what it is
    cat.put(item("cat-c", creator="carol", tags=("cats",), topic="cats"))  # 2: a different creator, same topic
    cat.put(item("seed", creator="dave", tags=("cats",), topic="cats"))  # 3: what the user watched
    cat.put(item("fish", creator="erin", tags=("fish",), topic="fish"))  # 4
    return cat


def totals(cat: Catalog) -> np.ndarray:
    return cat.stats[: len(cat)].sum(axis=0)


def predict(cat: Catalog, state: UserState, idxs: list[int], decay: float = 1.0) -> dict[str, np.ndarray]:
    return HeuristicRanker().predict(cat, state, np.array(idxs, dtype=np.int64), decay, totals(cat))


def test_value_is_the_weighted_sum_of_heads() -> None:
    preds = {h: np.array([0.1 * (k + 1), 0.5, 0.0]) for k, h in enumerate(HEADS)}
    preds["affinity"] = np.array([9.0, 9.0, 9.0])  # not a head: ignored
    w = ValueWeights(complete=1.0, like=10.0, comment=100.0, share=1000.0, follow=10000.0)
    got = value(preds, w)
    expected0 = 0.1 * 1 + 0.2 * 10 + 0.3 * 100 + 0.4 * 1000 + 0.5 * 10000
    expected1 = 0.5 * (1 + 10 + 100 + 1000 + 10000)
    assert got.tolist() == pytest.approx([expected0, expected1, 0.0])
    zero = ValueWeights(complete=0.0, like=0.0, comment=0.0, share=0.0, follow=0.0)
    assert value(preds, zero).tolist() == [0.0, 0.0, 0.0]


def test_no_history_no_interest_gives_the_default_rates() -> None:
    cat = world()
    p = predict(cat, UserState(), [0, 1])
    for head in HEADS:
        assert p[head].tolist() == pytest.approx([DEFAULT[head]] * 2)
    assert p["affinity"].tolist() == [0.0, 0.0]


def test_matching_item_outranks_an_identical_non_matching_one() -> None:
    cat = world()
    s = UserState()
    for k in range(3):
        learn_one(s, cat, 3, "view", 10.0, T + k, TAU)  # completed "cats" videos
    p = predict(cat, s, [0, 1])
    assert p["affinity"][0] > 0 and p["affinity"][1] == 0.0
    for head in HEADS:
        assert p[head][0] > p[head][1], head
    v = value(p, ValueWeights())
    assert v[0] > v[1]


def test_disliked_topic_ranks_below_a_neutral_one() -> None:
    cat = world()
    s = UserState()
    for k in range(4):
        learn_one(s, cat, 3, "view", 0.5, T + k, TAU)  # early swipes on "cats"
    p = predict(cat, s, [0, 4])
    assert p["affinity"][0] < 0 == p["affinity"][1]
    v = value(p, ValueWeights())
    assert v[0] < v[1]


def test_affinity_is_bounded_and_fades_with_decay() -> None:
    cat = world()
    s = UserState()
    for k in range(2):
        learn_one(s, cat, 0, "share", 0.0, T + k, TAU)
    full = affinity(cat, s, np.array([0, 2, 4]), 1.0)
    assert 0.9 < full[0] < 1.0 and 0 < full[1] < full[0] and full[2] == 0.0
    assert affinity(cat, s, np.array([0]), 1e-6)[0] == pytest.approx(0.0, abs=1e-3)
    faded = predict(cat, s, [0], decay=1e-9)
    assert faded["complete"][0] == pytest.approx(DEFAULT["complete"], rel=1e-3)


def test_followed_creator() -> None:
    cat = world()
    s = UserState()
    s.follows.add(int(cat.creator[0]))
    p = predict(cat, s, [0, 2])  # same topic, no affinity; only 0's creator is followed
    assert p["complete"][0] > p["complete"][1]
    assert p["follow"][0] < p["follow"][1]  # already following: unlikely to follow again


def test_rates_are_smoothed_towards_the_catalogue() -> None:
    cat = world()
    views, completes = STATS["views"], STATS["completions"]
    cat.stats[0, views], cat.stats[0, completes] = 1, 1  # one view, completed: not a 100% rate
    cat.stats[1, views], cat.stats[1, completes] = 1000, 800  # plenty of evidence for 80%
    cat.stats[2, views], cat.stats[2, completes] = 1000, 100
    tot = totals(cat)
    base = (tot[completes] + DEFAULT["complete"] * 50) / (tot[views] + 50)
    p = HeuristicRanker().predict(cat, UserState(), np.array([0, 1, 2, 4]), 1.0, tot)["complete"]
    expected = [(1 + 20 * base) / 21, (800 + 20 * base) / 1020, (100 + 20 * base) / 1020, base]
    assert p.tolist() == pytest.approx(expected)
    assert 0.4 < p[0] < 0.6  # pulled well away from 1.0
    assert p[1] == pytest.approx(0.8, abs=0.02)
    assert p[1] > p[3] > p[2]
    # the prior's strength is a parameter
    weak = HeuristicRanker(prior_views=1.0).predict(cat, UserState(), np.array([0]), 1.0, tot)["complete"]
    assert weak[0] == pytest.approx((1 + base) / 2)


def test_predict_is_pure() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, 3, "view", 10.0, T, TAU)
    stats_before, weights_before = cat.stats.copy(), dict(s.weights)
    first = predict(cat, s, [0, 1, 2])
    second = predict(cat, s, [0, 1, 2])
    assert (cat.stats == stats_before).all() and s.weights == weights_before
    for head in HEADS:
        assert first[head].tolist() == second[head].tolist()


def _scalar_affinity(cat: Catalog, state: UserState, idx: int, scale: float, max_tags: int) -> float:
    """The definition: the user's weights on the item's features, shared out as `item_features` does,
    counting only the first `max_tags` tags."""
    tags = set(cat.item_tags[idx][:max_tags])
    raw = sum(state.weights.get(f, 0.0) * share for f, share in item_features(cat, idx)
              if kind_of(f) != TAG or code_of(f) in tags)
    return math.tanh(raw * scale / 4.0)


def test_vectorised_affinity_matches_the_definition() -> None:
    rng = np.random.default_rng(7)
    cat = Catalog(("us",))
    for k in range(200):
        n_tags = int(rng.integers(0, RANK_TAGS + 3))
        cat.put(item(f"x{k}", creator=f"c{rng.integers(0, 15)}",
                     tags=tuple(f"t{rng.integers(0, 25)}" for _ in range(n_tags)),
                     topic=f"o{rng.integers(0, 6)}" if rng.random() < 0.7 else None,
                     sound=f"s{rng.integers(0, 8)}" if rng.random() < 0.6 else None))
    s = UserState()
    for k in range(40):
        kind = ("view", "like", "not_interested", "share")[k % 4]
        learn_one(s, cat, int(rng.integers(0, 200)), kind, float(rng.uniform(0, 12)), T + 60 * k, TAU)
    assert any(w < 0 for w in s.weights.values()) and any(w > 0 for w in s.weights.values())
    cands = rng.permutation(200)[:150]
    for scale in (1.0, 0.3):
        got = affinity(cat, s, cands, scale)
        want = [_scalar_affinity(cat, s, int(i), scale, RANK_TAGS) for i in cands]
        assert got.tolist() == pytest.approx(want, rel=1e-6, abs=1e-9)  # tag shares are float32 there
    assert affinity(cat, UserState(), cands, 1.0).tolist() == [0.0] * len(cands)
    assert len(affinity(cat, s, np.array([], dtype=np.int64), 1.0)) == 0


def test_affinity_counts_a_tag_and_a_topic_of_the_same_name_separately() -> None:
    cat = Catalog(("us",))
    cat.put(item("a", creator="x", tags=("cats",), topic="cats"))
    cat.put(item("b", creator="y", tags=("cats",), topic="dogs"))
    cat.put(item("c", creator="z", tags=("dogs",), topic="cats"))
    s = UserState()
    s.weights[key(TOPIC, cat.tags.ids["cats"])] = 2.0  # only the topic
    got = affinity(cat, s, np.array([0, 1, 2]), 1.0)
    assert got.tolist() == pytest.approx([math.tanh(0.5), 0.0, math.tanh(0.5)])
