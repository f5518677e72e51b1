"""A user's explicit controls: keyword filters and topic weights ("more of / less of"), and how
candidates are checked against them. Words are matched case-folded, a plural like its singular
(catalog.words)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from foryou.catalog import Catalog, words
from foryou.types import format_time

MAX_KEYWORDS = 200


@dataclass
class Controls:
    blocked_keywords: tuple[str, ...] = ()
    topic_weights: dict[str, float] = field(default_factory=dict)  # topic -> weight in -1..1
    refreshed_at: float | None = None  # the last "refresh" (personalisation started afresh)

    def public(self) -> dict[str, object]:
        return {"blocked_keywords": list(self.blocked_keywords), "topic_weights": dict(self.topic_weights),
                "refreshed_at": format_time(self.refreshed_at) if self.refreshed_at is not None else None}

    def dumps(self) -> bytes:
        return orjson.dumps({"k": self.blocked_keywords, "t": self.topic_weights, "r": self.refreshed_at})

    @classmethod
    def loads(cls, blob: bytes | None) -> Controls:
        if not blob:
            return cls()
        data = orjson.loads(blob)
        return cls(tuple(data["k"]), dict(data["t"]), data.get("r"))


class KeywordFilter:
    """Blocked keywords compiled against the catalogue's word vocabulary: single words as a set of
    codes, phrases as code sequences that must appear in a row (within the caption or one tag: the
    catalogue separates them by a code no word has)."""

    def __init__(self, catalog: Catalog, keywords: tuple[str, ...]) -> None:
        self.catalog = catalog
        single: set[int] = set()
        phrases: list[tuple[int, ...]] = []
        codes = catalog.words.ids
        for keyword in keywords:
            seq = [codes.get(w, -2) for w in words(keyword)]  # -2: no item has this word (yet)
            if not seq or -2 in seq:
                continue
            if len(seq) == 1:
                single.add(seq[0])
            else:
                phrases.append(tuple(seq))
        self.single = np.fromiter(single, np.int32, len(single))
        self.phrases = phrases

    def __bool__(self) -> bool:
        return bool(len(self.single) or self.phrases)

    def blocked(self, candidates: np.ndarray) -> np.ndarray:
        """Which candidates a keyword matches."""
        out = np.zeros(len(candidates), np.bool_)
        if not self or len(candidates) == 0:
            return out
        codes, owner = self.catalog.terms_of(candidates)
        if len(self.single):
            out[owner[np.isin(codes, self.single)]] = True
        for phrase in self.phrases:
            span = len(phrase)
            if len(codes) < span:
                continue
            starts = np.ones(len(codes) - span + 1, np.bool_)
            for k, code in enumerate(phrase):
                starts &= codes[k:len(codes) - span + 1 + k] == code
                starts &= owner[k:len(owner) - span + 1 + k] == owner[:len(owner) - span + 1]
            out[owner[:len(owner) - span + 1][starts]] = True
        return out


def topic_shift(catalog: Catalog, candidates: np.ndarray, weights: dict[str, float], gain: float) -> np.ndarray:
    """Each candidate's value shift (log scale) from the user's topic weights: w x gain for an item of
    a weighted topic. It moves frequency; it never removes a topic."""
    shift = np.zeros(len(candidates))
    if not weights:
        return shift
    topics = catalog.topic[candidates]
    for name, weight in weights.items():
        code = catalog.tags.ids.get(name)
        if code is not None and weight:
            shift[topics == code] += weight * gain
    return shift
