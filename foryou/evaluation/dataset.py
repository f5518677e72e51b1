"""A dataset to evaluate on: the catalogue and the event log as columns of arrays, read from the JSON
Lines files of `foryou load` and validated by the same models (ItemIn, EventIn).

Events are kept in time order (file order among equal times); an event id seen before counts once (the
first wins), as the engine counts it. Every event must carry `ts`: without it there is no time order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from foryou.bulk import read_jsonl
from foryou.errors import FieldError, InvalidInput
from foryou.signals import completion_mask
from foryou.types import EVENT_TYPES, EventIn, EventRecord, ItemIn, parse_time

KIND = {name: code for code, name in enumerate(EVENT_TYPES)}
VIEW = KIND["view"]
ACTIONS = ("like", "comment", "share", "follow")  # the explicit positives
POSITIVE_KINDS = np.array([KIND[a] for a in ACTIONS], dtype=np.int8)
_ITEMS: TypeAdapter[list[ItemIn]] = TypeAdapter(list[ItemIn])
_EVENTS: TypeAdapter[list[EventIn]] = TypeAdapter(list[EventIn])


@dataclass(frozen=True)
class Catalogue:
    """What every model may know up front: the items, and the names of the users (not their events)."""

    items: tuple[ItemIn, ...]
    item_ids: tuple[str, ...]
    duration: np.ndarray  # seconds, by item index
    user_ids: tuple[str, ...]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class Events:
    """Events as columns, in time order. `kind` indexes `foryou.types.EVENT_TYPES`; `positive` is a
    completion (watch_s >= 0.9 x duration) or a like, comment, share or follow."""

    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    kind: np.ndarray  # int8
    watch_s: np.ndarray  # float64 (0 for events other than views)
    ts: np.ndarray  # float64 epoch seconds, ascending
    positive: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.ts)

    def between(self, start: float = -np.inf, stop: float = np.inf) -> Events:
        """The events with start <= ts < stop (a view, not a copy)."""
        lo, hi = np.searchsorted(self.ts, [start, stop], side="left")
        return Events(*(column[lo:hi] for column in self.columns()))

    def columns(self) -> tuple[np.ndarray, ...]:
        return self.user, self.item, self.kind, self.watch_s, self.ts, self.positive

    def records(self, catalogue: Catalogue) -> list[EventRecord]:
        """As the engine's EventRecord objects."""
        users, items = catalogue.user_ids, catalogue.item_ids
        return [EventRecord(users[u], items[i], EVENT_TYPES[k], w, t) for u, i, k, w, t in zip(
            self.user.tolist(), self.item.tolist(), self.kind.tolist(), self.watch_s.tolist(), self.ts.tolist(),
            strict=True)]


@dataclass(frozen=True)
class Dataset:
    catalogue: Catalogue
    events: Events
    duplicates: int = 0  # events dropped because their id was seen before


def positives(kind: np.ndarray, watch_s: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """The engine's positives: a completed view, or a like, comment, share or follow."""
    return ((kind == VIEW) & completion_mask(watch_s, duration)) | np.isin(kind, POSITIVE_KINDS)


def make_events(user: Any, item: Any, kind: Any, watch_s: Any, ts: Any, duration: np.ndarray) -> Events:
    """Events from columns (any order; sorted stably by time here)."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    order = np.argsort(ts_arr, kind="stable")
    user_arr = np.asarray(user, dtype=np.int64)[order]
    item_arr = np.asarray(item, dtype=np.int64)[order]
    kind_arr = np.asarray(kind, dtype=np.int8)[order]
    watch = np.asarray(watch_s, dtype=np.float64)[order]
    return Events(user_arr, item_arr, kind_arr, watch, ts_arr[order], positives(kind_arr, watch, duration[item_arr]))


def load(items_path: Path, events_path: Path) -> Dataset:
    """Read and validate both files. Errors name the file and line."""
    latest: dict[str, ItemIn] = {}
    for _, batch in read_jsonl(_ITEMS, items_path):
        for it in batch:  # a repeated id replaces the item, as an upsert does
            latest.pop(it.id, None)
            latest[it.id] = it
    items = tuple(latest.values())
    index = {it.id: i for i, it in enumerate(items)}
    duration = np.array([it.duration_s for it in items], dtype=np.float64)
    users: dict[str, int] = {}
    seen_ids: set[str] = set()
    columns: tuple[list[int], list[int], list[int], list[float], list[float]] = ([], [], [], [], [])
    user_col, item_col, kind_col, watch_col, ts_col = columns
    duplicates = 0
    for numbers, batch in read_jsonl(_EVENTS, events_path):
        for number, e in zip(numbers, batch, strict=True):
            where = f"{events_path}:{number}"
            if e.item not in index:
                raise InvalidInput([FieldError("item", f"{where}: item: unknown item {e.item!r}")])
            if e.ts is None:
                raise InvalidInput([FieldError("ts", f"{where}: ts: evaluation needs every event's time")])
            if e.id is not None:
                if e.id in seen_ids:
                    duplicates += 1
                    continue
                seen_ids.add(e.id)
            try:
                ts = parse_time(e.ts, checked=True)
            except ValueError as exc:
                raise InvalidInput([FieldError("ts", f"{where}: ts: {exc}")]) from None
            user_col.append(users.setdefault(e.user, len(users)))
            item_col.append(index[e.item])
            kind_col.append(KIND[e.type])
            watch_col.append(e.watch_s or 0.0)
            ts_col.append(ts)
    catalogue = Catalogue(items, tuple(index), duration, tuple(users))
    return Dataset(catalogue, make_events(*columns, duration), duplicates)
