"""The in-memory catalogue index: items as columns of arrays, posting lists by tag/topic/creator/sound,
and the live item counters. Pure data structure: no I/O (the service loads and saves it)."""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable

import numpy as np

from foryou.types import STAT_NAMES, ItemRecord

# Columns of `Catalog.stats`: the public counters, then the internal ones (all persisted): early swipes,
# the item's exposure pool and when it was first served (policy/exposure.py).
STATS = {name: i for i, name in enumerate((*STAT_NAMES, "early_swipes", "pool", "first_served"))}
_VIEWS, _COMPLETIONS = STATS["views"], STATS["completions"]
ALL_REGIONS = np.int64(-1)
RANK_TAGS = 4  # tags per item kept column-wise for vectorised ranking (learning uses them all)


_WORD = re.compile(r"[^\W_]+")
_NO_PLURAL = ("ss", "us", "is")


def word_key(word: str) -> str:
    """One key for an English word's singular and plural, so that a filter on "cats" also stops "cat"
    and "movie" stops "Movies": plural endings go (ies, es after s/x/z/ch/sh, s), then a final e, and
    a final y becomes i (movie, movies -> movi; puppy, puppies -> puppi; box, boxes -> box). Not a real
    stemmer: "news" and "new" share a key."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "i"
    elif len(word) > 3 and word.endswith("es") and (word[-3] in "sxz" or word.endswith(("ches", "shes"))):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(_NO_PLURAL):
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    elif len(word) > 3 and word.endswith("y"):
        word = word[:-1] + "i"
    return word


def words(text: str) -> list[str]:
    """The keys (`word_key`) of the case-folded words of a caption, tag or keyword ("#Cats-and-dogs" ->
    cat, and, dog)."""
    return [word_key(w) for w in _WORD.findall(text.casefold())]


_TOKEN_CACHE = 1 << 20  # tokens whose codes are kept (a bound on memory; the cache starts over when full)
SEPARATOR = -1  # between the caption and each tag in an item's word sequence: phrases do not span them


class Vocab:
    """String <-> dense int id."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def __call__(self, name: str) -> int:
        code = self.ids.get(name)
        if code is None:
            code = self.ids[name] = len(self.names)
            self.names.append(name)
        return code

    def __len__(self) -> int:
        return len(self.names)


class Catalog:
    """Items by dense index. Posting lists may hold stale entries after a re-upsert changes an item's
    tags; readers check membership (`has_feature`) rather than paying to rewrite lists. Without
    `serving` (a trainer's copy) what only feeds read is not kept: the postings, the order of arrival,
    each item's tag tuple and words (~380 MiB at 1M items)."""

    def __init__(self, regions: tuple[str, ...], capacity: int = 1024, serving: bool = True) -> None:
        self.regions = regions
        self.serving = serving
        self.region_bit = {r: 1 << i for i, r in enumerate(regions)}
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.tags: Vocab = Vocab()  # tags and topics share one vocabulary
        self.creators: Vocab = Vocab()
        self.sounds: Vocab = Vocab()
        self.item_tags: list[tuple[int, ...]] = []
        self.by_tag: dict[int, list[int]] = {}
        self.by_topic: dict[int, list[int]] = {}
        self.by_creator: dict[int, list[int]] = {}
        self.by_sound: dict[int, list[int]] = {}
        self.arrivals: list[int] = []  # item indexes in order of first upsert (for "fresh")
        # Each item's words (caption, then each tag), for keyword filters: codes of `words` in one flat
        # array, the item's slice at term_start/term_len (a re-upsert appends a new slice).
        self.words: Vocab = Vocab()
        self.terms = array("i")
        self._token_codes: dict[str, int] = {}  # case-folded token -> its word's code (`_codes`)
        # Python-list mirrors of hot columns: scalar reads from lists are several times faster than numpy's
        self.creator_l: list[int] = []
        self.sound_l: list[int] = []
        self.topic_l: list[int] = []
        self.duration_l: list[float] = []
        # Per topic code: items, views, completions; kept as items and events come (`count_topic_views`),
        # so that catalogue-wide topic rates are never summed over every item on a request.
        self.topic_sums = np.zeros((64, 3))
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        n = len(self.ids)

        def grow(old: np.ndarray | None, dtype: type, fill: float | int = 0, width: int = 0) -> np.ndarray:
            shape: tuple[int, ...] = (capacity, width) if width else (capacity,)
            new: np.ndarray = np.full(shape, fill, dtype=dtype)
            if old is not None:
                new[:n] = old[:n]
            return new

        get = self.__dict__.get
        self.creator = grow(get("creator"), np.int32)
        self.sound = grow(get("sound"), np.int32, -1)
        self.topic = grow(get("topic"), np.int32, -1)
        self.duration = grow(get("duration"), np.float64, 1.0)
        self.created_at = grow(get("created_at"), np.float64)
        self.alive = grow(get("alive"), np.bool_, False)
        self.mature = grow(get("mature"), np.bool_, False)
        self.region_mask = grow(get("region_mask"), np.int64, -1)
        self.stats = grow(get("stats"), np.float64, 0, len(STATS))
        self.tag_cols = grow(get("tag_cols"), np.int64, -1, RANK_TAGS)
        self.tag_count = grow(get("tag_count"), np.int16)
        self.term_start = grow(get("term_start"), np.int64)
        self.term_len = grow(get("term_len"), np.int32)

    def __len__(self) -> int:
        return len(self.ids)

    def put(self, item: ItemRecord) -> int:
        """Add or replace an item's fields (counters are kept); returns its index."""
        idx = self.index.get(item.id)
        old_tags: tuple[int, ...] = ()
        if idx is None:
            idx = len(self.ids)
            if idx >= len(self.alive):
                self._alloc(max(1024, 2 * len(self.alive)))
            self.ids.append(item.id)
            self.index[item.id] = idx
            if self.serving:
                self.item_tags.append(())
                self.arrivals.append(idx)
            self.creator_l.append(-1)
            self.sound_l.append(-1)
            self.topic_l.append(-1)
            self.duration_l.append(1.0)
            old_creator, old_sound, old_topic = -1, -1, -1
        else:
            old_tags = self.item_tags[idx] if self.serving else ()
            old_creator, old_sound, old_topic = int(self.creator[idx]), int(self.sound[idx]), int(self.topic[idx])
        tags = tuple(dict.fromkeys(self.tags(t) for t in item.tags))
        topic_name = item.topic if item.topic is not None else (item.tags[0] if item.tags else None)
        topic = self.tags(topic_name) if topic_name is not None else -1
        creator = self.creators(item.creator)
        sound = self.sounds(item.sound) if item.sound is not None else -1
        if self.serving:
            self.item_tags[idx] = tags
        self.tag_cols[idx] = (*tags[:RANK_TAGS], *(-1,) * (RANK_TAGS - len(tags[:RANK_TAGS])))
        self.tag_count[idx] = len(tags)
        self.creator_l[idx], self.sound_l[idx], self.topic_l[idx] = creator, sound, topic
        self.duration_l[idx] = item.duration_s
        self.creator[idx], self.sound[idx], self.topic[idx] = creator, sound, topic
        self.duration[idx] = item.duration_s
        self.created_at[idx] = item.created_at
        self.alive[idx] = not item.down
        self.mature[idx] = item.mature
        if item.regions is None:
            self.region_mask[idx] = ALL_REGIONS
        else:
            self.region_mask[idx] = sum(self.region_bit.get(r, 0) for r in set(item.regions))
        if topic != old_topic:  # the item and what it was watched move to its new topic
            row = np.asarray([1.0, self.stats[idx, _VIEWS], self.stats[idx, _COMPLETIONS]])
            self._topic_rows(np.asarray([old_topic, topic]), np.stack([-row, row]))
        if not self.serving:
            return idx
        self._put_terms(idx, item)
        for t in tags:
            if t not in old_tags:
                self.by_tag.setdefault(t, []).append(idx)
        if topic >= 0 and topic != old_topic:
            self.by_topic.setdefault(topic, []).append(idx)
        if creator != old_creator:
            self.by_creator.setdefault(creator, []).append(idx)
        if sound >= 0 and sound != old_sound:
            self.by_sound.setdefault(sound, []).append(idx)
        return idx

    def put_many(self, items: Iterable[ItemRecord]) -> None:
        """`put` for many items; new ones are added column-wise (start-up loads a million this way)."""
        new: list[ItemRecord] = []
        pending: set[str] = set()
        for item in items:
            if item.id in self.index or item.id in pending:
                self._extend(new)
                new, pending = [], set()
                self.put(item)
            else:
                new.append(item)
                pending.add(item.id)
                if len(new) >= 50_000:  # bounded: start-up streams a million items through here
                    self._extend(new)
                    new, pending = [], set()
        self._extend(new)

    def _extend(self, items: list[ItemRecord]) -> None:
        if not items:
            return
        start, n = len(self.ids), len(items)
        if start + n > len(self.alive):
            self._alloc(max(1024, 2 * (start + n)))
        tag_code, creator_code, sound_code = self.tags, self.creators, self.sounds
        creators = [creator_code(i.creator) for i in items]
        sounds = [sound_code(i.sound) if i.sound is not None else -1 for i in items]
        tags = [tuple(dict.fromkeys(tag_code(t) for t in i.tags)) for i in items]
        topics = [tag_code(i.topic) if i.topic is not None else (t[0] if t else -1)
                  for i, t in zip(items, tags, strict=True)]
        durations = [i.duration_s for i in items]
        stop = start + n
        self.creator[start:stop], self.sound[start:stop], self.topic[start:stop] = creators, sounds, topics
        self.duration[start:stop] = durations
        self.tag_cols[start:stop] = [(*t[:RANK_TAGS], *(-1,) * (RANK_TAGS - len(t[:RANK_TAGS]))) for t in tags]
        self.tag_count[start:stop] = [len(t) for t in tags]
        self.created_at[start:stop] = [i.created_at for i in items]
        self.alive[start:stop] = [not i.down for i in items]
        self.mature[start:stop] = [i.mature for i in items]
        bits = self.region_bit
        self.region_mask[start:stop] = [
            ALL_REGIONS if i.regions is None else sum(bits.get(r, 0) for r in set(i.regions)) for i in items]
        for k, item in enumerate(items):
            self.index[item.id] = start + k
        self.ids.extend(i.id for i in items)
        self.creator_l.extend(creators)
        self.sound_l.extend(sounds)
        self.topic_l.extend(topics)
        self.duration_l.extend(durations)
        topic_codes = np.asarray(topics, np.int64)
        self._topic_rows(topic_codes, np.tile([1.0, 0.0, 0.0], (len(topic_codes), 1)))
        if not self.serving:
            return
        for k, item in enumerate(items):
            self._put_terms(start + k, item)
        self.item_tags.extend(tags)
        self.arrivals.extend(range(start, stop))
        by_tag, by_topic, by_creator, by_sound = self.by_tag, self.by_topic, self.by_creator, self.by_sound
        for idx in range(start, stop):
            k = idx - start
            for t in tags[k]:
                by_tag.setdefault(t, []).append(idx)
            if topics[k] >= 0:
                by_topic.setdefault(topics[k], []).append(idx)
            by_creator.setdefault(creators[k], []).append(idx)
            if sounds[k] >= 0:
                by_sound.setdefault(sounds[k], []).append(idx)

    def _codes(self, text: str) -> list[int]:
        """The word codes of a caption or tag (`words`, then `self.words`), through a cache of each
        case-folded token's code: start-up reads a million captions, and most of their tokens repeat."""
        cache, out = self._token_codes, []
        for token in _WORD.findall(text.casefold()):
            code = cache.get(token)
            if code is None:
                if len(cache) >= _TOKEN_CACHE:
                    cache.clear()
                code = cache[token] = self.words(word_key(token))
            out.append(code)
        return out

    def _put_terms(self, idx: int, item: ItemRecord) -> None:
        seq = self._codes(item.caption or "")
        for tag in (*item.tags, *((item.topic,) if item.topic and item.topic not in item.tags else ())):
            seq.append(SEPARATOR)
            seq.extend(self._codes(tag))
        self.term_start[idx] = len(self.terms)
        self.term_len[idx] = len(seq)
        self.terms.extend(seq)

    def _topic_rows(self, topics: np.ndarray, rows: np.ndarray) -> None:
        """Add `rows` (items, views, completions) to the sums of `topics` (-1: no topic, skipped)."""
        keep = topics >= 0
        if not keep.any():
            return
        if len(self.tags) > len(self.topic_sums):
            grown = np.zeros((2 * len(self.tags), 3))
            grown[: len(self.topic_sums)] = self.topic_sums
            self.topic_sums = grown
        np.add.at(self.topic_sums, topics[keep], rows[keep])

    def count_topic_views(self, idx: np.ndarray, completed: np.ndarray) -> None:
        """Views of items `idx` (one each; `completed`: which were watched to the end), by their topic."""
        self._topic_rows(self.topic[idx].astype(np.int64),
                         np.stack([np.zeros(len(idx)), np.ones(len(idx)), completed.astype(np.float64)], axis=1))

    def add_topic_counts(self, idx: np.ndarray, views: np.ndarray, completions: np.ndarray) -> None:
        """Add views and completions (changes of items `idx`' counters, which may be negative) to their
        topics' sums."""
        self._topic_rows(self.topic[idx].astype(np.int64), np.stack([np.zeros(len(idx)), views, completions], axis=1))

    def recount_topics(self) -> None:
        """The topic sums from the counters (after they were loaded from the store)."""
        n = len(self.ids)
        self.topic_sums = np.zeros((max(len(self.tags), 64), 3))
        self._topic_rows(self.topic[:n].astype(np.int64),
                         np.stack([np.ones(n), self.stats[:n, _VIEWS], self.stats[:n, _COMPLETIONS]], axis=1))

    def terms_of(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' word codes, concatenated, and for each code the candidate's position."""
        starts, lens = self.term_start[candidates], self.term_len[candidates].astype(np.int64)
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        ends = np.cumsum(lens)
        pos = np.arange(total) - np.repeat(ends - lens, lens) + np.repeat(starts, lens)
        flat = np.frombuffer(self.terms, dtype=np.int32)
        return flat[pos], np.repeat(np.arange(len(candidates)), lens)

    def eligible(self, candidates: np.ndarray, region: str, adult: bool) -> np.ndarray:
        """Mask over `candidates`: alive, allowed in `region`, and not mature unless `adult`."""
        ok = self.alive[candidates] & ((self.region_mask[candidates] & self.region_bit[region]) != 0)
        if not adult:
            ok &= ~self.mature[candidates]
        return ok

    def eligible_all(self, region: str, adult: bool) -> np.ndarray:
        n = len(self.ids)
        ok = self.alive[:n] & ((self.region_mask[:n] & self.region_bit[region]) != 0)
        if not adult:
            ok &= ~self.mature[:n]
        return ok

    def stats_of(self, idx: int) -> dict[str, float | int]:
        row = self.stats[idx]
        return {n: (float(row[i]) if n == "watch_s" else int(row[i])) for i, n in enumerate(STAT_NAMES)}
