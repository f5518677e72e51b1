"""A user's explicit controls: keyword filters and topic weights ("more of / less of"), and how
candidates are checked against them. Words are matched case-folded, a plural like its singular
(catalog.words)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from foryou.catalog import Catalog, words
from foryou.errors import FieldError
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


_MIX = -7046029254386353131  # the rolling hash's multiplier, 0x9E3779B97F4A7C15 as int64 (odd)
_WRAP = 1 << 64


def _hash(seq: Sequence[int]) -> int:
    """The hash `KeywordFilter.blocked` computes for a window of these word codes: h = (h + code) x
    _MIX for each code, modulo 2^64, as a signed 64-bit integer (numpy's int64 arithmetic wraps)."""
    h = 0
    for code in seq:
        h = ((h + code) * _MIX) % _WRAP
    return h - _WRAP if h >= _WRAP // 2 else h


def keyword_limits(keywords: Sequence[str], max_words: int, max_phrase: int) -> list[FieldError]:
    """What breaks the caps on blocked keywords: words in one keyword, words across all of them. They
    bound the filter's work per item (`KeywordFilter.blocked`)."""
    errors = []
    total = 0
    for k, keyword in enumerate(keywords):
        count = len(words(keyword))
        total += count
        if count > max_phrase:
            errors.append(FieldError("blocked_keywords", f"a keyword may have at most {max_phrase} words "
                                     f"(policy.max_phrase_words); this one has {count}", k))
    if total > max_words:
        errors.append(FieldError("blocked_keywords", f"the keywords may have at most {max_words} words in all "
                                 f"(policy.max_keyword_words); these have {total}"))
    return errors


class KeywordFilter:
    """A user's blocked keywords compiled once against the catalogue's word vocabulary (and again
    only when they change, or when the vocabulary grew while one of their words was missing from it):
    each keyword is a sequence of word codes that must appear in a row within the caption or within
    one tag (the catalogue separates those by a code no word has); a single word is a sequence of one.

    Matching hashes every window of each length present over the candidates' words, one pass per
    length up to the longest keyword; a small table of the keywords' hash buckets lets through the
    few windows that may match, which are then looked up and checked word by word. The work per call
    (`work`: word positions visited, summed over passes) is at most the candidates' words times the
    longest keyword's length, however many keywords there are."""

    def __init__(self, catalog: Catalog, keywords: tuple[str, ...]) -> None:
        self.catalog = catalog
        self.keywords = keywords
        self.vocabulary = len(catalog.words)
        self.missing = False  # a keyword with a word no item has (yet): compile again when one does
        by_length: dict[int, set[tuple[int, ...]]] = {}
        codes = catalog.words.ids
        for keyword in keywords:
            seq = tuple(codes.get(w, -2) for w in words(keyword))
            if -2 in seq:
                self.missing = True
            elif seq:
                by_length.setdefault(len(seq), set()).add(seq)
        # length -> (sorted hashes, the phrases in the same order as rows)
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length, phrases in by_length.items():
            ordered = sorted(phrases, key=_hash)
            hashes = np.fromiter((_hash(p) for p in ordered), np.int64, len(ordered))
            self.tables[length] = (hashes, np.asarray(ordered, np.int64).reshape(len(ordered), length))
        self.longest = max(self.tables, default=0)
        # buckets of the hashes' top bits: about 1 window in 16 of those matching no keyword gets past
        count = sum(len(t[0]) for t in self.tables.values())
        self.bits = min(max((16 * count).bit_length(), 8), 14)
        self.buckets = np.zeros(1 << self.bits, np.bool_)
        for hashes, _ in self.tables.values():
            self.buckets[self._bucket(hashes)] = True
        self.work = 0

    def _bucket(self, hashes: np.ndarray) -> np.ndarray:
        return (hashes >> (64 - self.bits)) & ((1 << self.bits) - 1)

    def __bool__(self) -> bool:
        return bool(self.tables)

    def stale(self, keywords: tuple[str, ...]) -> bool:
        """Whether this filter must be compiled again for `keywords`."""
        return keywords != self.keywords or (self.missing and len(self.catalog.words) != self.vocabulary)

    def blocked(self, candidates: np.ndarray) -> np.ndarray:
        """Which candidates a keyword matches."""
        out = np.zeros(len(candidates), np.bool_)
        if not self.tables or len(candidates) == 0:
            return out
        codes, owner = self.catalog.terms_of(candidates)
        codes = codes.astype(np.int64)
        window = codes * _MIX
        for length in range(1, self.longest + 1):
            if length > 1:
                if len(window) <= 1:
                    break
                window = (window[:-1] + codes[length - 1:]) * _MIX  # wraps modulo 2^64, as _hash does
            self.work += len(window)
            table = self.tables.get(length)
            if table is None:
                continue
            maybe = np.flatnonzero(self.buckets.take(self._bucket(window)))
            if not len(maybe):
                continue
            hashes, phrases = table
            at = np.minimum(np.searchsorted(hashes, window[maybe]), len(hashes) - 1)
            hit = hashes[at] == window[maybe]
            hits, at = maybe[hit], at[hit]
            if len(hits):  # the same words, within one item (hashes may collide)
                spans = codes[hits[:, None] + np.arange(length)]
                exact = (spans == phrases[at]).all(axis=1) & (owner[hits] == owner[hits + length - 1])
                out[owner[hits[exact]]] = True
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
