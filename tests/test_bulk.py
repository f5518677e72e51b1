"""The bulk loader's own path for events (`foryou/bulk.py`): it accepts only what the API accepts (the
API's validation-rule cases run against it), a bad line gets the API's error, and what it loads is
what the API would have made of the same events: item counters, co-engagement, and each user's
state once read (it catches up with the log then, instead of the loader reading every user)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import Clock
from test_http_errors import BAD_EVENTS, NOT_RFC3339

from foryou.bulk import load_files
from foryou.config import load_settings
from foryou.engine import Engine
from foryou.errors import InvalidInput
from foryou.ingest import plain_events
from foryou.interest import loads
from foryou.types import EventIn, ItemIn, format_time

T0 = 1_700_000_000.0
GOOD = {"user": "u1", "item": "known", "type": "view", "watch_s": 5.0}
INDEX = {"known": 0}


def _future(minutes: float) -> str:
    return (datetime.fromtimestamp(T0, UTC) + timedelta(minutes=minutes)).isoformat()


REFUSED = [(patch, field) for patch, field in BAD_EVENTS] + [
    ({"item": "unknown"}, "item"),
    ({"ts": _future(6)}, "ts"),
    ({"ts": "0001-01-01T00:00:00Z"}, "ts"),
    ({"ts": "2024-02-30T12:00:00Z"}, "ts"),
    ({"ts": "2024-13-01T12:00:00Z"}, "ts"),
    ({"ts": "2024-01-01T24:00:00Z"}, "ts"),
    ({"watch_s": 86400.5}, "watch_s"),
    ({"watch_s": None}, "watch_s"),
    ({"id": ""}, "id"),
    ({"id": "x" * 257}, "id"),
    ({"request_id": "x" * 129}, "request_id"),
    ({"extra": 1}, "extra"),
    ({"ts": ""}, "ts"),
    ({"ts": "2024-01-01T00:00:00Z\n2024-01-01T00:00:00Z"}, "ts"),  # two plain times in one (one regex checks all)
    ({"ts": "2024-12-31T23:59:60Z"}, "ts"),
    ({"ts": "\uff12024-01-01T00:00:00Z"}, "ts"),  # a digit, but not an ASCII one
    *[({"ts": value}, "ts") for value in NOT_RFC3339],
]


@pytest.mark.parametrize(("patch", "field"), REFUSED, ids=[f"{f}-{i}" for i, (_, f) in enumerate(REFUSED)])
def test_the_fast_path_never_takes_what_the_api_refuses(patch: dict[str, Any], field: str, tmp_path: Path) -> None:
    bad = {**GOOD, **patch}
    assert plain_events([GOOD, GOOD, bad], INDEX, T0, set()) is None
    for missing in ("user", "item", "type"):
        assert plain_events([{k: v for k, v in GOOD.items() if k != missing}], INDEX, T0, set()) is None
    assert plain_events([[GOOD]], INDEX, T0, set()) is None
    # and the file with that line is refused by the loader with the API's error, its batch not stored
    with _engine(tmp_path) as engine:
        path = _write(tmp_path / "events.jsonl", [GOOD, GOOD, bad])
        with pytest.raises(InvalidInput) as refused:
            load_files(engine, None, path, progress=False)
        assert any(e.field.startswith(field) or f": {field}" in e.message for e in refused.value.errors), \
            refused.value.errors
        assert f"{path}:3" in refused.value.errors[0].message
        assert engine.items.get("known")["stats"]["views"] == 0  # type: ignore[index]


ACCEPTED = [  # (the event's changes, whether it is of a plain shape the fast path takes itself)
    ({}, True),
    ({"watch_s": 5}, True),
    ({"watch_s": 0}, True),
    ({"type": "like", "watch_s": None}, True),
    ({"type": "share"}, True),
    ({"ts": "2023-11-14T22:13:20Z", "id": "e-1", "request_id": "r"}, True),
    ({"ts": "2023-11-14T22:13:20.123456Z"}, True),
    ({"user": ".a"}, True),
    ({"ts": "2023-11-14t22:13:20z"}, False),  # valid, but left to the API's validation
    ({"ts": "2023-11-14T23:13:20+01:00"}, False),
    ({"ts": "2023-11-14T22:13:20.123456789Z"}, False),
    ({"ts": "2023-11-14 22:13:20Z"}, False),
]


@pytest.mark.parametrize(("patch", "plain"), ACCEPTED)
def test_what_the_fast_path_takes_is_what_the_api_makes(patch: dict[str, Any], plain: bool, tmp_path: Path) -> None:
    event = {**GOOD, **patch}
    with _engine(tmp_path) as engine:
        slow = engine.events.validate([EventIn.model_validate_json(json.dumps(event))])
        fast = plain_events([event], engine.live.catalog.index, engine.live.clock(), set())
        assert (fast is not None) == plain
        if fast is not None:
            assert fast.records() == slow.records()
        report = load_files(engine, None, _write(tmp_path / "events.jsonl", [event]), progress=False)
        assert report.events == 1  # either way the loader takes it


def test_a_batch_mixing_absent_and_given_fields_is_what_the_api_makes(tmp_path: Path) -> None:
    batch = [{**GOOD, "ts": "2023-11-14T22:13:20.5Z"}, {k: v for k, v in GOOD.items() if k != "ts"},
             {**GOOD, "type": "like", "watch_s": None, "id": None}, {**GOOD, "watch_s": 7, "request_id": "r1"},
             {**GOOD, "ts": "1600-01-01T00:00:00.000001Z"}]  # beyond float's exact microseconds since 1970
    with _engine(tmp_path) as engine:
        slow = engine.events.validate([EventIn.model_validate(e) for e in batch])
        fast = plain_events(batch, engine.live.catalog.index, engine.live.clock(), set())
        assert fast is not None and fast.records() == slow.records()


def test_a_load_makes_what_the_api_makes_of_the_same_events(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    kinds = ["view"] * 6 + ["like", "share", "follow", "not_interested"]
    # 16 items: co-engagement rows are never full, so exact whatever the batches (coengagement.py)
    events = []
    for k in range(3000):
        kind = kinds[int(rng.integers(len(kinds)))]
        event: dict[str, Any] = {"id": f"e{k}", "user": f"u{int(rng.integers(40))}",
                                 "item": f"v{int(rng.integers(16))}", "type": kind, "ts": format_time(T0 - 3000 + k)}
        if kind == "view":
            event["watch_s"] = float(rng.choice([1.0, 5.0, 10.0, 12.0]))
        events.append(event)
    events += events[:50]  # duplicates, counted once
    path = _write(tmp_path / "events.jsonl", events)
    with _engine(tmp_path / "api") as api:
        for k in range(0, len(events), 500):
            api.events.ingest([EventIn.model_validate(e) for e in events[k:k + 500]])
        want_stats, want_coeng = api.live.catalog.stats.copy(), _coeng(api)
        want = {u: api.live.user(u).state for u in (f"u{k}" for k in range(40))}
    with _engine(tmp_path / "bulk") as bulk:
        read: list[str] = []
        real = bulk.store.load_user_states
        bulk.store.load_user_states = lambda region, users: read.extend(users) or real(region, users)  # type: ignore[method-assign]
        report = load_files(bulk, None, path, progress=False)
        assert (report.events, report.duplicates) == (3000, 50)
        assert not read and not bulk.live.users  # no user was read, nor held
        assert np.allclose(bulk.live.catalog.stats, want_stats)
        assert _coeng(bulk) == want_coeng
    with _engine(tmp_path / "bulk") as again:  # each user's state catches up with the log once read
        for user_id, state in want.items():
            got = again.live.user(user_id).state
            assert got.seq == state.seq and got.recent == state.recent and got.follows == state.follows
            assert got.weights == pytest.approx(state.weights) and got.muted == state.muted
            # the whole log was taken in: its views need not be read again to serve the user
            assert got.served_seq == 0 and set(got.excluded.array()) == set(state.excluded.array())
        assert np.allclose(again.live.catalog.stats, want_stats)
        again.live.checkpoint()  # a state caught up is saved again: the next read need not catch up
        saved = again.store.load_user_states("us", list(want))
        assert {u: loads(blob, again.live.catalog).seq for u, blob in saved.items()} == {
            u: state.seq for u, state in want.items()}


def _engine(data: Path) -> Engine:
    settings = load_settings(overrides={"server.data": str(data), "learning.enabled": False}, env={})
    engine = Engine.open(settings, clock=Clock(T0), seed=0)
    if not len(engine.live.catalog):
        engine.items.upsert([ItemIn(id="known", creator="c", duration_s=10.0, created_at=format_time(T0 - 7200))]
                            + [ItemIn(id=f"v{k}", creator=f"c{k % 7}", duration_s=10.0, tags=[f"t{k % 5}"],
                                      created_at=format_time(T0 - 7200)) for k in range(60)])
    return engine


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _coeng(engine: Engine) -> dict[int, list[int]]:
    return {i: engine.live.neighbours(i) for i in range(len(engine.live.catalog)) if engine.live.neighbours(i)}

