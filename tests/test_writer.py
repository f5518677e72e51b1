"""Item aggregates written beside the event loop (foryou/store/writer.py): what a server's checkpoint
hands its writer thread is stored exactly as a synchronous checkpoint stores it, in order, and a
failed write is tried again, never dropped (co-engagement's deltas are additive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import Clock
from test_follower import catch_up, fill
from test_learning import T0, open_engine

from foryou.engine import Engine
from foryou.store import open_store
from foryou.store.writer import AggregateCheckpoint


def saved(path: Path) -> tuple[dict[str, list[float]], dict[str, float], dict[str, tuple[int, int]]]:
    store = open_store(str(path), ["us"])
    try:
        return dict(store.iter_item_stats()), dict(store.iter_trend("us")), store.item_watermarks()
    finally:
        store.close()


def test_a_checkpoint_beside_stores_what_one_at_once_stores(tmp_path: Path) -> None:
    clock_a, clock_b = Clock(T0), Clock(T0)
    with open_engine(tmp_path / "a", clock_a) as at_once, open_engine(tmp_path / "b", clock_b) as beside:
        beside.follow_beside(64)
        assert beside.live.writer is not None and at_once.live.writer is None
        fill(at_once, clock_a)
        fill(beside, clock_b)
        catch_up(beside, clock_b)
        for engine in (at_once, beside):
            engine.live.checkpoint()  # waits for the writer
    stats_a, trend_a, marks_a = saved(tmp_path / "a")
    stats_b, trend_b, marks_b = saved(tmp_path / "b")
    assert stats_a and stats_a == stats_b and marks_a == marks_b
    assert trend_a.keys() == trend_b.keys()
    assert np.allclose([trend_a[k] for k in trend_a], [trend_b[k] for k in trend_a])


def test_the_periodic_checkpoint_does_not_wait_and_a_failed_write_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(T0)
    real = AggregateCheckpoint.save
    failures = []

    def flaky(self: AggregateCheckpoint, store: object, ids: object) -> None:
        if len(failures) < 2:
            failures.append(1)
            raise OSError("disk said no")
        real(self, store, ids)  # type: ignore[arg-type]

    with open_engine(tmp_path / "d", clock) as engine:
        engine.follow_beside(64)
        fill(engine, clock, passes=1)
        catch_up(engine, clock)
        writer = engine.live.writer
        assert writer is not None
        writer.flush()
        monkeypatch.setattr(AggregateCheckpoint, "save", flaky)
        clock.advance(60.0)
        engine.live.maybe_checkpoint()  # hands the aggregates over and returns
        writer.flush()  # waits while the write is tried again, until it holds
        assert writer.failures == 2 and len(failures) == 2 and writer.failing is None
        stats = engine.live.catalog.stats
        views = {engine.live.catalog.ids[i]: stats[i, 0] for i in range(len(engine.live.catalog))}
    stored, _, marks = saved(tmp_path / "d")
    assert marks["us"][0] > 0
    assert {k: v[0] for k, v in stored.items()} == {k: v for k, v in views.items() if k in stored}


def held_row(engine: Engine, item: str) -> dict[str, float]:
    """An item's co-engagement row: neighbour -> count."""
    live = engine.live
    i = live.catalog.index[item]
    return {live.catalog.ids[b]: float(w) for b, w in zip(live.coeng.nb[i], live.coeng.w[i], strict=True) if b >= 0}


def test_users_saved_between_aggregates_lose_no_co_engagement_at_a_crash(tmp_path: Path) -> None:
    """Users' states are saved in slices between two saves of the aggregates; a crash then must not
    leave co-engagement pairs uncounted or count them twice: the log follower counts them, saved with
    the aggregates' watermark, and a start takes in the users' positives before it."""
    clock_a, clock_b = Clock(T0), Clock(T0)
    with open_engine(tmp_path / "ref", clock_a) as ref:
        fill(ref, clock_a)
    crashed = open_engine(tmp_path / "crash", clock_b)
    rng = np.random.default_rng(7)
    from test_learning import history, world

    items = world(rng)
    crashed.items.upsert(items)
    events, _ = history(items, rng)
    crashed.live.checkpoint()
    for _ in range(2):
        for n, lo in enumerate(range(0, len(events), 100)):
            crashed.events.ingest(events[lo:lo + 100])
            clock_b.advance(1.0)
            crashed.live.checkpoint(max_users=7, items=n % 5 == 0)  # mostly users' slices alone
    saved_mark = crashed.store.item_watermarks()["us"][0]
    assert 0 < saved_mark < crashed.live.event_mark["us"]  # the crash leaves a replay to do
    crashed.store.close()  # a crash
    with open_engine(tmp_path / "crash", Clock(clock_b())) as again, open_engine(tmp_path / "ref", clock_a) as ref:
        again.live.checkpoint()  # what the replay counted again, saved
        assert again.live.coeng.nb.max() >= 0  # the script does co-engage items
        for item in [it.id for it in items]:
            got, want = held_row(again, item), held_row(ref, item)
            # A row's counts sum to the pairs it counted, always (Space-Saving): none lost or counted
            # twice. A full row's members may differ with how the replay batched the events.
            assert sum(got.values()) == sum(want.values()), item
            if len(want) < again.live.coeng.k:
                assert got == want, item


def test_checkpoints_queued_behind_a_slow_write_are_written_as_one(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """When writes fall behind, what waits is merged, so memory stays bounded: the latest counters,
    scores, co-engagement rows and marks win, and the store ends as if each was written."""
    import threading

    from foryou.store.writer import AggregateWriter

    store_dir = tmp_path / "s"
    open_store(str(store_dir), ["us"]).close()
    entered, gate, writes = threading.Event(), threading.Event(), []
    real = AggregateCheckpoint.save

    def slow(self: AggregateCheckpoint, store: object, ids: object) -> None:
        entered.set()
        gate.wait(10)
        writes.append(len(self.idx))
        real(self, store, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(AggregateCheckpoint, "save", slow)
    ids = ["a", "b", "c"]
    writer = AggregateWriter(lambda: open_store(str(store_dir), ["us"], second=True), lambda: ids)
    writer.start()

    def checkpoint(rows: dict[int, float], trend: dict[int, float], coeng: dict[int, bytes],
                   mark: int) -> AggregateCheckpoint:
        idx = np.fromiter(rows, np.int64, len(rows))
        stats = np.asarray([[v] * 13 for v in rows.values()]).reshape(len(rows), 13)
        t = (np.fromiter(trend, np.int64, len(trend)), np.fromiter(trend.values(), np.float64, len(trend)))
        c = (np.fromiter(coeng, np.int64, len(coeng)),
             np.frombuffer(b"".join(coeng.values()), np.uint8).reshape(len(coeng), -1))
        return AggregateCheckpoint(idx, stats, {"us": t}, c, {"us": (mark, mark)}, {"m": str(mark)})

    writer.submit(checkpoint({0: 1.0}, {0: 1.0}, {0: b"a1", 1: b"b1"}, 1))  # taken at once: held at the gate
    assert entered.wait(10)
    for k in range(2, 6):
        row = {k % 2: b"%d%d" % (k % 2, k)}  # item a's row, then b's ...
        writer.submit(checkpoint({0: float(k), k % 2 + 1: float(k)}, {k % 3: float(k)}, row, k))
    gate.set()
    writer.flush()
    writer.stop()
    assert len(writes) == 2  # the first, then the four that waited, as one
    store = open_store(str(store_dir), ["us"])
    try:
        stats = {k: v[0] for k, v in store.iter_item_stats()}
        assert stats == {"a": 5.0, "b": 4.0, "c": 5.0}
        assert dict(store.iter_trend("us")) == {"a": 3.0, "b": 4.0, "c": 5.0}
        assert dict(store.iter_coengagement()) == {"a": b"04", "b": b"15"}
        assert store.item_watermarks()["us"] == (5, 5) and store.get_meta("m") == "5"
    finally:
        store.close()
