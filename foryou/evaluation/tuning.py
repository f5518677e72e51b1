"""The models of a run, and the settings tried for each on the validation split.

Tuning fits each candidate setting on the events before `valid_from`, grades it on [valid_from,
test_from) by NDCG@10, and keeps the best; the test period is never looked at. The engine (`foryou`)
runs with its settings as served (defaults, or `--config`): its hand-set ranking is what is graded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foryou.config import Settings
from foryou.evaluation import MODELS
from foryou.evaluation.baselines import ImplicitALS, ItemKNN, Popularity, RecentPopularity
from foryou.evaluation.models import Model
from foryou.evaluation.replay import ForYouModel

GRIDS: dict[str, list[dict[str, Any]]] = {
    "item_knn": [{"neighbours": n, "shrink": s} for n in (100, 500) for s in (0.0, 50.0, 500.0)],
    "implicit_als": [{"factors": f, "alpha": a} for f in (16, 32, 64) for a in (3.0, 10.0)],
}
TUNED_BY = "ndcg@10"


def make_model(name: str, params: Mapping[str, Any] | None = None, settings: Settings | None = None,
               seed: int = 0) -> Model:
    """A fresh, unfitted model by name, with `params` passed to its constructor."""
    params = dict(params or {})
    if name in ("foryou", "foryou_heuristic"):
        return ForYouModel(settings=settings, seed=seed, learned=name == "foryou", **params)
    if name == "popularity":
        return Popularity(**params)
    if name == "recent_popularity":
        return RecentPopularity(**params)
    if name == "item_knn":
        return ItemKNN(**params)
    if name == "implicit_als":
        return ImplicitALS(seed=seed, **params)
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
