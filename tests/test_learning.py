"""The learned models and their online trainer, in a world whose right answer is known by construction:
two groups of users and items where each user finishes the items of their own group and swipes away
from the others'. Tags are random, so only the ids' co-consumption tells the groups apart: the
hand-set ranking cannot see them, a learned model must."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from factories import Clock, item

from foryou.catalog import Catalog
from foryou.config import load_settings
from foryou.engine import Engine
from foryou.evaluation.metrics import auc
from foryou.learning.duel import below
from foryou.learning.embeddings import EmbeddingTable
from foryou.learning.model import Examples, H, Model
from foryou.types import EventIn, ItemIn, format_time

T0 = 1_700_000_000.0
N_ITEMS, N_USERS = 60, 40


def group(name: str) -> int:
    return int(name.split("-")[0][1:])


def world(rng: np.random.Generator) -> list[ItemIn]:
    return [ItemIn(id=f"g{k % 2}-i{k:02d}", creator=f"c{k % 7}", duration_s=10.0,
                   tags=[f"t{rng.integers(5)}"], created_at=format_time(T0 - 86400)) for k in range(N_ITEMS)]


def history(items: list[ItemIn], rng: np.random.Generator) -> tuple[list[EventIn], dict[str, set[str]]]:
    """Each user views a random 60% of the items: finishes their group's, swipes the others' at once."""
    events, seen = [], {}
    for u in range(N_USERS):
        user = f"g{u % 2}-u{u:02d}"
        picked = [it.id for it in items if rng.random() < 0.6]
        seen[user] = set(picked)
        for item_id in picked:
            watch = 10.0 if group(item_id) == group(user) else 0.5
            events.append(EventIn(user=user, item=item_id, type="view", watch_s=watch))
    order = rng.permutation(len(events))
    return [events[k] for k in order], seen


def open_engine(path: Path, clock: Clock, **overrides: object) -> Engine:
    settings = load_settings(overrides={"server.data": str(path), "learning.min_examples": 200,
                                        "learning.index": "exact", **overrides}, env={})
    return Engine.open(settings, clock=clock, seed=0)


@pytest.fixture
def trained(tmp_path: Path) -> Iterator[tuple[Engine, dict[str, set[str]], Clock]]:
    rng = np.random.default_rng(7)
    clock = Clock(T0)
    engine = open_engine(tmp_path / "data", clock)
    items = world(rng)
    engine.items.upsert(items)
    events, seen = history(items, rng)
    for _ in range(5):  # a few passes over the same history, as days of similar behaviour would give
        for lo in range(0, len(events), 100):
            engine.events.ingest(events[lo:lo + 100])
            clock.advance(1.0)
    engine.learner.refresh_index()  # as the server's periodic work keeps it, between requests
    yield engine, seen, clock
    engine.close()


def held_out(engine: Engine, seen: dict[str, set[str]]) -> tuple[list[str], list[int], list[bool]]:
    users, items, truth = [], [], []
    for user, viewed in seen.items():
        for item_id, idx in engine.live.catalog.index.items():
            if item_id not in viewed:
                users.append(user)
                items.append(idx)
                truth.append(group(item_id) == group(user))
    return users, items, truth


def completion_auc(engine: Engine, seen: dict[str, set[str]]) -> float:
    users, items, truth = held_out(engine, seen)
    preds = np.array([engine.feeds.predict(u, np.array([i]))["complete"][0] for u, i in zip(users, items, strict=True)])
    return float(auc(preds, np.array(truth)))


def test_learned_completion_head_finds_the_groups_the_heuristic_cannot(trained, tmp_path: Path) -> None:
    engine, seen, clock = trained
    assert engine.learner.healthy and engine.learner.bad_steps == 0
    learned = completion_auc(engine, seen)
    heuristic = open_engine(tmp_path / "heuristic", clock, **{"learning.enabled": False})
    heuristic.items.upsert(world(np.random.default_rng(7)))
    events, _ = history(world(np.random.default_rng(7)), np.random.default_rng(7))
    heuristic.events.ingest(events)
    baseline = completion_auc(heuristic, seen)
    heuristic.close()
    assert learned > 0.9, learned
    assert baseline < 0.7, baseline
    # the duel on live traffic saw the same: the learned value ranks completions higher
    model_auc, fallback_auc = engine.learner.duel.scores()
    assert model_auc > fallback_auc + 0.1, (model_auc, fallback_auc)  # the window spans early training too


def test_below_counts_ties_half() -> None:
    assert below(np.array([0.5, 0.1, 0.2, 0.9])) == pytest.approx(2 / 3)
    assert below(np.array([0.5, 0.5, 0.1])) == pytest.approx(0.75)
    assert np.isnan(below(np.array([1.0])))


def test_the_fallback_serves_while_it_wins_the_duel(trained) -> None:
    engine, _, _ = trained
    learner = engine.learner
    assert learner.healthy
    assert engine.feeds.feed("g0-u00", 3, explain=True).items[0].explain["ranker"] == "learned"  # type: ignore[index]
    for _ in range(learner.duel.window):  # live traffic where the fallback ranks completions better
        learner.duel.record(np.array([0.1, 0.5, 0.9]), np.array([0.9, 0.1, 0.5]))
    assert learner.duel.scores() == (0.0, 1.0) and not learner.healthy
    assert engine.feeds.feed("g0-u00", 3, explain=True).items[0].explain["ranker"] == "heuristic"  # type: ignore[index]
    assert "model_auc" in engine.learner.gauges()


def test_retrieval_proposes_the_users_group_and_feeds_use_it(trained) -> None:
    engine, seen, _ = trained
    user = "g1-u03"
    nearest = [engine.live.catalog.ids[i] for i in engine.learner.retrieve("us", user, N_ITEMS).tolist()]
    unseen = [i for i in nearest if i not in seen[user]][:10]
    assert sum(group(i) == 1 for i in unseen) >= 9, unseen
    feed = engine.feeds.feed(user, 5)
    assert sum(group(i.id) == 1 for i in feed.items) >= 4
    assert any("viewers with tastes like yours enjoyed this" in i.reasons for i in feed.items)


def test_a_new_users_vector_moves_with_their_first_events(trained) -> None:
    engine, _, _ = trained
    catalog = engine.live.catalog
    assert len(engine.learner.retrieve("us", "newcomer", 10)) == 0  # no row yet: no learned candidates
    firsts = [i for i in catalog.ids if group(i) == 0][:4]
    engine.events.ingest([EventIn(user="newcomer", item=i, type="view", watch_s=10.0) for i in firsts])
    nearest = [catalog.ids[i] for i in engine.learner.retrieve("us", "newcomer", 20).tolist()]
    unseen = [i for i in nearest if i not in firsts][:10]
    assert sum(group(i) == 0 for i in unseen) >= 8, unseen


def test_checkpoint_and_restore_give_the_same_model(trained, tmp_path: Path) -> None:
    engine, _, clock = trained
    idx = np.arange(N_ITEMS)
    before = engine.feeds.predict("g0-u00", idx)
    version = engine.learner.version
    engine.checkpoint()
    again = open_engine(tmp_path / "data", clock)  # a second process on the same files
    try:
        assert again.learner.version == version
        after = again.feeds.predict("g0-u00", idx)
        for head in ("complete", "like", "follow", "retrieval"):
            assert np.allclose(before[head], after[head], atol=1e-6)
    finally:
        again.store.close()


def test_item_rows_saved_as_rows_by_an_earlier_version_are_converted(trained, tmp_path: Path) -> None:
    """Before deltas, item-side rows were upserted one by one: a start restores them and its trainer
    turns them into a snapshot, with the same predictions."""
    import sqlite3

    from foryou.learning import publication

    engine, _, clock = trained
    idx = np.arange(N_ITEMS)
    engine.checkpoint()
    before = engine.feeds.predict("g0-u00", idx)
    store = engine.store
    for name, table in engine.learner.model.item_tables().items():  # as an earlier version saved them
        rows, _ = type(table).changes(_all_dirty(table))
        store.save_model_rows(None, name, rows, [], engine.learner.version)
    with sqlite3.connect(tmp_path / "data" / "model.db") as conn:
        conn.execute("DELETE FROM model_deltas")
        conn.execute("DELETE FROM model_blobs WHERE key=?", (publication.SNAPSHOT_BLOB,))
    again = open_engine(tmp_path / "data", clock)
    try:
        assert again.store.get_model_blob(publication.SNAPSHOT_BLOB) is not None
        assert dict(again.store.iter_model_rows(None, "item")) == {}
        after = again.feeds.predict("g0-u00", idx)
        for head in ("complete", "like", "follow", "retrieval"):
            assert np.allclose(before[head], after[head], atol=1e-6)
    finally:
        again.store.close()


def _all_dirty(table: EmbeddingTable) -> EmbeddingTable:
    table.dirty.update(table.index.values())
    return table


def test_crash_resumes_from_checkpoint_plus_log(trained, tmp_path: Path) -> None:
    engine, _, clock = trained
    engine.checkpoint()
    saved_examples = engine.learner.examples
    extra = [EventIn(user="g0-u00", item=i, type="view", watch_s=10.0)
             for i in engine.live.catalog.ids if group(i) == 0]
    engine.events.ingest(extra)
    last_seq = engine.learner.marks["us"]
    learned_examples = engine.learner.examples
    # The process dies without a checkpoint: the restart re-learns the events after the saved watermark.
    again = open_engine(tmp_path / "data", clock)
    try:
        assert again.learner.marks["us"] == last_seq
        assert again.learner.examples >= learned_examples > saved_examples
        assert again.learner.healthy
    finally:
        again.store.close()


def test_bad_steps_are_dropped_and_the_heuristic_serves(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    engine = open_engine(tmp_path / "data", Clock(T0), **{"learning.max_loss": 0.0})
    try:
        items = world(rng)
        engine.items.upsert(items)
        engine.events.ingest(history(items, rng)[0])
        learner = engine.learner
        assert learner.bad_steps > 0 and learner.version == 0 and not learner.healthy
        assert np.array_equal(learner.model.weights, Model(("us",)).weights)  # as initialised
        feed = engine.feeds.feed("g0-u00", 5)
        assert feed.items and all("viewers with tastes like yours enjoyed this" not in i.reasons for i in feed.items)
    finally:
        engine.close()


def test_a_step_with_nan_is_never_applied(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _, _ = trained
    learner = engine.learner
    real = learner.model.gradients

    def poisoned(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        step = real(*args, **kw)  # type: ignore[arg-type]
        assert step.dense is not None
        step.dense[0, 0] = np.nan
        return step

    monkeypatch.setattr(learner.model, "gradients", poisoned)
    weights, bad, version = learner.model.weights.copy(), learner.bad_steps, learner.version
    engine.events.ingest([EventIn(user="g0-u01", item="g0-i00", type="like")])
    assert learner.bad_steps == bad + 1 and learner.version == version
    assert np.array_equal(learner.model.weights, weights)


def test_an_item_is_indexed_again_only_once_its_vector_moved_past_the_drift(trained) -> None:
    """Training moves thousands of items' vectors a second: an item is re-inserted into the index
    only once its vector is DRIFT (relative) away from the one indexed, which catches small moves
    adding up; a vector not indexed is always put in."""
    from foryou.learning import indexing

    engine, _, _ = trained
    learner, catalog = engine.learner, engine.live.catalog
    learner.refresh_index()
    idx = np.arange(3)
    held = learner.index.stored(idx)
    inserted: list[list[int]] = []
    upsert = learner.index.upsert
    learner.index.upsert = lambda keys, vectors: inserted.append(keys.tolist()) or upsert(keys, vectors)  # type: ignore[method-assign]
    real = learner.model.item_vectors
    for scale in (1 + indexing.DRIFT / 2, 1 + indexing.DRIFT * 0.9, 1 + 2 * indexing.DRIFT):
        learner.model.item_vectors = lambda c, i, pop, s=scale: np.where(  # type: ignore[method-assign]
            np.isin(i, [0, 1])[:, None], held[np.minimum(i, 2)] * s, real(c, i, pop))
        learner.dirty_items.update(dict.fromkeys([0, 1, 2]))
        learner.refresh_index(1.0)
        assert not learner.dirty_items
    assert inserted == [[0, 1]]  # only once moved 2 x DRIFT away: the smaller moves are measured from what is held
    assert np.allclose(learner.index.stored(idx[:2]), held[:2] * (1 + 2 * indexing.DRIFT))
    learner.index.remove(np.array([2]))
    learner.dirty_items.update({2: None})
    learner.refresh_index(1.0)
    assert inserted[-1] == [2] and catalog.alive[2]


def test_taken_down_items_leave_the_index_and_new_items_enter_it(trained) -> None:
    engine, _, _ = trained
    learner, catalog = engine.learner, engine.live.catalog
    engine.items.set_down("g0-i00", True)
    engine.items.upsert([ItemIn(id="g0-new", creator="c1", duration_s=10.0, tags=["t1"])])
    learner.refresh_index()
    p = learner.model.user_vectors(["us"], ["g0-u00"])[0]
    keys, _ = learner.index.search(learner.model.query(p), len(catalog) + 5)
    found = {catalog.ids[k] for k in keys.tolist()}
    assert "g0-i00" not in found and "g0-new" in found
    assert len(found) == N_ITEMS


def test_served_without_a_view_becomes_an_impression_without_play(trained) -> None:
    engine, _, clock = trained
    learner = engine.learner
    clock.advance(learner.settings.join_window_s + 1)
    learner.tick(clock())  # close the joins of the history
    feed = engine.feeds.feed("g1-u01", 2)
    viewed, ignored = feed.items[0].id, feed.items[1].id
    engine.events.ingest([EventIn(user="g1-u01", item=viewed, type="view", watch_s=3.0)])
    assert ("g1-u01", engine.live.catalog.index[ignored]) in learner.joins.served
    examples = learner.examples
    clock.advance(learner.settings.join_window_s + 1)
    learner.tick(clock())
    assert not learner.joins.served and not learner.joins.views
    assert learner.examples == examples + 2  # the view's action labels, and the impression without play


def test_retrieval_gradients_match_finite_differences() -> None:
    catalog = Catalog(("us",))
    catalog.put_many([item(f"i{k}", creator=f"c{k % 3}", tags=(f"t{k % 4}", f"t{(k + 1) % 4}")) for k in range(12)])
    model = Model(("us",), dim=4, memory=3, l2=0.0, seed=1)
    model.recent = np.array([5, 6, 7])
    ex = Examples(["us"] * 5, ["a", "b", "a", "c", "b"], np.array([1, 2, 3, 4, 5]), np.zeros((5, H), np.float32),
                  np.zeros((5, H), np.bool_), np.array([1, 0, 1, 1, -1]))
    totals = catalog.stats[:12].sum(axis=0)

    def total_loss() -> tuple[float, object]:
        step = model.gradients(catalog, ex, 0.0, totals)
        return step.retrieval_loss * 4, step  # 3 positives and 1 real negative

    _, step = total_loss()
    checked = 0
    for table, rows, grads, _ in step.sparse:  # type: ignore[attr-defined]
        # Retrieval coordinates: the vector's (and the item's retrieval bias); head biases are the ranker's.
        for k in (0, model.dim - 1, model.dim) if table is model.items else (0, model.dim - 1):
            r = int(rows[rows >= 0][0])
            analytic = float(grads[rows == r].sum(axis=0)[k])
            old = float(table.vectors[r, k])
            table.vectors[r, k] = old + 1e-2
            up, _ = total_loss()
            table.vectors[r, k] = old - 1e-2
            down, _ = total_loss()
            table.vectors[r, k] = old
            assert analytic == pytest.approx((up - down) / 2e-2, rel=0.02, abs=1e-4), (table.dim, k)
            checked += 1
    assert checked >= 9


def test_a_clean_shutdown_saves_the_index_and_an_older_one_is_brought_up_to_date(trained, tmp_path: Path) -> None:
    from foryou.learning.index_file import INDEX_FILE

    engine, _, clock = trained
    p = engine.learner.model.query(engine.learner.model.user_vectors(["us"], ["g0-u00"])[0])
    engine.learner.refresh_index()
    before = engine.learner.index.search(p, 10)
    engine.checkpoint()
    engine.learner.save_index()  # what Engine.close does before closing the store
    assert (tmp_path / "data" / INDEX_FILE).is_file()
    again = open_engine(tmp_path / "data", clock)
    try:
        keys, scores = again.learner.index.search(p, 10)
        assert keys.tolist() == before[0].tolist() and np.allclose(scores, before[1], atol=1e-5)
        # More learning and a checkpoint, then a crash: the file is older than the model.
        again.events.ingest([EventIn(user="g0-u00", item="g0-i02", type="like")])
        again.checkpoint()
    finally:
        again.store.close()
    third = open_engine(tmp_path / "data", clock)
    try:  # the older file is loaded and the items whose rows changed since are indexed again
        learner = third.learner
        assert len(learner.index) == N_ITEMS and not learner.dirty_items
        p = learner.model.query(learner.model.user_vectors(["us"], ["g0-u00"])[0])
        resumed = learner.index.search(p, 20)
        learner.dirty_items.update(dict.fromkeys(range(N_ITEMS)))  # against every item indexed afresh
        learner.refresh_index()
        again_all = learner.index.search(p, 20)
        assert resumed[0].tolist() == again_all[0].tolist() and np.allclose(resumed[1], again_all[1], atol=1e-5)
    finally:
        third.store.close()


def test_rows_expire_by_engine_time_not_by_event_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    clock = Clock(T0)
    engine = open_engine(tmp_path / "data", clock, **{"learning.ttl_days": 30.0})
    try:
        items = world(rng)
        engine.items.upsert(items)
        old = format_time(T0 - 90 * 86400)  # a bulk load of last quarter's history
        events = [EventIn(user=e.user, item=e.item, type=e.type, watch_s=e.watch_s, ts=old)
                  for e in history(items, rng)[0]]
        engine.events.ingest(events)
        rows = engine.learner.gauges()["model_rows"]
        engine.learner.tick(clock())
        assert engine.learner.gauges()["model_rows"] == rows > N_USERS  # not idle: learned just now
        clock.advance(31 * 86400)
        engine.learner.tick(clock())
        assert engine.learner.gauges()["model_rows"] == 0  # idle for longer than the time to live
    finally:
        engine.close()


def test_watch_quantiles_debias_duration() -> None:
    from foryou.learning.features import WatchQuantiles

    rng = np.random.default_rng(0)
    quantiles = WatchQuantiles()
    # Short videos (6 s) are watched 60-100% through, long ones (50 s) 10-50%: raw watch time would
    # call every long view better; quantiles within each duration bucket make them comparable.
    short_watch, long_watch = rng.uniform(0.6, 1.0, 5000) * 6, rng.uniform(0.1, 0.5, 5000) * 50
    quantiles.learn_many(np.r_[short_watch, long_watch], np.r_[np.full(5000, 6.0), np.full(5000, 50.0)])
    labels = quantiles.label(np.array([6.0 * 0.8, 50.0 * 0.3]), np.array([6.0, 50.0]))
    assert labels == pytest.approx([0.5, 0.5], abs=0.07)  # each mid-bucket (bins are 5% of a ratio wide)
    assert quantiles.label(np.array([50.0 * 0.45]), np.array([50.0]))[0] > 0.8
    back = quantiles.watch_s(np.array([0.5, 0.5]), np.array([6.0, 50.0]))
    assert back == pytest.approx([4.8, 15.0], rel=0.1)  # the median watch time of each bucket


def test_a_feeds_settings_are_one_value_resolved_per_request(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a feed reads (weights, budgets, policy, which ranker) comes from the `FeedConfig` resolved
    for the request, not from the global settings: a variant is just another value."""
    from dataclasses import replace

    from foryou.feed import FeedConfig

    engine, _, _ = trained
    assert engine.learner.healthy
    base = FeedConfig.of(engine.settings)
    assert engine.feeds.feed("g0-u00", 3, explain=True).items[0].explain["ranker"] == "learned"  # type: ignore[index]
    variant = replace(base, ranker="heuristic", weights=replace(base.weights, complete=7.5), variant="b")
    monkeypatch.setattr(engine.feeds, "config", lambda user=None: variant)
    item = engine.feeds.feed("g0-u01", 3, explain=True).items[0]
    assert item.explain["ranker"] == "heuristic"  # type: ignore[index]
    assert item.explain["weights"]["complete"] == 7.5  # type: ignore[index]
    assert engine.settings.weights.complete != 7.5  # the deployment's settings are untouched
    # The served rows say which variant served them, and so does the user's export.
    assert {s.variant for s in engine.store.user_served("us", "g0-u01")} == {"b"}
    assert {s.variant for s in engine.store.user_served("us", "g0-u00")} == {""}
    exported = engine.privacy.export("g0-u01")
    assert {row["variant"] for row in exported["served"]} == {"b"}  # type: ignore[index, union-attr]


def test_an_index_its_vectors_outgrew_is_built_again_beside_the_ticks(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item vectors longer than the graph was laid out for are held at its bound and counted; past a
    share of the index, a tick has a thread build a new one around the longest, and swaps it in."""
    from foryou.learning import indexing
    from foryou.retrieval import ann

    engine, _, _ = trained
    learner = engine.learner
    monkeypatch.setattr(ann, "REBOUND_MOST", 0)
    monkeypatch.setattr(indexing, "_CLAMPED_MOST", 0)
    monkeypatch.setattr(indexing, "_REBUILD_AT", 10**9)  # outgrown, it is rebuilt however few items wait
    learner.index = ann.HnswIndex(learner.settings.dim + 1)
    learner.index.reserve(1e-3)  # laid out for vectors far shorter than the model's
    learner.index.upsert(np.array([0]), np.full((1, learner.settings.dim + 1), 1e-4, np.float32))
    learner.dirty_items.update(dict.fromkeys(range(N_ITEMS)))
    learner.refresh_index()  # without a budget: in place, every vector clamped
    assert learner.index.clamped == N_ITEMS
    old = learner.index
    learner.refresh_index(budget_s=0.01)  # a tick: the rebuild starts
    assert learner._rebuilding is not None
    learner._rebuilding.join()
    learner.refresh_index(budget_s=0.01)  # the next swaps it in
    assert learner.index is not old and learner.index.clamped == 0 and len(learner.index) == N_ITEMS
    p = learner.model.query(learner.model.user_vectors(["us"], ["g0-u00"])[0])
    exact = ann.ExactIndex(learner.settings.dim + 1)
    idx = np.arange(N_ITEMS)
    exact.upsert(idx, learner.model.item_vectors(engine.live.catalog, idx, learner._popularity(idx)))
    assert learner.index.search(p, 10)[0].tolist() == exact.search(p, 10)[0].tolist()


def test_what_changes_while_the_index_is_rebuilt_is_indexed_again_after_the_swap(
        trained, monkeypatch: pytest.MonkeyPatch) -> None:
    from foryou.learning import indexing
    from foryou.retrieval import ann

    engine, _, _ = trained
    learner, catalog = engine.learner, engine.live.catalog
    learner.index = ann.HnswIndex(learner.settings.dim + 1)
    learner.dirty_items.update(dict.fromkeys(range(N_ITEMS)))
    learner.refresh_index()
    monkeypatch.setattr(indexing, "_CLAMPED_MOST", 0)
    monkeypatch.setattr(ann, "REBOUND_MOST", 0)
    learner.index.upsert(np.array([0]), np.full((1, learner.settings.dim + 1), 1e3, np.float32))  # outgrown
    learner.refresh_index(budget_s=0.01)  # the rebuild starts
    assert learner._rebuilding is not None
    learner._rebuilding.join()
    built, learner._rebuilt = learner._rebuilt, None  # as if still running: it read item 5 alive ...
    catalog.alive[5] = False  # ... and then it was taken down: out of the old index at once
    learner.dirty_items[5] = None
    learner.refresh_index()
    assert np.isnan(learner.index.stored(np.array([5]))).all()
    learner._rebuilt = built
    learner.refresh_index(budget_s=0.01)  # the swap, and item 5 queued again ...
    learner.refresh_index()  # ... and taken out of the new index too
    assert learner.index is built and learner.index.clamped == 0
    assert np.isnan(learner.index.stored(np.array([5]))).all() and len(learner.index) == N_ITEMS - 1
