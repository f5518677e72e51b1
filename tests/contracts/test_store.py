"""The one conformance suite for the `Store` protocol (foryou/store/base.py).

Every backend must pass it. To add one (e.g. Redis), add an entry to `BACKENDS`: a function that opens
the backend's store for a given namespace (a fresh directory per test) and regions. Opening the same
namespace again must reach the same data, which is how durability across close/reopen is checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from foryou.catalog import STATS
from foryou.columns import EventColumns
from foryou.errors import Conflict, Stale
from foryou.store import SQLiteStore, Store, open_store
from foryou.types import EventRecord, ItemRecord, ServedRecord, UserRecord

REGIONS = ("us", "eu")
STATS_WIDTH = len(STATS)  # the public counters, then the internal ones


def _open_sqlite(namespace: Path, regions: Sequence[str]) -> Store:
    return open_store("sqlite:///" + str(namespace), regions)


class _MergingSQLite(SQLiteStore):
    """The log's look-ups (log_index.py) merged before each append: the newest batch is read from the
    tail, the earlier ones from the look-ups (the plain backend reads everything from the tail)."""

    def append_events(self, region: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.merge_log(region)
        return super().append_events(region, *args, **kwargs)


def _open_sqlite_merging(namespace: Path, regions: Sequence[str]) -> Store:
    return _MergingSQLite(namespace, regions)


def _open_memory(namespace: Path, regions: Sequence[str]) -> Store:
    return open_store("memory://" + str(namespace), regions)


BACKENDS: dict[str, Callable[[Path, Sequence[str]], Store]] = {
    "sqlite": _open_sqlite,
    "sqlite-merging": _open_sqlite_merging,
    "memory": _open_memory,
}


class Boom(Exception):
    """Raised from inside an input to check that a write is all-or-nothing."""


class ExplodingSeq(Sequence):  # type: ignore[type-arg]
    """A sequence that hands out its first entries and then raises while being read."""

    def __init__(self, good: list[object]) -> None:
        self.good = good

    def __len__(self) -> int:
        return len(self.good) + 1

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i < len(self.good):
            return self.good[i]
        if i == len(self.good):
            raise Boom("input failed half-way")
        raise IndexError(i)

    def __iter__(self) -> Iterator[object]:
        yield from self.good
        raise Boom("input failed half-way")


class ExplodingMap(Mapping):  # type: ignore[type-arg]
    """A mapping that yields its first entries and then raises while being read."""

    def __init__(self, good: dict[object, object]) -> None:
        self.good = good

    def __getitem__(self, k):  # type: ignore[no-untyped-def]
        return self.good[k]

    def __len__(self) -> int:
        return len(self.good) + 1

    def __iter__(self) -> Iterator[object]:
        yield from self.good
        raise Boom("input failed half-way")


def item(item_id: str, **kw: object) -> ItemRecord:
    fields: dict[str, object] = {"creator": "c-" + item_id, "duration_s": 15.0, "created_at": 1_700_000_000.0}
    fields.update(kw)
    return ItemRecord(id=item_id, **fields)  # type: ignore[arg-type]


def event(user: str, item_id: str, kind: str = "view", watch_s: float = 3.0, ts: float = 1_700_000_100.0,
          event_id: str | None = None, request_id: str | None = None) -> EventRecord:
    return EventRecord(user, item_id, kind, watch_s, ts, event_id, request_id)


def strip_seq(e: EventRecord) -> tuple[object, ...]:
    return (e.user, e.item, e.type, e.watch_s, e.ts, e.id, e.request_id)


def stats_row(base: float) -> list[float]:
    return [base + k for k in range(STATS_WIDTH)]


class Opener:
    """Opens (and reopens) one backend's store on one namespace; closes everything at the end."""

    def __init__(self, factory: Callable[[Path, Sequence[str]], Store], namespace: Path) -> None:
        self.factory = factory
        self.namespace = namespace
        self.opened: list[Store] = []

    def __call__(self, regions: Sequence[str] = REGIONS) -> Store:
        store = self.factory(self.namespace, regions)
        self.opened.append(store)
        return store

    def reopen(self, store: Store, regions: Sequence[str] = REGIONS) -> Store:
        store.close()
        self.opened.remove(store)
        return self(regions)

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()


@pytest.fixture(params=sorted(BACKENDS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    op = Opener(BACKENDS[request.param], tmp_path / "store")
    yield op
    op.close_all()


@pytest.fixture
def store(opener: Opener) -> Store:
    return opener()


class TestCatalogue:
    def test_regions_attribute(self, store: Store) -> None:
        assert tuple(store.regions) == REGIONS

    def test_get_item_unknown_is_none(self, store: Store) -> None:
        assert store.get_item("nope") is None
        store.upsert_items([item("a")])
        assert store.get_item("nope") is None
        assert store.get_item("A") is None  # ids are case-sensitive

    def test_round_trip_every_field(self, store: Store) -> None:
        full = ItemRecord(
            id="v1", creator="alice", duration_s=12.5, created_at=1_700_000_123.25, caption="héllo, world",
            tags=("cats", "funny pets", "x,y"), topic="animals", sound="s9", lang="pt-BR", regions=("us", "eu"),
            mature=True, down=True,
        )
        bare = ItemRecord(id="v2", creator="bob", duration_s=3.0, created_at=5.0)
        nowhere = item("v3", regions=())  # an empty region list (allowed nowhere) is not "everywhere"
        store.upsert_items([full, bare, nowhere])
        assert store.get_item("v1") == full
        assert store.get_item("v2") == bare
        got = store.get_item("v3")
        assert got is not None and got.regions == ()

    def test_iter_items_keeps_insertion_order_across_replacements(self, store: Store) -> None:
        store.upsert_items([item("c"), item("a"), item("b")])
        store.upsert_items([item("d")])
        store.upsert_items([item("a", creator="zed", tags=("new",), down=True), item("e")])
        items = list(store.iter_items())
        assert [i.id for i in items] == ["c", "a", "b", "d", "e"]
        replaced = items[1]
        assert (replaced.creator, replaced.tags, replaced.down) == ("zed", ("new",), True)
        assert store.get_item("a") == replaced

    def test_down_is_stored_as_given(self, store: Store) -> None:
        store.upsert_items([item("a", down=True)])
        assert store.get_item("a").down is True  # type: ignore[union-attr]
        store.upsert_items([item("a", down=False)])
        assert store.get_item("a").down is False  # type: ignore[union-attr]

    def test_repeated_id_in_one_batch_keeps_one_row_the_last(self, store: Store) -> None:
        store.upsert_items([item("a", creator="first"), item("b"), item("a", creator="last")])
        assert [i.id for i in store.iter_items()] == ["a", "b"]
        assert store.get_item("a").creator == "last"  # type: ignore[union-attr]

    def test_every_upsert_raises_the_catalogue_version(self, opener: Opener) -> None:
        store = opener()
        assert store.catalogue_version() == 0
        store.upsert_items([item("a")])
        first = store.catalogue_version()
        store.upsert_items([item("a", down=True)])  # a change to an item already there counts too
        second = store.catalogue_version()
        assert 0 < first < second
        with pytest.raises(Boom):
            store.upsert_items(ExplodingSeq([item("b")]))  # type: ignore[arg-type]
        assert store.catalogue_version() == second  # a failed upsert changes nothing
        assert opener.reopen(store).catalogue_version() == second

    def test_upsert_is_atomic(self, store: Store) -> None:
        store.upsert_items([item("keep", creator="old")])
        with pytest.raises(Boom):
            store.upsert_items(ExplodingSeq([item("new1"), item("keep", creator="changed")]))  # type: ignore[arg-type]
        assert [i.id for i in store.iter_items()] == ["keep"]
        assert store.get_item("keep").creator == "old"  # type: ignore[union-attr]
        assert store.get_item("new1") is None


class TestItemAggregates:
    def test_empty_store(self, store: Store) -> None:
        assert list(store.iter_item_stats()) == []
        for region in REGIONS:
            assert list(store.iter_trend(region)) == []
        assert store.item_watermarks() == {r: (0, 0) for r in REGIONS}
        assert store.get_meta("trend_t0") is None
        assert list(store.iter_coengagement()) == []
        assert list(store.legacy_coengagement(5)) == []

    def test_stats_overwrite_only_given_items(self, store: Store) -> None:
        store.save_item_aggregates({"a": stats_row(1), "b": stats_row(100)}, {}, {}, {}, {})
        store.save_item_aggregates({"a": stats_row(7)}, {}, {}, {}, {})
        stats = dict(store.iter_item_stats())
        assert stats == {"a": stats_row(7), "b": stats_row(100)}
        assert all(len(row) == STATS_WIDTH for row in stats.values())

    def test_stats_keep_fractions(self, store: Store) -> None:
        row = [0.5 * k + 0.125 for k in range(STATS_WIDTH)]
        store.save_item_aggregates({"a": row}, {}, {}, {}, {})
        assert dict(store.iter_item_stats())["a"] == pytest.approx(row)

    def test_trend_is_per_region_and_overwritten(self, store: Store) -> None:
        store.save_item_aggregates({}, {"us": {"a": 1.5, "b": 2.0}, "eu": {"a": 9.0}}, {}, {}, {})
        store.save_item_aggregates({}, {"us": {"a": 4.25}}, {}, {}, {})
        assert dict(store.iter_trend("us")) == {"a": 4.25, "b": 2.0}
        assert dict(store.iter_trend("eu")) == {"a": 9.0}

    def test_coengagement_rows_overwrite_only_given_items(self, store: Store) -> None:
        store.save_item_aggregates({}, {}, {"a": b"\x01\x02", "b": b"row-b"}, {}, {})
        store.save_item_aggregates({}, {}, {"a": b"\x00" * 160}, {}, {})
        assert dict(store.iter_coengagement()) == {"a": b"\x00" * 160, "b": b"row-b"}
        store.drop_legacy_coengagement()  # there is none: nothing else goes
        assert dict(store.iter_coengagement()) == {"a": b"\x00" * 160, "b": b"row-b"}

    def test_watermarks_per_region(self, store: Store) -> None:
        store.save_item_aggregates({}, {}, {}, {"us": (5, 7)}, {})
        assert store.item_watermarks() == {"us": (5, 7), "eu": (0, 0)}
        store.save_item_aggregates({}, {}, {}, {"eu": (1, 2)}, {})
        assert store.item_watermarks() == {"us": (5, 7), "eu": (1, 2)}
        store.save_item_aggregates({}, {}, {}, {"us": (9, 8), "eu": (3, 4)}, {})
        assert store.item_watermarks() == {"us": (9, 8), "eu": (3, 4)}

    def test_meta(self, store: Store) -> None:
        store.save_item_aggregates({}, {}, {}, {}, {"trend_t0": "123.5", "other": "x"})
        store.save_item_aggregates({}, {}, {}, {}, {"trend_t0": "200.0"})
        assert store.get_meta("trend_t0") == "200.0"
        assert store.get_meta("other") == "x"
        assert store.get_meta("missing") is None

    def test_save_is_atomic(self, store: Store) -> None:
        store.save_item_aggregates({"a": stats_row(1)}, {"us": {"a": 1.0}}, {"a": b"row-1"}, {"us": (1, 1)},
                                   {"k": "v1"})
        with pytest.raises(Boom):
            store.save_item_aggregates(
                {"a": stats_row(50), "z": stats_row(60)}, {"us": {"a": 5.0, "z": 6.0}},
                ExplodingMap({"a": b"row-2"}),  # type: ignore[arg-type]
                {"us": (9, 9)}, {"k": "v2"},
            )
        assert dict(store.iter_item_stats()) == {"a": stats_row(1)}
        assert dict(store.iter_trend("us")) == {"a": 1.0}
        assert dict(store.iter_coengagement()) == {"a": b"row-1"}
        assert store.item_watermarks()["us"] == (1, 1)
        assert store.get_meta("k") == "v1"


class TestUsers:
    def test_put_get_find(self, store: Store) -> None:
        assert store.get_user("us", "u1") is None
        assert store.find_user_region("u1") is None
        u1 = UserRecord("u1", "us", ("cats", "dogs"), "en", "18+", 1_700_000_000.5)
        u2 = UserRecord("u2", "eu", (), None, None, 3.0)
        store.put_user(u1)
        store.put_user(u2)
        assert store.get_user("us", "u1") == u1
        assert store.get_user("eu", "u2") == u2
        assert store.find_user_region("u1") == "us"
        assert store.find_user_region("u2") == "eu"
        assert store.find_user_region("u3") is None
        assert store.find_user_regions(["u3", "u2", "u1", "u2"]) == {"u1": "us", "u2": "eu"}
        assert store.find_user_regions([]) == {}
        many = [f"x{k}" for k in range(2000)]
        store.append_events("eu", [], [UserRecord(u, "eu", (), None, None, 1.0) for u in many[::3]])
        assert store.find_user_regions(many) == dict.fromkeys(many[::3], "eu")

    def test_iter_user_ids_per_region(self, store: Store) -> None:
        assert list(store.iter_user_ids("us")) == [] and list(store.iter_user_ids("eu")) == []
        store.put_user(UserRecord("u1", "us", (), None, None, 1.0))
        store.put_user(UserRecord("u2", "eu", (), None, None, 1.0))
        store.put_user(UserRecord("u1", "us", ("again",), None, None, 1.0))  # replaced: still one id
        store.append_events("us", [event("n1", "a"), event("n2", "b")],
                            [UserRecord("n1", "us", (), None, None, 2.0), UserRecord("n2", "us", (), None, None, 2.0)])
        store.append_events("us", [event("u1", "c")], [])  # events alone do not make users
        assert sorted(store.iter_user_ids("us")) == ["n1", "n2", "u1"]
        assert sorted(store.iter_user_ids("eu")) == ["u2"]

    def test_put_replaces(self, store: Store) -> None:
        store.put_user(UserRecord("u1", "us", ("cats",), "en", "13-17", 1.0))
        replaced = UserRecord("u1", "us", ("dogs", "birds"), "fr", None, 1.0, personalized=False)
        store.put_user(replaced)
        assert store.get_user("us", "u1") == replaced

    def test_user_only_in_its_region(self, store: Store) -> None:
        store.put_user(UserRecord("u2", "eu", ("x",), None, None, 3.0))
        assert store.get_user("us", "u2") is None

    def test_append_creates_new_users_in_that_region(self, store: Store) -> None:
        newbie = UserRecord("n1", "eu", (), None, None, 42.0)
        store.append_events("eu", [event("n1", "a")], [newbie])
        assert store.get_user("eu", "n1") == newbie
        assert store.get_user("us", "n1") is None
        assert store.find_user_region("n1") == "eu"


class TestEvents:
    def test_append_returns_increasing_seqs_per_region(self, store: Store) -> None:
        first = store.append_events("us", [event("u", "a"), event("u", "b"), event("v", "c")], [])
        second = store.append_events("us", [event("u", "d")], [])
        other = store.append_events("eu", [event("w", "a"), event("w", "b")], [])
        third = store.append_events("us", [event("v", "e"), event("v", "f")], [])
        assert len(first) == 3 and len(second) == 1 and len(other) == 2 and len(third) == 2
        us = first + second + third
        assert us == sorted(us) and len(set(us)) == len(us)
        assert all(s > 0 for s in us + other)
        assert other == sorted(other) and len(set(other)) == 2
        assert store.append_events("us", [], []) == []

    def test_events_after(self, store: Store) -> None:
        batch = [event("u", "a", "view", 1.5, 10.0, "e1", "r1"), event("u", "b", "like", 0.0, 11.0),
                 event("v", "a", "report", 0.0, 12.0, "e3")]
        seqs = store.append_events("us", batch, [])
        seqs += store.append_events("us", [event("v", "c", "share", 0.0, 13.0)], [])
        store.append_events("eu", [event("w", "z")], [])
        everything = list(store.events_after("us", 0))
        assert [e.seq for e in everything] == seqs
        assert [strip_seq(e) for e in everything] == [strip_seq(e) for e in batch] + [
            ("v", "c", "share", 0.0, 13.0, None, None)]
        assert [e.seq for e in store.events_after("us", seqs[1])] == seqs[2:]
        assert list(store.events_after("us", seqs[-1])) == []
        assert [e.item for e in store.events_after("eu", 0)] == ["z"]
        assert [e.seq for e in store.events_after("us", 0, limit=2)] == seqs[:2]  # a follower's page
        assert [e.seq for e in store.events_after("us", seqs[1], limit=5)] == seqs[2:]
        assert list(store.events_after("us", 0, limit=0)) == []

    def test_every_event_type_round_trips(self, store: Store) -> None:
        kinds = ("view", "like", "comment", "share", "follow", "not_interested", "report")
        store.append_events("us", [event("u", f"i{k}", kind, float(k)) for k, kind in enumerate(kinds)], [])
        got = list(store.events_after("us", 0))
        assert [(e.type, e.watch_s, e.item) for e in got] == [(kind, float(k), f"i{k}") for k, kind in enumerate(kinds)]

    def test_user_events(self, store: Store) -> None:
        store.append_events("us", [event("u", "a"), event("v", "b"), event("u", "c", "like")], [])
        store.append_events("us", [event("u", "d", "follow")], [])
        store.append_events("eu", [event("u", "zz")], [])  # same id in another region: not this user's rows
        got = store.user_events("us", "u")
        assert [(e.item, e.type) for e in got] == [("a", "view"), ("c", "like"), ("d", "follow")]
        assert [e.seq for e in got] == sorted(e.seq for e in got) and all(e.seq > 0 for e in got)
        assert [e.item for e in store.user_events("us", "v")] == ["b"]
        assert store.user_events("us", "nobody") == []
        assert [e.item for e in store.user_events("us", "u", after=got[0].seq)] == ["c", "d"]  # what a state lacks
        assert store.user_events("us", "u", after=got[-1].seq) == []

    def test_known_event_ids_are_per_user_and_region(self, store: Store) -> None:
        store.append_events("us", [event("u", "a", event_id="k1"), event("u", "b"), event("u", "c", event_id="k2")],
                            [])
        store.append_events("eu", [event("w", "a", event_id="k3")], [])
        asked = [("u", "k1"), ("u", "k2"), ("u", "k3"), ("w", "k1"), ("w", "k3"), ("u", "k4")]
        assert store.known_event_ids("us", asked) == {("u", "k1"), ("u", "k2")}
        assert store.known_event_ids("eu", asked) == {("w", "k3")}  # another region's keys are not found
        assert store.known_event_ids("us", []) == set()

    def test_known_event_ids_many(self, store: Store) -> None:
        store.append_events("us", [event("u", "a", event_id=f"id{k}") for k in range(0, 3000, 2)], [])
        asked = [("u", f"id{k}") for k in range(3000)]
        assert store.known_event_ids("us", asked) == {("u", f"id{k}") for k in range(0, 3000, 2)}

    def test_forget_event_ids_by_acceptance_time(self, store: Store) -> None:
        # keys are remembered from when they were accepted, whatever the events' own timestamps
        store.append_events("us", [event("u", "a", ts=9_000.0, event_id="old-us")], [], accepted_at=100.0)
        store.append_events("us", [event("u", "b", ts=1.0, event_id="edge")], [], accepted_at=200.0)
        store.append_events("us", [event("u", "c", ts=2.0, event_id="new-us"), event("u", "d")], [],
                            accepted_at=300.0)
        store.append_events("eu", [event("w", "a", ts=5_000.0, event_id="old-eu"), event("w", "b")], [],
                            accepted_at=50.0)
        assert store.forget_event_ids(200.0) == 2
        asked = [("u", "old-us"), ("u", "edge"), ("u", "new-us")]
        assert store.known_event_ids("us", asked) == {("u", "edge"), ("u", "new-us")}
        assert store.known_event_ids("eu", [("w", "old-eu")]) == set()
        assert store.forget_event_ids(200.0) == 0
        assert store.forget_event_ids(300.5) == 2
        assert store.known_event_ids("us", asked) == set()
        # the events themselves stay
        assert len(list(store.events_after("us", 0))) == 4
        assert len(list(store.events_after("eu", 0))) == 2

    def test_acceptance_time_defaults_to_the_wall_clock(self, store: Store) -> None:
        started = time.time()
        store.append_events("us", [event("u", "a", ts=1.0, event_id="k")], [])
        assert store.forget_event_ids(started - 60) == 0
        assert store.known_event_ids("us", [("u", "k")]) == {("u", "k")}
        assert store.forget_event_ids(time.time() + 60) == 1
        assert store.known_event_ids("us", [("u", "k")]) == set()

    def test_append_is_atomic(self, store: Store) -> None:
        store.append_events("us", [event("u", "a", event_id="k0")], [])
        with pytest.raises(Boom):
            store.append_events("us", ExplodingSeq([event("u", "b", event_id="k1")]),  # type: ignore[arg-type]
                                [UserRecord("n1", "us", (), None, None, 1.0)])
        assert [e.item for e in store.events_after("us", 0)] == ["a"]
        assert store.known_event_ids("us", [("u", "k0"), ("u", "k1")]) == {("u", "k0")}
        assert store.get_user("us", "n1") is None
        assert store.find_user_region("n1") is None


class TestServed:
    def test_record_and_served_after(self, store: Store) -> None:
        rows = [ServedRecord("u", "a", "r1", 10.0), ServedRecord("u", "b", "r1", 10.0)]
        seqs = store.record_served("us", rows)
        seqs += store.record_served("us", [ServedRecord("v", "a", "r2", 11.5)])
        store.record_served("eu", [ServedRecord("w", "q", "r3", 12.0)])
        assert len(seqs) == 3 and seqs == sorted(seqs) and len(set(seqs)) == 3
        got = list(store.served_after("us", 0))
        assert [(s.user, s.item, s.request_id, s.ts) for s in got] == [
            ("u", "a", "r1", 10.0), ("u", "b", "r1", 10.0), ("v", "a", "r2", 11.5)]
        assert [s.seq for s in got] == seqs
        assert [s.item for s in store.served_after("us", seqs[0])] == ["b", "a"]
        assert list(store.served_after("us", seqs[-1])) == []
        assert [s.item for s in store.served_after("eu", 0)] == ["q"]
        assert store.record_served("us", []) == []

    def test_served_rows_keep_the_variant_that_served_them(self, opener: Opener, store: Store) -> None:
        store.record_served("us", [ServedRecord("u", "a", "r1", 1.0, variant="more-explore"),
                                   ServedRecord("u", "b", "r2", 2.0)])
        again = opener.reopen(store)
        assert [(s.item, s.variant) for s in again.served_after("us", 0)] == [("a", "more-explore"), ("b", "")]
        assert [s.variant for s in again.user_served("us", "u")] == ["more-explore", ""]

    def test_excluded_items_are_served_or_viewed(self, store: Store) -> None:
        store.record_served("us", [ServedRecord("u", "s1", "r", 1.0), ServedRecord("u", "s2", "r", 1.0),
                                   ServedRecord("v", "s3", "r", 1.0)])
        store.append_events("us", [event("u", "v1", "view", 0.5), event("u", "l1", "like"),
                                   event("u", "s1", "view"), event("v", "v2", "view"),
                                   event("u", "n1", "not_interested")], [])
        store.record_served("eu", [ServedRecord("u", "e1", "r", 1.0)])
        store.append_events("eu", [event("u", "e2")], [])
        assert store.excluded_items("us", "u") == {"s1", "s2", "v1"}
        assert store.excluded_items("us", "v") == {"s3", "v2"}
        assert store.excluded_items("eu", "u") == {"e1", "e2"}
        assert store.excluded_items("us", "nobody") == set()

    def test_recent_served(self, store: Store) -> None:
        assert store.recent_served("us", "u", 5) == []
        store.record_served("us", [ServedRecord("u", "a", "r1", 5.0), ServedRecord("u", "b", "r1", 5.0)])
        store.record_served("us", [ServedRecord("v", "c", "r2", 6.0)])
        assert store.recent_served("us", "u", 5) == ["b", "a"]
        store.record_served("us", [ServedRecord("u", "d", "r3", 1.0)])  # the latest row, not the latest ts
        assert store.recent_served("us", "u", 2) == ["d", "b"]
        assert store.recent_served("us", "v", 5) == ["c"]
        assert store.recent_served("eu", "u", 5) == []
        store.append_events("us", [event("u", "z", "view")], [])  # a view is not a serve
        assert store.recent_served("us", "u", 1) == ["d"]

    def test_delete_events_keeps_the_newest_and_the_sequence(self, store: Store) -> None:
        seqs = store.append_events("us", [event("u", f"i{k}", ts=float(k)) for k in range(5)], [])
        assert store.delete_events("us", 3.0, seqs[-1]) == 3  # ts 0, 1, 2
        assert [e.ts for e in store.events_after("us", 0)] == [3.0, 4.0]
        assert store.delete_events("us", 100.0, seqs[3]) == 1  # only through seq 4
        assert store.delete_events("us", 100.0, seqs[-1]) == 0  # never the newest
        assert store.append_events("us", [event("u", "z")], []) == [seqs[-1] + 1]
        assert store.delete_events("eu", 100.0, 100) == 0

    def test_erase_user_deletes_only_that_users_rows(self, store: Store) -> None:
        events = [event("u", "a", event_id="k1"), event("u", "b", "like"), event("v", "a", event_id="k2")]
        store.append_events("eu", events, [UserRecord("u", "eu", (), None, None, 1.0),
                                           UserRecord("v", "eu", (), None, None, 1.0)])
        store.record_served("eu", [ServedRecord("u", "c", "r", 2.0), ServedRecord("v", "c", "r", 2.0)])
        store.save_user_states("eu", {"u": b"s", "v": b"t"}, 3)
        store.put_controls("eu", "u", b"c")
        store.save_model_rows("eu", "user", [("u", b"row"), ("v", b"row")], [])
        store.save_model_rows("eu", "refreshed", [("u", b"12")], [])  # any model table's row of the user
        deleted = store.erase_user("eu", "u", ["k1"])
        assert deleted == {"profile": 1, "events": 2, "served": 1, "interest_state": 1, "controls": 1,
                           "model_rows": 2, "event_ids": 1}
        assert dict(store.iter_model_rows("eu", "refreshed")) == {}
        assert store.get_user("eu", "u") is None and store.user_events("eu", "u") == []
        assert store.user_served("eu", "u") == [] and store.load_user_state("eu", "u") is None
        assert store.get_controls("eu", "u") is None and [k for k, _ in store.iter_model_rows("eu", "user")] == ["v"]
        assert store.known_event_ids("eu", [("u", "k1"), ("v", "k2")]) == {("v", "k2")}
        assert len(store.user_events("eu", "v")) == 1 and store.load_user_state("eu", "v") == b"t"

    def test_a_known_or_repeated_event_id_is_a_conflict_and_appends_nothing(self, store: Store) -> None:
        store.append_events("us", [event("u", "a", event_id="k1")], [])
        for batch in ([event("u", "b", event_id="k2"), event("u", "c", event_id="k1")],  # held already
                      [event("u", "b", event_id="k3"), event("u", "c", event_id="k3")]):  # twice in one batch
            with pytest.raises(Conflict):
                store.append_events("us", batch, [UserRecord("new", "us", (), None, None, 1.0)])
        assert [e.item for e in store.events_after("us", 0)] == ["a"] and store.get_user("us", "new") is None
        assert store.known_event_ids("us", [("u", "k2"), ("u", "k3")]) == set()

    def test_append_new_events_drops_known_and_repeated_ids_in_its_transaction(self, store: Store) -> None:
        """The append that ingestion uses: a key held, or repeated in the batch, is dropped (the first of
        a batch is kept), the rest appended in order at consecutive seqs, and only users with an appended
        event created, each with its version raised once and its newest seq."""
        first = store.append_events("us", [event("u", "a", event_id="k1")],
                                    [UserRecord("u", "us", (), None, None, 1.0)])
        batch = EventColumns.of([event("u", "b", event_id="k1"), event("v", "c", event_id="k2"), event("u", "d"),
                                 event("v", "e", event_id="k2"), event("w", "f", event_id="k1"),
                                 event("x", "g", event_id="k1")])
        new = [UserRecord(u, "us", (), None, None, 1.0) for u in ("v", "w", "x")]
        appended = store.append_new_events("us", batch, new)
        assert list(appended.kept) == [1, 2, 4, 5] and appended.first == first[0] + 1
        got = list(store.events_after("us", first[0]))
        assert [(e.user, e.item, e.seq) for e in got] == [
            ("v", "c", appended.first), ("u", "d", appended.first + 1), ("w", "f", appended.first + 2),
            ("x", "g", appended.first + 3)]
        assert {u: store.get_user("us", u) is not None for u in "uvwx"} == dict.fromkeys("uvwx", True)
        versions = store.user_versions("us", ["u", "v", "w"])
        assert versions["u"] == 2 and versions["v"] == 1 and versions["w"] == 1
        assert store.get_user("us", "v").last_event == appended.first  # type: ignore[union-attr]
        again = store.append_new_events("us", batch, new)  # every key held now; "d" has none: taken again
        assert list(again.kept) == [2]
        held = store.append_new_events("us", EventColumns.of([event("v", "a", event_id="k2")]),
                                       [UserRecord("y", "us", (), None, None, 1.0)])
        assert list(held.kept) == [] and store.get_user("us", "y") is None
        own = store.append_new_events("us", EventColumns.of([event("q", "a", event_id="k2")]),
                                      [UserRecord("q", "us", (), None, None, 1.0)])
        assert list(own.kept) == [0] and store.get_user("us", "q") is not None  # another user's key: its own

    def test_records_read_are_copies(self, store: Store) -> None:
        store.upsert_items([item("a")])
        store.put_user(UserRecord("u", "us", ("cats",), None, None, 1.0))
        store.append_events("us", [event("u", "a")], [])
        got_item, got_user, got_event = store.get_item("a"), store.get_user("us", "u"), store.user_events("us", "u")[0]
        assert got_item is not None and got_user is not None
        got_item.down, got_user.interests, got_event.watch_s = True, ("dogs",), 99.0  # changed, never written
        assert store.get_item("a").down is False  # type: ignore[union-attr]
        assert store.get_user("us", "u").interests == ("cats",)  # type: ignore[union-attr]
        assert store.user_events("us", "u")[0].watch_s == 3.0

    def test_seqs_are_never_handed_out_twice_after_an_erasure(self, opener: Opener) -> None:
        store = opener()
        store.append_events("us", [event("keep", "a")], [])
        erased = store.append_events("us", [event("gone", "a"), event("gone", "b")], [])
        served = store.record_served("us", [ServedRecord("gone", "c", "r", 1.0)])
        store.erase_user("us", "gone", [])  # the newest events and served rows go
        assert store.append_events("us", [event("next", "a")], [])[0] > erased[-1]
        assert store.record_served("us", [ServedRecord("next", "c", "r", 2.0)])[0] > served[-1]
        store.erase_user("us", "next", [])
        again = opener.reopen(store)  # ... and across a reopen
        assert again.append_events("us", [event("later", "a")], [])[0] > erased[-1] + 1
        assert again.record_served("us", [ServedRecord("later", "c", "r", 3.0)])[0] > served[-1] + 1

    def test_tombstones(self, store: Store) -> None:
        assert list(store.iter_tombstones()) == []
        store.save_tombstone("h1", 5.0)
        store.save_tombstone("h1", 7.0)
        store.save_tombstone("h2", 6.0)
        assert sorted(store.iter_tombstones()) == [("h1", 7.0), ("h2", 6.0)]

    def test_user_served(self, store: Store) -> None:
        assert store.user_served("us", "u") == []
        store.record_served("us", [ServedRecord("u", "a", "r1", 5.0), ServedRecord("v", "b", "r1", 5.0)])
        store.record_served("us", [ServedRecord("u", "c", "r2", 1.0)])
        got = store.user_served("us", "u")
        assert [(r.item, r.request_id, r.ts) for r in got] == [("a", "r1", 5.0), ("c", "r2", 1.0)]
        assert got[0].seq < got[1].seq and store.user_served("eu", "u") == []
        assert [r.item for r in store.user_served("us", "u", after=got[0].seq)] == ["c"]  # what a saved set lacks

    def test_controls_are_per_user_and_region(self, store: Store) -> None:
        assert store.get_controls("us", "u") is None
        store.put_controls("us", "u", b"one")
        store.put_controls("us", "u", b"two")
        store.put_controls("eu", "v", b"three")
        assert store.get_controls("us", "u") == b"two"
        assert store.get_controls("eu", "u") is None
        assert store.get_controls("us", "v") is None
        assert store.get_controls("eu", "v") == b"three"

    def test_record_served_is_atomic(self, store: Store) -> None:
        with pytest.raises(Boom):
            store.record_served("us", ExplodingSeq([ServedRecord("u", "a", "r", 1.0)]))  # type: ignore[arg-type]
        assert list(store.served_after("us", 0)) == []
        assert store.excluded_items("us", "u") == set()


class TestUserVersions:
    """Every write about a user raises the user's version by one, atomically with it: how a server
    that cached the user knows whether another server wrote since (the compare-and-set of a feed)."""

    def test_every_write_about_a_user_raises_its_version_by_one(self, store: Store) -> None:
        assert store.user_versions("us", ["u", "v"]) == {}
        store.put_user(UserRecord("u", "us", (), None, None, 1.0))
        assert store.user_versions("us", ["u", "v"]) == {"u": 1}
        store.put_user(UserRecord("u", "us", ("cats",), None, None, 1.0, version=99))  # the record's own is ignored
        assert store.user_versions("us", ["u"]) == {"u": 2}
        seqs = store.append_events("us", [event("u", "a"), event("u", "b"), event("v", "a")],
                                   [UserRecord("v", "us", (), None, None, 1.0)])
        assert store.user_versions("us", ["u", "v"]) == {"u": 3, "v": 1}  # once a batch, a new user's first
        got = store.get_users("us", ["u", "v"])
        assert (got["u"].version, got["u"].last_event, got["v"].last_event) == (3, seqs[1], seqs[2])
        store.record_served("us", [ServedRecord("u", "c", "r", 2.0), ServedRecord("u", "d", "r", 2.0)])
        store.put_controls("us", "v", b"c")
        assert store.user_versions("us", ["u", "v"]) == {"u": 4, "v": 2}
        assert store.user_versions("eu", ["u", "v"]) == {}  # a region's users only

    def test_a_served_compare_and_set_records_nothing_when_the_version_moved(self, store: Store) -> None:
        store.put_user(UserRecord("u", "us", (), None, None, 1.0))
        store.record_served("us", [ServedRecord("u", "a", "r1", 2.0)], expect={"u": 1})
        assert store.user_versions("us", ["u"]) == {"u": 2}
        with pytest.raises(Stale):  # a server that read version 1 and did not see the write since
            store.record_served("us", [ServedRecord("u", "b", "r2", 3.0)], expect={"u": 1})
        with pytest.raises(Stale):  # nor a user never stored
            store.record_served("us", [ServedRecord("w", "b", "r2", 3.0)], expect={"w": 1})
        assert [r.item for r in store.served_after("us", 0)] == ["a"]
        assert store.user_versions("us", ["u"]) == {"u": 2}
        store.record_served("us", [ServedRecord("u", "b", "r3", 3.0)], expect={"u": 2})
        assert store.excluded_items("us", "u") == {"a", "b"} and store.user_versions("us", ["u"]) == {"u": 3}

    def test_a_refused_append_leaves_versions_as_they_were(self, store: Store) -> None:
        store.append_events("us", [event("u", "a", event_id="k")], [UserRecord("u", "us", (), None, None, 1.0)])
        with pytest.raises(Conflict):
            store.append_events("us", [event("u", "b", event_id="k")], [])
        with pytest.raises(Boom):
            store.append_events("us", ExplodingSeq([event("u", "c")]), [])  # type: ignore[arg-type]
        assert store.user_versions("us", ["u"]) == {"u": 1}

    def test_an_erased_users_version_goes_with_them(self, opener: Opener, store: Store) -> None:
        store.append_events("us", [event("u", "a")], [UserRecord("u", "us", (), None, None, 1.0)])
        store.put_controls("us", "u", b"c")
        store.erase_user("us", "u", [])
        assert store.user_versions("us", ["u"]) == {}
        store.put_user(UserRecord("u", "us", (), None, None, 5.0))
        assert store.user_versions("us", ["u"]) == {"u": 1}
        assert opener.reopen(store).user_versions("us", ["u"]) == {"u": 1}


class TestUserStates:
    def test_save_load_and_watermark(self, store: Store) -> None:
        assert store.load_user_state("us", "u") is None
        assert store.user_state_watermark("us") == 0
        blob = bytes(range(256))
        store.save_user_states("us", {"u": blob, "v": b"{}"}, 5)
        assert store.load_user_state("us", "u") == blob
        assert store.load_user_state("us", "v") == b"{}"
        assert store.user_state_watermark("us") == 5
        assert store.user_state_watermark("eu") == 0
        assert store.load_user_state("eu", "u") is None
        store.save_user_states("us", {"u": b"second"}, 9)
        assert store.load_user_state("us", "u") == b"second"
        assert store.load_user_state("us", "v") == b"{}"
        assert store.user_state_watermark("us") == 9
        store.save_user_states("us", {}, 12)  # nothing dirty: the watermark still moves
        assert store.user_state_watermark("us") == 12
        assert store.load_user_state("us", "u") == b"second"

    def test_save_is_atomic(self, store: Store) -> None:
        store.save_user_states("us", {"u": b"one"}, 3)
        with pytest.raises(Boom):
            store.save_user_states("us", ExplodingMap({"u": b"two", "w": b"three"}), 8)  # type: ignore[arg-type]
        assert store.load_user_state("us", "u") == b"one"
        assert store.load_user_state("us", "w") is None
        assert store.user_state_watermark("us") == 3


def _fill(store: Store) -> dict[str, object]:
    """Write some of everything; returns the seqs handed out."""
    store.upsert_items([item("a", tags=("t1",), regions=("us",)), item("b", mature=True), item("c", down=True)])
    store.put_user(UserRecord("u1", "us", ("t1",), "en", "18+", 10.0))
    store.put_controls("us", "u1", b"c1")
    ev_us = store.append_events("us", [event("u1", "a", event_id="k1"), event("u1", "b", "like")],
                                [UserRecord("u1", "us", ("t1",), "en", "18+", 10.0)])
    ev_eu = store.append_events("eu", [event("u2", "c", "view", 9.0, event_id="k2")],
                                [UserRecord("u2", "eu", (), None, None, 20.0)])
    sv_us = store.record_served("us", [ServedRecord("u1", "c", "r1", 30.0)])
    sv_eu = store.record_served("eu", [ServedRecord("u2", "a", "r2", 31.0)])
    store.save_item_aggregates({"a": stats_row(1), "b": stats_row(2)}, {"us": {"a": 2.0}, "eu": {"b": 3.0}},
                               {"a": b"row-a", "b": b"row-b"}, {"us": (ev_us[-1], sv_us[-1])},
                               {"trend_t0": "99.5"})
    store.save_user_states("us", {"u1": b"state-1"}, ev_us[-1])
    store.save_user_states("eu", {"u2": b"state-2"}, ev_eu[-1])
    return {"ev_us": ev_us, "ev_eu": ev_eu, "sv_us": sv_us, "sv_eu": sv_eu}


def _snapshot(store: Store) -> dict[str, object]:
    return {
        "items": list(store.iter_items()),
        "stats": dict(store.iter_item_stats()),
        "trend": {r: dict(store.iter_trend(r)) for r in REGIONS},
        "coeng": dict(store.iter_coengagement()),
        "marks": store.item_watermarks(),
        "meta": store.get_meta("trend_t0"),
        "users": [store.get_user("us", "u1"), store.get_user("eu", "u2"), store.find_user_region("u2")],
        "user_ids": {r: sorted(store.iter_user_ids(r)) for r in REGIONS},
        "events": {r: list(store.events_after(r, 0)) for r in REGIONS},
        "user_events": store.user_events("us", "u1"),
        "served": {r: list(store.served_after(r, 0)) for r in REGIONS},
        "excluded": [store.excluded_items("us", "u1"), store.excluded_items("eu", "u2")],
        "recent_served": [store.recent_served("us", "u1", 9), store.recent_served("eu", "u2", 9)],
        "controls": store.get_controls("us", "u1"),
        "known": [store.known_event_ids(r, [("u1", "k1"), ("u2", "k2"), ("u1", "k3")]) for r in REGIONS],
        "states": [store.load_user_state("us", "u1"), store.load_user_state("eu", "u2")],
        "state_marks": [store.user_state_watermark(r) for r in REGIONS],
        "versions": [store.user_versions("us", ["u1"]), store.user_versions("eu", ["u2"])],
        "last_events": [u.last_event if u else None for u in (store.get_user("us", "u1"), store.get_user("eu", "u2"))],
    }


class TestRegionIsolation:
    def test_a_users_rows_live_only_in_its_region(self, store: Store) -> None:
        store.append_events("eu", [event("eve", "a", event_id="ke"), event("eve", "b", "like")],
                            [UserRecord("eve", "eu", (), None, None, 1.0)])
        store.record_served("eu", [ServedRecord("eve", "c", "r", 2.0)])
        store.save_user_states("eu", {"eve": b"s"}, 2)
        assert store.get_user("us", "eve") is None
        assert list(store.iter_user_ids("us")) == []
        assert store.user_events("us", "eve") == []
        assert list(store.events_after("us", 0)) == []
        assert list(store.served_after("us", 0)) == []
        assert store.excluded_items("us", "eve") == set()
        assert store.recent_served("us", "eve", 9) == []
        assert store.load_user_state("us", "eve") is None
        assert store.user_state_watermark("us") == 0
        # ... and all of it is in the user's region
        assert store.find_user_region("eve") == "eu"
        assert [e.item for e in store.user_events("eu", "eve")] == ["a", "b"]
        assert store.excluded_items("eu", "eve") == {"a", "c"}
        assert store.load_user_state("eu", "eve") == b"s"


class TestDurability:
    def test_reopen_keeps_everything(self, opener: Opener) -> None:
        store = opener()
        _fill(store)
        before = _snapshot(store)
        reopened = opener.reopen(store)
        assert _snapshot(reopened) == before
        # the snapshot is not trivially empty
        assert len(before["items"]) == 3  # type: ignore[arg-type]
        assert before["known"] == [{("u1", "k1")}, {("u2", "k2")}]
        assert before["user_ids"] == {"us": ["u1"], "eu": ["u2"]}
        assert [r[0] for r in before["recent_served"]] == ["c", "a"]  # type: ignore[index]
        assert before["controls"] == b"c1"

    def test_seqs_keep_increasing_after_reopen(self, opener: Opener) -> None:
        store = opener()
        seqs = _fill(store)
        reopened = opener.reopen(store)
        ev = reopened.append_events("us", [event("u1", "c")], [])
        sv = reopened.record_served("us", [ServedRecord("u1", "b", "r9", 40.0)])
        assert ev[0] > max(seqs["ev_us"])  # type: ignore[call-overload]
        assert sv[0] > max(seqs["sv_us"])  # type: ignore[call-overload]
        assert [e.seq for e in reopened.events_after("us", max(seqs["ev_us"]))] == ev  # type: ignore[call-overload]

    def test_reopen_with_an_added_region(self, opener: Opener) -> None:
        store = opener(("us",))
        store.put_user(UserRecord("u1", "us", (), None, None, 1.0))
        store.append_events("us", [event("u1", "a")], [])
        reopened = opener.reopen(store, ("us", "eu"))
        assert reopened.find_user_region("u1") == "us"
        assert reopened.item_watermarks() == {"us": (0, 0), "eu": (0, 0)}
        assert list(reopened.events_after("eu", 0)) == []
        assert len(list(reopened.events_after("us", 0))) == 1


# -- learned models ------------------------------------------------------------------------------------------


def test_model_rows_upsert_delete_and_survive_reopen(opener: Opener, store: Store) -> None:
    store.save_model_rows(None, "item", [("a", b"\x01"), ("b", b"\x02")], [])
    store.save_model_rows(None, "item", [("a", b"\x03")], ["b", "never-saved"])
    store.save_model_rows("us", "user", [("u1", b"us-row")], [])
    store.save_model_rows("eu", "user", [("u2", b"eu-row")], [])
    again = opener.reopen(store)
    assert dict(again.iter_model_rows(None, "item")) == {"a": b"\x03"}
    assert dict(again.iter_model_rows(None, "creator")) == {}  # tables are separate
    # Users' rows stay in their region's store, like all user data.
    assert dict(again.iter_model_rows("us", "user")) == {"u1": b"us-row"}
    assert dict(again.iter_model_rows("eu", "user")) == {"u2": b"eu-row"}


def test_model_rows_by_key_and_a_page_at_a_time(store: Store) -> None:
    keys = [f"u{k:04d}" for k in range(1500)]
    store.save_model_rows("us", "user", [(k, k.encode()) for k in keys], [])
    store.save_model_rows("eu", "user", [("u0001", b"eu")], [])
    store.save_model_rows("us", "creator", [("u0002", b"not a user row")], [])
    assert store.get_model_rows("us", "user", ["u0001", "u1499", "nobody"]) == {"u0001": b"u0001", "u1499": b"u1499"}
    assert store.get_model_rows("eu", "user", ["u0001", "u0002"]) == {"u0001": b"eu"}
    assert store.get_model_rows("us", "user", keys) == {k: k.encode() for k in keys}  # past a bound-parameter limit
    walked, after = [], ""
    while page := store.model_rows_after("us", "user", after, 400):
        assert len(page) <= 400
        walked += page
        after = page[-1][0]
    assert walked == [(k, k.encode()) for k in keys]  # each row once, in key order
    assert store.model_rows_after("us", "user", "u1499", 10) == []


def test_model_rows_are_all_or_nothing(store: Store) -> None:
    store.save_model_rows(None, "item", [("a", b"old")], [])
    with pytest.raises(Boom):
        store.save_model_rows(None, "item", ExplodingSeq([("a", b"new"), ("b", b"new")]), [])  # type: ignore[arg-type]
    assert dict(store.iter_model_rows(None, "item")) == {"a": b"old"}


def test_model_blobs_replace_and_survive_reopen(opener: Opener, store: Store) -> None:
    assert store.get_model_blob("model") is None
    store.save_model_blob("model", b"v1")
    store.save_model_blob("model", b"v2" * 1000)
    assert opener.reopen(store).get_model_blob("model") == b"v2" * 1000


def test_model_blobs_are_deleted_by_key(opener: Opener, store: Store) -> None:
    for key in ("a", "b", "c"):
        store.save_model_blob(key, key.encode())
    store.delete_model_blobs(["a", "c", "never"])
    again = opener.reopen(store)
    assert [again.get_model_blob(k) for k in ("a", "b", "c")] == [None, b"b", None]


def test_drop_model_forgets_every_row_and_blob(opener: Opener, store: Store) -> None:
    store.save_model_rows(None, "item", [("a", b"\x01")], [])
    store.save_model_rows("us", "user", [("u1", b"us-row")], [])
    store.save_model_rows("eu", "user", [("u2", b"eu-row")], [])
    store.save_model_blob("model", b"v1")
    store.append_model_delta(3, b"d3")
    store.drop_model()
    again = opener.reopen(store)
    assert again.get_model_blob("model") is None
    assert again.model_deltas(0) == []
    for region, table in ((None, "item"), ("us", "user"), ("eu", "user")):
        assert dict(again.iter_model_rows(region, table)) == {}
    again.save_model_rows(None, "item", [("b", b"\x02")], [])  # and is usable after
    assert dict(again.iter_model_rows(None, "item")) == {"b": b"\x02"}


def test_model_deltas_in_version_order_and_kept_in_a_range(opener: Opener, store: Store) -> None:
    assert store.model_deltas(0) == []
    for version in (7, 3, 12, 9):
        store.append_model_delta(version, f"d{version}".encode() * 100)
    store.append_model_delta(12, b"again")  # a version published again replaces its delta
    assert [v for v, _ in store.model_deltas(0)] == [3, 7, 9, 12]
    assert store.model_deltas(7) == [(9, b"d9" * 100), (12, b"again")]
    store.keep_model_deltas(3, 9)  # a snapshot holds 3; 12 was never published
    again = opener.reopen(store)
    assert again.model_deltas(0) == [(7, b"d7" * 100), (9, b"d9" * 100)]
    assert again.model_deltas(9) == []


def test_clearing_one_model_table_leaves_the_others(store: Store) -> None:
    store.save_model_rows(None, "item", [("a", b"1"), ("b", b"1")], [], version=5)
    store.save_model_rows(None, "tag", [("t", b"1")], [], version=5)
    store.save_model_rows("us", "item", [("x", b"1")], [], version=5)
    store.clear_model_rows(None, "item")
    assert dict(store.iter_model_rows(None, "item")) == {}
    assert store.model_rows_since(None, "item", 0, 10) == []
    assert dict(store.iter_model_rows(None, "tag")) == {"t": b"1"}
    assert dict(store.iter_model_rows("us", "item")) == {"x": b"1"}


def test_model_rows_by_version_for_a_server_to_take_in(opener: Opener, store: Store) -> None:
    store.save_model_rows(None, "item", [("a", b"1"), ("b", b"1")], [], version=5)
    store.save_model_rows(None, "item", [("b", b"2"), ("c", b"2")], [], version=9)
    store.save_model_rows(None, "tag", [("t", b"9")], [], version=9)
    assert store.model_rows_since(None, "item", 0, 5) == [("a", b"1")]  # b was saved again, at 9
    assert sorted(store.model_rows_since(None, "item", 5, 9)) == [("b", b"2"), ("c", b"2")]
    assert store.model_rows_since(None, "item", 9, 20) == []
    assert store.model_rows_since(None, "tag", 5, 9) == [("t", b"9")]
    again = opener.reopen(store)
    assert sorted(again.model_rows_since(None, "item", 5, 9)) == [("b", b"2"), ("c", b"2")]
    again.save_model_rows(None, "item", [], ["c"], version=10)
    assert again.model_rows_since(None, "item", 5, 10) == [("b", b"2")]


def test_a_guarded_save_leaves_out_users_gone_or_started_afresh(store: Store) -> None:
    store.append_events("us", [], [UserRecord(u, "us", (), None, None, 1.0) for u in ("u1", "u2")])
    store.save_model_rows("us", "refreshed", [("u2", b"7")], [])
    left_out = store.save_model_rows("us", "user", [("u1", b"r1"), ("u2", b"r2"), ("ghost", b"r3")], [],
                                     version=3, guard="refreshed")
    assert sorted(left_out) == ["ghost", "u2"]
    assert dict(store.iter_model_rows("us", "user")) == {"u1": b"r1"}
    store.erase_user("us", "u1", [])
    assert store.save_model_rows("us", "user", [("u1", b"again")], [], version=4, guard="refreshed") == ["u1"]
    assert dict(store.iter_model_rows("us", "user")) == {}
    assert store.save_model_rows("us", "user", [("u1", b"x")], []) == []  # unguarded: written as given


def test_items_since_a_catalogue_version(opener: Opener, store: Store) -> None:
    store.upsert_items([item("a"), item("b")])
    v1 = store.catalogue_version()
    assert store.items_since(v1) == []
    store.upsert_items([item("c"), item("a", down=True)])
    changed = store.items_since(v1)
    assert [(i.id, i.down) for i in changed] == [("a", True), ("c", False)]  # insertion order, as they are now
    assert [i.id for i in opener.reopen(store).items_since(0)] == ["a", "b", "c"]


def test_model_rows_are_deleted_only_while_unchanged(store: Store) -> None:
    store.save_model_rows("us", "refreshed", [("u1", b"5"), ("u2", b"9")], [])
    store.save_model_rows("us", "refreshed", [("u2", b"12")], [])  # refreshed again meanwhile
    assert store.delete_model_rows_if("us", "refreshed", [("u1", b"5"), ("u2", b"9"), ("nobody", b"1")]) == 1
    assert dict(store.iter_model_rows("us", "refreshed")) == {"u2": b"12"}


def test_vocabularies_only_grow_and_outlive_the_handle(opener: Opener, store: Store) -> None:
    assert store.vocab("tags") == []
    store.save_vocab("tags", 0, ["t0", "t1"])
    store.save_vocab("tags", 2, ["t2"])
    store.save_vocab("creators", 0, ["c0"])
    store.save_vocab("tags", 1, ["other", "t2"])  # a code keeps its first name
    assert store.vocab("tags") == ["t0", "t1", "t2"]
    assert store.vocab("creators") == ["c0"] and store.vocab("sounds") == []
    again = opener.reopen(store)
    assert again.vocab("tags") == ["t0", "t1", "t2"] and again.vocab("creators") == ["c0"]
