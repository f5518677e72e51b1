"""Runs every model through the protocols on one dataset: tune on the validation split, then grade on
the test split and day by day. Every model sees exactly the same events, and never an event at or after
the time its lists are made: the harness hands `fit` the events before that time and `learn_many` the
events since the previous ranking, and asks for head predictions only after the lists are made."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foryou.config import Settings
from foryou.errors import ForYouError
from foryou.evaluation import MODELS, metrics
from foryou.evaluation.dataset import Dataset
from foryou.evaluation.grading import LIST_LENGTH, Grades
from foryou.evaluation.models import Closeable, Model, Online, WithHeads, top_k
from foryou.evaluation.split import Task, day_starts, default_valid_from, make_task
from foryou.evaluation.tuning import GRIDS, TUNED_BY, make_model

CHUNK = 1024  # users scored at once (a chunk's scores are CHUNK x items floats)


@dataclass(frozen=True)
class Entry:
    """A model in the run: how to build it with given settings, and the settings to try when tuning."""

    name: str
    build: Callable[..., Model]
    grid: tuple[Mapping[str, Any], ...] = ()


def default_entries(names: Iterable[str] = MODELS, settings: Settings | None = None,
                    seed: int = 0) -> list[Entry]:
    def builder(name: str) -> Callable[..., Model]:
        return lambda **params: make_model(name, params, settings, seed)

    return [Entry(name, builder(name), tuple(GRIDS.get(name, ()))) for name in names]


@dataclass
class Graded:
    """One protocol's results: how many lists were graded, and each model's metrics."""

    users: int
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    stderr: dict[str, dict[str, float]] = field(default_factory=dict)  # of the per-user means


@dataclass
class Outcome:
    test_from: float
    valid_from: float
    train_events: int
    test_events: int
    split: Graded
    daily: Graded
    days: list[tuple[float, Graded]]
    valid: Graded
    learning: dict[str, str] = field(default_factory=dict)  # model -> "online" or "refit daily"
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def rank(model: Model, task: Task, n_items: int, length: int = LIST_LENGTH) -> np.ndarray:
    """Each of the task's users' top `length` items, best first, in chunks of users."""
    length = min(length, n_items)
    out = np.empty((len(task), length), dtype=np.int64)
    rows, items = task.excluded
    for lo in range(0, len(task), CHUNK):
        hi = min(lo + CHUNK, len(task))
        users = task.users[lo:hi]
        scores = model.score(users, task.at)
        if np.shape(scores) != (hi - lo, n_items):
            raise ValueError(f"{model.name}.score returned shape {np.shape(scores)}, expected {(hi - lo, n_items)}")
        a, b = np.searchsorted(rows, [lo, hi])
        out[lo:hi] = top_k(scores, length, task.prior, rows[a:b] - lo, items[a:b])
    return out


def _grade(model: Model, task: Task, grades: Grades, n_items: int) -> None:
    grades.add_ranking(task, rank(model, task, n_items))
    if isinstance(model, WithHeads):  # after the lists: the impressions name what the user watched
        imp = task.impressions
        grades.add_heads(imp, model.predict_heads(imp.user, imp.item, task.at))


def _close(model: Model) -> None:
    if isinstance(model, Closeable):
        model.close()


def _tune(entry: Entry, dataset: Dataset, task: Task, tick: Callable[[str], None]) -> dict[str, Any]:
    tried: list[dict[str, Any]] = []
    for params in entry.grid:
        tick(f"tune {entry.name}")
        model = entry.build(**params)
        try:
            model.fit(dataset.catalogue, dataset.events.between(stop=task.at))
            grades = Grades(dataset.catalogue.n_items)
            grades.add_ranking(task, rank(model, task, dataset.catalogue.n_items))
        finally:
            _close(model)
        tried.append({"params": dict(params), TUNED_BY: grades.summary()[TUNED_BY]})
    best = max(tried, key=lambda t: float(t[TUNED_BY]))
    return {"tried": tried, "chosen": best["params"]}


def _run(name: str, model: Model, dataset: Dataset, split: Task, days: list[Task], outcome: Outcome,
         tick: Callable[[str], None]) -> None:
    """Fit at the split and grade it, then grade each day: online models learn the day before, the
    others are refitted on everything before the day."""
    catalogue, events, n_items = dataset.catalogue, dataset.events, dataset.catalogue.n_items
    tick(f"split {name}")
    model.fit(catalogue, events.between(stop=split.at))
    grades = Grades(n_items)
    _grade(model, split, grades, n_items)
    outcome.split.models[name], outcome.split.stderr[name] = grades.summary(), grades.stderr()
    outcome.calibration[name] = {h: metrics.calibration(*grades.head_arrays(h)[:2]) for h in grades.heads}
    outcome.learning[name] = "online" if isinstance(model, Online) else "refit daily"
    pooled = Grades(n_items)
    for d, task in enumerate(days):
        tick(f"daily {name}")
        if d > 0 and isinstance(model, Online):
            model.learn_many(events.between(days[d - 1].at, task.at))
        elif d > 0:
            model.fit(catalogue, events.between(stop=task.at))
        one = Grades(n_items)
        _grade(model, task, one, n_items)
        pooled.absorb(one)
        outcome.days[d][1].models[name] = one.summary()
    outcome.daily.models[name], outcome.daily.stderr[name] = pooled.summary(), pooled.stderr()


def evaluate(dataset: Dataset, test_from: float, entries: list[Entry] | None = None,
             valid_from: float | None = None, progress: bool = False) -> Outcome:
    from tqdm import tqdm

    started = time.perf_counter()
    entries = default_entries() if entries is None else entries
    events, duration = dataset.events, dataset.catalogue.duration
    valid_from = default_valid_from(events, test_from) if valid_from is None else valid_from
    if not len(events.between(stop=test_from)) or not len(events.between(test_from)):
        raise ForYouError("test_from must fall inside the event log: events before it train, events from it test",
                          field="test_from")
    if not valid_from < test_from:
        raise ForYouError("valid_from must come before test_from", field="valid_from")
    starts = day_starts(events, test_from)
    end = float(events.ts[-1]) + 1.0 if len(events) else test_from
    valid = make_task(events, duration, valid_from, test_from, "valid")
    split = make_task(events, duration, test_from, end, "split")
    days = [make_task(events, duration, s, min(s + 86400.0, end), f"day {d + 1}") for d, s in enumerate(starts)]
    outcome = Outcome(test_from, valid_from, len(events.between(stop=test_from)), len(events.between(test_from)),
                      Graded(len(split)), Graded(sum(len(d) for d in days)), [(d.at, Graded(len(d))) for d in days],
                      Graded(len(valid)))
    steps = sum(len(e.grid) for e in entries) + len(entries) * (1 + len(days))
    bar = tqdm(total=steps, disable=not progress, file=sys.stderr, unit=" step")

    def tick(what: str) -> None:
        bar.set_description(what)
        bar.update(1)

    try:
        for entry in entries:
            clock = time.perf_counter()
            chosen: Mapping[str, Any] = {}
            if entry.grid:
                outcome.tuning[entry.name] = _tune(entry, dataset, valid, tick)
                chosen = outcome.tuning[entry.name]["chosen"]
            model = entry.build(**chosen)
            try:
                _run(entry.name, model, dataset, split, days, outcome, tick)
            finally:
                _close(model)
            outcome.seconds[entry.name] = time.perf_counter() - clock
    finally:
        bar.close()
    outcome.seconds["total"] = time.perf_counter() - started
    return outcome
