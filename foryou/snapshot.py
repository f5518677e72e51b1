"""Catalogue snapshots: the in-memory catalogue's columns, vocabularies and word sequences as arrays,
saved at a clean stop (`catalog-snapshot.bin` in the data directory) and loaded at start instead of
reading and tokenising every item again (at a million items that took tens of seconds).

A snapshot is used only when it was taken at the store's current `catalogue_version` and for the same
regions; anything else (a crash after items changed, another configuration) rebuilds from the store.
It holds item data only: no user's. The item aggregates have a snapshot of their own (below)."""

from __future__ import annotations

import io
from array import array
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from foryou.catalog import Catalog, Vocab
from foryou.datadir import write_private

FILE = "catalog-snapshot.bin"
_FORMAT = 1  # raise it when what the catalogue derives from an item changes (its columns, tokenisation)
_COLUMNS = ("creator", "sound", "topic", "duration", "created_at", "alive", "mature", "region_mask", "tag_cols",
            "tag_count", "term_start", "term_len")


def save(catalog: Catalog, directory: Path, version: int) -> None:
    """Write the snapshot of `catalog`, as of the store's catalogue `version`."""
    n = len(catalog)
    tags = catalog.item_tags
    lengths = np.fromiter((len(t) for t in tags), np.int64, n)
    flat = np.fromiter((c for t in tags for c in t), np.int64, int(lengths.sum()))
    header = {"format": _FORMAT, "version": version, "regions": list(catalog.regions)}
    names = [catalog.ids, catalog.tags.names, catalog.creators.names, catalog.sounds.names, catalog.words.names]
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(orjson.dumps(header), np.uint8),
             names=np.frombuffer(orjson.dumps(names), np.uint8), terms=np.frombuffer(catalog.terms, np.int32),
             tag_lengths=lengths, tag_codes=flat, **{c: getattr(catalog, c)[:n] for c in _COLUMNS})
    tmp = directory / (FILE + ".tmp")
    write_private(tmp, buf.getvalue())
    tmp.replace(directory / FILE)


def load(directory: Path, regions: tuple[str, ...], version: int, serving: bool = True) -> Catalog | None:
    """The catalogue as snapshotted, if the snapshot is of `version` and `regions`; else None. Without
    `serving`, a trainer's copy (`Catalog`)."""
    try:
        saved = np.load(io.BytesIO((directory / FILE).read_bytes()))
        header = orjson.loads(bytes(saved["header"]))
    except (OSError, ValueError, KeyError):
        return None
    if header.get("format") != _FORMAT or header.get("version") != version or tuple(header["regions"]) != regions:
        return None
    ids, tag_names, creators, sounds, words = orjson.loads(bytes(saved["names"]))
    n = len(ids)
    catalog = Catalog(regions, capacity=max(1024, n), serving=serving)
    for column in _COLUMNS:
        getattr(catalog, column)[:n] = saved[column]
    catalog.ids = ids
    # The lists and dicts below share int (and float) objects, one per distinct value, where that is
    # cheap: each value a list made on its own is an object of 24-28 bytes (at 1M items ~130 MiB).
    indexes = list(range(n))
    catalog.index = dict(zip(ids, indexes, strict=True))
    for vocab, names in ((catalog.tags, tag_names), (catalog.creators, creators), (catalog.sounds, sounds),
                         *(((catalog.words, words),) if serving else ())):
        _fill(vocab, names, indexes)
    catalog.creator_l = _shared(catalog.creator[:n])
    catalog.sound_l = _shared(catalog.sound[:n])
    catalog.topic_l = _shared(catalog.topic[:n])
    catalog.duration_l = _shared(catalog.duration[:n])
    if not serving:
        catalog.term_len[:n] = 0  # no words kept
        return catalog
    catalog.terms = array("i", saved["terms"].tobytes())
    lengths, codes = saved["tag_lengths"], saved["tag_codes"]
    owners = np.repeat(np.arange(n), lengths)
    ends = np.cumsum(lengths)
    codes_l = _shared(codes)
    catalog.item_tags = [tuple(codes_l[e - k:e]) for e, k in zip(ends.tolist(), lengths.tolist(), strict=True)]
    catalog.arrivals = list(indexes)
    catalog.by_tag = _postings(codes, owners)
    catalog.by_topic, catalog.by_creator, catalog.by_sound = (
        _postings(column[:n][column[:n] >= 0].astype(np.int64), np.flatnonzero(column[:n] >= 0))
        for column in (catalog.topic, catalog.creator, catalog.sound))
    return catalog


def _shared(values: np.ndarray) -> list[Any]:
    """`values.tolist()` with one Python object per distinct value."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return list(map(distinct.tolist().__getitem__, inverse.ravel().tolist()))


def _fill(vocab: Vocab, names: list[str], indexes: list[int]) -> None:
    vocab.names = names
    vocab.ids = dict(zip(names, indexes if len(names) <= len(indexes) else range(len(names)), strict=False))


def _postings(keys: np.ndarray, items: np.ndarray) -> dict[int, list[int]]:
    """key -> the items with it, in index order (as a rebuild from the store lists them)."""
    order = np.lexsort((items, keys))
    keys, items = keys[order], items[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    bounds = np.r_[starts, len(keys)].tolist()
    values = items.tolist()  # not `indexes`' objects: touching a million of them out of order cost 1.7 s
    return {int(keys[s]): values[s:e] for s, e in pairwise(bounds)}


# The item aggregates (counters, trend scores, co-engagement rows) as arrays, written at a clean stop
# beside the catalogue's snapshot: reading them back row by row from the store took 7 s of a start at
# 1M items. Used only while the store's aggregates are the ones it copies: every save of aggregates
# records a new token in the store (`aggregates_token`), and a snapshot of another token is ignored.
AGGREGATES_FILE = "aggregates-snapshot.bin"
TOKEN = "aggregates_token"  # the store's meta key
_AGGREGATES_FORMAT = 1


@dataclass(frozen=True)
class Aggregates:
    stats: np.ndarray  # rows of the first len(stats) items
    trend: dict[str, np.ndarray]
    coeng_nb: np.ndarray
    coeng_w: np.ndarray


def save_aggregates(directory: Path, token: str, saved: Aggregates) -> None:
    header = {"format": _AGGREGATES_FORMAT, "token": token, "regions": list(saved.trend)}
    buf = io.BytesIO()
    arrays = {"header": np.frombuffer(orjson.dumps(header), np.uint8), "stats": saved.stats,
              "coeng_nb": saved.coeng_nb, "coeng_w": saved.coeng_w,
              **{f"trend_{k}": v for k, v in enumerate(saved.trend.values())}}
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    tmp = directory / (AGGREGATES_FILE + ".tmp")
    write_private(tmp, buf.getvalue())
    tmp.replace(directory / AGGREGATES_FILE)


def load_aggregates(directory: Path, token: str | None, regions: tuple[str, ...], n: int) -> Aggregates | None:
    """The aggregates as snapshotted, if the snapshot copies those saved under `token`, for `regions`
    and at most `n` items; else None."""
    if token is None:
        return None
    try:
        saved = np.load(io.BytesIO((directory / AGGREGATES_FILE).read_bytes()))
        header = orjson.loads(bytes(saved["header"]))
        if (header.get("format") != _AGGREGATES_FORMAT or header.get("token") != token
                or tuple(header["regions"]) != regions or len(saved["stats"]) > n):
            return None
        return Aggregates(saved["stats"], {r: saved[f"trend_{k}"] for k, r in enumerate(regions)},
                          saved["coeng_nb"], saved["coeng_w"])
    except (OSError, ValueError, KeyError):
        return None
