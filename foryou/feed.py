"""The feed service: gather candidates from every source, keep the eligible ones (region, age, the
user's keyword filters and mutes), rank them by value, apply feed policy (topic weights, exploration
and new-video slots, the adjacency/topic-run/similarity rules), and durably record what was served."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from foryou import retrieval
from foryou.config import PolicySettings, Settings, SignalSettings, SourceBudgets, ValueWeights
from foryou.errors import Conflict, Stale
from foryou.interest import UserState, decay, muted
from foryou.learning import Learner
from foryou.policy import KeywordFilter, Limits, Recent, Selection, explore_topics, known_topics, select, topic_lift
from foryou.policy.controls import topic_shift
from foryou.privacy.audit import AuditLog, audited
from foryou.privacy.erasure import Tombstones
from foryou.ranking import MIN_VALUE, HeuristicRanker, value
from foryou.reasons import reason
from foryou.state import Live, LiveUser
from foryou.types import FeedItem, ServedRecord

SWEEP_STEP = 1024  # item indexes a sweep looks at a time (when the sources run short, or for alternatives)
SWEEP_MOST = 2048  # ... and at most per request
STALE_TRIES = 3  # feeds made again when other servers keep writing about the user meanwhile
POOL_CANDIDATES = 20  # new-video pool items considered per request (the least advanced first)
EXPLORE_WINDOW = 60  # items of each explored topic considered
PUBLIC_PRIVACY = ("retention_days", "personalize_minors", "erasure_refuse_days")


@dataclass(frozen=True)
class FeedConfig:
    """Everything a feed's pipeline reads, resolved once per request and passed down (never read from
    the global settings deep inside): an experiment's variant is just another such value."""

    weights: ValueWeights
    budgets: SourceBudgets
    signals: SignalSettings
    policy: PolicySettings
    budget_ms: float  # the feed's time budget (0: none)
    personalize_minors: bool
    ranker: str = "auto"  # "auto": the learned model while it is healthy, else hand-set; "heuristic": hand-set
    variant: str = ""  # which variant of the feed this is ("": the deployment's settings)

    @classmethod
    def of(cls, settings: Settings) -> FeedConfig:
        return cls(settings.weights, settings.budgets, settings.signals, settings.policy,
                   settings.server.feed_budget_ms, settings.privacy.personalize_minors)


@dataclass
class Feed:
    user: str
    request_id: str
    items: list[FeedItem]
    over_budget: bool = False  # the time budget ran out: optional steps were skipped (counted in /metrics)

    def as_dict(self) -> dict[str, object]:
        return {"user": self.user, "request_id": self.request_id,
                "items": [{"id": i.id, "score": i.score, "reasons": i.reasons,
                           **({"explain": i.explain} if i.explain is not None else {})} for i in self.items]}


@dataclass
class _Ranked:
    idx: np.ndarray  # eligible candidates
    predictions: dict[str, np.ndarray]
    utility: np.ndarray  # value on a log scale, after the bandit's topic lift and the user's topic weights
    lift: np.ndarray  # the topic lift's part of it (zeros without personalisation)
    shift: np.ndarray  # the topic weights' part
    ranker: str


class FeedService:
    def __init__(self, live: Live, learner: Learner | None = None, ranker: HeuristicRanker | None = None,
                 seed: int | None = None, audit: AuditLog | None = None, tombstones: Tombstones | None = None) -> None:
        self.live = live
        self.learner = learner
        self.ranker = ranker or HeuristicRanker()
        self.rng = np.random.default_rng(seed)
        self.audit = audit
        self.tombstones = tombstones

    # -- candidates --
    def config(self, user: LiveUser | None = None) -> FeedConfig:
        """The feed settings for this user's request (today the deployment's, for everyone)."""
        return FeedConfig.of(self.live.settings)

    def candidates(self, user: LiveUser, personal: bool = True,
                   keep: Callable[[np.ndarray], np.ndarray] | None = None,
                   config: FeedConfig | None = None) -> retrieval.Candidates:
        """Every source's proposals; without `personal`, only those not based on the user's profile.
        `keep`: the user's eligibility filter (`_keep`), if the caller already has it."""
        config = config or self.config(user)
        live, catalog, state = self.live, self.live.catalog, user.state
        budgets, signals = config.budgets, config.signals
        now = live.clock()
        cands = retrieval.Candidates(state.excluded)
        learner = self._learned(config) if personal else None
        if learner is not None:  # first, so that its reason leads where it agrees with other sources
            retrieval.learned(cands, learner.retrieve(user.profile.region, user.profile.id, budgets.learned * 2),
                              budgets.learned)
        if personal:
            retrieval.interest(cands, catalog, state, budgets.interest, self.rng)
            retrieval.follows(cands, catalog, state, budgets.follows)
        retrieval.trending(cands, live.trending.top(user.profile.region, budgets.trending * 3, now),
                           budgets.trending)
        retrieval.fresh(cands, catalog, now, signals.fresh_window_h * 3600, signals.fresh_max_views,
                        budgets.fresh)
        if personal:
            neighbours = [live.neighbours(a) for a in state.recent[-4:]]
            retrieval.coengagement(cands, neighbours, budgets.coengagement)
        retrieval.fallback(cands, len(catalog), budgets.fallback, self.rng)
        return cands

    def _keep(self, user: LiveUser) -> Callable[[np.ndarray], np.ndarray]:
        """Which items may be served to the user: live, in the user's region, for the user's age, not
        matching a blocked keyword, not by a muted creator or with a muted sound."""
        catalog, profile = self.live.catalog, user.profile
        words = self._keywords(user)
        creators, sounds = muted(user.state, self.live.clock())

        def keep(idx: np.ndarray) -> np.ndarray:
            ok = catalog.eligible(idx, profile.region, profile.age_band == "18+")
            if creators:
                ok &= ~np.isin(catalog.creator[idx], list(creators))
            if sounds:
                ok &= ~np.isin(catalog.sound[idx], list(sounds))
            if words and ok.any():  # the costliest check last, on what is left
                ok[ok] = ~words.blocked(idx[ok])
            return ok
        return keep

    def _personal(self, user: LiveUser, config: FeedConfig) -> bool:
        """Whether the user's feed may be based on their profile: they did not switch it off, and they
        are not a minor while `privacy.personalize_minors` is off."""
        minor = user.profile.age_band in ("under13", "13-17")
        return user.profile.personalized and not (minor and not config.personalize_minors)

    def _keywords(self, user: LiveUser) -> KeywordFilter:
        """The user's blocked keywords, compiled once and kept with the user until they change."""
        keywords = user.controls.blocked_keywords
        if user.keywords is None or user.keywords.stale(keywords):
            user.keywords = KeywordFilter(self.live.catalog, keywords)
        return user.keywords

    def _sweep(self, user: LiveUser, cands: retrieval.Candidates, keep: Callable[[np.ndarray], np.ndarray],
               want: int, deadline: float | None) -> None:
        """Bring in eligible items from the user's place in the catalogue on (a bounded stretch per
        request), so that the feed reaches every eligible item it has not served over successive
        requests, however short the sources run."""
        n = len(self.live.catalog)
        start = user.sweep_at if user.sweep_at >= 0 else int(self.rng.integers(max(n, 1)))
        user.sweep_at = retrieval.sweep(cands, keep, start, n, want, SWEEP_STEP, SWEEP_MOST, deadline)

    def _eligible(self, user: LiveUser, cands: retrieval.Candidates,
                  keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        idx = np.fromiter(cands.sources.keys(), np.int64, len(cands.sources))
        return idx[(keep or self._keep(user))(idx)]

    # -- ranking --
    def _learned(self, config: FeedConfig) -> Learner | None:
        """The learned model, when there is a healthy one and the feed may use it (else the hand-set
        ranking serves)."""
        usable = self.learner is not None and self.learner.healthy and config.ranker == "auto"
        return self.learner if usable else None

    def _predict(self, user: LiveUser, idx: np.ndarray, config: FeedConfig,
                 personal: bool = True) -> tuple[dict[str, np.ndarray], str]:
        live, learner = self.live, self._learned(config) if personal else None
        if learner is not None:
            return learner.predict(user.profile.region, user.profile.id, idx), "learned"
        state = user.state if personal else UserState()
        predictions = self.ranker.predict(live.catalog, state, idx, decay(state, live.clock(), live.tau),
                                          live.totals())
        return predictions, "heuristic" if personal else "not_personalized"

    def _rank(self, user: LiveUser, idx: np.ndarray, personal: bool, config: FeedConfig) -> _Ranked:
        predictions, ranker = self._predict(user, idx, config, personal)
        values = value(predictions, config.weights)
        utility = values if "retrieval" in predictions else np.log(np.maximum(values, MIN_VALUE))
        live, policy = self.live, config.policy
        shift = topic_shift(live.catalog, idx, user.controls.topic_weights, policy.topic_weight_gain)
        lift = np.zeros(len(idx))
        if personal and policy.topic_lift_gain:
            views, completions = live.topic_counts()
            lift = policy.topic_lift_gain * topic_lift(user.state, views, completions, policy.explore_prior,
                                                       live.catalog.topic[idx].astype(np.int64))
        return _Ranked(idx, predictions, utility + lift + shift, lift, shift, ranker)

    def scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Candidate generation and ranking as a feed does it, before feed policy and without recording
        anything: (item indexes, values), best first. For evaluation and replay."""
        live = self.live
        user = live.serving(live.user(user_id))
        config = self.config(user)
        idx = self._eligible(user, self.candidates(user, config=config))
        values = value(self._predict(user, idx, config)[0], config.weights)
        order = np.argsort(-values, kind="stable")
        return idx[order], values[order]

    def predict(self, user_id: str, items: np.ndarray) -> dict[str, np.ndarray]:
        """The ranker's P(action) per head for the given item indexes, with the user's state now."""
        user = self.live.user(user_id)
        return self._predict(user, items, self.config(user))[0]

    # -- policy --
    def _slots(self, n: int, personal: bool, pool_urgent: np.ndarray, policy: PolicySettings) -> list[str]:
        """Which slots are reserved: each for exploration with probability `explore_share` (personal
        feeds only), else for the new-video pools with `pool_share` (twice that while one waits too
        long; none when no pool item may be shown)."""
        explore = policy.explore_share if personal else 0.0
        pool = policy.pool_share if len(pool_urgent) else 0.0
        if pool_urgent.any():
            pool = min(2 * pool, 0.5)
        draws = self.rng.random(n)
        return ["explore" if d < explore else "pool" if d < explore + pool else "" for d in draws]

    def _explore(self, user: LiveUser, cands: retrieval.Candidates, slots: list[str],
                 policy: PolicySettings) -> list[int]:
        """Topics for the exploration slots (best draw first), with some of their items as candidates."""
        wanted = slots.count("explore")
        if not wanted:
            return []
        live, catalog = self.live, self.live.catalog
        views, completions = live.topic_counts()
        known = known_topics(user.state, policy.known_topics)
        topics = explore_topics(user.state, views, completions, known, wanted + 2, policy.explore_prior, self.rng)
        retrieval.explore(cands, catalog, topics, self.rng, EXPLORE_WINDOW)
        return topics

    def feed(self, user_id: str, n: int = 10, explain: bool = False, region: str | None = None) -> Feed:
        """The user's next `n` items; a new user is created in `region` (the request's X-Region, or the
        server's first). With `explain` each says why; that reads the user's inferred state, so it is
        audited."""
        with audited(self.audit if explain else None, "explain", user_id, self.live.clock()):
            for _ in range(STALE_TRIES):
                try:
                    return self._feed(user_id, n, explain, region)
                except Stale:  # another server served or applied events to the user meanwhile
                    cached = self.live.users.get(user_id)
                    if cached is not None:
                        self.live.reload(cached)
            raise Conflict(f"user {user_id!r} kept changing on other servers while this feed was made: retry",
                           field="user")

    def _feed(self, user_id: str, n: int, explain: bool, region: str | None) -> Feed:
        live, catalog = self.live, self.live.catalog
        placed = live.place(user_id, region)
        if self.tombstones is not None:
            self.tombstones.refuse([user_id], live.clock())
        user = live.serving(live.user(user_id, placed))
        if not user.stored:
            live.persist_user(user)
        config = self.config(user)
        policy = config.policy
        personal = self._personal(user, config)
        now = live.clock()
        budget = config.budget_ms / 1000
        deadline = time.perf_counter() + budget if budget > 0 else None
        over_budget = False
        keep, excluded = self._keep(user), user.state.excluded
        cands = self.candidates(user, personal, keep, config)

        def unseen(i: np.ndarray) -> np.ndarray:
            return keep(i) & ~excluded.mask(i)

        pool_idx, pool_urgent = live.pools.candidates(catalog, unseen, now, POOL_CANDIDATES)
        cands.add(pool_idx, "pool")
        slots = self._slots(n, personal, pool_urgent, policy)
        topics = self._explore(user, cands, slots, policy) if personal else []
        idx = self._eligible(user, cands, keep)
        if len(idx) < n:  # the sources ran short: the next stretch of the catalogue, within the budget
            over_budget = _late(deadline)
            if not over_budget:
                self._sweep(user, cands, keep, n * 4, deadline)
                idx = self._eligible(user, cands, keep)
        state = user.state
        recent = Recent(state.last_creator, state.last_sound, state.last_topic, state.topic_run,
                        state.sensitive_run)
        limits = Limits(policy.topic_run_cap, policy.sensitive_run_cap, policy.mmr_lambda)

        def arrange(idx: np.ndarray) -> tuple[_Ranked, Selection]:
            ranked = self._rank(user, idx, personal, config)
            item_topics = catalog.topic[idx]
            groups = {"explore": np.full(len(idx), -np.inf), "pool": np.full(len(idx), -np.inf)}
            for k, t in enumerate(topics):  # the first topic to explore goes first
                groups["explore"][item_topics == t] = float(-k)
            # where the pool's items are among the candidates, if they are (by bisection)
            order = np.argsort(idx, kind="stable")
            at = order[np.minimum(np.searchsorted(idx, pool_idx, sorter=order), len(idx) - 1)] if len(idx) else \
                np.zeros(len(pool_idx), np.int64)
            found = (idx[at] == pool_idx) if len(idx) else np.zeros(len(pool_idx), np.bool_)
            at, urgent = at[found], np.asarray(pool_urgent, np.bool_)[found]
            # A new video's audience: users who finish its topic more than most (so that its pool
            # measures the video, not who happened to see it); anyone once it waits too long.
            audience = urgent | (ranked.lift[at] > 0) | (not personal)
            groups["pool"][at[audience]] = urgent[audience]
            chosen = select(ranked.utility, catalog.creator[idx], catalog.sound[idx], item_topics,
                            catalog.tag_cols[idx], live.sensitive(idx), n, recent, limits, slots, groups)
            return ranked, chosen

        ranked, chosen = arrange(idx)
        if chosen.yielded:
            # A rule gave way among the candidates: bring in eligible items by other creators, sounds
            # and topics (a sweep of the catalogue, so only now and within the budget), arrange again.
            over_budget = over_budget or _late(deadline)
            if not over_budget:
                self._add_alternatives(cands, idx[chosen.picks], 4 * n, keep, deadline)
                idx = self._eligible(user, cands, keep)
                ranked, chosen = arrange(idx)
        request_id = uuid.uuid4().hex
        served = [int(idx[p]) for p in chosen.picks]
        items = []
        for slot, (p, i) in enumerate(zip(chosen.picks, served, strict=True)):
            sources = cands.sources[i]
            item = FeedItem(catalog.ids[i], round(chosen.values[slot], 6),
                            list(dict.fromkeys(reason(catalog, s, f) for s, f in sources))[:3])
            if explain:
                item.explain = self._explanation(ranked, p, slot, [s for s, _ in sources], chosen, config.weights)
            items.append(item)
        if served:
            records = [ServedRecord(user_id, catalog.ids[i], request_id, now, variant=config.variant) for i in served]
            # compare-and-set: served only if no other server wrote about the user since it was read
            seqs = live.store.record_served(user.profile.region, records, expect={user_id: user.profile.version})
            user.profile.version += 1
            state.topic_run, state.sensitive_run = chosen.recent.topic_run, chosen.recent.sensitive_run
            live.apply_served(user.profile.region, user, served, seqs[-1])
            if self.learner is not None:
                self.learner.record_served(user.profile.region, user_id, served, now)
        return Feed(user_id, request_id, items, over_budget or _late(deadline))

    def _explanation(self, ranked: _Ranked, p: int, slot: int, sources: list[str], chosen: Selection,
                     weights: ValueWeights) -> dict[str, object]:
        heads = {h: round(float(v[p]), 6) for h, v in ranked.predictions.items()}
        policy = list(chosen.steps[slot])
        if ranked.shift[p]:
            policy.append("topic_weight")
        if ranked.ranker == "not_personalized":
            policy.append("not_personalized")
        return {
            "sources": sources, "ranker": ranked.ranker, "predictions": heads,
            "weights": {h: getattr(weights, h) for h in heads if hasattr(weights, h)},
            "value": round(float(ranked.utility[p] - ranked.lift[p] - ranked.shift[p]), 6),
            "topic_lift": round(float(ranked.lift[p]), 6), "topic_weight": round(float(ranked.shift[p]), 6),
            "diversity": round(chosen.values[slot] - float(ranked.utility[p]), 6),
            "policy": policy,
        }

    def algorithm(self) -> dict[str, object]:
        """The algorithm card: which ranking serves now, the value weights, the candidate budgets and
        every policy setting, live. An admin view: audited."""
        if self.audit is not None:
            self.audit.append("algorithm", None, "ok", self.live.clock())
        settings, learner = self.live.settings, self._learned(self.config())
        return {
            "ranker": "learned" if learner is not None else "heuristic",
            "value": ("learned: log(sum of P(head) x weight) + retrieval x retrieval score" if learner is not None
                      else "heuristic: sum of P(head) x weight; policy works on its log"),
            "weights": asdict(settings.weights), "budgets": asdict(settings.budgets),
            "signals": asdict(settings.signals), "policy": asdict(settings.policy),
            # what users are promised, not how it is done (the secret and where it lives stay out)
            "privacy": {k: v for k, v in asdict(settings.privacy).items() if k in PUBLIC_PRIVACY},
            "learning": {"enabled": settings.learning.enabled, "healthy": learner is not None,
                         "version": self.learner.version if self.learner is not None else 0},
        }

    def _add_alternatives(self, cands: retrieval.Candidates, chosen: np.ndarray, budget: int,
                          keep: Callable[[np.ndarray], np.ndarray], deadline: float | None) -> None:
        """Eligible items by creators, with sounds and of topics none of `chosen` has, from a random
        place in the catalogue (a bounded sweep)."""
        catalog = self.live.catalog
        creators, sounds, topics = catalog.creator[chosen], catalog.sound[chosen], catalog.topic[chosen]
        sounds, topics = sounds[sounds >= 0], topics[topics >= 0]

        def other(idx: np.ndarray) -> np.ndarray:
            ok = (~np.isin(catalog.creator[idx], creators) & ~np.isin(catalog.sound[idx], sounds)
                  & ~np.isin(catalog.topic[idx], topics))
            ok[ok] = keep(idx[ok])
            return ok

        n = len(catalog)
        retrieval.sweep(cands, other, int(self.rng.integers(max(n, 1))), n, budget, SWEEP_STEP, SWEEP_MOST, deadline)


def _late(deadline: float | None) -> bool:
    """Whether the feed's time budget has run out (None: no budget)."""
    return deadline is not None and time.perf_counter() >= deadline
