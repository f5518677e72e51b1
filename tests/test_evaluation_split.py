"""foryou/evaluation/split.py and dataset.py: who gets a list, what is excluded, what counts as a hit,
the daily and validation windows, and the reading of JSON Lines datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foryou.errors import InvalidInput
from foryou.evaluation.dataset import KIND, load, make_events
from foryou.evaluation.split import DAY_S, day_starts, default_valid_from, make_task, popularity_prior

V, L, C, S, F, N = (KIND[k] for k in ("view", "like", "comment", "share", "follow", "not_interested"))
DURATION = np.full(6, 10.0)
T = 1000.0  # the split


def events(rows: list[tuple[int, int, int, float, float]]):  # type: ignore[no-untyped-def]
    user, item, kind, watch, ts = zip(*rows, strict=True)
    return make_events(user, item, kind, watch, ts, DURATION)


def test_positives_are_completions_and_explicit_actions() -> None:
    e = events([(0, 0, V, 9.0, 1), (0, 1, V, 8.9, 2), (0, 2, V, 30.0, 3), (0, 3, L, 0, 4), (0, 3, C, 0, 5),
                (0, 3, S, 0, 6), (0, 3, F, 0, 7), (0, 4, N, 0, 8)])
    assert e.positive.tolist() == [True, False, True, True, True, True, True, False]


def test_events_are_sorted_by_time_stably() -> None:
    e = events([(0, 0, V, 1.0, 5), (1, 1, V, 1.0, 2), (2, 2, V, 1.0, 5)])
    assert e.ts.tolist() == [2, 5, 5]
    assert e.user.tolist() == [1, 0, 2]
    assert len(e.between(2, 5)) == 1 and len(e.between(5)) == 2 and len(e.between(stop=2)) == 0


def test_task_users_exclusions_and_relevant_items() -> None:
    e = events([
        (0, 0, V, 10.0, 10), (0, 1, V, 1.0, 20),  # user 0 before the split: items 0, 1
        (0, 2, V, 10.0, T + 1), (0, 3, L, 0, T + 2),  # ... then two positives
        (0, 0, V, 10.0, T + 3),  # ... and a re-watch of item 0: not rankable, not counted
        (0, 4, V, 1.0, T + 4),  # ... and a skip: not a positive
        (1, 2, V, 10.0, T + 5),  # user 1 has no event before the split: no list
        (2, 5, V, 10.0, 30),  # user 2 has no positive after: no list
        (3, 5, V, 10.0, 40), (3, 5, V, 10.0, T + 6),  # user 3 only re-watches: no list
    ])
    task = make_task(e, DURATION, T, T + 100, "split")
    assert task.users.tolist() == [0]
    assert sorted(zip(*(a.tolist() for a in task.excluded), strict=True)) == [(0, 0), (0, 1)]
    assert sorted(zip(*(a.tolist() for a in task.relevant), strict=True)) == [(0, 2), (0, 3)]
    assert task.n_relevant.tolist() == [2]


def test_task_window_ends_at_until() -> None:
    e = events([(0, 0, V, 10.0, 10), (0, 1, V, 10.0, T + 1), (0, 2, V, 10.0, T + 50)])
    task = make_task(e, DURATION, T, T + 10, "day")
    assert sorted(task.relevant[1].tolist()) == [1]


def test_impressions_are_the_windows_views_with_head_labels() -> None:
    e = events([(0, 0, V, 10.0, 10),
                (0, 1, V, 10.0, T + 1), (0, 1, L, 0, T + 2), (0, 2, V, 1.0, T + 3), (0, 2, S, 0, T + 4),
                (1, 3, V, 10.0, T + 5)])  # user 1 is unknown before the split
    imp = make_task(e, DURATION, T, T + 100, "split").impressions
    assert list(zip(imp.user.tolist(), imp.item.tolist(), strict=True)) == [(0, 1), (0, 2)]
    assert imp.labels["complete"].tolist() == [True, False]
    assert imp.labels["like"].tolist() == [True, False]
    assert imp.labels["share"].tolist() == [False, True]
    assert imp.labels["follow"].tolist() == [False, False]


def test_popularity_prior_ranks_by_positives_then_views() -> None:
    e = events([(0, 1, V, 10.0, 1), (1, 1, V, 10.0, 2), (0, 2, V, 10.0, 3), (0, 3, V, 1.0, 4), (1, 3, V, 1.0, 5),
                (2, 3, V, 1.0, 6)])
    prior = popularity_prior(e, 6)
    assert np.argsort(-prior, kind="stable").tolist()[:4] == [1, 2, 3, 0]
    assert ((prior >= 0) & (prior < 1)).all()


def test_daily_windows_and_default_validation_split() -> None:
    e = events([(0, 0, V, 1.0, 0.0), (0, 1, V, 1.0, T + 2.5 * DAY_S)])
    assert day_starts(e, T) == [T, T + DAY_S, T + 2 * DAY_S]
    assert day_starts(e, T + 10 * DAY_S) == []
    assert default_valid_from(e, T) == pytest.approx(0.85 * T)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ITEM = {"id": "v1", "creator": "c", "duration_s": 10}


def test_load_reads_dedupes_and_orders(tmp_path: Path) -> None:
    items = _write(tmp_path / "items.jsonl", [ITEM, {**ITEM, "id": "v2"}, {**ITEM, "duration_s": 20}])
    evs = _write(tmp_path / "events.jsonl", [
        {"id": "a", "user": "u1", "item": "v1", "type": "view", "watch_s": 19, "ts": "2024-01-01T00:00:02Z"},
        {"id": "a", "user": "u1", "item": "v1", "type": "view", "watch_s": 1, "ts": "2024-01-01T00:00:03Z"},
        {"user": "u2", "item": "v2", "type": "like", "ts": "2024-01-01T01:00:00+02:00"},
    ])
    data = load(items, evs)
    assert data.catalogue.item_ids == ("v2", "v1")  # a repeated item id replaces the item
    assert data.catalogue.duration.tolist() == [10.0, 20.0]
    assert data.duplicates == 1
    assert data.catalogue.user_ids == ("u1", "u2")
    assert data.events.user.tolist() == [1, 0]  # u2's like came first (23:00Z)
    assert data.events.positive.tolist() == [True, True]


@pytest.mark.parametrize(("row", "message"), [
    ({"user": "u", "item": "nope", "type": "like", "ts": "2024-01-01T00:00:00Z"}, "unknown item 'nope'"),
    ({"user": "u", "item": "v1", "type": "like"}, "needs every event's time"),
    ({"user": "u", "item": "v1", "type": "view", "ts": "2024-01-01T00:00:00Z"}, "watch_s is required"),
])
def test_load_names_the_bad_line(tmp_path: Path, row: dict[str, object], message: str) -> None:
    items = _write(tmp_path / "items.jsonl", [ITEM])
    good = {"user": "u", "item": "v1", "type": "like", "ts": "2024-01-01T00:00:00Z"}
    evs = _write(tmp_path / "events.jsonl", [good, row])
    with pytest.raises(InvalidInput) as info:
        load(items, evs)
    text = str(info.value.errors[0].message)
    assert f"{evs}:2" in text and message in text
