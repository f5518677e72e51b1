"""The in-memory catalogue index: fields as arrays, posting lists, region masks, counters, growth."""

from __future__ import annotations

import numpy as np

from foryou.catalog import RANK_TAGS, STATS, Catalog, Vocab
from foryou.types import STAT_NAMES, ItemRecord

REGIONS = ("us", "eu", "br")


def item(item_id: str, **kw: object) -> ItemRecord:
    fields: dict[str, object] = {"creator": "c-" + item_id, "duration_s": 15.0, "created_at": 1000.0}
    fields.update(kw)
    return ItemRecord(id=item_id, **fields)  # type: ignore[arg-type]


def members(postings: list[int]) -> set[int]:
    return set(postings)


def test_vocab() -> None:
    v = Vocab()
    assert v("a") == 0 and v("b") == 1 and v("a") == 0
    assert len(v) == 2 and v.names == ["a", "b"] and v.ids == {"a": 0, "b": 1}


def test_stats_columns() -> None:
    assert list(STATS)[: len(STAT_NAMES)] == list(STAT_NAMES)
    assert STATS["early_swipes"] == len(STAT_NAMES)


def test_put_assigns_dense_indexes_and_fields() -> None:
    cat = Catalog(REGIONS)
    a = cat.put(item("a", creator="alice", tags=("cats", "funny"), topic="animals", sound="s1", duration_s=7.0,
                     created_at=123.0))
    b = cat.put(item("b", creator="alice", tags=("dogs",)))
    assert (a, b) == (0, 1)
    assert len(cat) == 2 and cat.ids == ["a", "b"] and cat.index == {"a": 0, "b": 1}
    assert cat.creator[a] == cat.creator[b] == cat.creators.ids["alice"]
    assert cat.duration[a] == 7.0 and cat.created_at[a] == 123.0
    assert cat.sound[a] == cat.sounds.ids["s1"] and cat.sound[b] == -1
    assert cat.topic[a] == cat.tags.ids["animals"]
    assert cat.topic[b] == cat.tags.ids["dogs"]  # no topic: the first tag stands in
    assert cat.item_tags[a] == (cat.tags.ids["cats"], cat.tags.ids["funny"])
    assert cat.alive[a] and cat.alive[b]
    assert cat.arrivals == [0, 1]
    no_tags = cat.put(item("c"))
    assert cat.topic[no_tags] == -1 and cat.item_tags[no_tags] == ()


def test_postings() -> None:
    cat = Catalog(REGIONS)
    cat.put(item("a", creator="alice", tags=("cats",), topic="animals", sound="s1"))
    cat.put(item("b", creator="bob", tags=("cats", "dogs"), topic="animals"))
    cat.put(item("c", creator="alice", tags=("dogs",), sound="s1"))
    t = cat.tags.ids
    assert cat.by_tag[t["cats"]] == [0, 1]
    assert cat.by_tag[t["dogs"]] == [1, 2]
    assert cat.by_topic[t["animals"]] == [0, 1]
    assert cat.by_topic[t["dogs"]] == [2]
    assert cat.by_creator[cat.creators.ids["alice"]] == [0, 2]
    assert cat.by_creator[cat.creators.ids["bob"]] == [1]
    assert cat.by_sound[cat.sounds.ids["s1"]] == [0, 2]


def test_duplicate_tags_counted_once() -> None:
    cat = Catalog(REGIONS)
    cat.put(item("a", tags=("x", "x", "y")))
    assert cat.item_tags[0] == (cat.tags.ids["x"], cat.tags.ids["y"])
    assert cat.by_tag[cat.tags.ids["x"]] == [0]


def test_replace_keeps_index_counters_and_arrival() -> None:
    cat = Catalog(REGIONS)
    cat.put(item("a", tags=("cats",), creator="alice"))
    cat.put(item("b"))
    cat.stats[0, STATS["views"]] = 12
    cat.stats[0, STATS["likes"]] = 3
    cat.stats[0, STATS["early_swipes"]] = 2
    idx = cat.put(item("a", tags=("dogs",), creator="bob", duration_s=30.0, down=True, mature=True))
    assert idx == 0 and len(cat) == 2 and cat.arrivals == [0, 1]
    assert cat.stats[0, STATS["views"]] == 12 and cat.stats[0, STATS["likes"]] == 3
    assert cat.stats[0, STATS["early_swipes"]] == 2
    assert cat.duration[0] == 30.0 and not cat.alive[0] and cat.mature[0]
    assert cat.creator[0] == cat.creators.ids["bob"]
    assert cat.item_tags[0] == (cat.tags.ids["dogs"],)
    # new features list the item; re-putting the same fields adds no duplicate postings
    assert 0 in cat.by_tag[cat.tags.ids["dogs"]]
    assert 0 in cat.by_creator[cat.creators.ids["bob"]]
    cat.put(item("a", tags=("dogs",), creator="bob", duration_s=30.0))
    assert cat.by_tag[cat.tags.ids["dogs"]].count(0) == 1
    assert cat.by_creator[cat.creators.ids["bob"]].count(0) == 1
    assert cat.alive[0]  # restored by the new record


def test_stats_of() -> None:
    cat = Catalog(REGIONS)
    cat.put(item("a"))
    cat.stats[0, STATS["views"]] = 4
    cat.stats[0, STATS["watch_s"]] = 12.5
    cat.stats[0, STATS["early_swipes"]] = 9
    out = cat.stats_of(0)
    assert list(out) == list(STAT_NAMES)
    assert out["views"] == 4 and isinstance(out["views"], int)
    assert out["watch_s"] == 12.5 and isinstance(out["watch_s"], float)
    assert "early_swipes" not in out


def test_region_masks_and_eligibility() -> None:
    cat = Catalog(REGIONS)
    cat.put(item("everywhere"))
    cat.put(item("us-only", regions=("us",)))
    cat.put(item("us-br", regions=("br", "us", "us")))
    cat.put(item("elsewhere", regions=("jp",)))  # a region this server does not hold
    cat.put(item("nowhere", regions=()))
    cat.put(item("down", down=True))
    cat.put(item("adult", mature=True, regions=("eu",)))
    cand = np.arange(len(cat))
    expect = {
        ("us", False): ["everywhere", "us-only", "us-br"],
        ("eu", False): ["everywhere"],
        ("br", False): ["everywhere", "us-br"],
        ("eu", True): ["everywhere", "adult"],
        ("us", True): ["everywhere", "us-only", "us-br"],
    }
    for (region, adult), ids in expect.items():
        got = [cat.ids[i] for i in cand[cat.eligible(cand, region, adult)]]
        assert got == ids, (region, adult)
        assert [cat.ids[i] for i in np.flatnonzero(cat.eligible_all(region, adult))] == ids
    sub = np.array([6, 0], dtype=np.int64)
    assert cat.eligible(sub, "eu", True).tolist() == [True, True]
    assert cat.eligible(sub, "eu", False).tolist() == [False, True]


def test_growth_past_capacity_keeps_everything() -> None:
    cat = Catalog(REGIONS, capacity=4)
    n = 1500  # past the initial capacity and past the first doubling
    for k in range(n):
        cat.put(item(f"i{k}", creator=f"c{k % 7}", sound=f"s{k % 3}", tags=(f"t{k % 11}",),
                     duration_s=1.0 + k, created_at=float(k), regions=("eu",) if k % 2 else None,
                     mature=k % 5 == 0, down=k % 13 == 0))
        cat.stats[k, STATS["views"]] = k
    assert len(cat) == n
    assert len(cat.alive) >= n and len(cat.stats) >= n
    ks = np.arange(n)
    assert cat.duration[:n].tolist() == (1.0 + ks).tolist()
    assert cat.created_at[:n].tolist() == ks.astype(float).tolist()
    assert cat.stats[:n, STATS["views"]].tolist() == ks.astype(float).tolist()
    assert [cat.creators.names[c] for c in cat.creator[:n]] == [f"c{k % 7}" for k in range(n)]
    assert [cat.sounds.names[s] for s in cat.sound[:n]] == [f"s{k % 3}" for k in range(n)]
    assert cat.mature[:n].tolist() == [k % 5 == 0 for k in range(n)]
    assert cat.alive[:n].tolist() == [k % 13 != 0 for k in range(n)]
    us = cat.eligible_all("us", True)
    assert us.tolist() == [k % 2 == 0 and k % 13 != 0 for k in range(n)]
    assert sorted(cat.by_creator[cat.creators.ids["c3"]]) == [k for k in range(n) if k % 7 == 3]


def _describe(cat: Catalog) -> dict[str, object]:
    """Everything about a catalogue, by name (vocabulary codes may differ between two builds)."""
    n = len(cat)
    tag, creator, sound = cat.tags.names, cat.creators.names, cat.sounds.names
    rows = {}
    for i in range(n):
        rows[cat.ids[i]] = (
            creator[cat.creator[i]], sound[cat.sound[i]] if cat.sound[i] >= 0 else None,
            tag[cat.topic[i]] if cat.topic[i] >= 0 else None, tuple(tag[t] for t in cat.item_tags[i]),
            float(cat.duration[i]), float(cat.created_at[i]), bool(cat.alive[i]), bool(cat.mature[i]),
            int(cat.region_mask[i]), cat.index[cat.ids[i]],
            tuple(tag[t] for t in cat.tag_cols[i] if t >= 0), int(cat.tag_count[i]),
        )
        # the Python-list mirrors agree with the arrays
        assert cat.creator_l[i] == cat.creator[i] and cat.sound_l[i] == cat.sound[i]
        assert cat.topic_l[i] == cat.topic[i] and cat.duration_l[i] == cat.duration[i]
    postings = {
        kind: {names[code]: sorted({cat.ids[i] for i in lst if owner(i) == code}) for code, lst in table.items()}
        for kind, table, names, owner in (
            ("creator", cat.by_creator, creator, lambda i: cat.creator[i]),
            ("sound", cat.by_sound, sound, lambda i: cat.sound[i]),
            ("topic", cat.by_topic, tag, lambda i: cat.topic[i]),
        )
    }
    postings["tag"] = {tag[code]: sorted({cat.ids[i] for i in lst if code in cat.item_tags[i]})
                       for code, lst in cat.by_tag.items()}
    for kind in postings:  # drop features no item has any more
        postings[kind] = {k: v for k, v in postings[kind].items() if v}
    return {"rows": rows, "postings": postings, "arrivals": [cat.ids[i] for i in cat.arrivals], "n": n}


def _batch(start: int, n: int, **kw: object) -> list[ItemRecord]:
    return [item(f"i{k}", creator=f"c{k % 5}", sound=f"s{k % 3}" if k % 4 else None,
                 tags=tuple(f"t{(k + j) % 9}" for j in range(k % 7)), topic=f"top{k % 4}" if k % 2 else None,
                 duration_s=1.0 + k, created_at=float(k), regions=("us",) if k % 3 == 0 else None,
                 mature=k % 5 == 0, down=k % 11 == 0, **kw) for k in range(start, start + n)]


def test_put_many_is_put_for_each() -> None:
    batches = [
        _batch(0, 30),
        _batch(25, 10),  # overlaps: replacements mixed with new items
        [*_batch(40, 3), item("i41", creator="late", tags=("z",)), *_batch(43, 2)],  # a repeat inside one batch
        _batch(45, 1100),  # past the initial capacity
    ]
    one_by_one, many = Catalog(REGIONS, capacity=8), Catalog(REGIONS, capacity=8)
    for b in batches:
        for it in b:
            one_by_one.put(it)
        many.put_many(b)
    want = _describe(one_by_one)
    got = _describe(many)
    assert got["n"] == want["n"] == 1140
    assert got["arrivals"] == want["arrivals"]
    assert got["rows"] == want["rows"]
    assert got["postings"] == want["postings"]
    assert got["rows"]["i41"][0] == "late"  # type: ignore[index]


def test_put_many_keeps_counters_of_replaced_items() -> None:
    cat = Catalog(REGIONS)
    cat.put_many(_batch(0, 5))
    cat.stats[3, STATS["likes"]] = 7
    cat.put_many(_batch(3, 4))
    assert len(cat) == 7 and cat.stats[3, STATS["likes"]] == 7


def test_rank_tag_columns() -> None:
    cat = Catalog(REGIONS)
    cat.put(item("many", tags=tuple(f"t{k}" for k in range(RANK_TAGS + 3))))
    cat.put(item("two", tags=("a", "b")))
    cat.put(item("none"))
    assert cat.tag_count.tolist()[:3] == [RANK_TAGS + 3, 2, 0]
    assert [cat.tags.names[t] for t in cat.tag_cols[0]] == [f"t{k}" for k in range(RANK_TAGS)]
    assert cat.tag_cols[1].tolist() == [cat.tags.ids["a"], cat.tags.ids["b"]] + [-1] * (RANK_TAGS - 2)
    assert cat.tag_cols[2].tolist() == [-1] * RANK_TAGS
    cat.put(item("two", tags=("c",)))  # replaced: the columns follow
    assert cat.tag_cols[1].tolist() == [cat.tags.ids["c"]] + [-1] * (RANK_TAGS - 1)
    assert cat.tag_count[1] == 1
