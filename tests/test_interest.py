"""A user's interest state: learn_one moves weights the right way, decays with time, round-trips by name."""

from __future__ import annotations

import math

import orjson
import pytest
from factories import item

from foryou.catalog import Catalog
from foryou.interest import (
    CREATOR,
    MAX_FEATURES,
    RECENT,
    SOUND,
    TAG,
    TOPIC,
    UserState,
    code_of,
    decay,
    dumps,
    dumps_json,
    item_features,
    key,
    learn_one,
    loads,
    prune,
    seed_interests,
)
from foryou.seen import Seen

HALF_LIFE = 72 * 3600.0
TAU = HALF_LIFE / math.log(2)
T = 1_700_000_000.0


def world() -> Catalog:
    cat = Catalog(("us",))
    cat.put(item("cat1", creator="alice", tags=("cats", "pets"), topic="animals", sound="meow"))
    cat.put(item("cat2", creator="alice", tags=("cats",), topic="animals"))
    cat.put(item("car1", creator="bob", tags=("cars",), topic="motors", sound="vroom"))
    for k in range(12):
        cat.put(item(f"f{k}", creator=f"fc{k}", tags=("food",)))
    return cat


def f(cat: Catalog, kind: int, name: str) -> int:
    vocab = {TAG: cat.tags, TOPIC: cat.tags, CREATOR: cat.creators, SOUND: cat.sounds}[kind]
    return key(kind, vocab.ids[name])


def by_name(state: UserState, cat: Catalog, now: float) -> dict[str, float]:
    """Effective weights at `now`, keyed by name (independent of vocabulary codes)."""
    data = orjson.loads(dumps_json(state, cat))
    factor = decay(state, now, TAU)
    return {f"{kind}:{name}": w * factor for kind, group in data["w"].items() for name, w in group.items()}


def test_item_features() -> None:
    cat = world()
    feats = dict(item_features(cat, cat.index["cat1"]))
    assert feats == {
        f(cat, TAG, "cats"): pytest.approx(1 / math.sqrt(2)), f(cat, TAG, "pets"): pytest.approx(1 / math.sqrt(2)),
        f(cat, TOPIC, "animals"): 1.0, f(cat, CREATOR, "alice"): 0.8, f(cat, SOUND, "meow"): 0.5,
    }
    assert f(cat, TAG, "cats") != f(cat, TOPIC, "cats")


def test_completion_raises_every_feature_of_the_item() -> None:
    cat = world()
    s = UserState()
    strength = learn_one(s, cat, cat.index["cat1"], "view", 10.0, T, TAU)
    assert strength == pytest.approx(1.0)
    for kind, name in ((TAG, "cats"), (TAG, "pets"), (TOPIC, "animals"), (CREATOR, "alice"), (SOUND, "meow")):
        assert s.weights[f(cat, kind, name)] > 0
    assert f(cat, TAG, "cars") not in s.weights
    assert s.weights[f(cat, TOPIC, "animals")] == pytest.approx(1.0)
    assert s.weights[f(cat, CREATOR, "alice")] == pytest.approx(0.8)


def test_early_swipe_lowers_and_completion_beats_partial() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["car1"], "view", 0.5, T, TAU)
    assert s.weights[f(cat, TOPIC, "motors")] < 0
    assert s.weights[f(cat, CREATOR, "bob")] < 0
    full, partial = UserState(), UserState()
    learn_one(full, cat, cat.index["cat1"], "view", 10.0, T, TAU)
    learn_one(partial, cat, cat.index["cat1"], "view", 6.0, T, TAU)
    topic = f(cat, TOPIC, "animals")
    assert full.weights[topic] > partial.weights[topic] > 0


@pytest.mark.parametrize(("kind", "sign"), [
    ("like", 1), ("comment", 1), ("share", 1), ("follow", 1), ("not_interested", -1), ("report", -1)])
def test_actions_move_weights_by_sign(kind: str, sign: int) -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat2"], kind, 0.0, T, TAU)
    assert s.weights[f(cat, TOPIC, "animals")] * sign > 0
    assert s.weights[f(cat, CREATOR, "alice")] * sign > 0


def test_report_outweighs_a_like() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat2"], "like", 0.0, T, TAU)
    learn_one(s, cat, cat.index["cat2"], "report", 0.0, T, TAU)
    assert s.weights[f(cat, TOPIC, "animals")] < 0


def test_views_are_excluded_and_follows_recorded() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat1"], "view", 0.1, T, TAU)
    learn_one(s, cat, cat.index["car1"], "like", 0.0, T, TAU)
    assert set(s.excluded) == {cat.index["cat1"]}
    assert s.follows == set()
    learn_one(s, cat, cat.index["car1"], "follow", 0.0, T, TAU)
    assert s.follows == {cat.creators.ids["bob"]}


def test_decay_halves_per_half_life() -> None:
    cat = world()
    s = UserState()
    assert decay(s, T, TAU) == 1.0  # no reference yet
    learn_one(s, cat, cat.index["cat2"], "view", 10.0, T, TAU)
    assert decay(s, T, TAU) == pytest.approx(1.0)
    assert decay(s, T + HALF_LIFE, TAU) == pytest.approx(0.5)
    assert decay(s, T + 3 * HALF_LIFE, TAU) == pytest.approx(0.125)
    w = by_name(s, cat, T + HALF_LIFE)
    assert w["o:animals"] == pytest.approx(0.5)


def test_later_events_count_more_than_older_ones() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat2"], "view", 10.0, T, TAU)  # animals at T
    learn_one(s, cat, cat.index["car1"], "view", 10.0, T + HALF_LIFE, TAU)  # motors one half-life later
    now = T + 2 * HALF_LIFE
    w = by_name(s, cat, now)
    assert w["o:animals"] == pytest.approx(0.25)
    assert w["o:motors"] == pytest.approx(0.5)


def test_rebase_keeps_effective_weights() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat2"], "like", 0.0, T, TAU)
    learn_one(s, cat, cat.index["car1"], "like", 0.0, T + 25 * TAU, TAU)
    far = T + 31 * TAU  # past the rebase threshold
    learn_one(s, cat, cat.index["f0"], "like", 0.0, far, TAU)
    assert s.ref == far
    assert all(math.isfinite(w) for w in s.weights.values())
    w = by_name(s, cat, far)
    assert w["o:food"] == pytest.approx(1.0)
    assert w["o:motors"] == pytest.approx(math.exp(-6.0), rel=1e-6)
    assert w.get("o:animals", 0.0) == pytest.approx(0.0, abs=1e-9)  # e**-31: negligible, may be pruned


def test_recent_positives() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat1"], "view", 5.0, T, TAU)  # partial: not a strong positive
    learn_one(s, cat, cat.index["cat2"], "like", 0.0, T, TAU)
    assert s.recent == [cat.index["cat2"]]
    for k in range(10):
        learn_one(s, cat, cat.index[f"f{k}"], "view", 10.0, T + k, TAU)
    assert s.recent == [cat.index[f"f{k}"] for k in range(10 - RECENT, 10)]
    learn_one(s, cat, cat.index["f5"], "share", 0.0, T + 20, TAU)  # again: moves to the end, no duplicate
    assert s.recent[-1] == cat.index["f5"] and s.recent.count(cat.index["f5"]) == 1 and len(s.recent) == RECENT
    learn_one(s, cat, cat.index["f9"], "not_interested", 0.0, T + 21, TAU)
    assert s.recent[-1] == cat.index["f5"]


def test_seed_interests() -> None:
    cat = world()
    s = UserState()
    seed_interests(s, cat, ("cats", "unknown-tag"), T, TAU)
    assert s.ref == T
    assert s.weights[f(cat, TAG, "cats")] == pytest.approx(1.0)
    assert s.weights[f(cat, TOPIC, "cats")] == pytest.approx(1.0)
    assert len(s.weights) == 2


def test_states_saved_as_json_by_earlier_versions_load_by_name() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat1"], "view", 10.0, T, TAU)
    learn_one(s, cat, cat.index["car1"], "view", 0.5, T + 60, TAU)
    learn_one(s, cat, cat.index["car1"], "follow", 0.0, T + 70, TAU)
    s.last_creator = cat.creators.ids["alice"]
    s.last_sound = cat.sounds.ids["vroom"]
    blob = dumps_json(s, cat)

    # a catalogue built in another order: every vocabulary code differs
    other = Catalog(("us",))
    for k in reversed(range(12)):
        other.put(item(f"f{k}", creator=f"fc{k}", tags=("food",)))
    other.put(item("car1", creator="bob", tags=("cars",), topic="motors", sound="vroom"))
    other.put(item("cat2", creator="alice", tags=("cats",), topic="animals"))
    other.put(item("cat1", creator="alice", tags=("cats", "pets"), topic="animals", sound="meow"))
    assert other.tags.ids["cats"] != cat.tags.ids["cats"]

    back = loads(blob, other)
    assert back.ref == s.ref
    now = T + 100
    assert by_name(back, other, now) == pytest.approx(by_name(s, cat, now))
    assert back.weights[f(other, TOPIC, "animals")] == pytest.approx(s.weights[f(cat, TOPIC, "animals")])
    assert back.weights[f(other, TOPIC, "motors")] == pytest.approx(s.weights[f(cat, TOPIC, "motors")])
    assert {other.creators.names[c] for c in back.follows} == {"bob"}
    assert [other.ids[i] for i in back.recent] == [cat.ids[i] for i in s.recent] == ["cat1", "car1"]
    assert other.creators.names[back.last_creator] == "alice"
    assert other.sounds.names[back.last_sound] == "vroom"
    assert orjson.loads(dumps_json(back, other)) == orjson.loads(blob)


def test_binary_round_trip_keeps_every_field() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["cat1"], "view", 10.0, T, TAU)
    learn_one(s, cat, cat.index["car1"], "follow", 0.0, T + 70, TAU)
    learn_one(s, cat, cat.index["f3"], "not_interested", 0.0, T + 80, TAU)
    s.last_creator, s.last_sound, s.last_topic = cat.creators.ids["alice"], cat.sounds.ids["vroom"], 2
    s.topic_run, s.sensitive_run, s.seq = 3, 1, 12345
    blob = dumps(s, cat)
    assert not blob.startswith(b"{")
    back = loads(blob, cat)
    s.excluded = Seen()  # saved only once the served rows were read (`served_seq`), else read from the log
    assert back == s
    s.excluded, s.served_seq = Seen([cat.index["f3"], cat.index["cat1"], cat.index["car1"]]), 77
    back = loads(dumps(s, cat), cat)
    assert back == s and back.served_seq == 77 and cat.index["car1"] in back.excluded


def test_states_saved_before_the_served_set_was_saved_load_without_it() -> None:
    """Format 1 had no served row mark nor excluded items: such a state reads them from the log."""
    from foryou.interest import _HEAD, _SERVED

    cat = world()
    s = UserState(seq=9, served_seq=5, excluded=Seen([1, 2]))
    learn_one(s, cat, cat.index["cat1"], "like", 0.0, T, TAU)
    blob = dumps(s, cat)
    old = b"\x01" + blob[1:_HEAD.size] + blob[_HEAD.size + _SERVED.size: len(blob) - 4 * 2]
    back = loads(old, cat)
    assert back.served_seq == -1 and len(back.excluded) == 0 and back.weights == s.weights and back.seq == 9


def test_codes_a_catalogue_does_not_know_are_dropped() -> None:
    cat = world()
    s = UserState()
    learn_one(s, cat, cat.index["f11"], "like", 0.0, T, TAU)  # the last creator and tag codes
    learn_one(s, cat, cat.index["cat1"], "like", 0.0, T, TAU)
    small = Catalog(("us",))
    small.put(item("cat1", creator="alice", tags=("cats", "pets"), topic="animals", sound="meow"))
    back = loads(dumps(s, cat), small)
    assert all(code_of(k) < {CREATOR: len(small.creators), SOUND: len(small.sounds)}.get(k >> 32, len(small.tags))
               for k in back.weights)
    assert back.weights and back.recent == [0]  # cat1 is item 0 in both; f11 is not there


def test_round_trip_of_an_empty_state() -> None:
    cat = world()
    back = loads(dumps(UserState(), cat), cat)
    assert back.weights == {} and back.follows == set() and back.recent == []
    assert (back.last_creator, back.last_sound) == (-1, -1)


def test_prune_keeps_the_strongest_weights_strongest_first_ties_in_the_order_they_came() -> None:
    n = MAX_FEATURES + 40
    order = [(k * 7919) % n for k in range(n)]  # magnitudes 0..n-1, shuffled, with alternating signs
    state = UserState(weights={key(TAG, k): (-1.0) ** k * float(m) for k, m in enumerate(order)})
    cut = n - MAX_FEATURES  # the weakest magnitude kept ...
    state.weights[key(SOUND, 1)] = float(cut)  # ... which this ties, coming last: left out
    prune(state)
    kept = list(state.weights.items())
    assert len(kept) == MAX_FEATURES
    assert [abs(w) for _, w in kept] == sorted((abs(w) for _, w in kept), reverse=True)
    assert min(abs(w) for _, w in kept) == cut and key(SOUND, 1) not in state.weights
    assert all(state.weights[key(TAG, k)] == (-1.0) ** k * m for k, m in enumerate(order) if m >= cut)
    small = UserState(weights={key(TAG, 1): 0.5, key(TAG, 2): -2.0})
    prune(small)
    assert list(small.weights) == [key(TAG, 1), key(TAG, 2)]  # under the bound: as it was
