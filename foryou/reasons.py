"""Human-readable reasons from a fixed vocabulary, one per candidate source (and interest feature)."""

from __future__ import annotations

from foryou.catalog import Catalog
from foryou.interest import CREATOR, SOUND, TAG, TOPIC, code_of, kind_of

VOCABULARY = (
    "you finished videos tagged #{tag}",
    "you enjoy videos from this creator",
    "you enjoy videos with this sound",
    "from a creator you follow",
    "popular in your region",
    "new video",
    "people who finished what you finished also finished this",
    "something different to explore",
    "viewers with tastes like yours enjoyed this",
)


def reason(catalog: Catalog, source: str, feature: int) -> str:
    if source == "interest":
        kind = kind_of(feature)
        if kind in (TAG, TOPIC):
            return VOCABULARY[0].format(tag=catalog.tags.names[code_of(feature)])
        if kind == CREATOR:
            return VOCABULARY[1]
        if kind == SOUND:
            return VOCABULARY[2]
    return {
        "follows": VOCABULARY[3],
        "trending": VOCABULARY[4],
        "fresh": VOCABULARY[5],
        "pool": VOCABULARY[5],
        "coengagement": VOCABULARY[6],
        "learned": VOCABULARY[8],
    }.get(source, VOCABULARY[7])
