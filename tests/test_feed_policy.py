"""Feed policy end to end, in process: user controls, refresh, the non-personalised feed, "why this
video", the algorithm card, new-video pools, exploration and the topic-run caps. Worlds are small and
synthetic, so each expected answer is known by construction."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from factories import Clock

from foryou.catalog import word_key, words
from foryou.config import load_settings
from foryou.engine import Engine
from foryou.interest import UserState
from foryou.policy import explore_topics
from foryou.topic_views import TopicViews
from foryou.types import ControlsIn, EventIn, ItemIn, UserIn, format_time

T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def open_engine(tmp_path: Path, clock: Clock) -> Iterator[object]:
    opened: list[Engine] = []

    def make(**overrides: object) -> Engine:
        settings = load_settings(overrides={"server.data": str(tmp_path / "data"), "learning.enabled": False,
                                            **overrides}, env={})
        engine = Engine.open(settings, clock=clock, seed=0)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()


def item(item_id: str, topic: str, *, creator: str | None = None, caption: str | None = None,
         tags: list[str] | None = None, sound: str | None = None, age_days: float = 10.0) -> ItemIn:
    return ItemIn(id=item_id, creator=creator or f"c-{item_id}", duration_s=20.0, caption=caption,
                  tags=tags if tags is not None else [topic], topic=topic, sound=sound,
                  created_at=format_time(T0 - age_days * DAY))


def topic_world(topics: int = 6, per_topic: int = 40, age_days: float = 10.0) -> list[ItemIn]:
    return [item(f"t{t}-{k}", f"t{t}", age_days=age_days) for t in range(topics) for k in range(per_topic)]


def view(user: str, item_id: str, watch: float = 20.0) -> EventIn:
    return EventIn(user=user, item=item_id, type="view", watch_s=watch)


def topics_of(engine: Engine, ids: list[str]) -> list[str]:
    catalog = engine.live.catalog
    return [catalog.tags.names[catalog.topic_l[catalog.index[i]]] for i in ids]


def ids(engine: Engine, user: str, n: int = 10) -> list[str]:
    return [i.id for i in engine.feeds.feed(user, n).items]


# -- keyword filters --
def test_words_are_case_folded_and_a_plural_shares_its_singulars_key() -> None:
    assert words("Cats & DOGS, #Puppies!") == words("cat dog puppy") == ["cat", "dog", "puppi"]
    pairs = [("movie", "movies"), ("cookie", "cookies"), ("berry", "berries"), ("size", "sizes"), ("box", "boxes"),
             ("bus", "buses"), ("dish", "dishes"), ("cache", "caches"), ("hero", "heroes"), ("glass", "glasses"),
             ("cat", "cats")]
    assert [word_key(one) for one, _ in pairs] == [word_key(many) for _, many in pairs]
    assert len({word_key(one) for one, _ in pairs}) == len(pairs)  # and the words stay apart
    assert word_key("analysis") == "analysis" and word_key("bus") == "bus"


def test_blocked_keywords_stop_captions_and_tags_singular_or_plural(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine()
    e.items.upsert([
        item("a", "pets", caption="Two CATS playing"), item("b", "pets", tags=["pets", "cat"]),
        item("c", "pets", caption="my kitten"), item("d", "food", caption="extreme dieting plan"),
        item("e", "food", caption="dieting, extreme edition"), item("f", "food", caption="ramen"),
    ])
    e.users.put("u", UserIn())
    assert e.users.set_controls("u", ControlsIn(blocked_keywords=["Cat", "extreme dieting"]))["blocked_keywords"] == [
        "Cat", "extreme dieting"]
    served = set(ids(e, "u", 10))
    assert served == {"c", "e", "f"}  # the phrase must appear in a row: "dieting, extreme" does not match
    assert e.users.controls("u")["blocked_keywords"] == ["Cat", "extreme dieting"]


def test_keyword_filter_applies_from_the_next_request_and_can_be_lifted(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine()
    e.items.upsert([item(f"dog{k}", "pets", caption="dogs") for k in range(6)]
                   + [item(f"x{k}", "food", caption="soup") for k in range(6)])
    e.users.put("u", UserIn())
    e.users.set_controls("u", ControlsIn(blocked_keywords=["dog"]))
    assert not any(i.startswith("dog") for i in ids(e, "u", 6))
    e.users.set_controls("u", ControlsIn(blocked_keywords=[]))
    assert any(i.startswith("dog") for i in ids(e, "u", 6))


# -- topic weights --
def test_topic_weights_shift_frequency_without_removing(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"policy.explore_share": 0.0})
    e.items.upsert(topic_world(topics=2, per_topic=200))
    counts = {}
    for weight in (-1.0, 0.0, 1.0):
        got: Counter[str] = Counter()
        for u in range(8):
            user = f"w{weight}-{u}"
            e.users.put(user, UserIn())
            e.users.set_controls(user, ControlsIn(topic_weights={"t0": weight}))
            for _ in range(3):
                got.update(topics_of(e, ids(e, user, 10)))
        counts[weight] = got["t0"] / sum(got.values())
    assert counts[-1.0] < counts[0.0] < counts[1.0], counts
    assert counts[-1.0] > 0  # less of it, not none
    assert e.users.controls("w1.0-0")["topic_weights"] == {"t0": 1.0}


# -- not interested --
def test_not_interested_mutes_creator_and_sound_for_the_configured_time(open_engine, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"policy.not_interested_days": 10.0})
    e.items.upsert([item(f"x{k}", "t0", creator="bad", sound=None) for k in range(5)]
                   + [item(f"s{k}", "t1", creator=f"o{k}", sound="loud") for k in range(5)]
                   + [item(f"n{k}", f"t{2 + k % 3}") for k in range(60)])
    e.events.ingest([EventIn(user="u", item="x0", type="not_interested"),
                     EventIn(user="u", item="s0", type="not_interested")])
    served = [i for _ in range(4) for i in ids(e, "u", 10)]
    assert not [i for i in served if i[0] in "xs"], served
    clock.advance(11 * DAY)
    later = [i for _ in range(3) for i in ids(e, "u", 10)]
    assert any(i[0] in "xs" for i in later), later


def test_not_interested_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path), "learning.enabled": False}, env={})
    e = Engine.open(settings, clock=clock, seed=0)
    e.items.upsert([item(f"x{k}", "t0", creator="bad") for k in range(5)] + topic_world(3, 10))
    e.events.ingest([EventIn(user="u", item="x0", type="not_interested")])
    e.close()
    again = Engine.open(settings, clock=clock, seed=0)
    try:
        served = [i for _ in range(3) for i in ids(again, "u", 10)]
        assert not [i for i in served if i.startswith("x")]
    finally:
        again.close()


# -- refresh and the non-personalised feed --
def strong_fan(e: Engine, user: str) -> None:
    e.events.ingest([view(user, f"t0-{k}") for k in range(10)] + [view(user, f"t{t}-0", 0.5) for t in range(1, 6)])


def test_refresh_starts_afresh_but_never_repeats(open_engine, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"policy.explore_share": 0.0, "policy.mmr_lambda": 0.0, "policy.topic_run_cap": 100})
    e.items.upsert(topic_world(6, 40))
    strong_fan(e, "u")
    before = ids(e, "u", 10)
    assert topics_of(e, before).count("t0") >= 8
    result = e.users.refresh("u")
    assert result["id"] == "u" and result["refreshed_at"] == format_time(clock.t)
    after = ids(e, "u", 10)
    assert topics_of(e, after).count("t0") <= 5, topics_of(e, after)
    assert not set(after) & set(before)
    assert len(e.live.store.user_events("us", "u")) == 15  # history kept for the user's own export
    assert e.users.controls("u")["refreshed_at"] == result["refreshed_at"]


def test_refresh_holds_after_a_crash(tmp_path: Path, clock: Clock) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path), "policy.explore_share": 0.0}, env={})
    e = Engine.open(settings, clock=clock, seed=0)
    e.items.upsert(topic_world(6, 40))
    strong_fan(e, "u")
    e.users.refresh("u")
    # no clean close: the process dies; replay of the log must not bring the old interests back
    again = Engine.open(settings, clock=clock, seed=0)
    try:
        assert not [w for w in again.live.user("u").state.weights.values() if w > 0]
        assert again.learner.model.users["us"].index.get("u") is None
    finally:
        again.close()


def test_a_non_personalised_feed_ignores_the_profile(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine()
    e.items.upsert(topic_world(6, 40))
    strong_fan(e, "u")
    e.users.put("u", UserIn(personalized=False))
    assert e.users.get("u")["personalized"] is False
    feed = e.feeds.feed("u", 10, explain=True)
    assert topics_of(e, [i.id for i in feed.items]).count("t0") <= 5
    for it in feed.items:
        assert it.explain is not None and it.explain["ranker"] == "not_personalized"
        assert not {"interest", "learned", "coengagement", "follows", "explore"} & set(it.explain["sources"])  # type: ignore[arg-type]
    e.users.put("u", UserIn(personalized=True))
    assert topics_of(e, ids(e, "u", 10)).count("t0") >= 4


# -- explanations and the algorithm card --
def test_explain_gives_sources_predictions_weights_and_policy(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"weights.like": 5.0})
    e.items.upsert(topic_world(3, 20))
    e.users.put("u", UserIn())
    e.users.set_controls("u", ControlsIn(topic_weights={"t1": 0.5}))
    feed = e.feeds.feed("u", 10, explain=True)
    assert feed.items
    for it in feed.items:
        x = it.explain
        assert x is not None and x["sources"] and x["ranker"] == "heuristic"
        assert set(x["predictions"]) >= {"complete", "like", "comment", "share", "follow"}  # type: ignore[arg-type]
        assert x["weights"]["like"] == 5.0  # type: ignore[index]
        assert isinstance(x["policy"], list)
        assert ("topic_weight" in x["policy"]) == (topics_of(e, [it.id]) == ["t1"])
        predictions, weights = x["predictions"], x["weights"]
        hand_set = sum(predictions[h] * w for h, w in weights.items())  # type: ignore[index, union-attr]
        assert x["value"] == pytest.approx(np.log(hand_set), abs=1e-4)  # the ranker's value, on a log scale
        assert x["topic_weight"] == (0.5 if topics_of(e, [it.id]) == ["t1"] else 0.0)
        assert -0.3 - 1e-9 <= x["diversity"] <= 1e-9  # at most mmr_lambda x a similarity of 1
    assert all(i.explain is None for i in e.feeds.feed("v", 5).items)  # only when asked


def test_algorithm_card_shows_the_live_settings(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"weights.share": 7.0, "policy.topic_run_cap": 3})
    card = e.feeds.algorithm()
    assert card["weights"]["share"] == 7.0  # type: ignore[index]
    assert card["policy"]["topic_run_cap"] == 3  # type: ignore[index]
    assert card["ranker"] == "heuristic" and card["learning"]["enabled"] is False  # type: ignore[index]


# -- diversity --
def test_no_topic_run_longer_than_the_cap_across_responses(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"policy.topic_run_cap": 3})
    e.items.upsert(topic_world(6, 40) + [item(f"d{k}", "dieting") for k in range(30)])
    strong_fan(e, "u")
    e.events.ingest([view("u", f"d{k}") for k in range(10)])  # loves a sensitive topic too
    served = [i for _ in range(8) for i in ids(e, "u", 7)]
    topics = topics_of(e, served)
    runs = [len(list(g)) for _, g in itertools.groupby(topics)]
    assert max(runs) <= 3, topics
    assert all(not (a == b == "dieting") for a, b in itertools.pairwise(topics))
    assert topics.count("t0") >= len(topics) // 3  # still mostly what the user likes


def test_a_new_users_first_feed_mixes_topics(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine()
    e.items.upsert(topic_world(10, 20))
    # make topic t0 very popular: a popularity-only feed would be all t0
    e.events.ingest([view(f"p{k}", f"t0-{k % 20}") for k in range(200)])
    first = topics_of(e, ids(e, "new", 10))
    assert len(set(first)) >= 4, first


def test_onboarding_interests_lead_the_first_feed(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine()
    e.items.upsert(topic_world(10, 20))
    e.users.put("u", UserIn(interests=["t3"]))
    assert topics_of(e, ids(e, "u", 10)).count("t3") >= 3


# -- exploration --
def test_thompson_prefers_untried_topics_over_swiped_ones() -> None:
    state = UserState()
    state.topic_views = TopicViews.of({1: (30.0, 0.0), 3: (30.0, 27.0)})  # topic 1 always swiped, topic 3 known-good
    views, completions = np.full(5, 100.0), np.full(5, 50.0)
    rng = np.random.default_rng(0)
    firsts = Counter(explore_topics(state, views, completions, {3}, 1, 2.0, rng)[0] for _ in range(400))
    assert 3 not in firsts  # known topics are never explored
    assert firsts[1] < 10 and firsts[0] > 60 and firsts[2] > 60 and firsts[4] > 60, firsts
    views[4] = -1.0  # no items: never drawn
    assert 4 not in {explore_topics(state, views, completions, {3}, 3, 2.0, rng)[0] for _ in range(50)}


def test_exploration_slots_go_outside_known_interests(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"policy.explore_share": 0.3, "policy.known_topics": 1})
    e.items.upsert(topic_world(6, 40))
    strong_fan(e, "u")
    explored = []
    slots = 0
    for _ in range(6):
        for it in e.feeds.feed("u", 10, explain=True).items:
            slots += 1
            if "exploration" in it.explain["policy"]:  # type: ignore[index, operator]
                explored.append(it.id)
    assert 0.15 * slots <= len(explored) <= 0.45 * slots
    assert "t0" not in topics_of(e, explored)


# -- new videos: staged exposure --
POOLS = {"policy.first_pool": 4, "policy.pool_growth": 2.0, "policy.pool_count": 2, "policy.pool_share": 0.2,
         "policy.pool_eval_delay_s": 5.0, "policy.explore_share": 0.0}


def test_new_videos_get_a_first_pool_then_good_ones_are_promoted(open_engine, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**POOLS)
    e.items.upsert(topic_world(4, 60))  # old catalogue: no pools
    assert e.items.get("t0-0")["exposure"]["status"] == "none"  # type: ignore[index]
    fresh = [item(f"good{k}", f"t{k % 4}", age_days=0.0) for k in range(4)] + [
        item(f"bad{k}", f"t{k % 4}", age_days=0.0) for k in range(4)]
    e.items.upsert(fresh)
    assert e.items.get("good0")["exposure"]["status"] == "waiting"  # type: ignore[index]
    # 40 users, each a fan of one topic (they have finished two of its videos)
    e.events.ingest([view(f"u{u}", f"t{u % 4}-{k}") for u in range(40) for k in range(2)])
    first_seen: dict[str, int] = {}
    for step in range(160):
        user = f"u{step % 40}"
        served = ids(e, user, 10)
        for i in served:
            first_seen.setdefault(i, step)
        # fans finish their topic's old videos and the good new ones, and swipe the rest
        topic = f"t{step % 40 % 4}"
        e.events.ingest([view(user, i, 20.0 if i.startswith("good") or i.startswith(f"{topic}-") else 0.5)
                         for i in served])
        clock.advance(10)
        e.live.maybe_checkpoint()
    assert all(f"{k}{j}" in first_seen and first_seen[f"{k}{j}"] < 40 for k in ("good", "bad") for j in range(4))
    for j in range(4):
        good, bad = e.items.get(f"good{j}")["exposure"], e.items.get(f"bad{j}")["exposure"]
        assert good["pools"][0]["outcome"] == "promoted" and good["pool"] == 2, good  # type: ignore[index]
        assert bad["status"] == "held" and bad["pool"] == 1, bad  # type: ignore[index]
        assert good["first_served_at"] is not None  # type: ignore[index]
        assert e.items.get(f"good{j}")["stats"]["served"] > e.items.get(f"bad{j}")["stats"]["served"]  # type: ignore[index]


def test_pools_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path), **POOLS}, env={})
    e = Engine.open(settings, clock=clock, seed=0)
    e.items.upsert([*topic_world(2, 20), item("new", "t0", age_days=0.0)])
    for k in range(3):
        ids(e, f"u{k}", 10)
    e.items.upsert([item("unseen", "t1", age_days=0.0)])
    before = {i: e.items.get(i)["exposure"] for i in ("new", "unseen")}
    assert before["unseen"]["status"] == "waiting"  # type: ignore[index]
    e.close()
    again = Engine.open(settings, clock=clock, seed=0)
    try:
        assert {i: again.items.get(i)["exposure"] for i in ("new", "unseen")} == before
        index = again.live.catalog.index
        assert again.live.pools.active >= {index["unseen"]}
    finally:
        again.close()


def test_a_crash_before_the_checkpoint_keeps_a_new_videos_pool(tmp_path: Path, clock: Clock) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path), **POOLS}, env={})
    e = Engine.open(settings, clock=clock, seed=0)
    e.items.upsert([*topic_world(2, 5), item("new", "t0", age_days=0.0)])  # no checkpoint: the process dies
    again = Engine.open(settings, clock=clock, seed=0)
    try:
        assert again.items.get("new")["exposure"]["status"] == "waiting"  # type: ignore[index]
        assert again.live.catalog.index["new"] in again.live.pools.active
    finally:
        again.close()
        e.close()


def test_minors_get_the_non_personalised_feed_when_configured(open_engine) -> None:  # type: ignore[no-untyped-def]
    e = open_engine(**{"privacy.personalize_minors": False})
    e.items.upsert(topic_world(6, 40))
    for user, band in (("teen", "13-17"), ("kid", "under13"), ("adult", "18+"), ("unknown", None)):
        e.users.put(user, UserIn(age_band=band))
        strong_fan(e, user)
        ranker = e.feeds.feed(user, 3, explain=True).items[0].explain["ranker"]  # type: ignore[index]
        assert ranker == ("not_personalized" if band in ("13-17", "under13") else "heuristic"), (user, ranker)
