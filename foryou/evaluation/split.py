"""The evaluation protocols, as pure functions of the event log.

A `Task` is one round of ranking at time `at`: models know exactly the events before `at`; each user
with at least one event before `at` and at least one positive in [at, until) on an item they had not
interacted with before `at` gets one ranked list of the whole catalogue, excluding the items they
interacted with before `at`. Positives on items interacted with before `at` cannot be ranked and are
not counted.

- "split": one task at `test_from`, over the rest of the log.
- "daily": one task at the start of each test day (24-hour steps from `test_from`).
- "valid": one task at `valid_from` (default: the last 15% of the training period) over
  [valid_from, test_from), used for tuning, so that nothing is tuned on the test period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from foryou.evaluation.dataset import KIND, VIEW, Events
from foryou.signals import completion_mask

DAY_S = 86400.0
VALID_SHARE = 0.15
# What each prediction head of a model is graded against, on the views of the window: the view was a
# completion ("complete"), or the user did that action on that item within the window.
HEADS = ("complete", "like", "comment", "share", "follow")


@dataclass(frozen=True)
class Impressions:
    """The views in a task's window by users known before it, with one label per head."""

    user: np.ndarray
    item: np.ndarray
    labels: dict[str, np.ndarray]


@dataclass(frozen=True)
class Task:
    name: str
    at: float  # lists are made at this time, from the events before it
    until: float
    users: np.ndarray  # the users who get a list, ascending
    excluded: tuple[np.ndarray, np.ndarray]  # (row of `users`, item): interacted with before `at`
    relevant: tuple[np.ndarray, np.ndarray]  # (row of `users`, item): positives in [at, until)
    n_relevant: np.ndarray  # per row of `users`
    prior: np.ndarray  # per item, in [0, 1): training popularity, which breaks ties between scores
    impressions: Impressions

    def __len__(self) -> int:
        return len(self.users)


def popularity_prior(past: Events, n_items: int) -> np.ndarray:
    """Items ordered by (positives, views) before `at`, as a rank scaled into [0, 1)."""
    pos = np.bincount(past.item[past.positive], minlength=n_items).astype(np.float64)
    views = np.bincount(past.item[past.kind == VIEW], minlength=n_items).astype(np.float64)
    order = np.lexsort((-np.arange(n_items), views, pos))  # ascending: least popular first
    rank = np.empty(n_items, dtype=np.float64)
    rank[order] = np.arange(n_items, dtype=np.float64)
    return rank / max(n_items, 1)


def _pairs(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    return np.unique(user.astype(np.int64) * n_items + item)


def _impressions(window: Events, known: np.ndarray, duration: np.ndarray, n_items: int) -> Impressions:
    views = (window.kind == VIEW) & np.isin(window.user, known)
    user, item = window.user[views], window.item[views]
    labels = {"complete": completion_mask(window.watch_s[views], duration[item])}
    codes = user * n_items + item
    for head in HEADS[1:]:
        acted = window.kind == KIND[head]
        labels[head] = np.isin(codes, _pairs(window.user[acted], window.item[acted], n_items))
    return Impressions(user, item, labels)


def make_task(events: Events, duration: np.ndarray, at: float, until: float, name: str) -> Task:
    n_items = len(duration)
    past, window = events.between(stop=at), events.between(at, until)
    known = np.unique(past.user)
    seen = _pairs(past.user, past.item, n_items)
    wanted = window.positive & np.isin(window.user, known)
    liked = _pairs(window.user[wanted], window.item[wanted], n_items)
    liked = liked[~np.isin(liked, seen)]
    users = np.unique(liked // n_items)
    rel_rows = np.searchsorted(users, liked // n_items)
    seen_users = seen // n_items
    mine = np.isin(seen_users, users)
    return Task(
        name=name, at=at, until=until, users=users,
        excluded=(np.searchsorted(users, seen_users[mine]), seen[mine] % n_items),
        relevant=(rel_rows, liked % n_items),
        n_relevant=np.bincount(rel_rows, minlength=len(users)),
        prior=popularity_prior(past, n_items),
        impressions=_impressions(window, known, duration, n_items),
    )


def default_valid_from(events: Events, test_from: float) -> float:
    """The start of the last 15% of the training period."""
    first = float(events.ts[0]) if len(events) else test_from
    return first + (1.0 - VALID_SHARE) * (test_from - first)


def day_starts(events: Events, test_from: float) -> list[float]:
    """The start of each test day: 24-hour steps from `test_from` up to the last event."""
    if not len(events) or events.ts[-1] < test_from:
        return []
    days = max(1, math.ceil((float(events.ts[-1]) - test_from) / DAY_S + 1e-12))
    return [test_from + d * DAY_S for d in range(days)]
