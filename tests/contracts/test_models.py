"""The one conformance suite for the evaluation `Model` protocol (foryou/evaluation/models.py), run on
every model `foryou evaluate` grades. To add a model, add it to `foryou.evaluation.MODELS` (and to
`make_model`): this suite then runs on it.

What every model must do: store its constructor arguments and nothing else; `fit` returns the model and
leaves its input alone; `score` gives one finite row per user over the whole catalogue (cold users and
empty batches included) and is the same for the same seed and data. Online models learn a log in two
parts as they learn it at once; models with heads give probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from foryou.evaluation import MODELS
from foryou.evaluation.dataset import Events
from foryou.evaluation.models import Closeable, Model, Online, WithHeads, top_k
from foryou.evaluation.synthetic import World, make_world
from foryou.evaluation.tuning import make_model

# Small settings, so that the suite stays fast; the defaults are exercised by the harness tests.
PARAMS = {"implicit_als": {"factors": 4}, "item_knn": {"neighbours": 20}}  # 4 factors: the world has 4 groups


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(users=24, items=40, seed=3)


def build(name: str) -> Model:
    return make_model(name, PARAMS.get(name), seed=7)


# Capabilities: each test of one runs on exactly the models that have it (nothing is skipped).
ONLINE = [n for n in MODELS if isinstance(build(n), Online)]
HEADS = [n for n in MODELS if isinstance(build(n), WithHeads)]
PERSONAL = [n for n in MODELS if n not in ("popularity", "recent_popularity")]


@pytest.fixture(params=MODELS)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fitted(name: str, world: World) -> Iterator[Model]:
    model = build(name).fit(world.dataset.catalogue, world.dataset.events.between(stop=world.test_from))
    yield model
    if isinstance(model, Closeable):
        model.close()


def _copy(events: Events) -> Events:
    return Events(*(column.copy() for column in events.columns()))


def test_is_a_model_with_a_name(name: str) -> None:
    model = build(name)
    assert isinstance(model, Model)
    assert model.name == name


def test_constructor_only_stores_arguments(name: str) -> None:
    model = build(name)
    learned = [attr for attr in vars(model) if attr.endswith("_")]
    assert not learned, f"{name}: __init__ set learned state {learned}"


def test_fit_returns_the_model_and_leaves_its_input_alone(name: str, world: World) -> None:
    train = world.dataset.events.between(stop=world.test_from)
    before = _copy(train)
    model = build(name)
    try:
        assert model.fit(world.dataset.catalogue, train) is model
        for old, new in zip(before.columns(), train.columns(), strict=True):
            np.testing.assert_array_equal(old, new)
    finally:
        if isinstance(model, Closeable):
            model.close()


def test_scores_one_finite_row_per_user(fitted: Model, world: World) -> None:
    n_items = world.dataset.catalogue.n_items
    users = np.arange(world.dataset.catalogue.n_users)
    scores = np.asarray(fitted.score(users, world.test_from))
    assert scores.shape == (len(users), n_items)
    assert np.isfinite(scores).all()
    assert np.asarray(fitted.score(users[:0], world.test_from)).shape == (0, n_items)


def test_scores_a_user_it_never_saw(name: str, world: World) -> None:
    events = world.dataset.events.between(stop=world.test_from)
    keep = events.user != 0
    model = build(name).fit(world.dataset.catalogue, Events(*(c[keep] for c in events.columns())))
    try:
        scores = np.asarray(model.score(np.array([0]), world.test_from))
        assert scores.shape == (1, world.dataset.catalogue.n_items)
        assert np.isfinite(scores).all()
    finally:
        if isinstance(model, Closeable):
            model.close()


def test_same_seed_same_data_same_scores(name: str, world: World) -> None:
    train = world.dataset.events.between(stop=world.test_from)
    users = np.arange(world.dataset.catalogue.n_users)
    scores = []
    for _ in range(2):
        model = build(name).fit(world.dataset.catalogue, train)
        scores.append(np.asarray(model.score(users, world.test_from)).copy())
        if isinstance(model, Closeable):
            model.close()
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)


@pytest.mark.parametrize("name", ONLINE)
def test_online_models_learn_in_parts_as_at_once(name: str, world: World) -> None:
    model = build(name)
    assert isinstance(model, Online)
    events = world.dataset.events.between(stop=world.test_from)
    half = float(events.ts[len(events) // 2])
    users = np.arange(world.dataset.catalogue.n_users)
    whole = build(name).fit(world.dataset.catalogue, events)
    try:
        model.fit(world.dataset.catalogue, events.between(stop=half))
        model.learn_many(events.between(half))
        np.testing.assert_allclose(model.score(users, world.test_from), whole.score(users, world.test_from),
                                   rtol=1e-6)
    finally:
        for m in (model, whole):
            if isinstance(m, Closeable):
                m.close()


@pytest.mark.parametrize("name", HEADS)
def test_heads_are_probabilities(fitted: Model, world: World) -> None:
    assert isinstance(fitted, WithHeads)
    test = world.dataset.events.between(world.test_from)
    preds = fitted.predict_heads(test.user, test.item, world.test_from)
    assert set(preds) == set(fitted.heads)
    for head, p in preds.items():
        assert p.shape == (len(test),), head
        assert ((p >= 0) & (p <= 1)).all(), head
    assert all(len(p) == 0 for p in fitted.predict_heads(test.user[:0], test.item[:0], world.test_from).values())


@pytest.mark.parametrize("name", PERSONAL)
def test_learns_the_world(fitted: Model, world: World) -> None:
    """Every model but the popularity ones fills most of a user's top 5 (of the items they have not
    interacted with) from their own group, where chance would give a quarter."""
    catalogue, train = world.dataset.catalogue, world.dataset.events.between(stop=world.test_from)
    users = np.arange(catalogue.n_users)
    top = top_k(fitted.score(users, world.test_from), 5, np.zeros(catalogue.n_items), train.user, train.item)
    own = world.group_of_item[top] == world.group_of_user[:, None]
    assert own.mean() > 0.5
