"""Who picks each page: the engine's feed (`foryou`), or one of two baselines computed here from what the
simulator has seen (`popularity`, `random`). Every arm follows the engine's no-repeat rule: an item is
served to a user at most once.

The baselines stand where a recommender without personalisation would: popularity-only is the feed of
the most completed videos so far (rich get richer), random is what the on-interest share looks like
without any learning (about 1.5 topics out of 30).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from foryou.simulation.driver import Client, Slot

ARMS = ("foryou", "popularity", "random")


class Arm(Protocol):
    def add_items(self, idx: list[int]) -> None:
        """Items (world indexes) that can be served from now on."""

    def page(self, user: int, user_id: str, n: int) -> list[Slot]: ...

    def observe(self, item: int, completed: bool) -> None:
        """A view the engine was told about (the baselines count them; the engine counts itself)."""


class EngineArm:
    """The engine's own feed, through the client."""

    def __init__(self, client: Client, index: dict[str, int]) -> None:
        self.client = client
        self.index = index

    def add_items(self, idx: list[int]) -> None:
        """The engine learns of items through the client."""

    def page(self, user: int, user_id: str, n: int) -> list[Slot]:
        return [s for s in self.client.feed(user_id, n) if s.id in self.index]  # other clients' items: skipped

    def observe(self, item: int, completed: bool) -> None:
        """The engine counts views from the events."""


class Unseen:
    """Which items each user has been served, among those uploaded so far (the baselines' no-repeat rule)."""

    def __init__(self, ids: tuple[str, ...], available: np.ndarray, served: np.ndarray) -> None:
        self.ids = ids
        self.available = available
        self.served = served

    @classmethod
    def empty(cls, ids: tuple[str, ...], users: int) -> Unseen:
        return cls(ids, np.zeros(len(ids), bool), np.zeros((users, len(ids)), bool))

    def add_items(self, idx: list[int]) -> None:
        self.available[idx] = True

    def of(self, user: int) -> np.ndarray:
        return np.flatnonzero(self.available & ~self.served[user])

    def serve(self, user: int, picked: np.ndarray) -> list[Slot]:
        self.served[user, picked] = True
        return [Slot(self.ids[i]) for i in picked.tolist()]


class PopularityArm:
    """The most completed items so far (then the most viewed; ties in a fixed random order)."""

    def __init__(self, unseen: Unseen, tiebreak: np.ndarray, completions: np.ndarray, views: np.ndarray) -> None:
        self.unseen = unseen
        self.tiebreak = tiebreak
        self.completions = completions
        self.views = views

    @classmethod
    def new(cls, ids: tuple[str, ...], users: int, seed: int) -> PopularityArm:
        n = len(ids)
        return cls(Unseen.empty(ids, users), np.random.default_rng([seed, 3]).permutation(n), np.zeros(n), np.zeros(n))

    def add_items(self, idx: list[int]) -> None:
        self.unseen.add_items(idx)

    def observe(self, item: int, completed: bool) -> None:
        self.views[item] += 1
        self.completions[item] += completed

    def page(self, user: int, user_id: str, n: int) -> list[Slot]:
        unseen = self.unseen.of(user)
        order = np.lexsort((self.tiebreak[unseen], -self.views[unseen], -self.completions[unseen]))
        return self.unseen.serve(user, unseen[order[:n]])


class RandomArm:
    """Unseen items, uniformly at random."""

    def __init__(self, unseen: Unseen, rng: np.random.Generator) -> None:
        self.unseen = unseen
        self.rng = rng

    @classmethod
    def new(cls, ids: tuple[str, ...], users: int, seed: int) -> RandomArm:
        return cls(Unseen.empty(ids, users), np.random.default_rng([seed, 4]))

    def add_items(self, idx: list[int]) -> None:
        self.unseen.add_items(idx)

    def observe(self, item: int, completed: bool) -> None:
        """Random counts nothing."""

    def page(self, user: int, user_id: str, n: int) -> list[Slot]:
        unseen = self.unseen.of(user)
        return self.unseen.serve(user, self.rng.choice(unseen, size=min(n, len(unseen)), replace=False))
