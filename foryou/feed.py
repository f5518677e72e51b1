"""The feed service: gather candidates from every source, keep the eligible ones, rank them by value,
arrange them under the adjacency rule, and durably record what was served."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from foryou import retrieval
from foryou.interest import decay
from foryou.learning import Learner
from foryou.live import Live, LiveUser
from foryou.policy import arrange
from foryou.ranking import HeuristicRanker, value
from foryou.reasons import reason
from foryou.types import FeedItem, ServedRecord

SMALL_CATALOG = 5000  # up to this size the fallback considers every eligible item


@dataclass
class Feed:
    user: str
    request_id: str
    items: list[FeedItem]

    def as_dict(self) -> dict[str, object]:
        return {"user": self.user, "request_id": self.request_id,
                "items": [{"id": i.id, "score": i.score, "reasons": i.reasons} for i in self.items]}


class FeedService:
    def __init__(self, live: Live, learner: Learner | None = None, ranker: HeuristicRanker | None = None,
                 seed: int | None = None) -> None:
        self.live = live
        self.learner = learner
        self.ranker = ranker or HeuristicRanker()
        self.rng = np.random.default_rng(seed)

    def candidates(self, user: LiveUser) -> retrieval.Candidates:
        live, catalog, state = self.live, self.live.catalog, user.state
        budgets, signals = live.settings.budgets, live.settings.signals
        now = live.clock()
        cands = retrieval.Candidates(state.excluded)
        learner = self._learned()
        if learner is not None:  # first, so that its reason leads where it agrees with other sources
            retrieval.learned(cands, learner.retrieve(user.profile.region, user.profile.id, budgets.learned * 2),
                              budgets.learned)
        retrieval.interest(cands, catalog, state, budgets.interest, self.rng)
        retrieval.follows(cands, catalog, state, budgets.follows)
        retrieval.trending(cands, live.trending.top(user.profile.region, budgets.trending * 3, now),
                           budgets.trending)
        retrieval.fresh(cands, catalog, now, signals.fresh_window_h * 3600, signals.fresh_max_views,
                        budgets.fresh)
        neighbours = [live.neighbours(a) for a in state.recent[-4:]]
        retrieval.coengagement(cands, neighbours, budgets.coengagement)
        small = len(catalog) <= SMALL_CATALOG
        retrieval.fallback(cands, self._eligible_mask(user) if small else None, len(catalog),
                           budgets.fallback, self.rng)
        return cands

    def _eligible_mask(self, user: LiveUser) -> np.ndarray:
        return self.live.catalog.eligible_all(user.profile.region, user.profile.age_band == "18+")

    def _eligible(self, user: LiveUser, cands: retrieval.Candidates) -> np.ndarray:
        idx = np.fromiter(cands.sources.keys(), np.int64, len(cands.sources))
        return idx[self.live.catalog.eligible(idx, user.profile.region, user.profile.age_band == "18+")]

    def _learned(self) -> Learner | None:
        """The learned model, when there is a healthy one (else the hand-set ranking serves)."""
        return self.learner if self.learner is not None and self.learner.healthy else None

    def _predict(self, user: LiveUser, idx: np.ndarray) -> dict[str, np.ndarray]:
        live, learner = self.live, self._learned()
        if learner is not None:
            return learner.predict(user.profile.region, user.profile.id, idx)
        state = user.state
        return self.ranker.predict(live.catalog, state, idx, decay(state, live.clock(), live.tau), live.totals())

    def _rank(self, user: LiveUser, idx: np.ndarray, n: int) -> tuple[np.ndarray, list[int]]:
        """Value of each candidate, and the positions of the `n` picked under the adjacency rule."""
        catalog = self.live.catalog
        scores = value(self._predict(user, idx), self.live.settings.weights)
        order = np.argsort(-scores, kind="stable")
        picks = arrange(order, catalog.creator[idx], catalog.sound[idx], n,
                        user.state.last_creator, user.state.last_sound)
        return scores, picks

    def _yielded(self, user: LiveUser, chosen: np.ndarray) -> bool:
        catalog = self.live.catalog
        creators = [user.state.last_creator, *catalog.creator[chosen].tolist()]
        sounds = [user.state.last_sound, *catalog.sound[chosen].tolist()]
        return any(creators[k] == creators[k + 1] or (sounds[k] >= 0 and sounds[k] == sounds[k + 1])
                   for k in range(len(chosen)))

    def _add_alternatives(self, cands: retrieval.Candidates, user: LiveUser, chosen: np.ndarray,
                          budget: int) -> None:
        catalog = self.live.catalog
        n = len(catalog)
        mask = self._eligible_mask(user)
        mask &= ~np.isin(catalog.creator[:n], catalog.creator[chosen])
        sounds = catalog.sound[chosen]
        mask &= ~np.isin(catalog.sound[:n], sounds[sounds >= 0])
        retrieval.fallback(cands, mask, n, budget, self.rng)

    def scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Candidate generation and ranking as a feed does it, before feed policy (adjacency) and
        without recording anything: (item indexes, values), best first. For evaluation and replay."""
        live = self.live
        user = live.serving(live.user(user_id))
        idx = self._eligible(user, self.candidates(user))
        values = value(self._predict(user, idx), live.settings.weights)
        order = np.argsort(-values, kind="stable")
        return idx[order], values[order]

    def predict(self, user_id: str, items: np.ndarray) -> dict[str, np.ndarray]:
        """The ranker's P(action) per head for the given item indexes, with the user's state now."""
        return self._predict(self.live.user(user_id), items)

    def feed(self, user_id: str, n: int = 10) -> Feed:
        live, catalog = self.live, self.live.catalog
        user = live.serving(live.user(user_id))
        if not user.stored:
            live.persist_user(user)
        cands = self.candidates(user)
        idx = self._eligible(user, cands)
        if len(idx) < n:  # the sources ran short: consider every eligible item not yet seen
            retrieval.fallback(cands, self._eligible_mask(user), len(catalog), n * 4, self.rng)
            idx = self._eligible(user, cands)
        scores, picks = self._rank(user, idx, n)
        if self._yielded(user, idx[picks]):
            # The adjacency rule gave way among the candidates: bring in eligible items by other creators
            # and sounds (a scan of the catalogue, so only now), and arrange again.
            self._add_alternatives(cands, user, idx[picks], 4 * n)
            idx = self._eligible(user, cands)
            scores, picks = self._rank(user, idx, n)
        request_id = uuid.uuid4().hex
        chosen = [int(idx[p]) for p in picks]
        items = [FeedItem(catalog.ids[i], round(float(scores[p]), 6),
                          [reason(catalog, s, f) for s, f in cands.sources[i][:3]])
                 for p, i in zip(picks, chosen, strict=True)]
        if chosen:
            now = live.clock()
            seqs = live.store.record_served(
                user.profile.region, [ServedRecord(user_id, catalog.ids[i], request_id, now) for i in chosen])
            live.apply_served(user.profile.region, user, chosen, seqs[-1])
            if self.learner is not None:
                self.learner.record_served(user.profile.region, user_id, chosen, now)
        live.maybe_checkpoint()
        return Feed(user_id, request_id, items)
