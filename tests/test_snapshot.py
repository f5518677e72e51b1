"""Catalogue snapshots: a clean stop saves the catalogue's arrays, and the next start loads them instead
of reading and tokenising every item again, but only while the store's catalogue is the one they were
taken of; otherwise (items changed after a crash, another store) the catalogue is rebuilt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import Clock

from foryou import snapshot
from foryou.catalog import Catalog
from foryou.config import load_settings
from foryou.engine import Engine
from foryou.types import EventIn, ItemIn, format_time

T0 = 1_700_000_000.0


def open_engine(data: Path, **kw: object) -> Engine:
    settings = load_settings(overrides={"server.data": str(data), "learning.enabled": False}, env={})
    return Engine.open(settings, clock=Clock(T0), seed=0, **kw)  # type: ignore[arg-type]


def fill(engine: Engine) -> None:
    engine.items.upsert([ItemIn(id=f"v{k}", creator=f"c{k % 7}", duration_s=10.0 + k % 3,
                                sound=f"s{k % 4}" if k % 2 else None, tags=[f"t{k % 5}", f"t{k % 3}"],
                                topic=f"topic{k % 4}", caption=f"Cats and dogs {k} #fun",
                                regions=["us"] if k % 9 == 0 else None, mature=k % 11 == 0,
                                created_at=format_time(T0 - 3600 * k)) for k in range(200)])
    engine.items.upsert([ItemIn(id="v3", creator="someone-else", duration_s=30.0, tags=["new tag"], caption="boxes")])
    engine.items.set_down("v4", True)
    engine.events.ingest([EventIn(user=f"u{k % 9}", item=f"v{k % 200}", type="view", watch_s=10.0) for k in range(300)])


def same(a: Catalog, b: Catalog) -> None:
    n = len(a)
    assert a.ids == b.ids and a.index == b.index
    for column in ("creator", "sound", "topic", "duration", "created_at", "alive", "mature", "region_mask", "tag_cols",
                   "tag_count", "stats"):
        assert np.array_equal(getattr(a, column)[:n], getattr(b, column)[:n]), column
    for i in range(n):  # the same words per item, whatever the slices' places
        assert np.array_equal(a.terms_of(np.array([i]))[0], b.terms_of(np.array([i]))[0])
    assert a.item_tags == b.item_tags and a.words.names == b.words.names and a.tags.names == b.tags.names
    for postings in ("by_tag", "by_topic", "by_creator", "by_sound"):  # a rebuild drops stale entries only
        for key, items in getattr(a, postings).items():
            assert set(items) <= set(getattr(b, postings).get(key, [])), postings
    for i in range(n):  # ... and keeps every current one
        assert all(i in a.by_tag[t] for t in a.item_tags[i]) and i in a.by_creator[a.creator_l[i]]
        assert a.topic_l[i] < 0 or i in a.by_topic[a.topic_l[i]]
        assert a.sound_l[i] < 0 or i in a.by_sound[a.sound_l[i]]
    assert (a.creator_l, a.sound_l, a.topic_l, a.duration_l) == (b.creator_l, b.sound_l, b.topic_l, b.duration_l)


def test_a_clean_stop_saves_the_catalogue_and_the_next_start_loads_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_engine(tmp_path / "d")
    fill(engine)
    before = engine.live.catalog
    engine.close()
    assert (tmp_path / "d" / snapshot.FILE).stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(Catalog, "put_many", lambda *a: pytest.fail("rebuilt instead of loaded"))
    with open_engine(tmp_path / "d") as again:
        same(again.live.catalog, before)
        assert not again.live.catalog.alive[again.live.catalog.index["v4"]]
        assert len(again.feeds.feed("u1", 10).items) == 10


def test_a_snapshot_of_another_catalogue_is_not_used(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "d")
    fill(engine)
    engine.close()
    crashed = open_engine(tmp_path / "d")
    crashed.items.set_down("v5", True)  # then a crash: no clean stop, no new snapshot
    crashed.items.upsert([ItemIn(id="v6", creator="c", duration_s=5.0, tags=["changed"])])
    crashed.store.close()
    with open_engine(tmp_path / "d") as again:  # rebuilt from the store
        catalog = again.live.catalog
        assert not catalog.alive[catalog.index["v5"]] and catalog.item_tags[catalog.index["v6"]] == (
            catalog.tags.ids["changed"],)
    other = open_engine(tmp_path / "d", store_url="memory://snapshot-other-store")  # same directory, other store
    assert len(other.live.catalog) == 0
    other.store.close()


def test_users_saved_states_read_the_same_when_the_catalogue_is_rebuilt(tmp_path: Path) -> None:
    """Saved states hold vocabulary codes (interest.py): the codes they use are in the store's
    vocabularies, so a catalogue rebuilt in another order (a tag first met on a re-upsert comes first
    in a rebuild) still gives each code its name."""
    engine = open_engine(tmp_path / "d")
    engine.items.upsert([ItemIn(id="a", creator="ca", duration_s=10.0, tags=["first"]),
                         ItemIn(id="b", creator="cb", duration_s=10.0, tags=["second"])])
    engine.items.upsert([ItemIn(id="a", creator="cz", duration_s=10.0, tags=["third"], sound="sz")])
    engine.events.ingest([EventIn(user="amy", item="a", type="like"), EventIn(user="amy", item="b", type="share")])

    def by_name(e: Engine) -> dict[str, float]:
        cat, state = e.live.catalog, e.live.user("amy").state
        names = (cat.tags.names, cat.tags.names, cat.creators.names, cat.sounds.names)
        return {f"{k >> 32}:{names[k >> 32][k & 0xFFFFFFFF]}": w for k, w in state.weights.items()}

    before = by_name(engine)
    assert {"0:third", "2:cz", "3:sz", "0:second"} <= set(before)
    engine.live.checkpoint()
    engine.store.close()  # a crash: no snapshot
    assert not (tmp_path / "d" / snapshot.FILE).exists()
    with open_engine(tmp_path / "d") as again:
        assert again.live.catalog.tags.names[:3] == ["first", "second", "third"]
        assert by_name(again) == pytest.approx(before)


def held_aggregates(engine: Engine) -> dict[str, object]:
    live, n = engine.live, len(engine.live.catalog)
    return {"stats": live.catalog.stats[:n].copy(), "trend": {r: s[:n].copy() for r, s in live.trending.scores.items()},
            "nb": live.coeng.nb[:n].copy(), "w": live.coeng.w[:n].copy()}


def assert_same_aggregates(a: dict[str, object], b: dict[str, object]) -> None:
    assert np.array_equal(a["stats"], b["stats"])  # type: ignore[arg-type]
    assert a["trend"].keys() == b["trend"].keys()  # type: ignore[attr-defined]
    for r in a["trend"]:  # type: ignore[attr-defined]
        assert np.array_equal(a["trend"][r], b["trend"][r]), r  # type: ignore[index]
    assert np.array_equal(a["nb"], b["nb"]) and np.array_equal(a["w"], b["w"])  # type: ignore[arg-type]


def likes(users: range, items: list[str]) -> list[EventIn]:
    return [EventIn(user=f"u{u}", item=i, type="like") for u in users for i in items]


def test_a_clean_stop_snapshots_the_item_aggregates_and_the_next_start_reads_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_engine(tmp_path / "d")
    fill(engine)
    engine.events.ingest(likes(range(5), ["v1", "v2", "v3"]))  # co-engagement too
    before = held_aggregates(engine)
    assert np.asarray(before["nb"]).max() >= 0 and np.asarray(before["stats"]).sum() > 0
    engine.close()
    assert (tmp_path / "d" / snapshot.AGGREGATES_FILE).is_file()
    from foryou.store.sqlite import SQLiteStore

    def no_rows(self: object, *args: object) -> object:
        raise AssertionError("read the aggregates row by row")

    for name in ("iter_item_stats", "iter_trend", "iter_coengagement"):
        monkeypatch.setattr(SQLiteStore, name, no_rows)
    with open_engine(tmp_path / "d") as again:
        assert_same_aggregates(held_aggregates(again), before)
        monkeypatch.undo()


def test_aggregates_saved_after_the_snapshot_win_over_it(tmp_path: Path) -> None:
    """Started from a snapshot, the engine saves newer aggregates and then crashes: the next start
    reads the store, not the older snapshot."""
    engine = open_engine(tmp_path / "d")
    fill(engine)
    engine.close()
    engine = open_engine(tmp_path / "d")
    engine.events.ingest(likes(range(6), ["v7", "v8"]))
    engine.live.checkpoint()  # the aggregates in the store move on; the snapshot stays
    expected = held_aggregates(engine)
    engine.store.close()  # a crash: no clean stop, no new snapshot
    with open_engine(tmp_path / "d") as again:
        assert_same_aggregates(held_aggregates(again), expected)
    # and a snapshot damaged, or of other regions, is not used either
    (tmp_path / "d" / snapshot.AGGREGATES_FILE).write_bytes(b"not a snapshot")
    with open_engine(tmp_path / "d") as again:
        assert_same_aggregates(held_aggregates(again), expected)
    token = again.live.aggregates_token
    assert snapshot.load_aggregates(tmp_path / "d", token, ("us",), 10_000) is not None
    assert snapshot.load_aggregates(tmp_path / "d", token, ("us", "eu"), 10_000) is None
    assert snapshot.load_aggregates(tmp_path / "d", token, ("us",), 3) is None  # of more items than held
    assert snapshot.load_aggregates(tmp_path / "d", "another", ("us",), 10_000) is None


@pytest.mark.parametrize("from_snapshot", [True, False])
def test_a_trainers_catalogue_holds_the_columns_and_not_what_only_feeds_read(tmp_path: Path,
                                                                            from_snapshot: bool) -> None:
    """A trainer never serves: its copy of the catalogue (`Live.load(users=False)`) keeps the columns
    and vocabularies the model reads, and not the postings, arrivals, tag tuples and words (~380 MiB
    at 1M items), also as items change after it loaded; and it never saves its copy as the snapshot."""
    from foryou.state import Live

    engine = open_engine(tmp_path / "d")
    fill(engine)
    if from_snapshot:
        engine.close()
        engine = open_engine(tmp_path / "d")
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    trainer = Live(engine.store, settings, Clock(T0))
    trainer.load(users=False)
    try:
        changed = [ItemIn(id="v5", creator="moved", duration_s=12.0, tags=["t9", "t1"], sound="s9", topic="topic9"),
                   ItemIn(id="v999", creator="c1", duration_s=8.0, tags=["fresh"])]
        engine.items.upsert(changed)
        trainer.catalog.put_many(engine.store.items_since(trainer.store.catalogue_version() - 1))
        a, b = trainer.catalog, engine.live.catalog
        n = len(b)
        assert not a.serving and a.ids == b.ids and a.index == b.index and len(a) == n
        for column in ("creator", "sound", "topic", "duration", "created_at", "alive", "mature", "region_mask",
                       "tag_cols", "tag_count"):
            assert np.array_equal(getattr(a, column)[:n], getattr(b, column)[:n]), column
        assert (a.creator_l, a.sound_l, a.topic_l, a.duration_l) == (b.creator_l, b.sound_l, b.topic_l, b.duration_l)
        assert a.tags.names == b.tags.names and a.creators.names == b.creators.names
        assert np.allclose(a.topic_sums[: len(a.tags), 0], b.topic_sums[: len(b.tags), 0])
        assert not (a.by_tag or a.by_topic or a.by_creator or a.by_sound or a.arrivals or a.item_tags or len(a.words))
        stamp = (tmp_path / "d" / snapshot.FILE).stat().st_mtime_ns if from_snapshot else None
        trainer.save_snapshot()
        assert (tmp_path / "d" / snapshot.FILE).exists() == from_snapshot
        assert not from_snapshot or (tmp_path / "d" / snapshot.FILE).stat().st_mtime_ns == stamp
    finally:
        engine.close()
