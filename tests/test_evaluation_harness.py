"""foryou/evaluation/harness.py (issue 3, item 7): on a world whose right ranking is known by
construction, a perfect model comes first and a random one last; no event at or after the time of a
ranking reaches any model before it ranks; the daily protocol feeds online models each day and refits
the others; tuning looks only at the validation split."""

from __future__ import annotations

from typing import Self

import numpy as np
import pytest

from foryou.errors import ForYouError
from foryou.evaluation.dataset import Catalogue, Events
from foryou.evaluation.harness import Entry, Outcome, default_entries, evaluate
from foryou.evaluation.models import top_k
from foryou.evaluation.split import DAY_S
from foryou.evaluation.synthetic import World, make_world

FAST_GRIDS = {"implicit_als": ({"factors": 4}, {"factors": 8}), "item_knn": ({"neighbours": 10}, {"neighbours": 50})}


class Oracle:
    """Knows what each user will finish after the split: the perfect ranking."""

    name = "oracle"

    def __init__(self, truth: dict[int, set[int]]) -> None:
        self.truth = truth

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        self.n_items_ = catalogue.n_items
        return self

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        scores = np.zeros((len(users), self.n_items_))
        for row, user in enumerate(users.tolist()):
            scores[row, sorted(self.truth[user])] = 1.0
        return scores


class Random:
    name = "random"

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        self.n_items_ = catalogue.n_items
        self.rng_ = np.random.default_rng(0)
        return self

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        return self.rng_.random((len(users), self.n_items_))


class StaticSpy:
    """Records everything it is fed and asked, in order. It cannot learn online (so the daily protocol
    must refit it) and has no heads."""

    name = "static_spy"

    def __init__(self, log: list[tuple[str, float, float, int]], scale: float = 1.0) -> None:
        self.log = log
        self.scale = scale

    def _fed(self, what: str, events: Events) -> None:
        lo, hi = (float(events.ts.min()), float(events.ts.max())) if len(events) else (np.inf, -np.inf)
        self.log.append((what, lo, hi, len(events)))

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        self._fed("fit", train)
        self.n_items_ = catalogue.n_items
        return self

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        self.log.append(("score", now, now, len(users)))
        return np.zeros((len(users), self.n_items_))


class Spy(StaticSpy):
    """A spy that learns online and predicts a head."""

    name = "spy"
    heads = ("complete",)

    def learn_many(self, events: Events) -> None:
        self._fed("learn", events)

    def predict_heads(self, users: np.ndarray, items: np.ndarray, now: float) -> dict[str, np.ndarray]:
        self.log.append(("heads", now, now, len(users)))
        return {"complete": np.full(len(users), 0.5)}


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(seed=0)


@pytest.fixture(scope="module")
def outcome(world: World) -> Outcome:
    entries = [Entry(e.name, e.build, FAST_GRIDS.get(e.name, ())) for e in default_entries(seed=1)]
    entries += [Entry("oracle", lambda: Oracle(world.truth)), Entry("random", Random)]
    return evaluate(world.dataset, world.test_from, entries)


def test_perfect_model_first_random_last(outcome: Outcome) -> None:
    split = {name: m["ndcg@10"] for name, m in outcome.split.models.items()}
    assert split["oracle"] == pytest.approx(1.0)
    assert max(split, key=lambda n: split[n]) == "oracle"
    assert min(split, key=lambda n: split[n]) == "random"
    assert sorted(split.values()).count(split["oracle"]) == 1
    daily = {name: m["ndcg@10"] for name, m in outcome.daily.models.items()}
    assert max(daily, key=lambda n: daily[n]) == "oracle"
    assert min(daily, key=lambda n: daily[n]) == "random"


def test_every_real_model_beats_random_and_personalised_ones_beat_popularity(outcome: Outcome) -> None:
    m = {name: v["recall@10"] for name, v in outcome.split.models.items()}
    for name in ("foryou", "foryou_heuristic", "popularity", "recent_popularity", "item_knn", "implicit_als"):
        assert m[name] > m["random"], name
    for name in ("foryou", "item_knn"):
        assert m[name] > m["popularity"], name


def test_outcome_covers_every_model_protocol_and_day(outcome: Outcome, world: World) -> None:
    names = ["foryou", "foryou_heuristic", "popularity", "recent_popularity", "item_knn", "implicit_als", "oracle",
             "random"]
    assert list(outcome.split.models) == names
    assert list(outcome.daily.models) == names
    assert [at for at, _ in outcome.days] == [world.test_from, world.test_from + DAY_S]
    assert outcome.daily.users == sum(day.users for _, day in outcome.days)
    assert outcome.split.users == len(world.truth)
    assert outcome.learning["foryou"] == "online" and outcome.learning["popularity"] == "refit daily"
    assert set(outcome.tuning) == {"item_knn", "implicit_als"}
    assert "auc:complete" in outcome.split.models["foryou"]
    assert "auc:complete" in outcome.split.models["popularity"]  # the item-rate reference
    assert "auc:complete" not in outcome.split.models["item_knn"]
    assert outcome.split.models["foryou"]["gauc:complete"] > outcome.split.models["popularity"]["gauc:complete"]


def _check_no_leak(log: list[tuple[str, float, float, int]]) -> None:
    """Every event fed before a ranking (or head prediction) at `now` happened before `now`, and head
    predictions at `now` come only after the ranking at `now`."""
    latest_fed = -np.inf
    ranked_at: set[float] = set()
    for what, lo, hi, _ in log:
        if what == "fit":
            latest_fed = hi
        elif what == "learn":
            latest_fed = max(latest_fed, hi)
        else:
            assert latest_fed < lo, f"{what} at {lo} after being fed an event at {latest_fed}"
            if what == "score":
                ranked_at.add(lo)
            else:
                assert lo in ranked_at, "head predictions asked before the lists were made"


def test_no_test_event_reaches_a_model_before_it_ranks(world: World) -> None:
    online_log: list[tuple[str, float, float, int]] = []
    static_log: list[tuple[str, float, float, int]] = []
    grid = ({"scale": 1.0}, {"scale": 2.0})
    evaluate(world.dataset, world.test_from, [
        Entry("spy", lambda scale=1.0: Spy(online_log, scale), grid),
        Entry("static_spy", lambda scale=1.0: StaticSpy(static_log, scale), grid),
    ])
    _check_no_leak(online_log)
    _check_no_leak(static_log)
    events = world.dataset.events
    valid_from = events.ts[0] + 0.85 * (world.test_from - events.ts[0])
    # tuning: two fits on the events before valid_from, each ranked at valid_from
    for log in (online_log, static_log):
        tuning = log[:4]
        assert [w for w, *_ in tuning] == ["fit", "score", "fit", "score"]
        assert tuning[0][3] == len(events.between(stop=valid_from)) and tuning[1][1] == pytest.approx(valid_from)
    # the online spy: one fit up to the split, then exactly each day's events
    fed = [entry for entry in online_log[4:] if entry[0] in ("fit", "learn")]
    day2 = world.test_from + DAY_S
    assert [(w, n) for w, _, _, n in fed] == [("fit", len(events.between(stop=world.test_from))),
                                              ("learn", len(events.between(world.test_from, day2)))]
    assert [w for w, *_ in online_log[4:]].count("heads") == 3  # split, day 1, day 2
    # the static spy is refitted on everything before day 2, and never asked for heads
    fits = [(w, n) for w, _, _, n in static_log[4:] if w == "fit"]
    assert fits == [("fit", len(events.between(stop=world.test_from))), ("fit", len(events.between(stop=day2)))]
    assert all(w != "heads" for w, *_ in static_log)


def test_evaluate_refuses_a_split_outside_the_log(world: World) -> None:
    events = world.dataset.events
    with pytest.raises(ForYouError, match="inside the event log"):
        evaluate(world.dataset, float(events.ts[0]) - 1.0, [Entry("random", Random)])
    with pytest.raises(ForYouError, match="valid_from"):
        evaluate(world.dataset, world.test_from, [Entry("random", Random)], valid_from=world.test_from + 1)


def test_top_k_excludes_breaks_ties_by_prior_then_index() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, np.nan]])
    prior = np.array([0.0, 0.1, 0.9, 0.5, 0.2])
    top = top_k(scores, 3, prior, excluded_rows=np.array([0]), excluded_items=np.array([3]))
    assert top[0].tolist() == [2, 1, 0]  # 3 and 3 tied: the more popular first; item 3 excluded
    assert top[1].tolist() == [2, 3, 1]  # all tied but item 4's NaN (worst of all): by prior
    assert top_k(scores, 10, prior, np.array([], dtype=int), np.array([], dtype=int)).shape == (2, 5)
    assert scores[0, 3] == 2.0  # the model's array is left alone
