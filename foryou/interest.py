"""A user's interest state and how events change it (river-style `learn_one`).

Weights decay exponentially with event time. Rather than decaying every weight on every event, each
user keeps a reference time `ref`: stored weights are in units of `ref`, an event at time t adds
`delta * exp((t - ref) / tau)`, and the effective weight at `now` is `stored * exp((ref - now) / tau)`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson

from foryou.catalog import Catalog
from foryou.seen import Seen
from foryou.signals import event_strength, is_completion
from foryou.topic_views import TopicViews

TAG, TOPIC, CREATOR, SOUND = 0, 1, 2, 3
_KIND_SHIFT = 32
RECENT = 8  # recent positives kept for item-to-item retrieval
MAX_FEATURES = 128  # weights kept per user: the strongest, by magnitude (bounds memory and state size)
MAX_TOPIC_VIEWS = 15.0  # a topic's view counts halve past this: the bandit weighs recent views, and follows drift
MAX_TOPICS = 256  # topics whose counts a user keeps (the most viewed)


def key(kind: int, code: int) -> int:
    return (kind << _KIND_SHIFT) | code


def kind_of(feature: int) -> int:
    return feature >> _KIND_SHIFT


def code_of(feature: int) -> int:
    return feature & ((1 << _KIND_SHIFT) - 1)


@dataclass
class UserState:
    ref: float = 0.0
    weights: dict[int, float] = field(default_factory=dict)
    follows: set[int] = field(default_factory=set)  # creator codes
    recent: list[int] = field(default_factory=list)  # item indexes of recent strong positives
    last_creator: int = -1  # the last item served, for the no-adjacent-creator/sound rule
    last_sound: int = -1
    last_topic: int = -1  # ... and how many items of that topic, and of sensitive topics, ran up to it
    topic_run: int = 0
    sensitive_run: int = 0
    excluded: Seen = field(default_factory=Seen)  # served or viewed: never served again
    seq: int = 0  # the last event (in the user's region log) this state includes
    # The last served row (the region's log) that `excluded` includes; with it `excluded` holds every
    # item served through it and viewed through `seq`. -1: only the views applied in this process (the
    # served rows and earlier views were never read: a feed reads them from the log first).
    served_seq: int = -1
    muted: dict[int, float] = field(default_factory=dict)  # creator/sound feature -> not served until
    topic_views: TopicViews = field(default_factory=TopicViews)  # topic -> (views, completions), as arrays

    def reset(self) -> UserState:
        """A fresh start ("refresh"): what was learned goes, what was served and followed stays."""
        return UserState(follows=set(self.follows), last_creator=self.last_creator, last_sound=self.last_sound,
                         last_topic=self.last_topic, topic_run=self.topic_run, sensitive_run=self.sensitive_run,
                         excluded=self.excluded.copy(), seq=self.seq, served_seq=self.served_seq)


_TAG_SHARE = [0.0] + [1.0 / math.sqrt(n) for n in range(1, 65)]


def item_features(catalog: Catalog, idx: int) -> list[tuple[int, float]]:
    """(feature, share of an event's strength) for an item: tags split one unit, topic, creator, sound."""
    tags = catalog.item_tags[idx]
    share = _TAG_SHARE[len(tags)]
    out = [(t, share) for t in tags]  # TAG is kind 0: the tag code is the feature
    topic = catalog.topic_l[idx]
    if topic >= 0:
        out.append(((TOPIC << _KIND_SHIFT) | topic, 1.0))
    out.append(((CREATOR << _KIND_SHIFT) | catalog.creator_l[idx], 0.8))
    sound = catalog.sound_l[idx]
    if sound >= 0:
        out.append(((SOUND << _KIND_SHIFT) | sound, 0.5))
    return out


def learn_one(state: UserState, catalog: Catalog, idx: int, kind: str, watch_s: float, ts: float,
              tau: float, mute_s: float = 30 * 86400.0, views: list[tuple[int, bool]] | None = None) -> float:
    """Update `state` with one event on item `idx`; returns the event's strength. "Not interested"
    also mutes the item's creator and sound for `mute_s`. `views`: where a view's (topic, completed)
    goes for the caller to count (`learn_many`), instead of counting it now."""
    strength = event_strength(kind, watch_s, catalog.duration_l[idx])
    if state.ref == 0.0:
        state.ref = ts
    exponent = (ts - state.ref) / tau
    if exponent > 30.0:  # rebase before the stored weights overflow
        scale = math.exp(-exponent)
        state.weights = {k: w * scale for k, w in state.weights.items() if abs(w * scale) > 1e-6}
        state.ref, exponent = ts, 0.0
    gain = strength * math.exp(exponent)
    weights = state.weights
    for feature, share in item_features(catalog, idx):
        weights[feature] = weights.get(feature, 0.0) + gain * share
    if len(weights) > 2 * MAX_FEATURES:  # amortised: prune back to the strongest
        prune(state)
    if kind == "follow":
        state.follows.add(catalog.creator_l[idx])
    if kind == "view":
        state.excluded.add(idx)
        topic = catalog.topic_l[idx]
        if views is None:
            _count_topic(state, topic, is_completion(watch_s, catalog.duration_l[idx]))
        elif topic >= 0:
            views.append((topic, is_completion(watch_s, catalog.duration_l[idx])))
    elif kind == "not_interested" and mute_s > 0:
        state.muted[(CREATOR << _KIND_SHIFT) | catalog.creator_l[idx]] = ts + mute_s
        sound = catalog.sound_l[idx]
        if sound >= 0:
            state.muted[(SOUND << _KIND_SHIFT) | sound] = ts + mute_s
    if strength >= 1.0:
        if idx in state.recent:
            state.recent.remove(idx)
        state.recent.append(idx)
        del state.recent[:-RECENT]
    return strength


def learn_many(state: UserState, catalog: Catalog, events: Iterable[tuple[int, str, float, float]], tau: float,
               mute_s: float = 30 * 86400.0) -> None:
    """`learn_one` for each (item index, kind, watch_s, ts), in order, with the topic counts taken at
    the end, all at once (nothing in between reads them)."""
    views: list[tuple[int, bool]] = []
    for idx, kind, watch_s, ts in events:
        learn_one(state, catalog, idx, kind, watch_s, ts, tau, mute_s, views)
    if views:
        state.topic_views.count_many(views, MAX_TOPICS, MAX_TOPIC_VIEWS)


def _count_topic(state: UserState, topic: int, completed: bool) -> None:
    if topic >= 0:
        state.topic_views.count(topic, completed, MAX_TOPICS, MAX_TOPIC_VIEWS)


def muted(state: UserState, now: float) -> tuple[set[int], set[int]]:
    """The creator and sound codes muted at `now` (expired mutes are dropped)."""
    if not state.muted:
        return set(), set()
    state.muted = {f: t for f, t in state.muted.items() if t > now}
    mask = (1 << _KIND_SHIFT) - 1
    creators = {f & mask for f in state.muted if f >> _KIND_SHIFT == CREATOR}
    sounds = {f & mask for f in state.muted if f >> _KIND_SHIFT == SOUND}
    return creators, sounds


def prune(state: UserState) -> None:
    """Keep the `MAX_FEATURES` strongest weights; weak interests go first."""
    n = len(state.weights)
    if n > MAX_FEATURES:
        # Sorted as before (strongest first, ties in insertion order), in numpy: a Python sort with a
        # key function was half of a user's checkpoint once states held a few hundred weights.
        keys = np.fromiter(state.weights.keys(), np.int64, n)
        values = np.fromiter(state.weights.values(), np.float64, n)
        top = np.argsort(-np.abs(values), kind="stable")[:MAX_FEATURES]
        state.weights = dict(zip(keys[top].tolist(), values[top].tolist(), strict=True))


def seed_interests(state: UserState, catalog: Catalog, tags: tuple[str, ...], now: float,
                   tau: float) -> None:
    """Onboarding interests count like one completed view per tag."""
    if state.ref == 0.0:
        state.ref = now
    scale = math.exp(min(30.0, (now - state.ref) / tau))
    for name in tags:
        code = catalog.tags.ids.get(name)
        if code is not None:
            for f in (key(TAG, code), key(TOPIC, code)):
                state.weights[f] = max(state.weights.get(f, 0.0), 1.0 * scale)


def decay(state: UserState, now: float, tau: float) -> float:
    """Factor turning stored weights into weights at `now`."""
    return math.exp(max(-50.0, min(50.0, (state.ref - now) / tau))) if state.ref else 1.0


# A saved state, binary: this header, then weight features (int64) and values (float64), follows
# (int32 creator codes), recent (int32 item indexes), muted features (int64) and until (float64),
# topic codes (int32) and their [views, completions] (float64 pairs); from format 2 the served row
# `excluded` includes (int64, after the header) and the excluded item indexes (int32, at the end), so
# that a user read again needs no look-up of their whole log to know what not to serve. Codes are the catalogue's
# persisted vocabularies' (`Store.save_vocab`), so they read the same in every process and after a
# restart; item indexes are positions in the catalogue's insertion order, which never changes.
# Loading one took 140 µs as JSON by name (a user's first request or event at 1M items), ~10 µs so.
_HEAD = struct.Struct("<BdqiiiiiIIIII")
_SERVED = struct.Struct("<qI")  # format 2: served_seq, number of excluded items
_BINARY = 2


def dumps(state: UserState, catalog: Catalog) -> bytes:
    """The binary form of `state` (its codes must be in the store's vocabularies: `Live.state_blobs`)."""
    prune(state)
    topics = state.topic_views
    excluded = state.excluded.array() if state.served_seq >= 0 else np.zeros(0, np.int32)
    parts = [
        _HEAD.pack(_BINARY, state.ref, state.seq, state.last_creator, state.last_sound, state.last_topic,
                   state.topic_run, state.sensitive_run, len(state.weights), len(state.follows), len(state.recent),
                   len(state.muted), len(topics)),
        _SERVED.pack(state.served_seq, len(excluded)),
        np.fromiter(state.weights.keys(), np.int64, len(state.weights)).tobytes(),
        np.fromiter(state.weights.values(), np.float64, len(state.weights)).tobytes(),
        np.fromiter(state.follows, np.int32, len(state.follows)).tobytes(),
        np.asarray(state.recent, np.int32).tobytes(),
        np.fromiter(state.muted.keys(), np.int64, len(state.muted)).tobytes(),
        np.fromiter(state.muted.values(), np.float64, len(state.muted)).tobytes(),
        topics.codes.astype(np.int32).tobytes(),
        topics.counts.astype(np.float64).tobytes(),
        excluded.tobytes(),
    ]
    return b"".join(parts)


def loads(blob: bytes, catalog: Catalog) -> UserState:
    """A saved state (binary, or JSON by name as versions before the binary form saved it). Codes that
    the catalogue does not know are dropped, never trusted."""
    if blob[:1] == b"{":
        return _loads_json(blob, catalog)
    version, ref, seq, last_creator, last_sound, last_topic, topic_run, sensitive_run, nw, nf, nr, nm, nt = (
        _HEAD.unpack_from(blob))
    if version not in (1, _BINARY):
        raise ValueError(f"unknown user state format {version}")
    offset = _HEAD.size
    served_seq, n_excluded = -1, 0
    if version >= 2:
        served_seq, n_excluded = _SERVED.unpack_from(blob, offset)
        offset += _SERVED.size

    def take(dtype: type, n: int) -> np.ndarray:
        nonlocal offset
        out: np.ndarray = np.frombuffer(blob, dtype, n, offset)
        offset += out.nbytes
        return out

    features, values = take(np.int64, nw), take(np.float64, nw)
    follows, recent = take(np.int32, nf), take(np.int32, nr)
    mutes, until = take(np.int64, nm), take(np.float64, nm)
    topic_codes, counts = take(np.int32, nt), take(np.float64, 2 * nt)
    excluded = take(np.int32, n_excluded)
    tags, creators, sounds = len(catalog.tags), len(catalog.creators), len(catalog.sounds)
    limits = (tags, tags, creators, sounds)
    # Vocabularies only grow and a state's codes were saved before it: every code is known unless the
    # blob is damaged, so one vectorised check, and the entry-wise filter only when it fails.
    weights = dict(zip(features.tolist(), values.tolist(), strict=True))
    if nw and (features.min() < 0 or features.max() >> _KIND_SHIFT > SOUND or bool(
            ((features & 0xFFFFFFFF) >= np.take(np.asarray(limits), features >> _KIND_SHIFT, mode="clip")).any())):
        weights = {k: w for k, w in weights.items() if 0 <= k >> _KIND_SHIFT <= SOUND
                   and k & 0xFFFFFFFF < limits[k >> _KIND_SHIFT]}
    muted = {k: t for k, t in zip(mutes.tolist(), until.tolist(), strict=True)
             if 0 <= k >> _KIND_SHIFT <= SOUND and k & 0xFFFFFFFF < limits[k >> _KIND_SHIFT]}
    known = topic_codes < tags
    return UserState(
        ref=ref, seq=seq, weights=weights, served_seq=served_seq,
        excluded=Seen.of(excluded[excluded < len(catalog)].copy()),
        follows={c for c in follows.tolist() if c < creators}, recent=[i for i in recent.tolist() if i < len(catalog)],
        muted=muted, topic_views=TopicViews(topic_codes[known].copy(), counts.reshape(-1, 2)[known].copy()),
        last_creator=last_creator if last_creator < creators else -1,
        last_sound=last_sound if last_sound < sounds else -1,
        last_topic=last_topic if last_topic < tags else -1, topic_run=topic_run, sensitive_run=sensitive_run,
    )


def dumps_json(state: UserState, catalog: Catalog) -> bytes:
    """The JSON form by name, as versions before the binary form saved states (tests read both)."""
    prune(state)
    mask = (1 << _KIND_SHIFT) - 1
    groups: tuple[dict[str, float], ...] = ({}, {}, {}, {})  # by kind: tag, topic, creator, sound
    names = (catalog.tags.names, catalog.tags.names, catalog.creators.names, catalog.sounds.names)
    for f, w in state.weights.items():
        kind = f >> _KIND_SHIFT
        groups[kind][names[kind][f & mask]] = w
    topic_names = catalog.tags.names
    return orjson.dumps({
        "muted": [[f >> _KIND_SHIFT, names[f >> _KIND_SHIFT][f & mask], t] for f, t in state.muted.items()],
        "topics": {topic_names[t]: c for t, c in state.topic_views.items()},
        "run": [topic_names[state.last_topic] if state.last_topic >= 0 else None, state.topic_run,
                state.sensitive_run],
        "ref": state.ref,
        "seq": state.seq,
        "w": dict(zip("tocs", groups, strict=True)),
        "follows": [catalog.creators.names[c] for c in state.follows],
        "recent": [catalog.ids[i] for i in state.recent],
        "last": [catalog.creators.names[state.last_creator] if state.last_creator >= 0 else None,
                 catalog.sounds.names[state.last_sound] if state.last_sound >= 0 else None],
    })


def _loads_json(blob: bytes, catalog: Catalog) -> UserState:
    data = orjson.loads(blob)
    vocabs = {"t": (catalog.tags, 0), "o": (catalog.tags, TOPIC << _KIND_SHIFT),
              "c": (catalog.creators, CREATOR << _KIND_SHIFT), "s": (catalog.sounds, SOUND << _KIND_SHIFT)}
    weights = {}
    for prefix, group in data["w"].items():
        vocab, base = vocabs[prefix]
        codes = vocab.ids
        for name, w in group.items():
            code = codes.get(name)
            weights[base | (vocab(name) if code is None else code)] = w
    last_creator, last_sound = data["last"]
    kinds = {CREATOR: catalog.creators, SOUND: catalog.sounds}
    last_topic, topic_run, sensitive_run = data.get("run", (None, 0, 0))
    return UserState(
        muted={(kind << _KIND_SHIFT) | kinds[kind](name): until for kind, name, until in data.get("muted", ())},
        topic_views=TopicViews.of({catalog.tags(t): (float(c[0]), float(c[1]))
                                   for t, c in data.get("topics", {}).items()}),
        last_topic=catalog.tags(last_topic) if last_topic is not None else -1,
        topic_run=topic_run, sensitive_run=sensitive_run,
        ref=data["ref"], weights=weights, seq=data.get("seq", 0),
        follows={catalog.creators(c) for c in data["follows"]},
        recent=[catalog.index[i] for i in data["recent"] if i in catalog.index],
        last_creator=catalog.creators(last_creator) if last_creator is not None else -1,
        last_sound=catalog.sounds(last_sound) if last_sound is not None else -1,
    )
