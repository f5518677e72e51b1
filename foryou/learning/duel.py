"""Progressive validation of the learned model against the hand-set fallback (a champion/challenger
duel on live traffic). Before a batch of views is learned, a sample of its completed views is scored
by both rankers with the value a feed ranks by: the completed item and `negatives` random catalogue
items. Each ranker's share of random items ranked below the completed one, averaged over the last
`window` samples, is its AUC at telling what the user finished from what they might have been shown,
the task of a feed. The learned model serves only while it wins: in a world it has not learned yet
(few events per user, or popularity priors that do not hold there) the fallback keeps serving."""

from __future__ import annotations

from collections import deque

import numpy as np


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
