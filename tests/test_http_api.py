"""API tests through the real FastAPI app (issue 2, section 3): every endpoint, its success shape and
the item/user/event semantics that the HTTP contract promises. Error cases live in test_http_errors.py."""

from __future__ import annotations

import math
import re
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeClient
from factories import AUTH

with warnings.catch_warnings():  # starlette warns (a UserWarning) that it prefers httpx2 over httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from foryou.engine import Engine

STATS = ("served", "views", "watch_s", "completions", "likes", "comments", "shares", "follows",
         "not_interested", "reports")

@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


def item(item_id: str, creator: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"id": item_id, "creator": creator, "duration_s": 20.0, **fields}


def upsert(client: TestClient, *items: dict[str, Any]) -> None:
    r = client.post("/v1/items", json={"items": list(items)}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"upserted": len(items)}


def post_events(client: TestClient, *events: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/events", json={"events": list(events)}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def stats(client: TestClient, item_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/items/{item_id}")
    assert r.status_code == 200, r.text
    return r.json()["stats"]  # type: ignore[no-any-return]


def feed_ids(client: TestClient, user: str, n: int = 10) -> list[str]:
    r = client.get(f"/v1/users/{user}/feed", params={"n": n}, headers=AUTH)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def parse_ts(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None, f"{value!r} has no UTC offset"
    return moment


def iso(moment: datetime) -> str:
    return moment.isoformat()


# -- ops --

def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["content-type"].startswith("application/json")


def test_docs_and_openapi(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "openapi.json" in r.text
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    doc = spec.json()
    paths = doc["paths"]
    expected = {
        "/healthz": {"get"}, "/v1/items": {"post"}, "/v1/items/{item_id}": {"get", "delete"},
        "/v1/items/{item_id}/restore": {"post"}, "/v1/users/{user_id}": {"put", "get"},
        "/v1/events": {"post"}, "/v1/users/{user_id}/feed": {"get"}, "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, f"{path} missing from the OpenAPI document"
        assert methods <= set(paths[path]), f"{path}: {set(paths[path])}"
    # the request bodies are documented with their schemas, and the $refs resolve
    schemas = doc["components"]["schemas"]
    for path, method in (("/v1/items", "post"), ("/v1/events", "post"), ("/v1/users/{user_id}", "put")):
        ref = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in schemas
    item_schema = schemas["ItemIn"]
    assert {"id", "creator", "duration_s", "tags", "topic", "sound", "regions", "created_at", "mature"} <= set(
        item_schema["properties"])
    assert {"user", "item", "type", "watch_s", "ts", "id", "request_id"} <= set(schemas["EventIn"]["properties"])
    for ref in re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', spec.text):
        assert ref in schemas, f"dangling $ref to {ref}"
    feed_params = {p["name"]: p for p in paths["/v1/users/{user_id}/feed"]["get"]["parameters"]}
    assert feed_params["n"]["schema"].get("maximum") == 100
    assert feed_params["n"]["schema"].get("minimum") == 1


def test_metrics_prometheus_text(client: TestClient) -> None:
    upsert(client, item("m1"), item("m2", "c2"))
    post_events(client, {"user": "u1", "item": "m1", "type": "view", "watch_s": 20},
                {"user": "u1", "item": "m2", "type": "like"})
    feed_ids(client, "u1")
    client.get("/healthz")
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    label = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    line_re = re.compile(rf'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{{(?:{label}(?:,{label})*,?)?\}})?\s+(\S+)$')
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (TYPE|HELP) [a-zA-Z_:][a-zA-Z0-9_:]* ", line), line
            continue
        m = line_re.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        value = float(m.group(3))
        assert not math.isnan(value)
        samples[m.group(1) + (m.group(2) or "")] = value
    names = {key.split("{")[0] for key in samples}
    assert any("request" in n for n in names), names
    assert any("seconds" in n or "latenc" in n for n in names), names
    events = [v for k, v in samples.items() if "event" in k and "ingest" in k]
    assert events and max(events) >= 2, samples
    catalog = [v for k, v in samples.items() if "catalog" in k]
    assert catalog and max(catalog) == 2, samples
    # the requests made above are counted, by route
    health = [v for k, v in samples.items() if "requests" in k and "/healthz" in k]
    assert health and sum(health) >= 1


def test_upsert_and_get_item_round_trip(client: TestClient) -> None:
    created = "2024-05-01T12:00:00+02:00"
    full = {
        "id": "vid:1.a-B_c", "creator": "cre-1", "duration_s": 12.5, "caption": "hello \u00e9\u4e16\u754c",
        "tags": ["cooking", "pasta"], "topic": "food", "sound": "s1", "lang": "en", "regions": ["us", "eu"],
        "created_at": created, "mature": True,
    }
    r = client.post("/v1/items", json={"items": [full, item("v2")]})
    assert r.status_code == 200
    assert r.json() == {"upserted": 2}
    got = client.get("/v1/items/vid:1.a-B_c").json()
    for key in ("id", "creator", "duration_s", "caption", "tags", "topic", "sound", "lang", "regions", "mature"):
        assert got[key] == full[key], key
    assert parse_ts(got["created_at"]) == parse_ts(created)
    assert set(got["stats"]) == set(STATS)
    assert all(got["stats"][k] == 0 for k in STATS)
    assert got.get("taken_down") is False
    minimal = client.get("/v1/items/v2").json()
    assert minimal["mature"] is False
    assert minimal["tags"] == []
    assert minimal["regions"] is None
    assert minimal["caption"] is None and minimal["sound"] is None


def test_created_at_defaults_to_now(client: TestClient) -> None:
    before = datetime.now(UTC)
    upsert(client, item("fresh"))
    created = parse_ts(client.get("/v1/items/fresh").json()["created_at"])
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)


def test_created_at_kept_on_reupsert_when_omitted(client: TestClient) -> None:
    upsert(client, item("k1", created_at="2023-01-02T03:04:05Z"))
    upsert(client, item("k1", caption="new caption"))
    got = client.get("/v1/items/k1").json()
    assert got["caption"] == "new caption"
    assert parse_ts(got["created_at"]) == parse_ts("2023-01-02T03:04:05Z")
    # and replaced when given
    upsert(client, item("k1", created_at="2023-06-01T00:00:00-05:00"))
    assert parse_ts(client.get("/v1/items/k1").json()["created_at"]) == parse_ts("2023-06-01T05:00:00Z")


def test_created_at_default_survives_reupsert(client: TestClient) -> None:
    """An item created with the default (now) keeps that time on a later upsert that omits it."""
    upsert(client, item("k2"))
    first = client.get("/v1/items/k2").json()["created_at"]
    time.sleep(1.1)
    upsert(client, item("k2", caption="x"))
    assert client.get("/v1/items/k2").json()["created_at"] == first


def test_topic_defaults_to_first_tag(client: TestClient) -> None:
    upsert(client, item("t1", tags=["cooking", "pasta"]), item("t2", tags=["cooking"], topic="food"),
           item("t3"))
    assert client.get("/v1/items/t1").json()["topic"] == "cooking"
    assert client.get("/v1/items/t2").json()["topic"] == "food"
    assert client.get("/v1/items/t3").json()["topic"] is None


def test_upsert_replaces_fields_but_keeps_counters(client: TestClient) -> None:
    upsert(client, item("i1", tags=["a", "b"], sound="s1", caption="old", duration_s=10))
    out = post_events(client,
                      {"user": "u1", "item": "i1", "type": "view", "watch_s": 10},
                      {"user": "u2", "item": "i1", "type": "view", "watch_s": 0.5},
                      {"user": "u1", "item": "i1", "type": "like"},
                      {"user": "u1", "item": "i1", "type": "comment"},
                      {"user": "u1", "item": "i1", "type": "share"},
                      {"user": "u1", "item": "i1", "type": "follow"},
                      {"user": "u2", "item": "i1", "type": "not_interested"},
                      {"user": "u2", "item": "i1", "type": "report"})
    assert out == {"accepted": 8, "duplicates": 0}
    before = stats(client, "i1")
    assert before["views"] == 2 and before["watch_s"] == pytest.approx(10.5) and before["completions"] == 1
    for key in ("likes", "comments", "shares", "follows", "not_interested", "reports"):
        assert before[key] == 1, key
    upsert(client, item("i1", creator="c9", tags=["z"], duration_s=30))
    got = client.get("/v1/items/i1").json()
    assert got["creator"] == "c9" and got["tags"] == ["z"] and got["duration_s"] == 30
    assert got["caption"] is None and got["sound"] is None, "upsert replaces the fields, it does not merge"
    assert got["stats"] == before


def test_repeated_id_in_one_batch_last_wins(client: TestClient) -> None:
    r = client.post("/v1/items", json={"items": [item("r1", caption="first"), item("r1", caption="second")]})
    assert r.status_code == 200
    assert client.get("/v1/items/r1").json()["caption"] == "second"


def test_takedown_and_restore(client: TestClient) -> None:
    upsert(client, *[item(f"d{i}", f"c{i}") for i in range(6)])
    r = client.delete("/v1/items/d0", headers=AUTH)
    assert r.status_code == 200
    assert client.get("/v1/items/d0").json()["taken_down"] is True
    served = feed_ids(client, "u1", 100)
    assert "d0" not in served
    assert sorted(served) == [f"d{i}" for i in range(1, 6)]
    # upserting a taken-down item again does not bring it back
    upsert(client, item("d0", "c0", caption="re-uploaded"))
    got = client.get("/v1/items/d0").json()
    assert got["taken_down"] is True and got["caption"] == "re-uploaded"
    assert feed_ids(client, "u2", 100).count("d0") == 0
    # restore does
    r = client.post("/v1/items/d0/restore")
    assert r.status_code == 200
    assert client.get("/v1/items/d0").json()["taken_down"] is False
    assert feed_ids(client, "u1", 100) == ["d0"]
    # taking down twice is fine
    assert client.delete("/v1/items/d1").status_code == 200
    assert client.delete("/v1/items/d1").status_code == 200


def test_events_for_taken_down_item_are_accepted(client: TestClient) -> None:
    upsert(client, item("gone"))
    assert client.delete("/v1/items/gone").status_code == 200
    out = post_events(client, {"user": "u1", "item": "gone", "type": "view", "watch_s": 3},
                      {"user": "u1", "item": "gone", "type": "report"})
    assert out == {"accepted": 2, "duplicates": 0}
    s = stats(client, "gone")
    assert s["views"] == 1 and s["reports"] == 1


# -- users --

def test_put_and_get_user(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    r = client.put("/v1/users/alice", json={"interests": ["cooking"], "lang": "fr"}, headers=AUTH)
    assert r.status_code == 200, r.text
    profile = r.json()
    assert profile["id"] == "alice"
    assert profile["region"] == "us", "the default region is the server's first"
    assert profile["interests"] == ["cooking"] and profile["lang"] == "fr" and profile["age_band"] is None
    assert client.get("/v1/users/alice").json() == profile
    # PUT sets the fields given and leaves the rest
    r = client.put("/v1/users/alice", json={"age_band": "18+"})
    assert r.status_code == 200
    assert r.json()["interests"] == ["cooking"] and r.json()["lang"] == "fr" and r.json()["age_band"] == "18+"
    r = client.put("/v1/users/alice", json={})
    assert r.status_code == 200 and r.json()["age_band"] == "18+"
    # the same region again is not a change
    assert client.put("/v1/users/alice", json={"region": "us"}).status_code == 200
    bob = client.put("/v1/users/bob", json={"region": "eu", "age_band": "13-17"}).json()
    assert bob["region"] == "eu" and bob["age_band"] == "13-17"
    assert client.get("/v1/users/bob").json()["region"] == "eu"


def test_user_created_by_feed_or_event(client: TestClient) -> None:
    upsert(client, item("x1"))
    assert client.get("/v1/users/newbie").status_code == 404
    feed_ids(client, "newbie")
    assert client.get("/v1/users/newbie").json()["region"] == "us"
    post_events(client, {"user": "eventer", "item": "x1", "type": "like"})
    assert client.get("/v1/users/eventer").json()["id"] == "eventer"


def test_user_region_is_fixed_once_set(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    assert client.put("/v1/users/carol", json={"region": "eu"}).status_code == 200
    r = client.put("/v1/users/carol", json={"region": "us"})
    assert r.status_code == 409
    assert r.json()["errors"][0]["field"] == "region"
    assert client.get("/v1/users/carol").json()["region"] == "eu"


def test_user_data_survives_restart_in_its_region(make_client: MakeClient, tmp_path: Path) -> None:
    data = tmp_path / "regional"
    client = make_client(data, **{"server.regions": "us,eu"})
    upsert(client, *[item(f"r{i}", f"c{i}") for i in range(8)])
    client.put("/v1/users/eve", json={"region": "eu", "interests": ["a"]})
    first = feed_ids(client, "eve", 3)
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    engine.close()
    assert (data / "region-eu.db").exists() and (data / "region-us.db").exists()
    again = make_client(data, **{"server.regions": "us,eu"})
    assert again.get("/v1/users/eve").json()["region"] == "eu"
    rest = feed_ids(again, "eve", 100)
    assert not set(first) & set(rest), "served items are never served again, across restarts"
    assert sorted(first + rest) == sorted(f"r{i}" for i in range(8))


# -- events --

def test_events_accepted_and_counted(client: TestClient) -> None:
    upsert(client, item("e1", duration_s=10), item("e2", "c2", duration_s=100))
    now = datetime.now(UTC)
    out = post_events(
        client,
        {"user": "u1", "item": "e1", "type": "view", "watch_s": 9.5, "ts": iso(now - timedelta(hours=1))},
        {"user": "u1", "item": "e2", "type": "view", "watch_s": 150, "ts": iso(now + timedelta(minutes=4))},
        {"user": "u1", "item": "e2", "type": "view", "watch_s": 0, "request_id": "req-1"},
        {"user": "u2", "item": "e1", "type": "like", "ts": "2020-01-01T00:00:00+09:00"},
    )
    assert out == {"accepted": 4, "duplicates": 0}
    s1, s2 = stats(client, "e1"), stats(client, "e2")
    assert s1["views"] == 1 and s1["completions"] == 1 and s1["likes"] == 1
    assert s2["views"] == 2 and s2["watch_s"] == pytest.approx(150) and s2["completions"] == 1


def test_event_ids_are_idempotent_first_wins(client: TestClient) -> None:
    upsert(client, item("e1", duration_s=100))
    out = post_events(client,
                      {"id": "ev-1", "user": "u1", "item": "e1", "type": "view", "watch_s": 10},
                      {"id": "ev-1", "user": "u1", "item": "e1", "type": "view", "watch_s": 99},
                      {"id": "ev-2", "user": "u1", "item": "e1", "type": "like"})
    assert out == {"accepted": 2, "duplicates": 1}
    out = post_events(client,
                      {"id": "ev-1", "user": "u1", "item": "e1", "type": "view", "watch_s": 50},
                      {"id": "ev-2", "user": "u1", "item": "e1", "type": "like"},
                      {"id": "ev-2", "user": "u9", "item": "e1", "type": "like"},  # u9's own key
                      {"id": "ev-3", "user": "u1", "item": "e1", "type": "share"},
                      {"user": "u1", "item": "e1", "type": "share"})
    assert out == {"accepted": 3, "duplicates": 2}
    s = stats(client, "e1")
    assert s["views"] == 1 and s["watch_s"] == pytest.approx(10), "the first event with an id wins"
    assert s["likes"] == 2 and s["shares"] == 2


def test_event_ids_are_per_user_and_region(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    upsert(client, item("g1"))
    client.put("/v1/users/euro", json={"region": "eu"})
    assert post_events(client, {"id": "same", "user": "euro", "item": "g1", "type": "like"}) == {
        "accepted": 1, "duplicates": 0}
    assert post_events(client, {"id": "same", "user": "yank", "item": "g1", "type": "like"}) == {
        "accepted": 1, "duplicates": 0}
    assert post_events(client, {"id": "same", "user": "euro", "item": "g1", "type": "like"}) == {
        "accepted": 0, "duplicates": 1}
    assert stats(client, "g1")["likes"] == 2


def test_event_ids_survive_restart(make_client: MakeClient, tmp_path: Path) -> None:
    data = tmp_path / "idem"
    client = make_client(data)
    upsert(client, item("e1"))
    post_events(client, {"id": "once", "user": "u1", "item": "e1", "type": "like"})
    client.app.state.engine.close()  # type: ignore[attr-defined]
    again = make_client(data)
    assert post_events(again, {"id": "once", "user": "u1", "item": "e1", "type": "like"}) == {
        "accepted": 0, "duplicates": 1}
    assert stats(again, "e1")["likes"] == 1


def test_event_ids_remembered_for_seven_days_from_acceptance(make_client: MakeClient) -> None:
    """Keys are remembered for at least 7 days after the event was accepted, whatever its `ts` (a backfill
    of month-old events re-sent 6 days later still counts once)."""
    now = [datetime.now(UTC).timestamp()]
    client = make_client(clock=lambda: now[0])
    upsert(client, item("e1"))
    old_ts = iso(datetime.fromtimestamp(now[0], UTC) - timedelta(days=30))
    assert post_events(client, {"id": "backfill", "user": "u1", "item": "e1", "type": "like", "ts": old_ts}) == {
        "accepted": 1, "duplicates": 0}
    accepted_at = now[0]
    for days in (1, 3, 5, 6.9):
        now[0] = accepted_at + 86400 * days
        again = post_events(client, {"id": "backfill", "user": "u1", "item": "e1", "type": "like", "ts": old_ts},
                            {"id": f"filler-{days}", "user": "u2", "item": "e1", "type": "like"})
        assert again == {"accepted": 1, "duplicates": 1}, f"forgotten {days} days after it was accepted"
    assert stats(client, "e1")["likes"] == 5


def test_empty_event_batch(client: TestClient) -> None:
    assert post_events(client) == {"accepted": 0, "duplicates": 0}
    r = client.post("/v1/items", json={"items": []})
    assert r.status_code == 200 and r.json() == {"upserted": 0}


# -- feed --

def test_feed_shape_and_bounds(client: TestClient) -> None:
    upsert(client, *[item(f"f{i}", f"c{i % 7}", tags=[f"t{i % 3}"], sound=f"s{i % 5}") for i in range(150)])
    r = client.get("/v1/users/fu/feed", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"user", "request_id", "items"}
    assert body["user"] == "fu"
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert len(body["items"]) == 10, "n defaults to 10"
    for entry in body["items"]:
        assert isinstance(entry["id"], str)
        assert isinstance(entry["score"], float) and math.isfinite(entry["score"])
        assert isinstance(entry["reasons"], list) and entry["reasons"]
        assert all(isinstance(x, str) and x for x in entry["reasons"])
    assert len(feed_ids(client, "fu", 1)) == 1
    assert len(feed_ids(client, "fu", 100)) == 100
    r2 = client.get("/v1/users/fu/feed", params={"n": 5})
    assert r2.json()["request_id"] != body["request_id"]


def test_feed_never_repeats_and_runs_dry(client: TestClient) -> None:
    upsert(client, *[item(f"f{i}", f"c{i % 4}", sound=f"s{i % 3}") for i in range(25)])
    seen: list[str] = []
    for n in (7, 7, 7, 7, 7):
        got = feed_ids(client, "dry", n)
        seen += got
    assert len(seen) == len(set(seen)) == 25
    assert feed_ids(client, "dry", 10) == []
    # another user still gets everything
    assert len(feed_ids(client, "other", 100)) == 25


def test_serving_counts_as_served(client: TestClient) -> None:
    upsert(client, *[item(f"s{i}", f"c{i}") for i in range(3)])
    served = feed_ids(client, "u1", 3) + feed_ids(client, "u2", 3)
    for i in range(3):
        assert stats(client, f"s{i}")["served"] == served.count(f"s{i}") == 2


def test_viewed_item_is_not_served(client: TestClient) -> None:
    upsert(client, *[item(f"v{i}", f"c{i}") for i in range(5)])
    post_events(client, {"user": "watcher", "item": "v3", "type": "view", "watch_s": 5})
    assert "v3" not in feed_ids(client, "watcher", 100)


def test_feed_respects_region_and_maturity(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    upsert(client, item("us-only", "c1", regions=["us"]), item("eu-only", "c2", regions=["eu"]),
           item("nowhere", "c3", regions=[]), item("everywhere", "c4"), item("adult", "c5", mature=True),
           item("elsewhere", "c6", regions=["jp"]))
    client.put("/v1/users/grown", json={"region": "eu", "age_band": "18+"})
    client.put("/v1/users/teen", json={"region": "eu", "age_band": "13-17"})
    client.put("/v1/users/anon", json={"region": "us"})
    assert sorted(feed_ids(client, "grown", 100)) == ["adult", "eu-only", "everywhere"]
    assert sorted(feed_ids(client, "teen", 100)) == ["eu-only", "everywhere"]
    assert sorted(feed_ids(client, "anon", 100)) == ["everywhere", "us-only"]


def test_no_adjacent_creator_or_sound(client: TestClient) -> None:
    """Within and across responses, an item never shares the creator or sound of the one before it
    unless every item still available would."""
    items = [item(f"a{i}", "ca") for i in range(5)] + [item(f"b{i}", "cb", sound="s1") for i in range(5)]
    items += [item(f"c{i}", "cc", sound="s1") for i in range(5)] + [item(f"d{i}", f"cd{i}") for i in range(5)]
    upsert(client, *items)
    meta = {i["id"]: (i["creator"], i.get("sound")) for i in items}

    def clash(prev: str, cur: str) -> bool:
        (pc, ps), (cc, cs) = meta[prev], meta[cur]
        return pc == cc or (ps is not None and ps == cs)

    served: list[str] = []
    for n in (4, 6, 5, 7):
        served += feed_ids(client, "adj", n)
    assert sorted(served) == sorted(meta), "all 20 items, once each"
    for k in range(1, len(served)):
        if clash(served[k - 1], served[k]):
            avoid = [i for i in served[k + 1:] if not clash(served[k - 1], i)]
            assert not avoid, f"{served[k]} after {served[k - 1]} although {avoid} remained: {served}"


def test_events_shape_the_very_next_feed(client: TestClient) -> None:
    """6 completions of one topic and 12 early swipes on another: at least 4 of the next 10 items are
    of the first topic (base rate about 1 in 30)."""
    topics = [f"topic{k}" for k in range(30)]
    items = [item(f"{t}-{j}", f"cr{t}-{j}", tags=[t], duration_s=30) for t in topics for j in range(20)]
    upsert(client, *items)
    events = [{"user": "p1", "item": f"topic0-{j}", "type": "view", "watch_s": 30} for j in range(6)]
    events += [{"user": "p1", "item": f"topic1-{j}", "type": "view", "watch_s": 0.5} for j in range(12)]
    post_events(client, *events)
    got = feed_ids(client, "p1", 10)
    assert len(got) == 10
    first = sum(1 for i in got if i.startswith("topic0-"))
    second = sum(1 for i in got if i.startswith("topic1-"))
    assert first >= 4, got
    assert second <= 1, got


# -- feed policy: controls, refresh, explanations, the algorithm card, exposure --

def test_controls_round_trip_and_partial_put(client: TestClient) -> None:
    upsert(client, item("cat1", caption="Cats!"), item("dog1", creator="c2", caption="dogs"))
    assert client.get("/v1/users/amy/controls").status_code == 404
    assert client.put("/v1/users/amy/controls", json={"blocked_keywords": ["cat"]}).status_code == 404
    client.put("/v1/users/amy", json={})
    assert client.get("/v1/users/amy/controls").json() == {"blocked_keywords": [], "topic_weights": {},
                                                           "refreshed_at": None}
    r = client.put("/v1/users/amy/controls", json={"blocked_keywords": ["cat"], "topic_weights": {"pets": -0.5}},
                   headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["blocked_keywords"] == ["cat"] and r.json()["topic_weights"] == {"pets": -0.5}
    # a field left out stays; a weight of 0 removes the entry
    r = client.put("/v1/users/amy/controls", json={"topic_weights": {"pets": 0, "food": 1}})
    assert r.json()["blocked_keywords"] == ["cat"] and r.json()["topic_weights"] == {"food": 1.0}
    assert client.get("/v1/users/amy/controls").json() == r.json()
    assert [i["id"] for i in client.get("/v1/users/amy/feed?n=5").json()["items"]] == ["dog1"]


@pytest.mark.parametrize("body, field", [
    ({"blocked_keywords": ["x"] * 201}, "blocked_keywords"),
    ({"blocked_keywords": [""]}, "blocked_keywords.0"),
    ({"blocked_keywords": ["!!!"]}, "blocked_keywords.0"),
    ({"blocked_keywords": ["x" * 101]}, "blocked_keywords.0"),
    ({"topic_weights": {"a": 1.5}}, "topic_weights.a"),
    ({"topic_weights": {"a": "high"}}, "topic_weights.a"),
    ({"topic_weights": {"a": 1}, "extra": 1}, "extra"),
])
def test_bad_controls_are_refused_and_change_nothing(client: TestClient, body: dict[str, Any], field: str) -> None:
    client.put("/v1/users/amy", json={})
    client.put("/v1/users/amy/controls", json={"blocked_keywords": ["keep"]})
    r = client.put("/v1/users/amy/controls", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
    assert client.get("/v1/users/amy/controls").json()["blocked_keywords"] == ["keep"]


def test_refresh(client: TestClient) -> None:
    assert client.post("/v1/users/ghost/refresh").status_code == 404
    upsert(client, *(item(f"i{k}", creator=f"c{k}", tags=["t"]) for k in range(4)))
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "i0", "type": "view", "watch_s": 20.0}]})
    r = client.post("/v1/users/amy/refresh", headers=AUTH)
    assert r.status_code == 200 and r.json()["id"] == "amy" and r.json()["refreshed_at"].endswith("Z")
    assert client.get("/v1/users/amy/controls").json()["refreshed_at"] == r.json()["refreshed_at"]
    assert "i0" not in [i["id"] for i in client.get("/v1/users/amy/feed?n=10").json()["items"]]


def test_personalized_flag(client: TestClient) -> None:
    assert client.put("/v1/users/amy", json={"personalized": False}).json()["personalized"] is False
    assert client.put("/v1/users/amy", json={"lang": "en"}).json()["personalized"] is False  # left as it was
    assert client.put("/v1/users/amy", json={"personalized": "no"}).status_code == 422
    assert client.get("/v1/users/amy").json()["personalized"] is False


def test_feed_explain(client: TestClient) -> None:
    upsert(client, *(item(f"i{k}", creator=f"c{k}") for k in range(5)))
    plain = client.get("/v1/users/amy/feed?n=2").json()["items"]
    assert plain and all("explain" not in i for i in plain)
    explained = client.get("/v1/users/amy/feed?n=2&explain=true").json()["items"]
    assert explained
    for it in explained:
        x = it["explain"]
        assert set(x) >= {"sources", "ranker", "predictions", "weights", "value", "topic_weight", "policy"}
        assert 0 <= x["predictions"]["complete"] <= 1 and x["weights"]["complete"] == 1.0
    assert client.get("/v1/users/amy/feed?explain=maybe").status_code == 422


def test_algorithm_card(client: TestClient) -> None:
    r = client.get("/v1/algorithm", headers=AUTH)
    assert r.status_code == 200
    card = r.json()
    assert card["weights"]["follow"] == 6.0 and card["policy"]["topic_run_cap"] == 4
    assert card["ranker"] in ("learned", "heuristic") and "budgets" in card and "signals" in card


def test_item_exposure(client: TestClient) -> None:
    upsert(client, item("old", created_at="2020-01-01T00:00:00Z"), item("new", creator="c2"))
    assert client.get("/v1/items/old").json()["exposure"]["status"] == "none"
    fresh = client.get("/v1/items/new").json()["exposure"]
    assert fresh["status"] == "waiting" and fresh["pool"] == 1 and fresh["first_served_at"] is None
    assert fresh["pools"] == [{"pool": 1, "size": 300, "outcome": None, "served": 0}]
    client.get("/v1/users/amy/feed?n=2")
    after = client.get("/v1/items/new").json()["exposure"]
    assert after["status"] == "in_pool" and after["pools"][0]["served"] == 1 and after["first_served_at"]
