"""Event ingestion: whole-batch validation, idempotency keys (first wins), users created on first event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import Clock

from foryou.catalog import STATS
from foryou.config import load_settings
from foryou.engine import Engine
from foryou.errors import InvalidInput
from foryou.types import EventIn, ItemIn, UserIn, format_time

T0 = 1_700_000_000.0




@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def open_engine(data: Path, clock: Clock) -> Engine:
    settings = load_settings(overrides={"server.data": str(data), "server.regions": "us,eu"}, env={})
    return Engine.open(settings, clock=clock, seed=0)


@pytest.fixture
def engine(data: Path, clock: Clock) -> Iterator[Engine]:
    e = open_engine(data, clock)
    e.items.upsert([ItemIn(id=f"i{k}", creator=f"c{k}", duration_s=10.0, tags=["t"]) for k in range(5)])
    yield e
    e.close()


def view(user: str, item: str, watch: float = 10.0, **kw: object) -> EventIn:
    return EventIn(user=user, item=item, type="view", watch_s=watch, **kw)  # type: ignore[arg-type]


def stats(engine: Engine, item: str) -> dict[str, float]:
    return engine.items.get(item)["stats"]  # type: ignore[return-value]


def logged(engine: Engine, region: str = "us") -> list[tuple[str, str, str, float]]:
    return [(e.user, e.item, e.type, e.watch_s) for e in engine.store.events_after(region, 0)]


def test_accepts_and_counts(engine: Engine) -> None:
    result = engine.events.ingest([view("u", "i0", 10.0), view("u", "i1", 1.0), view("u", "i2", 5.0),
                                   EventIn(user="u", item="i0", type="like")])
    assert (result.accepted, result.duplicates) == (4, 0)
    assert stats(engine, "i0")["views"] == 1 and stats(engine, "i0")["completions"] == 1
    assert stats(engine, "i0")["likes"] == 1 and stats(engine, "i0")["watch_s"] == 10.0
    assert stats(engine, "i1")["completions"] == 0
    assert engine.live.catalog.stats[engine.live.catalog.index["i1"], STATS["early_swipes"]] == 1
    assert logged(engine) == [("u", "i0", "view", 10.0), ("u", "i1", "view", 1.0), ("u", "i2", "view", 5.0),
                              ("u", "i0", "like", 0.0)]


def test_whole_batch_rejected_with_indexes(engine: Engine, clock: Clock) -> None:
    batch = [view("u", "i0"), view("u", "nope"), view("v", "i1"),
             view("u", "i2", ts=format_time(clock() + 3600)), EventIn(user="w", item="i3", type="like")]
    with pytest.raises(InvalidInput) as info:
        engine.events.ingest(batch)
    errors = [(e.index, e.field) for e in info.value.errors]
    assert errors == [(1, "item"), (3, "ts")]
    assert "nope" in info.value.errors[0].message
    # nothing was applied: no events, no counters, no users
    assert logged(engine) == [] and logged(engine, "eu") == []
    assert all(stats(engine, f"i{k}")["views"] == 0 for k in range(5))
    assert engine.store.find_user_region("u") is None and engine.store.find_user_region("w") is None


def test_unknown_item(engine: Engine) -> None:
    with pytest.raises(InvalidInput) as info:
        engine.events.ingest([EventIn(user="u", item="ghost", type="share")])
    assert [(e.index, e.field) for e in info.value.errors] == [(0, "item")]
    assert info.value.status == 422


def test_future_timestamps(engine: Engine, clock: Clock) -> None:
    with pytest.raises(InvalidInput) as info:
        engine.events.ingest([view("u", "i0", ts=format_time(clock() + 301))])
    assert [(e.index, e.field) for e in info.value.errors] == [(0, "ts")]
    ok = engine.events.ingest([view("u", "i0", ts=format_time(clock() + 300)),  # the limit itself is fine
                               view("u", "i1", ts="2023-11-14T22:13:20+01:00"),  # past, with an offset
                               view("u", "i2")])  # no ts: now
    assert ok.accepted == 3
    assert [e.ts for e in engine.store.events_after("us", 0)] == [clock() + 300, clock() - 3600, clock()]
    clock.t += 1000  # the same wall time is fine once the clock has moved on
    assert engine.events.ingest([view("u", "i3", ts=format_time(T0 + 600))]).accepted == 1


def test_idempotency_within_a_batch_first_wins(engine: Engine) -> None:
    result = engine.events.ingest([view("u", "i0", 10.0, id="k1"), view("u", "i0", 1.0, id="k1"),
                                   view("u", "i1", 2.0, id="k2"), view("u", "i1", 3.0)])
    assert (result.accepted, result.duplicates) == (3, 1)
    assert logged(engine) == [("u", "i0", "view", 10.0), ("u", "i1", "view", 2.0), ("u", "i1", "view", 3.0)]
    assert stats(engine, "i0")["views"] == 1 and stats(engine, "i0")["watch_s"] == 10.0


def test_idempotency_across_batches_first_wins(engine: Engine) -> None:
    engine.events.ingest([view("u", "i0", 10.0, id="k1")])
    again = engine.events.ingest([view("u", "i0", 1.0, id="k1"), view("u", "i2", 4.0, id="k3")])
    assert (again.accepted, again.duplicates) == (1, 1)
    assert logged(engine) == [("u", "i0", "view", 10.0), ("u", "i2", "view", 4.0)]
    assert stats(engine, "i0")["views"] == 1 and stats(engine, "i0")["watch_s"] == 10.0
    # a user's key is a key, whatever else the event says
    same = engine.events.ingest([EventIn(user="u", item="i4", type="like", id="k1")])
    assert (same.accepted, same.duplicates) == (0, 1)
    assert stats(engine, "i4")["likes"] == 0
    # ... but another user's event with the same id is another event (keys are per user)
    other = engine.events.ingest([EventIn(user="v", item="i4", type="like", id="k1")])
    assert (other.accepted, other.duplicates) == (1, 0)
    assert stats(engine, "i4")["likes"] == 1


def test_idempotency_is_per_user_and_region(engine: Engine) -> None:
    engine.users.put("eve", UserIn(region="eu"))
    engine.events.ingest([view("eve", "i0", id="shared")])
    # ann (us, the default region) neither learns of eve's key nor is refused by it
    mine = engine.events.ingest([view("ann", "i1", id="shared"), view("ann", "i2", id="shared")])
    assert (mine.accepted, mine.duplicates) == (1, 1)
    assert logged(engine, "eu") == [("eve", "i0", "view", 10.0)]
    assert logged(engine) == [("ann", "i1", "view", 10.0)]
    assert engine.events.ingest([view("eve", "i3", id="shared")]).duplicates == 1  # still eve's


def test_idempotency_survives_a_restart(data: Path, clock: Clock) -> None:
    e = open_engine(data, clock)
    e.items.upsert([ItemIn(id="i0", creator="c", duration_s=10.0)])
    e.events.ingest([view("u", "i0", id="k1")])
    e.close()
    e = open_engine(data, clock)
    try:
        assert e.events.ingest([view("u", "i0", id="k1")]).duplicates == 1
        assert e.items.get("i0")["stats"]["views"] == 1  # type: ignore[index]
    finally:
        e.close()


def test_a_rejected_batch_records_no_keys(engine: Engine) -> None:
    with pytest.raises(InvalidInput):
        engine.events.ingest([view("u", "i0", id="k1"), view("u", "nope", id="k2")])
    result = engine.events.ingest([view("u", "i0", id="k1"), view("u", "i1", id="k2")])
    assert (result.accepted, result.duplicates) == (2, 0)


def test_events_without_keys_are_never_duplicates(engine: Engine) -> None:
    result = engine.events.ingest([view("u", "i0", 3.0)] * 3)
    assert (result.accepted, result.duplicates) == (3, 0)
    assert stats(engine, "i0")["views"] == 3


def test_taken_down_item_still_accepts_events(engine: Engine) -> None:
    engine.items.set_down("i3", True)
    result = engine.events.ingest([view("u", "i3", 10.0), EventIn(user="u", item="i3", type="report")])
    assert result.accepted == 2
    assert stats(engine, "i3")["views"] == 1 and stats(engine, "i3")["reports"] == 1


def test_user_created_on_first_event(engine: Engine, clock: Clock) -> None:
    assert engine.store.find_user_region("newbie") is None
    clock.t += 42
    engine.events.ingest([view("newbie", "i0"), view("newbie", "i1"), view("other", "i2")])
    assert engine.store.find_user_region("newbie") == "us"  # the first region held
    profile = engine.users.get("newbie")
    assert profile["region"] == "us" and profile["created_at"] == format_time(T0 + 42)
    assert engine.store.get_user("us", "newbie") is not None
    assert engine.store.get_user("us", "other") is not None
    assert [e.item for e in engine.store.user_events("us", "newbie")] == ["i0", "i1"]


def test_events_go_to_the_users_region(engine: Engine) -> None:
    engine.users.put("eve", UserIn(region="eu"))
    engine.events.ingest([view("eve", "i0"), view("ann", "i1"), EventIn(user="eve", item="i2", type="like")])
    assert logged(engine, "eu") == [("eve", "i0", "view", 10.0), ("eve", "i2", "like", 0.0)]
    assert logged(engine, "us") == [("ann", "i1", "view", 10.0)]
    assert engine.store.find_user_region("eve") == "eu"


def test_first_event_user_survives_a_crash(data: Path, clock: Clock) -> None:
    e = open_engine(data, clock)
    e.items.upsert([ItemIn(id="i0", creator="c", duration_s=10.0, tags=["x"])])
    e.events.ingest([view("newbie", "i0", 10.0)])
    crashed = e  # no checkpoint, no close
    e = open_engine(data, clock)
    try:
        assert e.users.get("newbie")["region"] == "us"
        assert e.items.get("i0")["stats"]["views"] == 1  # type: ignore[index]
    finally:
        e.close()
        crashed.store.close()


def test_empty_batch(engine: Engine) -> None:
    result = engine.events.ingest([])
    assert (result.accepted, result.duplicates) == (0, 0)


def test_idempotency_keys_live_at_least_their_ttl_in_engine_time(engine: Engine, clock: Clock) -> None:
    day = 86400.0
    engine.events.ingest([view("u", "i0", id="k-old", ts=format_time(T0 - 30 * day))])  # an old event, sent now
    clock.t += 6.5 * day  # within the 7-day TTL (counted from acceptance)
    engine.tick(clock.t)  # the periodic work purges expired keys
    assert engine.events.ingest([view("u", "i0", id="k-old")]).duplicates == 1
    clock.t += 3 * day  # now well past it
    engine.tick(clock.t)
    again = engine.events.ingest([view("u", "i0", id="k-old")])
    assert (again.accepted, again.duplicates) == (1, 0)
