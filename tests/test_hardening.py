"""Regression tests for the security review of issue 12, one or more per finding: scopes fail closed
under a prefix, regions do not leak through event ids, region-bound keys stay off shared state, ids
"." and ".." are refused. (Bounded feeds, abuse limits, periodic work and secrets have their own
files: test_feed_budget.py, test_limits.py, test_periodic.py, test_secrets.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
import warnings
from typing import Any

import orjson
import pytest
from conftest import MakeClient
from factories import ADMIN_KEY
from starlette.applications import Starlette
from starlette.routing import Mount

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from foryou.errors import InvalidInput
from foryou.privacy.keys import KeyRing

ITEMS = {"items": [{"id": f"v{k}", "creator": "c", "duration_s": 10} for k in range(3)]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def keys_of(client: TestClient) -> KeyRing:
    keys: KeyRing = client.app.state.keys  # type: ignore[attr-defined]
    return keys


def new_key(client: TestClient, *scopes: str, region: str | None = None) -> str:
    return keys_of(client).create("test", list(scopes), 0.0, region)[1]


# -- the scope check fails closed, also under a prefix --

@pytest.mark.parametrize("how", ["root_path", "mount"])
def test_scopes_hold_when_the_app_is_mounted_under_a_prefix(make_client: MakeClient, how: str) -> None:
    client = make_client()
    client.post("/v1/items", json=ITEMS)
    client.post("/v1/events", json={"events": [{"user": "alice", "item": "v0", "type": "like"}]})
    feed_only = new_key(client, "feed")
    app: Any = client.app
    if how == "root_path":  # as behind a proxy that keeps the prefix: uvicorn --root-path /api
        prefixed = TestClient(app, root_path="/api", raise_server_exceptions=False)
    else:
        prefixed = TestClient(Starlette(routes=[Mount("/api", app=app)]), raise_server_exceptions=False)
    with prefixed:
        for method, path in [("GET", "/api/v1/users/alice/data"), ("GET", "/api/v1/audit"),
                             ("DELETE", "/api/v1/users/alice"), ("GET", "/api/metrics"),
                             ("DELETE", "/api/v1/items/v0")]:
            r = prefixed.request(method, path, headers=bearer(feed_only))
            assert r.status_code == 403, (method, path, r.status_code)
        assert prefixed.get("/api/v1/users/alice/feed", headers=bearer(feed_only)).status_code == 200
        assert prefixed.get("/api/v1/users/alice/data", headers=bearer(ADMIN_KEY)).status_code == 200
    assert client.get("/v1/users/alice").status_code == 200  # not erased


def test_a_path_no_route_matches_needs_the_admin_scope(make_client: MakeClient) -> None:
    client = make_client()
    feed_only = new_key(client, "feed")
    for path in ("/v2/anything", "/v1/users/alice/feed/extra", "/v1//users/alice/data"):
        assert client.get(path, headers=bearer(feed_only)).status_code == 403, path
        assert client.get(path).status_code == 404, path  # the admin key learns there is no such route
    # a known path with a method it does not have: no route either
    assert client.put("/v1/users/alice/feed", headers=bearer(feed_only)).status_code == 403


# -- regions stay apart --

def test_event_ids_do_not_leak_or_collide_across_regions(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    client.post("/v1/items", json=ITEMS)
    us_event = {"user": "sam", "item": "v0", "type": "like", "id": "evt-1"}
    eu_key = new_key(client, "events", "feed", region="eu")
    # an eu-bound key claims the id first, for its own user: the us user's real event still counts
    claim = client.post("/v1/events", json={"events": [{**us_event, "user": "eve"}]}, headers=bearer(eu_key))
    assert claim.json() == {"accepted": 1, "duplicates": 0}
    assert client.post("/v1/events", json={"events": [us_event]}).json() == {"accepted": 1, "duplicates": 0}
    assert client.get("/v1/items/v0").json()["stats"]["likes"] == 2
    # ... and posting the us user's id again from eu tells it nothing (and is refused: sam is us)
    probe = client.post("/v1/events", json={"events": [{**us_event, "user": "eve"}]}, headers=bearer(eu_key))
    assert probe.json() == {"accepted": 0, "duplicates": 1}  # eve's own key, not sam's
    assert client.post("/v1/events", json={"events": [us_event]}, headers=bearer(eu_key)).status_code == 403
    assert client.get("/v1/items/v0").json()["stats"]["likes"] == 2


def test_keyed_event_id_hashes_depend_on_the_secret(tmp_path: Any) -> None:
    from foryou.store import SQLiteStore
    from foryou.types import EventRecord

    def stored_keys(secret: bytes, folder: str) -> set[int]:
        store = SQLiteStore(tmp_path / folder, ["us"], secret)
        store.append_events("us", [EventRecord("u", "a", "like", 0.0, 1.0, "evt-1")], [])
        store.close()  # merges the log's look-ups
        conn = sqlite3.connect(tmp_path / folder / "region-us-index.db")
        keys = {int(h) for (h,) in conn.execute("SELECT h FROM event_keys")}
        conn.close()
        return keys

    assert stored_keys(b"one secret", "a") != stored_keys(b"another", "b")
    assert stored_keys(b"one secret", "c") == stored_keys(b"one secret", "d")


def test_region_bound_keys_cannot_hold_shared_scopes(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    keys = keys_of(client)
    for scopes in (["catalog"], ["admin"], ["feed", "catalog"]):
        with pytest.raises(InvalidInput, match="cannot be bound to one region"):
            keys.create("eu-ops", scopes, 0.0, "eu")
    # one bound before that rule (written straight into keys.db) is refused on shared routes all the same
    token = new_key(client, "feed", region="eu")
    keys.db.execute("UPDATE api_keys SET scopes='admin,catalog' WHERE id=?", (token.split("_")[1],))
    client.post("/v1/items", json=ITEMS)
    for method, path in [("DELETE", "/v1/items/v0"), ("GET", "/v1/audit"), ("GET", "/metrics"),
                         ("GET", "/v1/algorithm"), ("POST", "/v1/items")]:
        assert client.request(method, path, headers=bearer(token)).status_code == 403, path
    assert client.get("/v1/items/v0").json()["taken_down"] is False


# -- ids "." and ".." --

def test_dot_ids_are_refused(make_client: MakeClient) -> None:
    client = make_client()
    client.post("/v1/items", json=ITEMS)
    for bad in (".", ".."):
        r = client.post("/v1/events", json={"events": [{"user": bad, "item": "v0", "type": "like"}]})
        assert r.status_code == 422 and "not . or .." in r.text
        r = client.post("/v1/items", json={"items": [{"id": bad, "creator": "c", "duration_s": 10}]})
        assert r.status_code == 422
    dots = {"events": [{"user": "...", "item": "v0", "type": "like"}]}
    assert client.post("/v1/events", json=dots).status_code == 200
    # the path as a client that does not normalise it sends it (httpx would turn /users/../feed into /feed)
    for raw in ("/v1/users/../feed", "/v1/users/./feed", "/v1/users/.."):
        status = asyncio.run(_raw_get(client.app, raw))
        assert status == 422, (raw, status)
    assert client.get("/v1/users/..").status_code != 200


async def _raw_get(app: Any, path: str) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"authorization", f"Bearer {ADMIN_KEY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("test", 80), "scheme": "http", "http_version": "1.1",
             "state": {}}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body and orjson.loads(body)["errors"]
    return int(start["status"])


def test_a_batchs_users_are_looked_up_together(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no in-memory index of user ids, a region-bound key's batch of 1,000 users must not ask the
    store about each one on its own (that held the server 157 ms for 10,000 users)."""
    client = make_client(**{"server.regions": "us,eu", "limits.new_users_per_min": 0})
    client.post("/v1/items", json=ITEMS)
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    calls: list[int] = []
    real = engine.store.find_user_regions

    def counted(user_ids: Any) -> Any:
        calls.append(len(list(user_ids)))
        return real(user_ids)

    monkeypatch.setattr(engine.store, "find_user_regions", counted)
    eu_key = new_key(client, "events", region="eu")
    batch = {"events": [{"user": f"n{k}", "item": "v0", "type": "like"} for k in range(1000)]}
    assert client.post("/v1/events", json=batch, headers=bearer(eu_key)).json()["accepted"] == 1000
    assert len(calls) <= 4 and max(calls) == 1000  # a handful of batched look-ups, not one per user


def test_a_stored_users_region_is_asked_of_the_store_once(make_client: MakeClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches name the same users again and again: once the store gave a user's region it is kept
    (asking for each batch's was 10% of a server's time while ingesting), until the user is erased."""
    client = make_client(**{"store.user_cache": 10, "limits.new_users_per_min": 0})
    client.post("/v1/items", json=ITEMS)
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    asked: list[str] = []
    real = engine.store.find_user_regions
    monkeypatch.setattr(engine.store, "find_user_regions", lambda ids: asked.extend(ids) or real(ids))

    def post(tag: str) -> int:
        batch = {"events": [{"id": f"{tag}{k}", "user": f"n{k}", "item": "v0", "type": "like"} for k in range(100)]}
        return int(client.post("/v1/events", json=batch).json()["accepted"])

    assert post("a") == 100
    engine.live.checkpoint()  # saved: most leave memory (a cache of 10 users)
    asked.clear()
    assert post("b") == 100
    assert 90 <= len(set(asked)) <= 100  # the evicted users, from the store
    asked.clear()
    assert post("c") == 100 and asked == []
    assert client.delete("/v1/users/n5").status_code == 200
    assert engine.live.region_of("n5") is None
    assert client.get("/v1/users/n5/feed").status_code == 410


def test_an_erasure_in_a_data_directory_given_as_a_relative_path(tmp_path: Any, monkeypatch: Any) -> None:
    """`make run` uses ./foryou-data: the erasure's locks are found by the store's own paths."""
    from foryou.store import SQLiteStore
    from foryou.types import EventRecord, UserRecord

    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("relative-data", ["us"])
    try:
        store.append_events("us", [EventRecord("amy", "a", "like", 0.0, 1.0, "e1")], [UserRecord("amy", "us")])
        store.merge_log("us")
        store.append_events("us", [EventRecord("amy", "b", "like", 0.0, 2.0, "e2")], [])
        counts = store.erase_user("us", "amy", ["e1", "e2"])
        assert counts["events"] == 2 and counts["event_ids"] == 2 and counts["profile"] == 1
        assert store.user_events("us", "amy") == [] and store.known_event_ids("us", [("amy", "e1")]) == set()
    finally:
        store.close()
