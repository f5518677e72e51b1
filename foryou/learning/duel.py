"""Progressive validation of the learned model against the hand-set fallback (a champion/challenger
duel on live traffic). Before a batch of views is learned, a sample of its completed views is scored
by both rankers with the value a feed ranks by: the completed item and `negatives` random catalogue
items. Each ranker's share of random items ranked below the completed one, averaged over the last
`window` samples, is its AUC at telling what the user finished from what they might have been shown,
the task of a feed. The learned model serves only while it wins: in a world it has not learned yet
(few events per user, or popularity priors that do not hold there) the fallback keeps serving."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from foryou.columns import EventColumns
from foryou.interest import UserState

if TYPE_CHECKING:
    from foryou.state import Live

RATE = 1 / 16  # share of completed views scored by both rankers for the duel ...
MOST = 64  # ... at most this many per appended batch, or 1 per 50 events of a larger one (bounds its cost)
NEGATIVES = 20  # random catalogue items each is ranked against
READS = 4  # samples of users not in memory a server scores per turn, at most (each reads the user's log)
PENDING = 4096  # samples waiting to be scored, at most (the oldest go first)


def below(scores: np.ndarray) -> float:
    """The share of `scores[1:]` (random items) below `scores[0]` (the completed one); ties count half."""
    positive, negatives = scores[0], scores[1:]
    if len(negatives) == 0:
        return float("nan")
    return float(((negatives < positive).sum() + 0.5 * (negatives == positive).sum()) / len(negatives))


class Duel:
    def __init__(self, window: int = 2000, min_samples: int = 100) -> None:
        self.window = window
        self.min_samples = min_samples
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._scores: tuple[float, float] | None = None  # cached: feeds ask on every request

    def record(self, learned: np.ndarray, fallback: np.ndarray) -> None:
        """Both rankers' values of one completed item (first) and random items (the rest)."""
        self.samples.append((below(learned), below(fallback)))
        self._scores = None

    def scores(self) -> tuple[float, float]:
        """(learned AUC, fallback AUC) over the window; NaN until there are `min_samples`."""
        if self._scores is None:
            if len(self.samples) < self.min_samples:
                self._scores = (float("nan"), float("nan"))
            else:
                data = np.asarray(self.samples, dtype=np.float64)
                self._scores = (float(data[:, 0].mean()), float(data[:, 1].mean()))
        return self._scores

    @property
    def learned_wins(self) -> bool:
        learned, fallback = self.scores()
        return bool(learned >= fallback)  # False while either is NaN

    def as_array(self) -> np.ndarray:
        return np.asarray(self.samples, dtype=np.float64).reshape(-1, 2)

    def load(self, saved: np.ndarray) -> None:
        self.samples.clear()
        self._scores = None
        if saved.ndim == 2 and saved.shape[1] == 2:
            self.samples.extend((float(a), float(b)) for a, b in saved[-self.window:])


class Samples:
    """Duel samples appended but not scored yet, per region: (seq, user, items, the user's interest
    state as of before the event). A user held in memory is copied as the request finds them (before
    the event applies); a user who is not is read from the store when scored, so that no request reads
    a log for the duel (a server reads at most `READS` a turn; an in-process trainer reads them all)."""

    def __init__(self, regions: Sequence[str]) -> None:
        self.pending: dict[str, deque[tuple[int, str, np.ndarray, UserState | None]]] = {
            r: deque(maxlen=PENDING) for r in regions}

    def draw(self, live: Live, region: str, events: EventColumns, seqs: Sequence[int],
             rng: np.random.Generator) -> None:
        """Sample the batch's completed views (at `seqs`), each with `NEGATIVES` random items."""
        catalog = live.catalog
        codes = events.item_codes(catalog.index)
        view = np.fromiter((t == "view" for t in events.type), np.bool_, len(events))
        done = np.flatnonzero(view & (codes >= 0) & (events.watch_s >= 0.9 * catalog.duration[np.maximum(codes, 0)]))
        if not len(done) or len(catalog) < 2:
            return
        take = min(int(rng.binomial(len(done), RATE)), max(MOST, len(events) // 50))
        for k in done[rng.choice(len(done), take, replace=False)].tolist():
            user = events.user[k]
            idx = np.concatenate([[codes[k]], rng.integers(0, len(catalog), NEGATIVES)])
            held = live.users.get(user)
            self.pending[region].append((seqs[k], user, idx, None if held is None else UserState(
                ref=held.state.ref, weights=dict(held.state.weights), follows=set(held.state.follows))))

    def due(self, live: Live, region: str, through: int,
            reads: int | None = None) -> Iterator[tuple[str, np.ndarray, UserState]]:
        """(user, items, state before) of the samples up to seq `through`, leaving the queue; of those
        read from the store, at most `reads` (None: all)."""
        pending = self.pending[region]
        reads = len(pending) if reads is None else reads
        while pending and pending[0][0] <= through:
            seq, user, idx, state = pending.popleft()
            if state is None:  # read from the store as of before the event
                if reads <= 0:
                    continue  # this turn's reads are spent: a sample fewer
                reads -= 1
                state = live.state_before(user, region, seq)
                if state is None:
                    continue
            yield user, idx, state

    def forget(self, region: str, user: str) -> None:
        self.pending[region] = deque((d for d in self.pending[region] if d[1] != user), maxlen=PENDING)
