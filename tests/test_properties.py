"""Property tests (hypothesis, bounded): the feed invariants of issue 2 section 5 over random small
catalogues and random event/feed sequences, and input validation over random and mutated input."""

from __future__ import annotations

import itertools
import json
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from factories import ADMIN_KEY, AUTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # starlette warns (a UserWarning) that it prefers httpx2 over httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.http import create_app
from foryou.privacy.keys import KeyRing
from foryou.types import EventIn, ItemIn, UserIn

# ----------------------------------------------------------------------------------------------
# (a) feed invariants
# ----------------------------------------------------------------------------------------------

HELD = ("us", "eu")
AGE_BANDS = (None, "under13", "13-17", "18+")
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class ItemSpec:
    id: str
    creator: str
    sound: str | None
    regions: tuple[str, ...] | None
    mature: bool
    tags: tuple[str, ...]


@dataclass
class UserModel:
    region: str
    age_band: str | None
    served: set[str] = field(default_factory=set)
    viewed: set[str] = field(default_factory=set)
    last: tuple[str, str | None] | None = None  # (creator, sound) of the last item served
    muted: dict[tuple[str, str], float] = field(default_factory=dict)  # ("creator"|"sound", name) -> until
    # Since a restart the engine holds no state of the user until it next reads it (a feed): events
    # meanwhile are taken in then, with the catalogue as it is then ("not interested": the creator
    # and sound the item has at that read).
    cold: bool = False
    stored: bool = False  # the engine holds the user (a new user's first event is taken in at once)
    unread: list[tuple[str, float]] = field(default_factory=list)  # "not interested" items meanwhile, when


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


item_specs = st.builds(
    lambda n, creator, sound, regions, mature, tags: ItemSpec(f"i{n}", creator, sound, regions, mature, tags),
    st.just(0),
    st.sampled_from([f"c{k}" for k in range(5)]),
    st.one_of(st.none(), st.sampled_from([f"s{k}" for k in range(4)])),
    st.one_of(st.none(), st.lists(st.sampled_from(["us", "eu", "jp"]), max_size=3, unique=True).map(tuple)),
    st.booleans(),
    st.lists(st.sampled_from(["t0", "t1", "t2", "t3"]), max_size=2, unique=True).map(tuple),
)


@st.composite
def catalogues(draw: st.DrawFn, max_items: int = 40) -> list[ItemSpec]:
    specs = draw(st.lists(item_specs, min_size=1, max_size=max_items))
    return [replace(s, id=f"i{n}") for n, s in enumerate(specs)]


# None: a user never PUT, created by its first feed request or event (default region, age unknown)
users_st = st.lists(st.one_of(st.none(), st.tuples(st.sampled_from(HELD), st.sampled_from(AGE_BANDS))),
                    min_size=1, max_size=3)

ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.integers(0, 2), st.integers(1, 12)),
        st.tuples(st.just("feed"), st.integers(0, 2), st.integers(1, 12)),
        st.tuples(st.just("view"), st.integers(0, 2), st.integers(0, 60), st.floats(0, 2)),
        st.tuples(st.just("act"), st.integers(0, 2), st.integers(0, 60),
                  st.sampled_from(["like", "comment", "share", "follow", "not_interested", "report"])),
        st.tuples(st.just("down"), st.integers(0, 60)),
        st.tuples(st.just("restore"), st.integers(0, 60)),
        st.tuples(st.just("reupsert"), st.integers(0, 60), item_specs),
        st.tuples(st.just("restart")),
        st.tuples(st.just("tick"), st.floats(1, 7200)),
    ),
    max_size=30,
)


def _item_in(spec: ItemSpec) -> ItemIn:
    return ItemIn(id=spec.id, creator=spec.creator, duration_s=20.0, tags=list(spec.tags), sound=spec.sound,
                  regions=list(spec.regions) if spec.regions is not None else None, mature=spec.mature)


class FeedWorld:
    """The engine plus a model of what must hold, checked on every feed response."""

    def __init__(self, data: Path, catalogue: list[ItemSpec], users: list[tuple[str, str | None] | None],
                 down: set[str]) -> None:
        self.data = data
        self.clock = Clock()
        self.items = {s.id: s for s in catalogue}
        self.down = set(down)
        self.users = {f"u{k}": UserModel(*(spec or (HELD[0], None))) for k, spec in enumerate(users)}
        self.engine = self._open()
        self.engine.items.upsert([_item_in(s) for s in catalogue])
        for item_id in sorted(down):
            self.engine.items.set_down(item_id, True)
        for k, (uid, user) in enumerate(self.users.items()):
            if users[k] is not None:
                self.engine.users.put(uid, UserIn(region=user.region, age_band=user.age_band))  # type: ignore[arg-type]
                user.stored = True

    def _open(self) -> Engine:
        # The learned model serves from its first example: the invariants must hold for both rankings.
        settings = load_settings(overrides={"server.data": str(self.data), "server.regions": ",".join(HELD),
                                            "learning.min_examples": 1}, env={})
        return Engine.open(settings, clock=self.clock, seed=7)

    def restart(self) -> None:
        self.engine.close()
        self.engine = self._open()
        for user in self.users.values():
            user.cold = user.stored

    def mute(self, user: UserModel, item_id: str, at: float) -> None:
        spec, until = self.items[item_id], at + 30 * 86400  # that creator and sound: not served for 30 days
        user.muted[("creator", spec.creator)] = until
        if spec.sound is not None:
            user.muted[("sound", spec.sound)] = until

    # -- the model --
    def eligible(self, user: UserModel, item_id: str) -> bool:
        spec = self.items[item_id]
        return (item_id not in self.down
                and (spec.regions is None or user.region in spec.regions)
                and (not spec.mature or user.age_band == "18+"))

    def available(self, user: UserModel) -> set[str]:
        muted = {key for key, until in user.muted.items() if until > self.clock.now}
        return {i for i in self.items if self.eligible(user, i) and i not in user.served and i not in user.viewed
                and ("creator", self.items[i].creator) not in muted
                and ("sound", self.items[i].sound or "") not in muted}

    @staticmethod
    def clash(prev: tuple[str, str | None] | None, spec: ItemSpec) -> bool:
        if prev is None:
            return False
        return prev[0] == spec.creator or (prev[1] is not None and prev[1] == spec.sound)

    def feed(self, uid: str, n: int) -> list[str]:
        user = self.users[uid]
        for item_id, at in user.unread:  # the engine reads the user now
            self.mute(user, item_id, at)
        user.cold, user.unread, user.stored = False, [], True
        before = self.available(user)
        response = self.engine.feeds.feed(uid, n).as_dict()
        got = [entry["id"] for entry in response["items"]]
        assert response["user"] == uid
        assert len(got) == len(set(got)), f"repeat within one response: {got}"
        for entry in response["items"]:
            assert isinstance(entry["score"], float)
            assert entry["reasons"] and all(isinstance(r, str) and r for r in entry["reasons"])
        for item_id in got:
            assert item_id not in user.served, f"{item_id} served to {uid} again"
            assert item_id not in user.viewed, f"{item_id} was viewed by {uid} and served anyway"
            spec = self.items[item_id]
            assert item_id not in self.down, f"taken-down {item_id} served"
            assert spec.regions is None or user.region in spec.regions, f"{item_id} {spec.regions} to {user.region}"
            assert not spec.mature or user.age_band == "18+", f"mature {item_id} to age band {user.age_band}"
        assert len(got) == min(n, len(before)), (
            f"asked {n}, {len(before)} eligible unserved, got {len(got)}: the feed may only shorten when "
            "the eligible catalogue runs dry")
        remaining = set(before)
        for k, item_id in enumerate(got):
            spec = self.items[item_id]
            remaining.discard(item_id)
            if self.clash(user.last, spec):
                avoid = [i for i in remaining if not self.clash(user.last, self.items[i])]
                assert not avoid, (
                    f"position {k} of {got}: {item_id} repeats the creator/sound {user.last} of the previous item "
                    f"although {sorted(avoid)} would not")
            user.last = (spec.creator, spec.sound)
            user.served.add(item_id)
        return got

    def drain(self) -> None:
        """Every user keeps getting items until every eligible item has been served."""
        for uid, user in self.users.items():
            for _ in range(len(self.items) + 2):
                if not self.feed(uid, 10):
                    break
            assert not self.available(user), f"{uid} stopped getting items with {self.available(user)} left"

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        uids = sorted(self.users)
        ids = sorted(self.items, key=lambda i: int(i[1:]))
        if kind == "feed":
            self.feed(uids[op[1] % len(uids)], op[2])
        elif kind == "view":
            uid, item_id = uids[op[1] % len(uids)], ids[op[2] % len(ids)]
            self.engine.events.ingest([EventIn(user=uid, item=item_id, type="view", watch_s=op[3] * 20.0)])
            self.users[uid].viewed.add(item_id)
            self.users[uid].stored = True
        elif kind == "act":
            uid, item_id = uids[op[1] % len(uids)], ids[op[2] % len(ids)]
            self.engine.events.ingest([EventIn(user=uid, item=item_id, type=op[3])])
            user = self.users[uid]
            if op[3] == "not_interested":
                if user.cold:
                    user.unread.append((item_id, self.clock.now))
                else:
                    self.mute(user, item_id, self.clock.now)
            user.stored = True
        elif kind in ("down", "restore"):
            item_id = ids[op[1] % len(ids)]
            self.engine.items.set_down(item_id, kind == "down")
            (self.down.add if kind == "down" else self.down.discard)(item_id)
        elif kind == "reupsert":
            item_id = ids[op[1] % len(ids)]
            spec = replace(op[2], id=item_id)
            self.engine.items.upsert([_item_in(spec)])
            self.items[item_id] = spec  # takedown state is kept by an upsert
        elif kind == "restart":
            self.restart()
        elif kind == "tick":
            self.clock.now += op[1]
        self.clock.now += 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(catalogue=catalogues(), users=users_st, down=st.sets(st.integers(0, 40), max_size=5), ops=ops_st)
def test_feed_invariants(catalogue: list[ItemSpec], users: list[tuple[str, str | None] | None], down: set[int],
                         ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = FeedWorld(Path(tmp), catalogue, users, {f"i{k}" for k in down if k < len(catalogue)})
        try:
            for op in ops:
                world.run(op)
            world.drain()
            world.restart()
            for uid in world.users:  # nothing comes back after a restart
                assert world.feed(uid, 10) == []
        finally:
            world.engine.close()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_main=st.integers(110, 260), others=st.integers(1, 3), n=st.integers(2, 10), seed=st.integers(0, 3))
def test_adjacency_rule_with_catalogue_larger_than_candidate_budgets(n_main: int, others: int, n: int,
                                                                     seed: int) -> None:
    """One prolific creator and a few others: every response alternates while other creators remain,
    however many items the prolific creator has (more than any one candidate source proposes)."""
    catalogue = [ItemSpec(f"i{k}", "prolific", None, None, False, ()) for k in range(n_main)]
    catalogue += [ItemSpec(f"i{n_main + k}", f"other{k}", None, None, False, ()) for k in range(others)]
    with tempfile.TemporaryDirectory() as tmp:
        world = FeedWorld(Path(tmp), catalogue, [("us", None)] * 3, set())
        world.engine.feeds.rng = np.random.default_rng(seed)
        try:
            for uid in world.users:
                world.feed(uid, n)
                world.feed(uid, n)
        finally:
            world.engine.close()


# ----------------------------------------------------------------------------------------------
# (b) input validation through the HTTP app
# ----------------------------------------------------------------------------------------------

ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
counter = itertools.count()


def is_id(value: object) -> bool:
    """The spec of an id: 1-128 of [A-Za-z0-9._:-], but not "." or ".." (path segments)."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None and value not in (".", "..")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("props")
    engine = Engine.open(load_settings(overrides={"server.data": str(data), "server.regions": "us,eu"}, env={}))
    client = TestClient(create_app(engine, KeyRing(data, ADMIN_KEY)), raise_server_exceptions=False, headers=AUTH)
    r = client.post("/v1/items", json={"items": [{"id": "base", "creator": "c", "duration_s": 10}]})
    assert r.status_code == 200
    yield client
    client.close()
    engine.close()


def check_error_shape(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code < 500, f"{r.status_code}: {r.text}"
    assert "Traceback" not in r.text
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"errors"}, body
    assert isinstance(body["errors"], list) and body["errors"]
    for e in body["errors"]:
        assert {"field", "message"} <= set(e) <= {"field", "message", "index"}, e
        assert isinstance(e["field"], str) and isinstance(e["message"], str) and e["message"]
        assert "index" not in e or (isinstance(e["index"], int) and e["index"] >= 0)
    return body["errors"]  # type: ignore[no-any-return]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["id", "creator", "duration_s", "tags", "user", "item", "type", "watch_s", "ts",
                               "items", "events", "region", "age_band", "interests", "mature", "regions"])
json_bodies = st.one_of(
    json_values,
    st.dictionaries(field_names, json_values, max_size=4),
    st.builds(lambda v: {"items": v}, st.lists(st.dictionaries(field_names, json_values, max_size=5), max_size=3)),
    st.builds(lambda v: {"events": v}, st.lists(st.dictionaries(field_names, json_values, max_size=5), max_size=3)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_bodies, target=st.sampled_from(["items", "events", "user"]))
def test_random_json_never_500(api: TestClient, body: Any, target: str) -> None:
    path = {"items": "/v1/items", "events": "/v1/events", "user": f"/v1/users/fz{next(counter)}"}[target]
    method = "PUT" if target == "user" else "POST"
    r = api.request(method, path, content=json.dumps(body).encode())
    assert r.status_code in (200, 400, 404, 409, 422), f"{r.status_code}: {r.text}"
    if r.status_code != 200:
        check_error_shape(r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200), path=st.sampled_from(["/v1/items", "/v1/events", "/v1/users/x"]))
def test_random_bytes_never_500(api: TestClient, raw: bytes, path: str) -> None:
    r = api.request("PUT" if path == "/v1/users/x" else "POST", path, content=raw)
    assert r.status_code in (200, 400, 422), f"{r.status_code}: {r.text}"
    if r.status_code != 200:
        check_error_shape(r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.one_of(st.integers(-5, 200).map(str), st.text(max_size=6)))
def test_random_feed_n(api: TestClient, n: str) -> None:
    r = api.get(f"/v1/users/fn{next(counter)}/feed", params={"n": n})
    assert r.status_code in (200, 422), r.text
    if n.isascii() and n.isdigit() and 1 <= int(n) <= 100:
        assert r.status_code == 200
        assert len(r.json()["items"]) <= int(n)
    elif re.fullmatch(r"-?\d+", n) and not 1 <= int(n) <= 100:
        assert r.status_code == 422
    if r.status_code == 422:
        assert any(e["field"] == "n" for e in check_error_shape(r))


# -- mutations of valid entries, judged against an oracle written from the spec --

valid_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,40}\Z").filter(is_id)
invalid_ids = st.one_of(
    st.just(""), st.just("x" * 129), st.just("."), st.just(".."),
    st.text(min_size=1, max_size=12).filter(lambda s: not is_id(s)),
    st.integers(), st.booleans(), st.lists(st.integers(), max_size=2), st.floats(allow_nan=False, allow_infinity=False),
)
tags = st.text(min_size=1, max_size=64)
bad_tags = st.one_of(st.just(""), st.text(min_size=65, max_size=80), st.integers(), st.none())
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 1, 1), timezones=offsets)


def _rfc3339(moment: datetime, zulu: bool) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if zulu and text.endswith("+00:00") else text


valid_times = st.builds(_rfc3339, moments, st.booleans())
invalid_times = st.one_of(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 1, 1)).map(lambda d: d.isoformat()),
    st.text(max_size=12).filter(lambda s: not re.match(r"\d{4}-", s)),
    st.integers(), st.booleans(),
)
finite = {"allow_nan": False, "allow_infinity": False}

# field -> (valid values, invalid values, required?)
ITEM_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any], bool]] = {
    "id": (valid_ids, invalid_ids.filter(lambda v: v is not None), True),
    "creator": (valid_ids, invalid_ids.filter(lambda v: v is not None), True),
    "duration_s": (st.one_of(st.floats(0, 3600, exclude_min=True, **finite), st.integers(1, 3600)),
                   st.one_of(st.floats(max_value=0, **finite), st.floats(min_value=3600.001, **finite),
                             st.integers(max_value=0), st.text(max_size=4), st.booleans(), st.none()), True),
    "caption": (st.one_of(st.none(), st.text(max_size=100), st.just("y" * 4000)),
                st.one_of(st.just("y" * 4001), st.integers(), st.booleans(), st.lists(st.text(), max_size=2)), False),
    "tags": (st.lists(tags, max_size=32),
             st.one_of(st.lists(tags, min_size=33, max_size=40),
                       st.tuples(st.lists(tags, max_size=3), bad_tags).map(lambda t: [*t[0], t[1]]),
                       st.text(max_size=5), st.integers()), False),
    "topic": (st.one_of(st.none(), tags), st.one_of(st.just(""), st.text(min_size=65, max_size=70), st.integers()),
              False),
    "sound": (st.one_of(st.none(), valid_ids), invalid_ids.filter(lambda v: v is not None), False),
    "lang": (st.one_of(st.none(), st.sampled_from(["en", "pt-BR", "zh-Hant", "fr"])),
             st.one_of(st.integers(), st.booleans(), st.lists(st.just("en"), min_size=1, max_size=2)), False),
    "regions": (st.one_of(st.none(), st.lists(st.sampled_from(["us", "eu", "fr", "ap-south-1"]), max_size=5)),
                st.one_of(st.just(["US"]), st.just([""]), st.just("us"), st.just([1]), st.just(["us", "Eu"])), False),
    "created_at": (valid_times, invalid_times, False),
    "mature": (st.booleans(), st.one_of(st.just("true"), st.just(0), st.just(1), st.text(max_size=3)), False),
}


@st.composite
def item_mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str, bool]:
    """(item, mutated field, valid according to the spec)."""
    n = next(counter)
    base: dict[str, Any] = {"id": f"m{n}-b", "creator": "cm", "duration_s": 15, "tags": ["x"], "caption": "hi"}
    name = draw(st.sampled_from(sorted(ITEM_FIELDS)))
    good, bad, required = ITEM_FIELDS[name]
    mode = draw(st.sampled_from(["valid", "invalid", "delete"]))
    if mode == "delete":
        base.pop(name, None)
        return base, name, not required
    base[name] = draw(good if mode == "valid" else bad)
    return base, name, mode == "valid"


def path_id(item_id: str) -> str:
    """An id as a path segment: "." and ".." would be removed by URL normalisation, so escape them."""
    return item_id.replace(".", "%2E") if set(item_id) == {"."} else item_id


def _same_time(a: str, b: str) -> bool:
    return abs(datetime.fromisoformat(a).timestamp() - datetime.fromisoformat(b).timestamp()) < 1e-3


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=item_mutations())
def test_item_mutations(api: TestClient, mutation: tuple[dict[str, Any], str, bool]) -> None:
    mutated, name, valid = mutation
    n = next(counter)
    first = {"id": f"m{n}-a", "creator": "cm", "duration_s": 5}
    last = {"id": f"m{n}-c", "creator": "cm", "duration_s": 5}
    r = api.post("/v1/items", json={"items": [first, mutated, last]})
    if valid:
        assert r.status_code == 200, f"{name}={mutated.get(name)!r} is valid per the spec: {r.text}"
        assert r.json() == {"upserted": 3}
        got = api.get(f"/v1/items/{path_id(mutated['id'])}").json()
        for key, value in mutated.items():
            if key == "created_at":
                assert _same_time(value, got[key])
            elif key == "topic" and value is None:  # defaults to the first tag
                assert got[key] == (mutated["tags"][0] if mutated.get("tags") else None)
            elif key != "duration_s":
                assert got[key] == value, key
        assert got["duration_s"] == pytest.approx(mutated["duration_s"])
        assert api.get(f"/v1/items/{first['id']}").status_code == 200
    else:
        assert r.status_code == 422, f"{name}={mutated.get(name, '<missing>')!r} is invalid per the spec: {r.text}"
        errors = check_error_shape(r)
        assert all(e.get("index") == 1 for e in errors), errors
        assert any(e["field"] == name or e["field"].startswith(name + ".") for e in errors), (name, errors)
        for item_id in (first["id"], last["id"]):
            assert api.get(f"/v1/items/{item_id}").status_code == 404, "a rejected batch stores nothing"


EVENT_TYPES = ["view", "like", "comment", "share", "follow", "not_interested", "report"]


def _now_offset(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


EVENT_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any], bool]] = {
    "user": (valid_ids, invalid_ids.filter(lambda v: v is not None), True),
    "item": (st.just("base"), st.one_of(st.builds(lambda k: f"never-upserted-{k}", st.integers(0, 10**6)),
                                        invalid_ids), True),
    "type": (st.sampled_from(EVENT_TYPES),
             st.one_of(st.text(max_size=10).filter(lambda s: s not in EVENT_TYPES), st.integers(), st.none(),
                       st.just("VIEW")), True),
    "watch_s": (st.one_of(st.floats(0, 86400, **finite), st.integers(0, 86400)),
                st.one_of(st.floats(max_value=-0.001, **finite), st.integers(max_value=-1), st.text(max_size=4),
                          st.booleans(), st.none()), True),
    "ts": (st.one_of(valid_times.filter(lambda t: datetime.fromisoformat(t) < datetime.now(UTC)),
                     st.floats(-10**8, 200).map(_now_offset)),
           st.one_of(invalid_times, st.floats(400, 10**8).map(_now_offset)), False),
    "id": (st.text(min_size=1, max_size=60),
           st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=1)), False),
    "request_id": (st.one_of(st.none(), st.text(min_size=1, max_size=60)),
                   st.one_of(st.integers(), st.booleans()), False),
}


@st.composite
def event_mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str, bool]:
    n = next(counter)
    base: dict[str, Any] = {"user": f"mu{n}-b", "item": "base", "type": "view", "watch_s": 3.5, "id": f"me{n}-b"}
    name = draw(st.sampled_from(sorted(EVENT_FIELDS)))
    good, bad, required = EVENT_FIELDS[name]
    mode = draw(st.sampled_from(["valid", "invalid", "delete"]))
    if mode == "delete":
        base.pop(name, None)
        return base, name, not required
    value = draw(good if mode == "valid" else bad)
    base[name] = f"me{n}-{value}" if name == "id" and mode == "valid" else value
    return base, name, mode == "valid"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=event_mutations())
def test_event_mutations(api: TestClient, mutation: tuple[dict[str, Any], str, bool]) -> None:
    mutated, name, valid = mutation
    n = next(counter)
    first = {"user": f"mu{n}-a", "item": "base", "type": "like", "id": f"me{n}-a"}
    last = {"user": f"mu{n}-c", "item": "base", "type": "view", "watch_s": 1, "id": f"me{n}-c"}
    before = api.get("/v1/items/base").json()["stats"]
    r = api.post("/v1/events", json={"events": [first, mutated, last]})
    after = api.get("/v1/items/base").json()["stats"]
    if valid:
        assert r.status_code == 200, f"{name}={mutated.get(name)!r} is valid per the spec: {r.text}"
        assert r.json() == {"accepted": 3, "duplicates": 0}
        assert after["likes"] >= before["likes"] + 1 and after["views"] >= before["views"] + 1
        assert api.get(f"/v1/users/{first['user']}").status_code == 200
    else:
        assert r.status_code == 422, f"{name}={mutated.get(name, '<missing>')!r} is invalid per the spec: {r.text}"
        errors = check_error_shape(r)
        assert all(e.get("index") == 1 for e in errors), errors
        assert any(e["field"] == name for e in errors), (name, errors)
        if name == "item" and is_id(mutated.get("item")):
            assert any(mutated["item"] in e["message"] for e in errors), errors
        assert after == before, "a rejected batch stores nothing"
        assert api.get(f"/v1/users/{first['user']}").status_code == 404
        again = api.post("/v1/events", json={"events": [first]})
        assert again.json() == {"accepted": 1, "duplicates": 0}, "ids from a rejected batch are not remembered"


@pytest.mark.parametrize("restart", [False, True])
def test_not_interested_then_an_edit_of_the_items_creator(tmp_path: Path, restart: bool) -> None:
    """Found by `test_feed_invariants`: a user created by their "not interested" had it taken in at
    their first feed, after an edit gave the item another creator, which was then muted. A new user is
    held with the event applied at once; one not in memory (after a restart) takes it in at the next
    read, with the catalogue as it is then (the model says so)."""
    item = ItemSpec(id="i0", creator="c0", sound=None, regions=None, mature=False, tags=())
    world = FeedWorld(tmp_path, [item, replace(item, id="i1", creator="c2")], [None], set())
    try:
        if restart:
            world.run(("view", 0, 1, 0.5))
            world.run(("restart",))
        world.run(("act", 0, 0, "not_interested"))
        world.run(("reupsert", 0, replace(item, creator="c1")))
        assert ("i0" in world.feed("u0", 10)) is not restart  # c0 muted; after a restart c1 (the model checks)
    finally:
        world.engine.close()
