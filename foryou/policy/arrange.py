"""Slot-by-slot selection of a response from ranked candidates, under the feed's rules:

- no two consecutive items from the same creator or with the same sound;
- at most `topic_cap` consecutive items of one topic, and `sensitive_cap` of sensitive topics (any of
  them counts: clusters of individually fine sensitive videos are dispersed);
- each slot takes the best value minus `mmr_lambda` x its greatest similarity to the items already in
  the response (maximal marginal relevance; similarity: half same topic, half tag Jaccard).

All rules hold across consecutive responses (`Recent`) and yield only when nothing else remains: the
topic-run caps first, adjacency last.
Slots may be reserved for a group (exploration, new-video pools): they take the group's best member
that the rules allow, or a regular pick when none is allowed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

_GROUP_STEP = {"explore": "exploration", "pool": "fresh_pool"}
_PRIORITY = 1e4  # a group's priority outweighs any difference in value


@dataclass(frozen=True)
class Recent:
    """What the user saw last: its creator, sound and topic, and the topic runs up to it."""

    creator: int = -1
    sound: int = -1
    topic: int = -1
    topic_run: int = 0
    sensitive_run: int = 0


@dataclass(frozen=True)
class Limits:
    topic_cap: int = 4
    sensitive_cap: int = 1
    mmr_lambda: float = 0.5


@dataclass
class Selection:
    picks: list[int] = field(default_factory=list)  # positions into the candidate arrays, in order
    values: list[float] = field(default_factory=list)  # each pick's value in its slot, after the MMR penalty
    steps: list[list[str]] = field(default_factory=list)  # the policy steps that placed each pick
    yielded: bool = False  # a rule gave way: nothing that kept it remained
    recent: Recent = field(default_factory=Recent)


def similarity(topics: np.ndarray, tags: np.ndarray, p: int, tag_count: np.ndarray | None = None) -> np.ndarray:
    """Every candidate's similarity to candidate `p`: 0.5 x same topic + 0.5 x tag Jaccard.
    `tag_count`: each candidate's number of tags, when the caller has it."""
    same_topic = (topics == topics[p]) & (topics >= 0)
    mine = tags[p][tags[p] >= 0]
    if len(mine) == 0:
        return 0.5 * same_topic
    shared = np.zeros(len(topics))  # how many of p's tags each candidate has
    for tag in mine:
        shared += (tags == tag).any(axis=1)
    union = ((tags >= 0).sum(axis=1) if tag_count is None else tag_count) + len(mine) - shared
    return 0.5 * same_topic + 0.5 * shared / np.maximum(union, 1)


TOP = 24  # candidates kept per slot asked (`select` on the best of them, when that is exact)


def select(utility: np.ndarray, creators: np.ndarray, sounds: np.ndarray, topics: np.ndarray, tags: np.ndarray,
           sensitive: np.ndarray, n: int, recent: Recent = Recent(), limits: Limits = Limits(),
           slots: Sequence[str] = (), groups: Mapping[str, np.ndarray] | None = None) -> Selection:
    """Pick up to `n` candidates. `utility`: value on a log scale; `tags`: (candidates, k) codes, -1 pad;
    `slots[s]`: the group slot s is reserved for ("" or missing: regular); `groups[name]`: a priority per
    candidate, -inf for non-members (higher goes first, then value).

    Each slot costs a few array operations over every candidate, so the selection first runs on the
    best `TOP * n` by utility (and every group member): the same picks whenever each regular pick's
    value after its penalty is at least the best utility left out (a penalty only lowers a value, so
    nothing left out could have beaten it) and no rule had to yield; otherwise it runs on them all."""
    groups = groups or {}
    keep = TOP * max(n, 1)
    if len(utility) > 2 * keep:
        best = np.argpartition(-utility, keep)[:keep]
        members = [np.flatnonzero(np.isfinite(g)) for g in groups.values()]
        kept = np.unique(np.concatenate([best, *members]))
        rest = np.ones(len(utility), np.bool_)
        rest[kept] = False
        if not rest.any():  # the groups' members cover every candidate: nothing to leave out
            return _select(utility, creators, sounds, topics, tags, sensitive, n, recent, limits, slots, groups)
        bound = float(utility[rest].max())
        sub = _select(utility[kept], creators[kept], sounds[kept], topics[kept], tags[kept], sensitive[kept], n,
                      recent, limits, slots, {k: g[kept] for k, g in groups.items()})
        # a group's pick is exact (every member is kept); a regular one if nothing left out could tie
        if not sub.yielded and all(v > bound or (s and s[0] != "diversity")
                                   for v, s in zip(sub.values, sub.steps, strict=True)):
            sub.picks = kept[sub.picks].tolist()
            return sub
    return _select(utility, creators, sounds, topics, tags, sensitive, n, recent, limits, slots, groups)


def _select(utility: np.ndarray, creators: np.ndarray, sounds: np.ndarray, topics: np.ndarray, tags: np.ndarray,
            sensitive: np.ndarray, n: int, recent: Recent, limits: Limits, slots: Sequence[str],
            groups: Mapping[str, np.ndarray]) -> Selection:
    count = len(utility)
    taken = np.zeros(count, np.bool_)
    penalty = np.zeros(count)
    tag_count = (tags >= 0).sum(axis=1)
    out = Selection(recent=recent)
    for slot in range(min(n, count)):
        r = out.recent
        adjacent_ok = ~taken & (creators != r.creator) & ((sounds < 0) | (sounds != r.sound))
        allowed = adjacent_ok.copy()
        if r.topic >= 0 and r.topic_run >= limits.topic_cap:
            allowed &= topics != r.topic
        if r.sensitive_run >= limits.sensitive_cap:
            allowed &= ~sensitive
        adjusted = utility - limits.mmr_lambda * penalty
        kind = slots[slot] if slot < len(slots) else ""
        priority = groups.get(kind)
        pick, steps = -1, []
        if priority is not None:
            members = allowed & np.isfinite(priority)
            if members.any():
                pick = int(np.argmax(np.where(members, priority * _PRIORITY + adjusted, -np.inf)))
                steps.append(_GROUP_STEP.get(kind, kind))
        if pick < 0 and allowed.any():
            pick = int(np.argmax(np.where(allowed, adjusted, -np.inf)))
        if pick < 0 and adjacent_ok.any():  # the topic-run caps give way first ...
            out.yielded = True
            pick = int(np.argmax(np.where(adjacent_ok, adjusted, -np.inf)))
        if pick < 0:  # ... then adjacency: every remaining candidate breaks it, so the best of them
            out.yielded = True
            pick = int(np.argmax(np.where(~taken, adjusted, -np.inf)))
        if not steps and utility[pick] < np.max(np.where(taken, -np.inf, utility)):
            steps.append("diversity")  # placed over a higher-valued candidate by the rules or MMR
        taken[pick] = True
        penalty = np.maximum(penalty, similarity(topics, tags, pick, tag_count))
        topic = int(topics[pick])
        run = r.topic_run + 1 if topic >= 0 and topic == r.topic else (1 if topic >= 0 else 0)
        out.recent = replace(r, creator=int(creators[pick]), sound=int(sounds[pick]), topic=topic, topic_run=run,
                             sensitive_run=r.sensitive_run + 1 if sensitive[pick] else 0)
        out.picks.append(pick)
        out.values.append(float(adjusted[pick]))
        out.steps.append(steps)
    return out
