"""Offline evaluation: grade the engine's ranking and baselines on a logged dataset (`foryou evaluate`).

Light on purpose (the command line imports it to list the models): the modules are imported on use.
See docs/evaluation.md for the protocols.
"""

MODELS = ("foryou", "foryou_heuristic", "popularity", "recent_popularity", "item_knn", "implicit_als")

__all__ = ["MODELS"]
