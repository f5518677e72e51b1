"""Bounded cost per feed request (issue 12, first finding): caps on blocked keywords, a filter whose
work is bounded by the caps and not by how many keywords there are, no whole-catalogue scan (a sweep
of a bounded stretch per request, which still reaches every eligible item over successive requests)
and a time budget counted in /metrics. Work is counted, not timed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MakeClient
from factories import Clock

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.errors import InvalidInput
from foryou.feed import POOL_CANDIDATES, SWEEP_MOST
from foryou.policy.controls import KeywordFilter
from foryou.types import ControlsIn, ItemIn, UserIn, format_time

T0 = 1_700_000_000.0
WORDS = ["a", "the", "cat", "dog", "fun", "day", "my", "new", "best", "life", "love", "food"]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    e = Engine.open(settings, clock=Clock(T0), seed=0)
    yield e
    e.close()


def world(n: int, seed: int = 0) -> list[ItemIn]:
    """Items whose captions are ten common words each, over 20 topics."""
    rng = np.random.default_rng(seed)
    return [ItemIn(id=f"v{k}", creator=f"c{k % 97}", duration_s=20.0, caption=" ".join(rng.choice(WORDS, 10)),
                   tags=[f"topic{k % 20}"], created_at=format_time(T0 - 5 * 86400)) for k in range(n)]


def worst_keywords(longest: int = 8, total: int = 400, count: int = 200, seed: int = 1) -> list[str]:
    """As much as the caps allow: `count` keywords of common words, phrases up to `longest` words,
    `total` words in all; "cat" first (it alone blocks most items, so the sources run dry)."""
    rng = np.random.default_rng(seed)
    out, used = ["cat"], 1
    while len(out) < count:
        length = longest if len(out) < 8 else 2
        if used + length > total:
            break
        out.append(" ".join(rng.choice(WORDS, length)))
        used += length
    return out


# -- caps --

def test_caps_on_blocked_keywords_are_a_422_naming_the_limit(engine: Engine) -> None:
    engine.users.put("u", UserIn())
    engine.users.set_controls("u", ControlsIn(blocked_keywords=["cat"]))
    with pytest.raises(InvalidInput, match=r"policy\.max_phrase_words") as long_phrase:
        engine.users.set_controls("u", ControlsIn(blocked_keywords=["a " * 9]))
    assert long_phrase.value.errors[0].index == 0
    with pytest.raises(InvalidInput, match=r"policy\.max_keyword_words"):
        engine.users.set_controls("u", ControlsIn(blocked_keywords=[f"w{k} x{k} y" for k in range(134)]))
    assert engine.users.controls("u")["blocked_keywords"] == ["cat"]  # nothing changed


def test_caps_over_http(make_client: MakeClient) -> None:
    client = make_client()
    client.put("/v1/users/u", json={})
    r = client.put("/v1/users/u/controls", json={"blocked_keywords": ["a a a a a a a a a"]})
    assert r.status_code == 422 and "policy.max_phrase_words" in r.text
    assert client.get("/v1/users/u/controls").json()["blocked_keywords"] == []


# -- the filter's work is bounded by the caps --

def test_filter_work_is_bounded_by_the_longest_keyword_not_the_count(engine: Engine) -> None:
    engine.items.upsert(world(500))
    catalog = engine.live.catalog
    idx = np.arange(len(catalog))
    words_seen = int(catalog.term_len[idx].sum())
    few = KeywordFilter(catalog, tuple(worst_keywords(count=5)))
    many = KeywordFilter(catalog, tuple(worst_keywords(count=200)))
    assert len(many.keywords) > 150
    blocked_few, blocked_many = few.blocked(idx), many.blocked(idx)
    assert few.work == many.work  # the same passes, however many keywords
    assert many.work <= words_seen * 8  # policy.max_phrase_words
    assert blocked_many.sum() > blocked_few.sum() > 0 and not (blocked_few & ~blocked_many).any()


def test_filter_matches_as_a_naive_scan_would(engine: Engine) -> None:
    """The hashed matcher blocks exactly the items whose caption or a tag holds a keyword's words in a row."""
    engine.items.upsert(world(300, seed=4))
    catalog = engine.live.catalog
    keywords = ["cat", "fun day", "the best new life", "dogs", "topic3", "no such words", "love food love"]
    got = KeywordFilter(catalog, tuple(keywords)).blocked(np.arange(len(catalog)))
    from foryou.catalog import words

    def naive(item: ItemIn) -> bool:
        fields = [words(item.caption or ""), *(words(t) for t in item.tags)]
        for keyword in keywords:
            seq = words(keyword)
            if any(f[i:i + len(seq)] == seq for f in fields for i in range(len(f) - len(seq) + 1)):
                return True
        return False

    expected = np.asarray([naive(i) for i in world(300, seed=4)])
    assert 0 < expected.sum() < len(expected)
    assert (got == expected).all()


def test_a_feed_filters_a_bounded_number_of_items(engine: Engine) -> None:
    """The worst keywords within the caps, on a catalogue where they block nearly everything: each
    feed looks at the sources' candidates, a bounded stretch of the catalogue and a bounded slice of
    the new-video pools, never the whole catalogue."""
    engine.items.upsert(world(20_000))
    engine.users.put("u", UserIn())
    engine.users.set_controls("u", ControlsIn(blocked_keywords=worst_keywords()))
    catalog = engine.live.catalog
    whole = KeywordFilter(catalog, tuple(worst_keywords()))
    assert whole.blocked(np.arange(len(catalog))).mean() > 0.9  # nearly everything is blocked
    per_item = int(catalog.term_len[: len(catalog)].max())
    budgets = engine.settings.budgets
    sources = sum(vars(budgets).values()) * 2 + 60 * 3 + POOL_CANDIDATES * 20  # generous: every source's proposals
    bound = (sources + 2 * SWEEP_MOST) * per_item * 8
    for _ in range(5):
        engine.feeds.feed("u", 10)
        user = engine.live.users["u"]
        assert user.keywords is not None
        work, user.keywords.work = user.keywords.work, 0
        assert 0 < work <= bound
        assert work * 5 < whole.work  # a fraction of what filtering the whole catalogue once costs


# -- no whole-catalogue scan, yet nothing eligible is out of reach --

def test_the_feed_reaches_every_eligible_item_a_bounded_stretch_at_a_time(engine: Engine) -> None:
    n = 3 * SWEEP_MOST
    items = [ItemIn(id=f"v{k}", creator=f"c{k}", duration_s=20.0, caption="a cat video", tags=[f"t{k % 7}"],
                     created_at=format_time(T0 - 5 * 86400)) for k in range(n)]
    rng = np.random.default_rng(3)
    spared = sorted(rng.choice(n, 12, replace=False).tolist())
    for k in spared:
        items[k] = ItemIn(id=f"v{k}", creator=f"c{k}", duration_s=20.0, caption="a dog video", tags=["t0"],
                          created_at=format_time(T0 - 5 * 86400))
    engine.items.upsert(items)
    engine.users.put("u", UserIn())
    engine.users.set_controls("u", ControlsIn(blocked_keywords=["cat"]))
    served: list[str] = []
    for _ in range(12):
        served += [i.id for i in engine.feeds.feed("u", 10).items]
    assert sorted(served, key=lambda s: int(s[1:])) == [f"v{k}" for k in spared]


# -- the time budget --

def test_a_feed_over_its_budget_returns_what_it_has_and_is_counted(make_client: MakeClient) -> None:
    client = make_client(**{"server.feed_budget_ms": 0.001, "learning.enabled": False})
    client.post("/v1/items", json={"items": [i.model_dump(exclude_none=True) for i in world(3000)]})
    client.put("/v1/users/u", json={})
    client.put("/v1/users/u/controls", json={"blocked_keywords": ["cat"]})
    r = client.get("/v1/users/u/feed?n=10")
    assert r.status_code == 200
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    assert engine.live.users["u"].sweep_at == -1  # the sweep was skipped: no time was left for it
    assert "foryou_feed_budget_exceeded_total 1" in client.get("/metrics").text
    relaxed = make_client(**{"learning.enabled": False})
    relaxed.post("/v1/items", json={"items": [i.model_dump(exclude_none=True) for i in world(50)]})
    relaxed.get("/v1/users/u/feed?n=10")
    assert "feed_budget_exceeded_total" not in relaxed.get("/metrics").text


# -- catalogue-wide sums are kept, not recomputed on a request --

def test_totals_and_topic_counts_are_kept_as_a_full_recount_would_give(engine: Engine) -> None:
    from foryou.types import EventIn

    engine.items.upsert([*world(300), ItemIn(id="solo", creator="c", duration_s=20.0, tags=["lonely"])])
    engine.events.ingest([EventIn(user="u0", item="solo", type="view", watch_s=20.0)])
    engine.items.upsert([ItemIn(id="solo", creator="c", duration_s=20.0, tags=["elsewhere"])])  # lonely: no items
    rng = np.random.default_rng(9)
    kinds = ["view", "view", "view", "like", "share", "follow"]
    for _ in range(5):
        events = []
        for _ in range(200):
            kind = str(rng.choice(kinds))
            events.append(EventIn(user=f"u{int(rng.integers(30))}", item=f"v{int(rng.integers(300))}", type=kind,
                                  watch_s=float(rng.choice([1.0, 20.0])) if kind == "view" else None))
        engine.events.ingest(events)
        engine.feeds.feed(f"u{int(rng.integers(30))}", 10)
        # an item moves to another topic, and a new topic appears: what it was watched moves with it
        k = int(rng.integers(300))
        engine.items.upsert([ItemIn(id=f"v{k}", creator="c", duration_s=20.0, tags=[f"fresh{k}"])])
    catalog, live = engine.live.catalog, engine.live
    n = len(catalog)
    assert np.allclose(live.totals()[:10], catalog.stats[:n].sum(axis=0)[:10])  # the public counters
    views, completions = live.topic_counts()
    topics = catalog.topic[:n]
    size = len(catalog.tags)
    expected_views = np.bincount(topics, catalog.stats[:n, 1], minlength=size)
    expected_views[np.bincount(topics, minlength=size) == 0] = -1.0
    assert np.allclose(views, expected_views)
    assert np.allclose(completions, np.bincount(topics, catalog.stats[:n, 3], minlength=size))
    assert (views > 0).sum() > 5 and (views == -1).any()  # the world is not trivial: topics left behind
