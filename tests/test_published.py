"""The item aggregates' one writer is the trainer process (issue 13): it publishes the rows it changed
as deltas, and a server only reads them. Driven in one process, step by step, over one SQLite data
directory opened twice, as test_roles.py does; test_crash.py checks the counters exactly with the
roles as real processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from factories import Clock
from test_learning import N_USERS, T0
from test_roles import fill, pair, publish

from foryou import snapshot
from foryou.catalog import STATS
from foryou.state import Live, published
from foryou.types import EventIn, ItemIn

VIEWS = STATS["views"]


def by_id(live: Live) -> dict[str, np.ndarray]:
    catalog = live.catalog
    return {i: catalog.stats[k, : len(STATS)] for k, i in enumerate(catalog.ids)}


def row_of(live: Live, k: int) -> dict[str, float]:
    """An item's co-engagement row: neighbour id -> count."""
    if k >= len(live.coeng.nb):
        return {}
    nb, w = live.coeng.nb[k], live.coeng.w[k]
    return {live.catalog.ids[j]: float(c) for j, c in zip(nb.tolist(), w.tolist(), strict=True) if j >= 0}


def assert_same_aggregates(server: Live, trainer: Live) -> None:
    """The server holds the trainer's counters, trend scores and co-engagement rows, item by item, and
    its sums agree with its own counters."""
    mine, theirs = by_id(server), by_id(trainer)
    assert mine.keys() == theirs.keys()
    for item_id, row in theirs.items():
        assert np.array_equal(mine[item_id], row), item_id
    s_idx, t_idx = server.catalog.index, trainer.catalog.index
    for item_id, k in t_idx.items():
        for region in trainer.catalog.regions:
            assert server.trending.scores[region][s_idx[item_id]] == pytest.approx(trainer.trending.scores[region][k])
        assert row_of(server, s_idx[item_id]) == row_of(trainer, k), item_id
    n, counts = len(server.catalog), [c for name, c in STATS.items() if name not in ("pool", "first_served")]
    assert np.allclose(server.totals()[counts], server.catalog.stats[:n, counts].sum(axis=0))
    views, completions = server.topic_counts()
    server.catalog.recount_topics()
    assert np.allclose(server.topic_counts()[0], views) and np.allclose(server.topic_counts()[1], completions)


def test_the_server_counts_nothing_until_the_trainer_publishes_then_holds_its_rows(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        events = fill(engine, clock, passes=2)
        live = engine.live
        assert live.catalog.stats[:, VIEWS].sum() == 0 and not live.trending.scores["us"].any()
        assert engine.items_behind("us") == len(events) * 2
        publish(engine, trainer, clock)
        assert engine.items_behind("us") == 0 and engine.aggregates is not None and engine.aggregates.version > 0
        views = Counter(e.item for e in events if e.type == "view")
        for item_id, row in by_id(live).items():
            assert row[VIEWS] == 2 * views[item_id], item_id
        assert live.coeng.nb.max() >= 0  # co-engagement came with them
        assert_same_aggregates(live, trainer.live)
        # a trainer started again goes on from the version published (a server would take a lower one
        # for a trainer that started over, and reload)
        again = published.AggregatePublisher(engine.store)
        again.load()
        assert again.version == trainer.aggregates.version == engine.aggregates.version
        # the server wrote no aggregates of its own: the store's watermark is the trainer's
        trainer.publish_items(clock(), save=True)
        engine.checkpoint()  # a server's saves users' state only
        assert engine.store.get_meta(snapshot.TOKEN) == trainer.live.aggregates_token
        assert engine.store.item_watermarks()["us"][0] == trainer.live.item_mark["us"]


def test_the_server_takes_rows_by_item_id_whatever_its_catalogue_order(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        fill(engine, clock, passes=1)
        publish(engine, trainer, clock)
        # a delta applied to a live state whose catalogue lists the items in reverse
        other = Live(engine.store, engine.settings, clock)
        other.catalog.put_many(reversed(list(engine.store.iter_items())))
        other.trending.ensure(len(other.catalog))
        other.trending.t0 = trainer.live.trending.t0
        other.coeng_on, other.items_owner = True, False
        trainer.live.dirty_items.update(range(len(trainer.live.catalog)))
        trainer.live.coeng.dirty.update(range(len(trainer.live.catalog)))
        for dirty in trainer.live.trending.dirty.values():
            dirty.update(range(len(trainer.live.catalog)))
        whole = trainer.live.take_items()
        blob = published.encode(published.of_checkpoint(1, whole, trainer.live.catalog.ids, trainer.live.coeng.k))
        other._totals = np.zeros(len(other._totals))
        published.apply(other, published.decode(blob))
        assert other.catalog.ids != engine.live.catalog.ids
        assert_same_aggregates(other, trainer.live)


def test_a_server_more_than_a_ring_behind_reloads_the_aggregates(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(published, "RING", 3)
    clock = Clock(T0)
    with pair(tmp_path / "d", clock, **{"store.checkpoint_interval_s": 0.1}) as (engine, trainer):
        fill(engine, clock, passes=1)
        for k in range(6):  # six versions the server does not take meanwhile
            engine.events.ingest([EventIn(user="g0-u00", item="g1-i01", type="view", watch_s=3.0, id=f"late{k}")])
            clock.advance(1.0)
            while trainer.step():
                pass
        assert engine.aggregates is not None and engine.aggregates.version == 0
        engine.tick(clock())
        assert engine.aggregates.reloads == 1 and engine.aggregates.version == trainer.aggregates.version
        assert_same_aggregates(engine.live, trainer.live)


def test_the_trainer_decides_the_pools_and_the_server_follows(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock, **{"policy.first_pool": 1}) as (engine, trainer):
        fill(engine, clock, passes=1)
        publish(engine, trainer, clock)
        engine.items.upsert([ItemIn(id="new", creator="c0", duration_s=10.0, tags=["t1"])])
        live, pool = engine.live, STATS["pool"]
        idx = live.catalog.index["new"]
        assert idx in live.pools.active  # admitted at once by the server that took it
        viewer = next(u for u in (f"g{k % 2}-u{k:02d}" for k in range(N_USERS))
                      if "new" in [it.id for it in engine.feeds.feed(u, 10).items])
        engine.events.ingest([EventIn(user=viewer, item="new", type="view", watch_s=10.0)])
        assert live.catalog.stats[idx, pool] == 1.5 and idx not in live.pools.active  # full: not served again
        publish(engine, trainer, clock)  # the trainer counted the served row: its pool is being evaluated
        theirs = trainer.live.catalog.index["new"]
        assert trainer.live.catalog.stats[theirs, pool] == 1.5 and live.catalog.stats[idx, pool] == 1.5
        clock.advance(3601.0)  # too few peers: after an hour it is compared with the catalogue's mean
        publish(engine, trainer, clock)
        decided = trainer.live.catalog.stats[theirs, pool]
        assert decided in (2.0, -1.0)
        assert live.catalog.stats[idx, pool] == decided and (idx in live.pools.active) == (decided == 2.0)
        assert live.catalog.stats[idx, STATS["served"]] == 1 and live.catalog.stats[idx, VIEWS] == 1
