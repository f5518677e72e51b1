"""Slot selection (policy/arrange.py). First the adjacency rule alone: no two consecutive items from the
same creator or with the same sound, within a response and across consecutive ones; yield (take the
best) only when nothing else remains. Then the topic-run caps, similarity (MMR) and reserved slots."""

from __future__ import annotations

import numpy as np
import pytest

from foryou.catalog import STATS, Catalog
from foryou.policy import Limits, Pools, Recent, select
from foryou.policy.arrange import similarity
from foryou.types import ItemRecord

NO_TOPICS = Limits(topic_cap=1000, sensitive_cap=1000, mmr_lambda=0.0)
NO_RECENT = Recent()


def conflicts(c1: int, s1: int, c2: int, s2: int) -> bool:
    return c1 == c2 or (s2 >= 0 and s1 == s2)


def run(creators: list[int], sounds: list[int], n: int, order: list[int] | None = None,
        last_creator: int = -1, last_sound: int = -1) -> list[int]:
    order = order if order is not None else list(range(len(creators)))
    m = len(creators)
    utility = np.zeros(m)
    utility[order] = -np.arange(len(order), dtype=np.float64)  # best first
    chosen = select(utility, np.array(creators, dtype=np.int32), np.array(sounds, dtype=np.int32),
                    np.full(m, -1), np.full((m, 4), -1), np.zeros(m, np.bool_), n,
                    Recent(creator=last_creator, sound=last_sound), NO_TOPICS)
    return chosen.picks


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


def pick(utility: list[float], topics: list[int], n: int, limits: Limits, recent: Recent = NO_RECENT,
         sensitive: list[bool] | None = None, tags: list[list[int]] | None = None,
         slots: list[str] | None = None, groups: dict[str, list[float]] | None = None) -> list[int]:
    m = len(utility)
    tag_cols = np.array(tags, dtype=np.int64) if tags else np.full((m, 4), -1)
    chosen = select(np.array(utility), np.arange(m), np.full(m, -1), np.array(topics), tag_cols,
                    np.array(sensitive or [False] * m), n, recent, limits, slots or (),
                    {k: np.array(v) for k, v in (groups or {}).items()})
    return chosen.picks


def test_topic_runs_are_capped_within_and_across_responses() -> None:
    limits = Limits(topic_cap=2, sensitive_cap=9, mmr_lambda=0.0)
    # five of topic 1 valued above three of topic 2: no more than two of topic 1 in a row
    picks = pick([9, 8, 7, 6, 5, 4, 3, 2], [1, 1, 1, 1, 1, 2, 2, 2], 8, limits)
    assert picks == [0, 1, 5, 2, 3, 6, 4, 7]
    # the previous response ended with two of topic 1: the next starts with another topic
    assert pick([9, 1], [1, 2], 1, limits, Recent(topic=1, topic_run=2)) == [1]
    assert pick([9, 1], [1, 2], 1, limits, Recent(topic=1, topic_run=1)) == [0]


def test_sensitive_topics_are_dispersed_across_topics() -> None:
    limits = Limits(topic_cap=9, sensitive_cap=1, mmr_lambda=0.0)
    # two different sensitive topics count as one run
    picks = pick([9, 8, 7, 1], [5, 6, 7, 8], 4, limits, sensitive=[True, True, False, False])
    assert picks == [0, 2, 1, 3]
    assert pick([9, 1], [5, 8], 1, limits, Recent(sensitive_run=1), sensitive=[True, False]) == [1]


def test_yields_when_only_one_topic_remains() -> None:
    limits = Limits(topic_cap=1, sensitive_cap=1, mmr_lambda=0.0)
    assert pick([3, 2, 1], [1, 1, 1], 3, limits) == [0, 1, 2]


def test_mmr_trades_value_for_difference() -> None:
    tags = [[1, 2, -1, -1], [1, 2, -1, -1], [3, 4, -1, -1]]
    # without the trade-off the near-duplicate comes second; with it, the different item does
    assert pick([5.0, 4.9, 4.5], [1, 1, 2], 3, Limits(9, 9, 0.0), tags=tags) == [0, 1, 2]
    assert pick([5.0, 4.9, 4.5], [1, 1, 2], 3, Limits(9, 9, 1.0), tags=tags) == [0, 2, 1]
    # ... but not when the value gap is larger than the penalty
    assert pick([5.0, 4.9, 1.0], [1, 1, 2], 3, Limits(9, 9, 1.0), tags=tags) == [0, 1, 2]


def test_similarity() -> None:
    topics = np.array([1, 1, 2, -1, -1])
    tags = np.array([[1, 2, -1, -1], [2, 3, -1, -1], [1, 2, -1, -1], [-1] * 4, [-1] * 4])
    sim = similarity(topics, tags, 0)
    assert sim[0] == 1.0 and sim[1] == 0.5 + 0.5 / 3 and sim[2] == 0.5 and sim[3] == 0.0
    assert similarity(topics, tags, 3)[4] == 0.0  # no topic and no tags: never similar


def test_reserved_slots_take_their_groups_best_member() -> None:
    limits = Limits(9, 9, 0.0)
    inf = float("-inf")
    # slot 1 is for exploration: the group's first-ranked member, whatever its value
    picks = pick([9, 8, 7, 1, 2], [1, 1, 1, 2, 3], 3, limits, slots=["", "explore", ""],
                 groups={"explore": [inf, inf, inf, 0.0, -1.0]})
    assert picks == [0, 3, 1]
    # an urgent pool item goes before a more valuable one of the group
    picks = pick([9, 5, 4], [1, 2, 3], 2, limits, slots=["pool", ""], groups={"pool": [inf, 0.0, 1.0]})
    assert picks == [2, 0]
    # a reserved slot whose group has no allowed member is a regular one
    assert pick([9, 8], [1, 2], 2, limits, slots=["pool", "pool"], groups={"pool": [inf, inf]}) == [0, 1]


def test_steps_name_what_placed_each_item() -> None:
    m = 4
    chosen = select(np.array([9.0, 8.0, 7.0, 1.0]), np.array([0, 0, 1, 2]), np.full(m, -1), np.full(m, -1),
                    np.full((m, 4), -1), np.zeros(m, np.bool_), 3, Recent(), NO_TOPICS, ["", "", "explore"],
                    {"explore": np.array([-np.inf, -np.inf, -np.inf, 0.0])})
    assert chosen.picks == [0, 2, 3]
    assert chosen.steps == [[], ["diversity"], ["exploration"]]  # item 2 went over item 1 (same creator)
    assert chosen.recent.creator == 2 and not chosen.yielded


# -- new-video pools (policy/exposure.py) --
def pool_catalog(n: int, now: float) -> Catalog:
    catalog = Catalog(("us",))
    catalog.put_many([ItemRecord(f"i{k}", f"c{k}", 10.0, now - 60.0 * k) for k in range(n)])
    return catalog


def test_pool_sizes_and_admission() -> None:
    pools = Pools(first=10, growth=3.0, count=3, max_age_s=3600.0)
    assert [pools.size(k) for k in (1, 2, 3)] == [10, 30, 90] and pools.threshold(2) == 40
    catalog = pool_catalog(3, 10_000.0)
    catalog.created_at[2] = 0.0  # an old item (an import) joins no pool
    assert pools.admit(catalog, [0, 1, 2], 10_000.0) == [0, 1]
    assert pools.exposure(catalog, 2)["status"] == "none" and pools.exposure(catalog, 0)["status"] == "waiting"


def test_full_pools_are_decided_against_their_peers() -> None:
    pools = Pools(first=4, growth=2.0, count=2, eval_delay_s=10.0)
    catalog = pool_catalog(4, 0.0)
    pools.admit(catalog, [0, 1, 2, 3], 0.0)
    stats = catalog.stats
    for i, done in zip(range(4), (4, 3, 1, 0), strict=True):  # views, and how many were finished
        stats[i, STATS["served"]] = stats[i, STATS["views"]] = 4
        stats[i, STATS["completions"]] = done
    pools.served(catalog, [0, 1, 2, 3], 5.0)
    assert pools.evaluating == {0: 5.0, 1: 5.0, 2: 5.0, 3: 5.0} and not pools.active
    totals = catalog.stats[:4].sum(axis=0)
    assert pools.tick(catalog, 10.0, totals) == []  # the views and actions of the last impressions may come
    assert sorted(pools.tick(catalog, 15.0, totals)) == [0, 1, 2, 3]
    assert [pools.exposure(catalog, i)["status"] for i in range(4)] == ["in_pool", "in_pool", "held", "held"]
    assert pools.exposure(catalog, 0)["pools"][0]["outcome"] == "promoted" and pools.active == {0, 1}


def test_pool_candidates_put_an_item_waiting_too_long_first() -> None:
    pools = Pools(first=10, growth=2.0, within_s=600.0)
    catalog = pool_catalog(3, 1000.0)  # created at 1000, 940, 880
    pools.admit(catalog, [0, 1, 2], 1000.0)
    stats = catalog.stats
    stats[2, STATS["pool"]] = 2  # the oldest was promoted: at the start of pool 2, no progress in it
    stats[2, STATS["served"]], stats[2, STATS["first_served"]] = 10.0, 950.0
    stats[0, STATS["served"]], stats[0, STATS["first_served"]] = 1.0, 1000.0
    everything = lambda i: np.ones(len(i), np.bool_)  # noqa: E731
    idx, urgent = pools.candidates(catalog, everything, 1100.0, 5)  # nobody has waited too long yet
    assert idx.tolist() == [2, 1, 0] and not urgent.any()  # no progress first, the older first
    idx, urgent = pools.candidates(catalog, everything, 1300.0, 5)  # item 1 has waited 360 s of 600
    assert idx.tolist() == [1, 2, 0] and urgent.tolist() == [1.0, 0.0, 0.0]
    idx, urgent = pools.candidates(catalog, lambda i: i != 1, 1300.0, 5)
    assert idx.tolist() == [2, 0] and not urgent.any()


def test_the_last_pool_under_evaluation_is_not_yet_graduated() -> None:
    pools = Pools(first=2, count=2)
    catalog = pool_catalog(1, 0.0)
    catalog.stats[0, STATS["pool"]] = 2.5
    assert pools.exposure(catalog, 0)["status"] == "evaluating"
    catalog.stats[0, STATS["pool"]] = 3
    assert pools.exposure(catalog, 0)["status"] == "graduated"


def test_items_whose_pool_never_fills_are_held_after_a_while() -> None:
    pools = Pools(first=10, expire_s=1000.0)
    catalog = pool_catalog(2, 0.0)  # created at 0 and -60
    pools.admit(catalog, [0, 1], 0.0)
    totals = catalog.stats[:2].sum(axis=0)
    assert pools.tick(catalog, 900.0, totals) == [] and pools.active == {0, 1}
    assert pools.tick(catalog, 1000.0, totals) == [1]  # the older one, 1060 s after its upload
    assert pools.active == {0} and pools.exposure(catalog, 1)["status"] == "held"


@pytest.mark.parametrize("seed", range(60))
def test_selecting_from_the_best_candidates_picks_what_selecting_from_all_does(seed: int) -> None:
    """`select` runs on the best `TOP * n` candidates when that is exact: the same picks, values, steps
    and rule state as the selection over every candidate, whatever the data (few topics, creators and
    tags, so that the rules and MMR bind; ties; groups; sensitive runs)."""
    from foryou.policy.arrange import TOP, _select

    rng = np.random.default_rng(seed)
    count, n = int(rng.integers(2 * TOP * 10 + 1, 2000)), int(rng.integers(1, 12))
    utility = np.round(rng.normal(0, rng.choice([0.05, 0.5, 3.0]), count), int(rng.integers(1, 4)))
    creators = rng.integers(0, rng.integers(1, 30), count)
    sounds = np.where(rng.random(count) < 0.5, rng.integers(0, 5, count), -1)
    topics = np.where(rng.random(count) < 0.9, rng.integers(0, rng.integers(1, 6), count), -1)
    tags = np.where(rng.random((count, 3)) < 0.7, rng.integers(0, 8, (count, 3)), -1)
    sensitive = rng.random(count) < rng.choice([0.0, 0.2, 0.9])
    recent = Recent(int(creators[0]), -1, int(topics[1]), int(rng.integers(0, 5)), int(rng.integers(0, 2)))
    groups = {}
    if seed % 3 == 0:
        groups["explore"] = np.where(rng.random(count) < 0.01, rng.random(count), -np.inf)
    slots = ["explore" if k % 4 == 1 else "" for k in range(n)]
    limits = Limits(topic_cap=int(rng.integers(1, 4)), sensitive_cap=1, mmr_lambda=float(rng.choice([0.0, 0.5, 2.0])))
    fast = select(utility, creators, sounds, topics, tags, sensitive, n, recent, limits, slots, groups)
    full = _select(utility, creators, sounds, topics, tags, sensitive, n, recent, limits, slots, groups)
    assert (fast.picks, fast.values, fast.steps, fast.yielded, fast.recent) == (
        full.picks, full.values, full.steps, full.yielded, full.recent)


def test_groups_covering_every_candidate_select_from_them_all() -> None:
    """A new catalogue is all in the fresh pool: every candidate is a group member, none is left out of
    the best `TOP * n`, and `select` must still pick (a regression: it took the max of nothing, a 500)."""
    from foryou.policy.arrange import TOP

    count = 2 * TOP + 50
    rng = np.random.default_rng(3)
    utility = rng.normal(0, 1, count)
    codes = np.arange(count)
    tags = np.full((count, 1), -1)
    pick = select(utility, codes, codes, codes, tags, np.zeros(count, np.bool_), 1, slots=["pool"],
                  groups={"pool": rng.random(count)})
    assert len(pick.picks) == 1 and pick.steps == [["fresh_pool"]]
