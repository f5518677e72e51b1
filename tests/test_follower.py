"""The log follower (issue 13, log-first ingestion): a request that appends events updates only its
users' interest state; the item aggregates and the learned model follow the log, a page at a time, and
end exactly where following at once would have, also across a crash while behind. A refresh or the
duel while the follower is behind sees the user as of the right moment."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeClient
from factories import Clock
from test_learning import T0, history, open_engine, world

from foryou.catalog import STATS
from foryou.config import load_settings
from foryou.engine import Engine
from foryou.interest import UserState, decay
from foryou.learning import duel, online
from foryou.learning.features import HEAD
from foryou.ranking import value
from foryou.types import EventIn, ItemIn


def fill(engine: Engine, clock: Clock, passes: int = 2, batch: int = 100) -> list[EventIn]:
    rng = np.random.default_rng(7)
    items = world(rng)
    engine.items.upsert(items)
    events, _ = history(items, rng)
    for _ in range(passes):
        for lo in range(0, len(events), batch):
            engine.events.ingest(events[lo:lo + batch])
            clock.advance(1.0)
    return events


def catch_up(engine: Engine, clock: Clock) -> int:
    """Ticks until the follower has taken the whole log; returns how many it took."""
    ticks = 0
    while engine.follower.behind("us"):
        engine.tick(clock())
        ticks += 1
        assert ticks < 10_000
    return ticks


def test_a_request_updates_its_users_and_nothing_item_level(tmp_path: Path) -> None:
    clock = Clock(T0)
    with open_engine(tmp_path / "d", clock) as engine:
        engine.follow_beside(37)
        events = fill(engine, clock, passes=1)
        user = events[0].user
        live = engine.live
        assert live.user(user).state.seq > 0 and live.user(user).state.weights  # the user's state: at once
        assert live.catalog.stats[:, STATS["views"]].sum() == 0  # counters, trending, model: not yet
        assert not live.trending.scores["us"].any()
        assert engine.learner.marks["us"] == 0 and engine.learner.examples == 0
        assert engine.follower.behind("us") == len(events)


def test_following_in_pages_ends_where_following_at_once_does(tmp_path: Path) -> None:
    clock_a, clock_b = Clock(T0), Clock(T0)
    with open_engine(tmp_path / "a", clock_a) as at_once, open_engine(tmp_path / "b", clock_b) as paged:
        paged.follow_beside(37)
        events = fill(at_once, clock_a)
        fill(paged, clock_b)
        assert catch_up(paged, clock_b) >= len(events) * 2 // 37
        a, b = at_once.live, paged.live
        assert np.array_equal(a.catalog.stats, b.catalog.stats)
        assert np.allclose(a.trending.scores["us"], b.trending.scores["us"])
        assert np.array_equal(a.totals(), b.totals())
        assert a.item_mark == b.item_mark == a.event_mark == b.event_mark
        assert at_once.learner.marks == paged.learner.marks == a.event_mark
        assert paged.learner.examples > 0 and paged.learner.lag_s >= 0


def test_a_crash_with_the_follower_behind_loses_and_doubles_nothing(tmp_path: Path) -> None:
    clock = Clock(T0)
    with open_engine(tmp_path / "ref", Clock(T0)) as reference:
        fill(reference, Clock(T0))
        want = reference.live.catalog.stats.copy()
    engine = open_engine(tmp_path / "d", clock)
    engine.follow_beside(50)
    fill(engine, clock)
    engine.tick(clock())  # a page followed, then a checkpoint with the follower far behind
    engine.live.checkpoint()
    engine.learner.checkpoint()
    assert 0 < engine.live.item_mark["us"] < engine.live.event_mark["us"]
    engine.store.close()  # a crash: nothing more is saved
    with open_engine(tmp_path / "d", Clock(clock())) as again:
        assert np.array_equal(again.live.catalog.stats[:, :len(STATS)], want[:, :len(STATS)])
        assert again.live.item_mark == again.live.event_mark == again.learner.marks


@pytest.mark.parametrize("stop", ["clean", "crash"])
def test_a_refresh_while_the_follower_is_behind_is_not_undone_by_a_restart(tmp_path: Path, stop: str) -> None:
    clock = Clock(T0)
    engine = open_engine(tmp_path / "d", clock)
    fill(engine, clock)
    engine.follow_beside(50)
    items = list(engine.live.catalog.index)[:8]
    engine.events.ingest([EventIn(user="newcomer", item=i, type="view", watch_s=10.0) for i in items])
    engine.users.refresh("newcomer")  # saves the model at once, with the follower still behind
    assert engine.learner.marks["us"] < engine.live.event_mark["us"]
    if stop == "clean":
        engine.close()
    else:
        engine.store.close()
    with open_engine(tmp_path / "d", clock) as again:  # learns the log's tail, but not the refreshed views
        assert again.learner.marks["us"] == again.live.event_mark["us"]
        assert again.learner.user_vector("us", "newcomer") is None
        # The marks go once a checkpoint is saved past them (a restart from an earlier one needs them).
        again.learner.checkpoint()
        assert dict(again.store.iter_model_rows("us", online.SKIP_TABLE)) == {}


def test_a_refresh_while_the_follower_is_behind_is_not_undone_by_it(tmp_path: Path) -> None:
    clock = Clock(T0)
    with open_engine(tmp_path / "d", clock) as engine:
        fill(engine, clock)
        engine.follow_beside(50)
        items = list(engine.live.catalog.index)[:8]
        engine.events.ingest([EventIn(user="newcomer", item=i, type="view", watch_s=10.0) for i in items])
        engine.users.refresh("newcomer")  # before the follower learned those views
        catch_up(engine, clock)
        assert engine.learner.user_vector("us", "newcomer") is None  # the views did not come back
        engine.events.ingest([EventIn(user="newcomer", item=items[0], type="like")])
        catch_up(engine, clock)
        assert engine.learner.user_vector("us", "newcomer") is not None  # what came after does count


def test_the_duel_scores_the_fallback_with_the_state_before_the_view(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duel, "RATE", 1.0)
    clock = Clock(T0)
    with open_engine(tmp_path / "d", clock) as engine:
        fill(engine, clock, passes=3)
        learner = engine.learner
        assert learner.examples >= learner.settings.min_examples
        engine.follow_beside(50)
        user = "g0-u00"
        before = dict(engine.live.user(user).state.weights)
        fresh = next(i for i in engine.live.catalog.index if i.startswith("g0-"))
        engine.events.ingest([EventIn(user=user, item=fresh, type="view", watch_s=10.0)])
        (_, who, idx, snapshot), = learner.samples.pending["us"]
        assert who == user and engine.live.catalog.ids[int(idx[0])] == fresh
        assert snapshot.weights == before != engine.live.user(user).state.weights
        calls: list[np.ndarray] = []
        monkeypatch.setattr(learner.duel, "record", lambda _learned, fallback: calls.append(fallback))

        def fallback(state: UserState) -> np.ndarray:
            live = engine.live
            return value(learner.fallback.predict(live.catalog, state, idx, decay(state, clock(), live.tau),
                                                  live.totals()), live.settings.weights)

        expected, leaked = fallback(snapshot), fallback(engine.live.user(user).state)
        assert not np.allclose(expected, leaked)  # the view itself would lift its item's score
        catch_up(engine, clock)
        assert not learner.samples.pending["us"] and len(calls) == 1
        assert np.allclose(calls[0], expected)


def test_the_server_follows_the_log_beside_its_requests(make_client: MakeClient) -> None:
    client = make_client()
    with client:  # the app's lifespan: the server's own follower task runs
        engine = client.app.state.engine  # type: ignore[attr-defined]
        items = [{"id": f"v{k}", "creator": "c", "duration_s": 10.0, "tags": ["t"]} for k in range(20)]
        assert client.post("/v1/items", json={"items": items}).status_code == 200
        events = [{"user": f"u{k % 7}", "item": f"v{k % 20}", "type": "view", "watch_s": 10.0} for k in range(600)]
        assert client.post("/v1/events", json={"events": events}).json() == {"accepted": 600, "duplicates": 0}
        assert engine.events.follower is None  # the request did not wait for it
        deadline = time.monotonic() + 10
        while engine.follower.behind("us") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/v1/items/v3").json()["stats"]["views"] == 30
        text = client.get("/metrics").text
        assert "foryou_log_follower_events_behind 0" in text
        lags = re.search(r"^foryou_model_update_lag_seconds_count (\d+)$", text, re.M)
        assert lags is not None and int(lags.group(1)) >= 1  # each batch's lag, once learned
        assert engine.learner.marks["us"] == engine.live.event_mark["us"]


def test_a_server_starts_without_waiting_for_the_model_to_relearn_the_log(tmp_path: Path) -> None:
    clock = Clock(T0)
    engine = open_engine(tmp_path / "d", clock)
    rng = np.random.default_rng(7)
    items = world(rng)
    engine.items.upsert(items)
    events, _ = history(items, rng)
    engine.events.ingest(events[:500])
    engine.learner.checkpoint()  # the model's checkpoint, then more events, then a crash
    saved = engine.learner.marks["us"]
    engine.events.ingest(events[500:])
    engine.live.checkpoint()
    end = engine.live.event_mark["us"]
    engine.store.close()
    assert 0 < saved < end
    settings = engine.settings
    beside = Engine.open(settings, clock=clock, seed=0, catch_up=False)  # as `foryou serve` opens it
    assert beside.learner.marks["us"] == saved and beside.follower.behind("us") == end - saved
    beside.follower.follow()
    assert beside.learner.marks["us"] == end and beside.follower.behind("us") == 0
    beside.store.close()
    with Engine.open(settings, clock=clock, seed=0) as at_once:  # in-process: learned before it returns
        assert at_once.learner.marks["us"] == end


def test_an_erasure_of_the_newest_events_before_the_follower_reached_them(tmp_path: Path) -> None:
    """The follower reads the log: events erased before it got to them are gone, and it must not wait
    for them (it looped for ever, reporting them as behind)."""
    clock = Clock(T0)
    with open_engine(tmp_path / "d", clock) as engine:
        fill(engine, clock, passes=1)
        engine.follow_beside(50)
        items = list(engine.live.catalog.index)[:8]
        engine.events.ingest([EventIn(user="gone", item=i, type="view", watch_s=10.0) for i in items])
        engine.erasure.erase("gone")
        assert catch_up(engine, clock) < 100
        assert engine.follower.behind("us") == 0 and not engine.follower.follow()
        assert engine.learner.user_vector("us", "gone") is None
        views = engine.live.catalog.stats[:, STATS["views"]].sum()
        assert views == engine.live.event_mark["us"] - len(items)  # what it never took is not counted
        engine.events.ingest([EventIn(user="next", item=items[0], type="view", watch_s=10.0)])
        catch_up(engine, clock)  # a seq after the erased ones (were they reused, this view would be skipped)
        assert engine.live.catalog.stats[:, STATS["views"]].sum() == views + 1


@pytest.mark.parametrize("partial", [False, True])
def test_co_engagement_survives_a_crash_with_the_follower_behind_exactly(tmp_path: Path, partial: bool) -> None:
    """Co-engagement is counted as events reach the users' state, ahead of the aggregates' watermark:
    a replay after a crash must count again only what no checkpoint saved (it counted twice)."""
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    engine = Engine.open(settings, clock=Clock(T0), seed=0)
    engine.items.upsert([ItemIn(id=i, creator="c", duration_s=10.0, tags=["t"]) for i in "abc"])
    engine.follow_beside(1000)
    for user in ("u1", "u2"):
        engine.events.ingest([EventIn(user=user, item="a", type="like"), EventIn(user=user, item="b", type="like")])
    engine.live.checkpoint(max_users=1 if partial else None)  # a slice: one of the two users' states saved
    engine.events.ingest([EventIn(user="u3", item="a", type="like"), EventIn(user="u3", item="b", type="like")])
    engine.store.close()  # a crash: u3's pair was never saved, (with a slice) u2's state neither
    with Engine.open(settings, clock=Clock(T0), seed=0) as again:
        again.live.checkpoint()
        a, b = (again.live.catalog.index[i] for i in "ab")
        assert again.live.neighbours(a) == [b]
        assert again.live.coeng.w[a].max() == 3.0


def test_a_change_of_duration_waits_for_the_follower(tmp_path: Path) -> None:
    """Views logged before an item's duration changes are counted with the duration they were watched
    at, also when the follower is behind at the change."""
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    with Engine.open(settings, clock=Clock(T0), seed=0) as engine:
        engine.items.upsert([ItemIn(id="v", creator="c", duration_s=10.0, tags=["t"])])
        engine.follow_beside(128)
        engine.events.ingest([EventIn(user=f"u{k}", item="v", type="view", watch_s=10.0) for k in range(5)])
        engine.items.upsert([ItemIn(id="v", creator="c", duration_s=120.0, tags=["t"])])  # re-cut, longer
        engine.tick(engine.clock())
        row = engine.live.catalog.stats[engine.live.catalog.index["v"]]
        assert (row[STATS["views"]], row[STATS["completions"]]) == (5, 5)


def test_joins_wait_for_the_follower_to_close(tmp_path: Path) -> None:
    """While the follower is behind, the periodic work does not close views' joins by the clock: the
    like that follows a view in the log still labels it."""
    clock = Clock(T0)
    with open_engine(tmp_path / "d", clock) as engine:
        engine.items.upsert([ItemIn(id=f"v{k}", creator="c", duration_s=10.0, tags=["t"]) for k in range(20)])
        labels: list[int] = []
        train = engine.learner._train

        def spy(ex, now):  # type: ignore[no-untyped-def]
            like = HEAD["like"]
            labels.extend(int(ex.labels[k, like]) for k in range(len(ex.items))
                          if ex.users[k] == "alice" and ex.items[k] == 0 and ex.mask[k, like])
            return train(ex, now)

        engine.learner._train = spy  # type: ignore[method-assign]
        engine.follow_beside(128)
        events = [EventIn(user="alice", item="v0", type="view", watch_s=10.0)]
        events += [EventIn(user=f"u{k}", item=f"v{1 + k % 19}", type="view", watch_s=3.0) for k in range(300)]
        engine.events.ingest([*events, EventIn(user="alice", item="v0", type="like")])
        clock.advance(120.0)  # two join windows behind, as while catching up after a restart
        engine.follower.follow(128)  # a page: alice's view opens its join
        engine.learner.tick(clock())  # the periodic work, between two pages
        catch_up(engine, clock)
        clock.advance(120.0)
        engine.learner.tick(clock())
        assert labels == [1]  # one row for the view, with its like


def test_an_in_process_trainer_scores_every_duel_sample_of_users_not_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples of users not in memory are read from the store when scored; a server reads a few a turn
    (its loop waits), but an in-process trainer (a load, `foryou demo`, the step drivers) reads them all,
    so that a loaded history fills the duel and the learned model can serve after it."""
    monkeypatch.setattr(duel, "RATE", 1.0)
    clock = Clock(T0)
    with open_engine(tmp_path / "d", clock) as engine:
        fill(engine, clock, passes=1)  # the model has its examples
        learner = engine.learner
        assert learner.examples >= learner.settings.min_examples
        scored = len(learner.duel.samples)
        engine.live.users.clear()  # nobody in memory
        rng = np.random.default_rng(11)
        items = list(engine.live.catalog.index)
        views = [EventIn(user=f"g0-u{k % 10:02d}", item=items[int(rng.integers(len(items)))], type="view",
                         watch_s=600.0) for k in range(60)]  # each finished
        engine.events.ingest(views)
        assert not learner.samples.pending["us"]
        assert len(learner.duel.samples) - scored == 60 > duel.READS


def test_the_follower_beside_takes_this_processs_appends_without_reading_them_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It takes the columns the request appended (reading the log back cost 3-5 µs an event); events
    another process appended in between are read from the log, and both end where following at once does."""
    from foryou.types import EventRecord

    clock_a, clock_b = Clock(T0), Clock(T0)
    with open_engine(tmp_path / "a", clock_a) as at_once, open_engine(tmp_path / "b", clock_b) as beside:
        beside.follow_beside(37)
        events = fill(at_once, clock_a, passes=1)
        reads: list[int] = []  # where reads that found events began (one at the end finds none)
        real = beside.store.events_after

        def events_after(region: str, seq: int, limit: int | None = None) -> list[EventRecord]:
            found = list(real(region, seq, limit))
            reads.extend([seq] if found else [])
            return found

        monkeypatch.setattr(beside.store, "events_after", events_after)
        fill(beside, clock_b, passes=1)
        catch_up(beside, clock_b)
        assert reads == [] and beside.live.item_mark["us"] == len(events)
        # another process appends (the same events again, under new ids), then this one
        other = [EventRecord(e.user, e.item, e.type, e.watch_s, clock_b(), f"other-{k}")
                 for k, e in enumerate(events[:50])]
        for engine, clock in ((at_once, clock_a), (beside, clock_b)):
            engine.store.append_events("us", other, [])
            engine.live.event_mark["us"] += len(other)
            engine.events.ingest(events[:30])
            engine.follower.follow() if engine is at_once else catch_up(engine, clock)
        assert reads and min(reads) == len(events)  # the other process's part, from the log
        assert np.array_equal(at_once.live.catalog.stats, beside.live.catalog.stats)
        assert np.allclose(at_once.live.trending.scores["us"], beside.live.trending.scores["us"])
        assert at_once.live.item_mark == beside.live.item_mark
