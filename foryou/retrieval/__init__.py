"""Candidate sources. Each is a pure function over the catalogue and the user's state that proposes
up to its budget of item indexes; the feed service merges them, then ranks."""

from foryou.retrieval.sources import (
    Candidates,
    coengagement,
    explore,
    fallback,
    follows,
    fresh,
    interest,
    learned,
    sweep,
    trending,
)

__all__ = ["Candidates", "coengagement", "explore", "fallback", "follows", "fresh", "interest", "learned", "sweep",
           "trending"]
