"""Ranking: per-item predictions of each action, combined into one value."""

from foryou.ranking.heuristic import HEADS, HeuristicRanker, value

__all__ = ["HEADS", "HeuristicRanker", "value"]
