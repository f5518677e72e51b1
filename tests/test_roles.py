"""The runtime in roles (issue 13): a trainer that follows the log on a store handle of its own and
publishes versions, and a server whose model is a replica of what was published. Driven here in one
process, step by step, over one SQLite data directory opened twice, as the two processes open it;
test_crash.py runs them as real processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import Clock
from test_follower import fill as follower_fill
from test_learning import T0, history, world

from foryou.config import Settings, load_settings
from foryou.engine import Engine
from foryou.learning.online import SKIP_TABLE
from foryou.learning.replica import ModelReplica
from foryou.roles import Trainer
from foryou.types import EventIn, ItemIn


def settings_for(path: Path, **overrides: object) -> Settings:
    return load_settings(overrides={"server.data": str(path), "learning.min_examples": 200,
                                    "learning.index": "exact", "learning.duel": False, **overrides}, env={})


@contextmanager
def pair(path: Path, clock: Clock, **overrides: object) -> Iterator[tuple[Engine, Trainer]]:
    settings = settings_for(path, **overrides)
    engine = Engine.open(settings, clock=clock, seed=0, role="serve", catch_up=False)
    trainer = Trainer.open(settings, clock=clock)
    try:
        yield engine, trainer
    finally:
        trainer.close()
        engine.close()


def fill(engine: Engine, clock: Clock, passes: int = 3) -> list[EventIn]:
    return follower_fill(engine, clock, passes, batch=200)


def publish(engine: Engine, trainer: Trainer, clock: Clock) -> None:
    """The trainer takes the whole log and publishes; the server takes the version in."""
    while trainer.step():
        pass
    clock.advance(1.0)
    trainer.step()
    engine.tick(clock())


def settle(replica: Any) -> None:
    """The replica's index as complete as it gets: a rebuild the first version started, swapped in."""
    if replica._rebuilding is not None:
        replica._rebuilding.join(30)
    replica.refresh_index()


def test_the_server_serves_the_version_the_trainer_published(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        assert isinstance(engine.learner, ModelReplica)
        fill(engine, clock)
        replica = engine.learner
        assert replica.version == 0 and not replica.healthy  # requests never train
        with pytest.raises(RuntimeError):
            replica.learn_many("us", [])
        publish(engine, trainer, clock)
        learner = trainer.learner
        assert learner.version > 0 and replica.version == learner.version
        assert replica.marks == learner.marks == engine.live.event_mark
        assert replica.healthy and replica.examples == learner.examples
        assert np.array_equal(replica.model.weights, learner.model.weights)
        users = [u for u in learner.model.users["us"].index][:10]
        ours = np.array([replica.user_vector("us", u) for u in users])  # loaded from the store on demand
        assert users and np.allclose(ours, learner.model.user_vectors(["us"] * len(users), users))
        idx = np.arange(len(engine.live.catalog))
        assert np.allclose(replica.model.item_vectors(engine.live.catalog, idx, np.zeros((len(idx), 2))),
                           learner.model.item_vectors(trainer.live.catalog, idx, np.zeros((len(idx), 2))))
        assert sum(replica.lag.counts) > 0  # acceptance -> served by a version that learned it
        feed = engine.feeds.feed(users[0], 5, explain=True)
        assert feed.items and any(i.explain is not None and i.explain["ranker"] == "learned" for i in feed.items)


def test_a_version_moves_only_the_rows_it_changed(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        events = fill(engine, clock)
        clock.advance(120.0)  # every join closed: nothing of the fill is left to learn
        publish(engine, trainer, clock)
        before = trainer.learner.version
        user = events[0].user
        held = engine.learner.user_vector("us", user)
        other = next(u for u in trainer.learner.model.users["us"].index if u != user)
        other_held = engine.learner.user_vector("us", other)
        engine.events.ingest([EventIn(user=user, item=e.item, type="like") for e in events[:30] if e.user == user]
                             or [EventIn(user=user, item=events[0].item, type="like")])
        clock.advance(120.0)  # past the join window: the likes are labels now
        publish(engine, trainer, clock)
        assert trainer.learner.version > before
        assert not np.allclose(engine.learner.user_vector("us", user), held)  # the held row was swapped
        assert np.allclose(engine.learner.user_vector("us", other), other_held)  # untouched rows stay
        assert np.allclose(engine.learner.user_vector("us", user),
                           trainer.learner.model.user_vectors(["us"], [user])[0])


def held_unpublished(engine: Engine, trainer: Trainer, clock: Clock) -> str:
    """A user with a published row whom the trainer has learned more of since (a row it holds, changed
    and not published yet)."""
    events = fill(engine, clock)
    publish(engine, trainer, clock)
    user = events[0].user
    assert engine.store.get_model_rows("us", "user", [user])
    engine.events.ingest([EventIn(user=user, item=f"g0-i{k:02d}", type="like") for k in range(0, 20, 2)])
    while trainer.step():
        pass
    assert user in trainer.learner.model.users["us"].index
    return user


def test_a_refresh_is_never_undone_by_the_trainer(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        user = held_unpublished(engine, trainer, clock)
        store = engine.store
        engine.users.refresh(user)  # ... when a server starts the user afresh
        assert not store.get_model_rows("us", "user", [user])
        assert dict(store.iter_model_rows("us", SKIP_TABLE))
        clock.advance(1.0)
        trainer.learner.checkpoint()  # a publish racing the refresh: the store's guard leaves the row out
        assert not store.get_model_rows("us", "user", [user])
        publish(engine, trainer, clock)
        assert not store.get_model_rows("us", "user", [user]) and user not in trainer.learner.model.users["us"].index
        assert not dict(store.iter_model_rows("us", SKIP_TABLE))  # learned past the mark: done with
        # What comes after the refresh is learned again, into a fresh row.
        engine.events.ingest([EventIn(user=user, item=f"g1-i{k:02d}", type="view", watch_s=10.0)
                              for k in range(1, 40, 2)])
        publish(engine, trainer, clock)
        assert store.get_model_rows("us", "user", [user])


def test_an_erased_user_is_never_written_back(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        user = held_unpublished(engine, trainer, clock)
        engine.erasure.erase(user)
        clock.advance(120.0)
        publish(engine, trainer, clock)
        assert not engine.store.get_model_rows("us", "user", [user])
        assert user not in trainer.learner.model.users["us"].index
        assert all(user not in table.index for table in engine.learner.model.users.values())


def test_the_trainer_follows_the_catalogue(tmp_path: Path) -> None:
    clock = Clock(T0)
    with pair(tmp_path / "d", clock) as (engine, trainer):
        fill(engine, clock, passes=1)
        publish(engine, trainer, clock)
        catalog = trainer.live.catalog
        assert len(catalog) == len(engine.live.catalog)
        engine.items.upsert([ItemIn(id="fresh", creator="c0", duration_s=12.0, tags=["t9"])])
        engine.items.set_down("g0-i00", True)
        trainer.step()
        assert "fresh" in catalog.index and catalog.duration_l[catalog.index["fresh"]] == 12.0
        assert not catalog.alive[catalog.index["g0-i00"]]
        engine.events.ingest([EventIn(user="g0-u00", item="fresh", type="view", watch_s=12.0)])
        publish(engine, trainer, clock)
        assert catalog.stats_of(catalog.index["fresh"])["views"] == 1


def test_a_killed_trainer_resumes_from_its_last_version(tmp_path: Path) -> None:
    clock = Clock(T0)
    settings = settings_for(tmp_path / "d")
    engine = Engine.open(settings, clock=clock, seed=0, role="serve", catch_up=False)
    try:
        fill(engine, clock, passes=2)
        first = Trainer.open(settings, clock=clock)
        publish(engine, first, clock)
        fill(engine, clock, passes=1)
        while first.step():
            pass
        engine.events.ingest([EventIn(user="g0-u00", item=f"g0-i{k:02d}", type="like") for k in range(0, 40, 2)])
        engine.events.ingest([EventIn(user="g1-u01", item=f"g1-i{k:02d}", type="view", watch_s=10.0)
                              for k in range(1, 40, 2)])
        first.step()  # learned, not published: then killed (no close, no last publish)
        published = engine.learner.published()
        assert first.learner.version > published
        first.store.close()
        second = Trainer.open(settings, clock=clock)
        assert second.learner.version == published and second.learner.marks["us"] < first.learner.marks["us"]
        publish(engine, second, clock)
        assert second.learner.marks == engine.live.event_mark  # re-learned the log after its marks
        assert engine.learner.version == second.learner.version > published  # versions only move on
        second.close()
    finally:
        engine.close()


def test_a_refresh_mark_outlives_a_trainer_killed_before_it_published(tmp_path: Path) -> None:
    """The trainer learns past a refresh mark, then dies before publishing: the mark must still be
    there for the next trainer, which restarts from the published marks and would otherwise learn the
    user's events from before the refresh again."""
    clock = Clock(T0)
    settings = settings_for(tmp_path / "d")
    engine = Engine.open(settings, clock=clock, seed=0, role="serve", catch_up=False)
    try:
        events = fill(engine, clock)
        first = Trainer.open(settings, clock=clock)
        publish(engine, first, clock)
        user = events[0].user
        engine.events.ingest([EventIn(user=user, item=f"g0-i{k:02d}", type="like") for k in range(0, 20, 2)])
        first.step()  # learned, not published
        engine.users.refresh(user)
        first.step()  # takes the mark: learned past it already, so done with it ... at the next publication
        assert engine.store.get_model_rows("us", SKIP_TABLE, [user])
        first.store.close()  # killed before that
        second = Trainer.open(settings, clock=clock)
        publish(engine, second, clock)
        assert not engine.store.get_model_rows("us", "user", [user])  # the old events stayed unlearned
        assert not engine.store.get_model_rows("us", SKIP_TABLE, [user])  # and the mark went after publishing
        second.close()
    finally:
        engine.close()


def test_the_bulk_loader_leaves_learning_to_the_trainer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a trainer process (the default), `foryou load` appends and counts but does not train; the
    trainer learns what was loaded once it runs."""
    import orjson

    from foryou import cli

    rng = np.random.default_rng(7)
    items = world(rng)
    events, _ = history(items, rng)
    (tmp_path / "items.jsonl").write_bytes(b"\n".join(orjson.dumps(i.model_dump(exclude_none=True)) for i in items))
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(e.model_dump(exclude_none=True)) for e in events))
    data = tmp_path / "d"
    assert cli.main(["load", "--data", str(data), "--items", str(tmp_path / "items.jsonl"),
                     "--events", str(tmp_path / "events.jsonl"), "--quiet"]) == 0
    assert f"the trainer has {len(events)} events to learn" in capsys.readouterr().out
    settings = settings_for(data)
    trainer = Trainer.open(settings, clock=Clock(T0 + 3600))
    try:
        assert trainer.learner.version == 0 and trainer.learner.examples == 0
        while trainer.step():
            pass
        assert trainer.learner.events == len(events) and trainer.learner.version > 0
    finally:
        trainer.close()


def test_a_trainer_that_keeps_failing_is_restarted_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from foryou.roles import supervise

    monkeypatch.setattr(supervise, "_BACKOFF_S", (0.05, 0.1))
    trainer = supervise.TrainerProcess(["--config", "/nonexistent/foryou.toml"])  # exits with an error at once
    trainer.start()
    try:
        deadline = time.monotonic() + 60
        while not trainer.failing and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trainer.failing and trainer.restarts >= 3
    finally:
        trainer.stop()
    assert trainer.process is not None and trainer.process.poll() is not None  # nothing left running


@contextmanager
def indexed_replica(data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Engine, Any, int]]:
    """A server whose replica took a first version and indexed it (rebuilds from 10 waiting items):
    (engine, replica, items alive)."""
    from foryou.learning import indexing

    monkeypatch.setattr(indexing, "_REBUILD_AT", 10)
    clock = Clock(T0)
    with pair(data, clock) as (engine, trainer):
        fill(engine, clock, passes=1)
        publish(engine, trainer, clock)
        settle(engine.learner)
        yield engine, engine.learner, int(engine.live.catalog.alive[:len(engine.live.catalog)].sum())


def test_an_index_missing_at_a_start_is_built_beside_the_ticks(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from foryou.learning import online

    with indexed_replica(tmp_path / "d", monkeypatch) as (engine, replica, alive):
        replica.index = online.make_index(replica.settings.dim + 1, "exact")  # as after a start without one
        replica.dirty_items.update(dict.fromkeys(range(len(engine.live.catalog))))
        replica.refresh_index(0.02)  # hands them to a thread and returns
        assert replica._rebuilding is not None and not replica.dirty_items
        engine.items.set_down("g0-i00", True)  # changed meanwhile: queued again
        replica._rebuilding.join(30)
        replica.refresh_index(0.02)  # swaps the new index in, then applies what changed
        assert replica._rebuilding is None and len(replica.index) == alive - 1
        assert engine.live.catalog.index["g0-i00"] not in set(replica.retrieve("us", "g0-u00", alive).tolist())


def test_many_changed_items_update_the_index_in_place_and_a_stop_ends_a_rebuild(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild makes an index of the items waiting only: it is for an empty index (a start without a
    saved one). With an index in use, many changed items are updated in it (an index of them alone
    dropped every other item from retrieval). A stop ends a rebuild in progress: no thread is left in
    the ANN library at exit (which aborted the process)."""
    import threading

    from foryou.learning import indexing, online

    with indexed_replica(tmp_path / "d", monkeypatch) as (engine, replica, alive):
        assert len(replica.index) == alive
        replica.dirty_items.update(dict.fromkeys(range(20)))
        while replica.dirty_items:
            replica.refresh_index(0.02)
        assert replica._rebuilding is None and len(replica.index) == alive
        replica.save_index()  # a clean stop's index, which the next stop must not lose
        # an empty index: rebuilt in a thread, which a stop ends
        started, gate = threading.Event(), threading.Event()
        real = online.Learner._popularity

        def slow(self: online.Learner, idx: np.ndarray) -> np.ndarray:
            started.set()
            gate.wait(10)
            return real(self, idx)

        monkeypatch.setattr(indexing, "_REBUILD_PART", 2)
        monkeypatch.setattr(online.Learner, "_popularity", slow)
        replica.index = online.make_index(replica.settings.dim + 1, "exact")
        replica.dirty_items.update(dict.fromkeys(range(len(engine.live.catalog))))
        replica.refresh_index(0.02)
        rebuilding = replica._rebuilding
        assert rebuilding is not None and started.wait(10)
        threading.Timer(0.2, gate.set).start()
        path = tmp_path / "d" / "ann-index.bin"
        saved = path.read_bytes()
        replica.save_index()
        assert not rebuilding.is_alive() and replica._rebuilt is None
        # the unfinished index is not saved; the earlier stop's stays, for the next start to update
        assert path.read_bytes() == saved
