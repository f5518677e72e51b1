"""Ranking: per-item predictions of each action, combined into one value."""

from foryou.ranking.heuristic import HEADS, MIN_VALUE, HeuristicRanker, value

__all__ = ["HEADS", "MIN_VALUE", "HeuristicRanker", "value"]
