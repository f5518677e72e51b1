"""Every error case of issue 2, section 4, through the real app: the body is always
`{"errors": [{"field", "message", ("index")}]}`, batches are all-or-nothing, and nothing is ever a 500
or a stack trace."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import MakeClient
from factories import ADMIN_KEY, AUTH

with warnings.catch_warnings():  # starlette warns (a UserWarning) that it prefers httpx2 over httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    c = make_client()
    r = c.post("/v1/items", json={"items": [item("known"), item("known2", "c2")]})
    assert r.status_code == 200
    return c


def item(item_id: str, creator: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"id": item_id, "creator": creator, "duration_s": 20.0, **fields}


def assert_errors(r: httpx.Response, status: int) -> list[dict[str, Any]]:
    """The response is `status` with the error body shape; returns the error entries."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"errors"}, body
    errors = body["errors"]
    assert isinstance(errors, list) and errors, body
    for e in errors:
        assert isinstance(e, dict) and {"field", "message"} <= set(e) <= {"field", "message", "index"}, e
        assert isinstance(e["field"], str)
        assert isinstance(e["message"], str) and e["message"].strip(), e
        if "index" in e:
            assert isinstance(e["index"], int) and not isinstance(e["index"], bool) and e["index"] >= 0, e
    return errors  # type: ignore[no-any-return]


def one_error(r: httpx.Response, status: int, field: str, index: int | None = None) -> dict[str, Any]:
    errors = assert_errors(r, status)
    matching = [e for e in errors if e["field"] == field and e.get("index") == index]
    assert matching, f"no error for field {field!r} index {index}: {errors}"
    return matching[0]


def post_items(client: TestClient, *items: Any) -> httpx.Response:
    return client.post("/v1/items", json={"items": list(items)})


def post_events(client: TestClient, *events: Any) -> httpx.Response:
    return client.post("/v1/events", json={"events": list(events)})


def stats(client: TestClient, item_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/items/{item_id}")
    assert r.status_code == 200, r.text
    return r.json()["stats"]  # type: ignore[no-any-return]


# -- items: one field at a time, with its dotted path --

BAD_ITEM_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"tags": ["ok", "ok2", "ok3", ""]}, "tags.3"),
    ({"tags": ["ok", "x" * 65]}, "tags.1"),
    ({"tags": [f"t{i}" for i in range(33)]}, "tags"),
    ({"tags": "cooking"}, "tags"),
    ({"tags": ["a", 7]}, "tags.1"),
    ({"id": "has space"}, "id"),
    ({"id": ""}, "id"),
    ({"id": "x" * 129}, "id"),
    ({"id": "caf\u00e9"}, "id"),
    ({"id": 12}, "id"),
    ({"creator": "a/b"}, "creator"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": -3}, "duration_s"),
    ({"duration_s": 3600.5}, "duration_s"),
    ({"duration_s": "12"}, "duration_s"),
    ({"duration_s": True}, "duration_s"),
    ({"duration_s": None}, "duration_s"),
    ({"caption": "x" * 4001}, "caption"),
    ({"caption": 5}, "caption"),
    ({"topic": ""}, "topic"),
    ({"topic": "x" * 65}, "topic"),
    ({"sound": "bad sound"}, "sound"),
    ({"regions": ["us", "EU"]}, "regions.1"),
    ({"regions": "us"}, "regions"),
    ({"regions": [""]}, "regions.0"),
    ({"created_at": "2024-05-01T12:00:00"}, "created_at"),
    ({"created_at": "yesterday"}, "created_at"),
    ({"created_at": 1714564800}, "created_at"),
    ({"mature": "yes"}, "mature"),
    ({"mature": 1}, "mature"),
]


@pytest.mark.parametrize(("patch", "field"), BAD_ITEM_FIELDS, ids=[f for _, f in BAD_ITEM_FIELDS])
def test_invalid_item_field(client: TestClient, patch: dict[str, Any], field: str) -> None:
    bad = {**item("new-item"), **patch}
    r = post_items(client, item("ok-0"), bad)
    one_error(r, 422, field, index=1)
    assert all(e.get("index") == 1 for e in r.json()["errors"]), r.json()
    for item_id in ("ok-0", "new-item"):
        assert client.get(f"/v1/items/{item_id}").status_code == 404, "a rejected batch stores nothing"


@pytest.mark.parametrize("missing", ["id", "creator", "duration_s"])
def test_missing_required_item_field(client: TestClient, missing: str) -> None:
    bad = item("new-item")
    del bad[missing]
    one_error(post_items(client, bad), 422, missing, index=0)


def test_rejected_item_batch_changes_nothing(client: TestClient) -> None:
    """Valid entries (new ones and a change to an existing one) are not applied when any entry fails."""
    before = client.get("/v1/items/known").json()
    r = post_items(client, item("fresh-1"), item("known", "other-creator", caption="changed"),
                   item("fresh-2", tags=["a", ""]), item("fresh-3", duration_s=-1))
    errors = assert_errors(r, 422)
    assert {(e["field"], e.get("index")) for e in errors} == {("tags.1", 2), ("duration_s", 3)}
    assert client.get("/v1/items/known").json() == before
    for i in (1, 2, 3):
        assert client.get(f"/v1/items/fresh-{i}").status_code == 404
    feed = client.get("/v1/users/someone/feed", params={"n": 100}).json()
    assert sorted(i["id"] for i in feed["items"]) == ["known", "known2"]


def test_item_batch_over_10000_rejected(client: TestClient) -> None:
    items = [{"id": f"b{i}", "creator": "c", "duration_s": 1} for i in range(10_001)]
    r = post_items(client, *items)
    errors = assert_errors(r, 422)
    assert any(e["field"] == "items" for e in errors), errors[:3]
    assert client.get("/v1/items/b0").status_code == 404
    # exactly 10,000 is fine
    r = post_items(client, *items[:10_000])
    assert r.status_code == 200 and r.json() == {"upserted": 10_000}


def test_unknown_item_field_is_named(client: TestClient) -> None:
    r = post_items(client, {**item("x1"), "colour": "red"})
    errors = assert_errors(r, 422)
    assert errors[0].get("index") == 0
    assert "colour" in errors[0]["field"] or "colour" in errors[0]["message"]


@pytest.mark.parametrize("body", [{}, {"items": None}, {"items": {}}, {"items": [1]}, {"items": ["x"]},
                                  {"items": [[]]}, {"items": [None]}, {"events": []}])
def test_item_batch_wrong_shape(client: TestClient, body: Any) -> None:
    assert_errors(client.post("/v1/items", json=body), 422)


def test_item_created_at_far_past_offset_never_500(client: TestClient) -> None:
    """RFC 3339 allows year 0001 with a positive offset; its UTC instant falls in year 0. The API must
    either reject it (422) or store it and show it back, never fail later with a 500."""
    for created in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        r = post_items(client, item("ancient", created_at=created))
        assert r.status_code in (200, 422), r.text
        if r.status_code == 200:
            got = client.get("/v1/items/ancient")
            assert got.status_code == 200, f"created_at={created}: GET gave {got.status_code} {got.text}"
        else:
            one_error(r, 422, "created_at", 0)


NOT_RFC3339 = ["2024-W18-3T12:00:00Z", "20240501T120000Z", "2024-05-01T12Z", "2024-05-01T12:00Z",
               "2024-05-01T12:00:00+0200", "2024-05-01T12:00:00+02", "2024-05-01", "2024-122T12:00:00Z",
               "2024-02-30T12:00:00Z", "2024-05-01T25:00:00Z", "2024-05-01T12:00:00+24:00"]


@pytest.mark.parametrize("value", NOT_RFC3339)
def test_timestamps_must_be_rfc3339(client: TestClient, value: str) -> None:
    """ISO 8601 forms that RFC 3339 does not allow are rejected, for items and events alike."""
    one_error(post_items(client, item("when", created_at=value)), 422, "created_at", 0)
    one_error(post_events(client, {"user": "u1", "item": "known", "type": "like", "ts": value}), 422, "ts", 0)


@pytest.mark.parametrize("value", [
    "2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123+05:30", "2024-05-01T12:00:00-08:00", "2024-05-01T12:00:00.5Z",
    "2024-05-01T12:00:00.123456789Z",  # RFC 3339 allows any number of fraction digits (Go's RFC3339Nano)
    "2024-05-01t12:00:00z",  # RFC 3339 section 5.6: "T" and "Z" may be lower case
])
def test_rfc3339_timestamps_accepted(client: TestClient, value: str) -> None:
    r = post_items(client, item("when", created_at=value))
    assert r.status_code == 200, r.text
    created = client.get("/v1/items/when").json()["created_at"]
    assert abs(datetime.fromisoformat(created).timestamp() - datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
               - {"+05:30": -19800, "-08:00": 28800}.get(value[-6:], 0)) < 1
    r = post_events(client, {"user": "u1", "item": "known", "type": "like", "ts": value})
    assert r.status_code == 200, r.text


# -- events --

def test_view_without_watch_s(client: TestClient) -> None:
    r = post_events(client, {"user": "u1", "item": "known", "type": "like"},
                    {"user": "u1", "item": "known", "type": "view"})
    one_error(r, 422, "watch_s", index=1)
    assert stats(client, "known")["likes"] == 0


def test_unknown_item_in_events(client: TestClient) -> None:
    r = post_events(client, {"user": "u1", "item": "known", "type": "view", "watch_s": 3},
                    {"user": "u1", "item": "no-such-video", "type": "like"},
                    {"user": "u2", "item": "known", "type": "like", "id": "e-ok"})
    err = one_error(r, 422, "item", index=1)
    assert "no-such-video" in err["message"]
    s = stats(client, "known")
    assert s["views"] == 0 and s["likes"] == 0, "nothing from a rejected batch is stored"
    assert client.get("/v1/users/u1").status_code == 404
    assert client.get("/v1/users/u2").status_code == 404
    # the valid event's id was not remembered either
    r = post_events(client, {"user": "u2", "item": "known", "type": "like", "id": "e-ok"})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}


def test_rejected_event_batch_does_not_shape_the_feed(client: TestClient) -> None:
    r = post_events(client, {"user": "u1", "item": "known", "type": "view", "watch_s": 20},
                    {"user": "u1", "item": "missing", "type": "view", "watch_s": 1})
    assert_errors(r, 422)
    served = [i["id"] for i in client.get("/v1/users/u1/feed").json()["items"]]
    assert "known" in served, "a view from a rejected batch must not mark the item as seen"


def _future(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


BAD_EVENTS: list[tuple[dict[str, Any], str]] = [
    ({"type": "watch"}, "type"),
    ({"type": ""}, "type"),
    ({"type": None}, "type"),
    ({"user": "bad user"}, "user"),
    ({"user": ""}, "user"),
    ({"item": "bad item"}, "item"),
    ({"watch_s": -1}, "watch_s"),
    ({"watch_s": "10"}, "watch_s"),
    ({"watch_s": True}, "watch_s"),
    ({"ts": "2024-05-01 12:00:00"}, "ts"),
    ({"ts": "2024-05-01T12:00:00"}, "ts"),
    ({"ts": "not a time"}, "ts"),
    ({"ts": 1714564800}, "ts"),
    ({"id": 5}, "id"),
    ({"request_id": 5}, "request_id"),
]


@pytest.mark.parametrize(("patch", "field"), BAD_EVENTS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_EVENTS)])
def test_invalid_event_field(client: TestClient, patch: dict[str, Any], field: str) -> None:
    good = {"user": "u1", "item": "known", "type": "view", "watch_s": 5.0}
    r = post_events(client, good, good, {**good, **patch})
    one_error(r, 422, field, index=2)
    assert stats(client, "known")["views"] == 0


@pytest.mark.parametrize("missing", ["user", "item", "type"])
def test_missing_required_event_field(client: TestClient, missing: str) -> None:
    ev = {"user": "u1", "item": "known", "type": "like"}
    del ev[missing]
    one_error(post_events(client, ev), 422, missing, index=0)


def test_event_timestamp_future_limit(client: TestClient) -> None:
    r = post_events(client, {"user": "u1", "item": "known", "type": "like", "ts": _future(4)})
    assert r.status_code == 200, r.text
    r = post_events(client, {"user": "u1", "item": "known", "type": "like"},
                    {"user": "u1", "item": "known", "type": "like", "ts": _future(6)})
    one_error(r, 422, "ts", index=1)
    assert stats(client, "known")["likes"] == 1


def test_several_invalid_events_reported(client: TestClient) -> None:
    # several entries with the same kind of problem are all reported, each with its index
    r = post_events(client, {"user": "u1", "item": "known", "type": "like"},
                    {"user": "u1", "item": "known", "type": "nope"},
                    {"user": "u1", "item": "known", "type": "like"},
                    {"user": "u1", "item": "known", "type": "also-nope"})
    assert {(e["field"], e.get("index")) for e in assert_errors(r, 422)} == {("type", 1), ("type", 3)}
    r = post_events(client, {"user": "u1", "item": "known", "type": "like"},
                    {"user": "u1", "item": "nope", "type": "like"},
                    {"user": "u1", "item": "known", "type": "share", "ts": _future(60)},
                    {"user": "u1", "item": "nope2", "type": "share"})
    assert {(e["field"], e.get("index")) for e in assert_errors(r, 422)} == {("item", 1), ("ts", 2), ("item", 3)}
    # mixed problems: whatever is reported is true, and the batch is rejected whole
    r = post_events(client, {"user": "u1", "item": "nope", "type": "like"},
                    {"user": "u1", "item": "known", "type": "view"},
                    {"user": "u1", "item": "known", "type": "like"},
                    {"user": "u1", "item": "known", "type": "bad-type"})
    reported = {(e["field"], e.get("index")) for e in assert_errors(r, 422)}
    assert reported <= {("item", 0), ("watch_s", 1), ("type", 3)}, reported
    assert stats(client, "known")["likes"] == 0


def test_event_batch_over_10000_rejected(client: TestClient) -> None:
    ev = {"user": "u1", "item": "known", "type": "like"}
    r = post_events(client, *([ev] * 10_001))
    assert any(e["field"] == "events" for e in assert_errors(r, 422))
    assert stats(client, "known")["likes"] == 0


def test_events_for_taken_down_item_accepted(client: TestClient) -> None:
    assert client.delete("/v1/items/known").status_code == 200
    r = post_events(client, {"user": "u1", "item": "known", "type": "view", "watch_s": 20})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}


# -- malformed bodies --

@pytest.mark.parametrize("raw", [b"{", b"{\"items\": [}", b"not json", b"{'items': []}", b"\xff\xfe\x00",
                                 b"{\"items\": []} trailing", b"[1,"])
@pytest.mark.parametrize("path", ["/v1/items", "/v1/events"])
def test_malformed_json_is_400(client: TestClient, raw: bytes, path: str) -> None:
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    errors = assert_errors(r, 400)
    assert errors[0]["field"] == "body"


def test_malformed_json_user_body_is_400(client: TestClient) -> None:
    r = client.put("/v1/users/u1", content=b"{\"lang\": ", headers={"content-type": "application/json"})
    assert_errors(r, 400)
    assert client.get("/v1/users/u1").status_code == 404


@pytest.mark.parametrize("raw", [b"", b"   "])
def test_empty_body_is_400(client: TestClient, raw: bytes) -> None:
    assert_errors(client.post("/v1/items", content=raw), 400)
    assert_errors(client.post("/v1/events", content=raw), 400)
    assert_errors(client.put("/v1/users/u1", content=raw), 400)


@pytest.mark.parametrize("raw", [b"[]", b"null", b"42", b"\"items\""])
def test_body_not_an_object(client: TestClient, raw: bytes) -> None:
    r = client.post("/v1/items", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert_errors(r, r.status_code)


def test_json_accepted_without_content_type(client: TestClient) -> None:
    r = client.post("/v1/items", content=json.dumps({"items": [item("plain")]}).encode())
    assert r.status_code == 200, r.text


# -- body size --

def test_oversized_body_with_content_length_is_413(make_client: MakeClient) -> None:
    small = make_client(**{"server.max_body_mb": 0.01})  # about 10 KB
    items = [item(f"big{i}", caption="x" * 500) for i in range(40)]
    r = small.post("/v1/items", json={"items": items})
    errors = assert_errors(r, 413)
    assert errors[0]["field"] == "body"
    assert small.get("/v1/items/big0").status_code == 404
    # a small body still works on the same server
    assert small.post("/v1/items", json={"items": [item("tiny")]}).status_code == 200
    events = [{"user": "u1", "item": "tiny", "type": "like", "id": f"e{i:06d}"} for i in range(400)]
    assert_errors(small.post("/v1/events", json={"events": events}), 413)
    assert stats(small, "tiny")["likes"] == 0


def test_oversized_chunked_body_is_413(make_client: MakeClient) -> None:
    small = make_client(**{"server.max_body_mb": 0.01})
    payload = json.dumps({"items": [item(f"big{i}", caption="x" * 500) for i in range(40)]}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 1000):
            yield payload[start:start + 1000]

    r = small.post("/v1/items", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_errors(r, 413)
    assert small.get("/v1/items/big0").status_code == 404


def test_oversized_user_body_is_413(make_client: MakeClient) -> None:
    small = make_client(**{"server.max_body_mb": 0.01})
    assert_errors(small.put("/v1/users/u1", json={"interests": ["x" * 60] * 300}), 413)


# -- routes, unknown things, conflicts, query parameters --

@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("GET", "/v1"), ("POST", "/v1/nothing"),
                                              ("GET", "/v1/items"), ("GET", "/v1/users/u1/feed/extra"),
                                              ("DELETE", "/v2/items/known")])
def test_unknown_route_is_404_or_405(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path)
    assert r.status_code in (404, 405), r.text
    assert_errors(r, r.status_code)


def test_unknown_route_404(client: TestClient) -> None:
    assert_errors(client.get("/definitely/not/here"), 404)


def test_wrong_method_has_error_shape(client: TestClient) -> None:
    r = client.patch("/v1/items/known")
    assert 400 <= r.status_code < 500
    assert_errors(r, r.status_code)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/items/ghost"), ("DELETE", "/v1/items/ghost"),
                                              ("POST", "/v1/items/ghost/restore"), ("GET", "/v1/users/ghost")])
def test_unknown_item_or_user_is_404(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path)
    err = assert_errors(r, 404)[0]
    assert "ghost" in err["message"]
    assert client.get("/v1/items/ghost").status_code == 404, "a 404 must not create the item"


def test_region_conflicts_are_409(make_client: MakeClient) -> None:
    c = make_client(**{"server.regions": "us,eu"})
    err = assert_errors(c.put("/v1/users/u1", json={"region": "jp"}), 409)[0]
    assert err["field"] == "region" and "jp" in err["message"]
    assert c.get("/v1/users/u1").status_code == 404, "a rejected PUT creates nobody"
    assert c.put("/v1/users/u1", json={"region": "eu", "lang": "de"}).status_code == 200
    err = assert_errors(c.put("/v1/users/u1", json={"region": "us", "lang": "en"}), 409)[0]
    assert err["field"] == "region"
    profile = c.get("/v1/users/u1").json()
    assert profile["region"] == "eu" and profile["lang"] == "de", "a rejected PUT changes nothing"


@pytest.mark.parametrize(("body", "field"), [({"age_band": "adult"}, "age_band"), ({"region": "US"}, "region"),
                                             ({"interests": "cooking"}, "interests"),
                                             ({"interests": ["ok", ""]}, "interests.1"),
                                             ({"lang": 5}, "lang")])
def test_invalid_user_body_is_422(client: TestClient, body: dict[str, Any], field: str) -> None:
    one_error(client.put("/v1/users/u1", json=body), 422, field)
    assert client.get("/v1/users/u1").status_code == 404


@pytest.mark.parametrize("n", ["0", "101", "-1", "abc", "1.5", "", "1e3"])
def test_feed_bad_n_is_422(client: TestClient, n: str) -> None:
    err = one_error(client.get("/v1/users/u1/feed", params={"n": n}), 422, "n")
    assert "index" not in err
    assert client.get("/v1/users/u1").status_code == 404, "a rejected feed request creates nobody"


@pytest.mark.parametrize("path", ["/v1/items/bad%20id", "/v1/items/" + "x" * 129, "/v1/users/a%2Fb/feed",
                                  "/v1/users/caf%C3%A9"])
def test_bad_path_ids_are_client_errors(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (404, 422), r.text
    assert_errors(r, r.status_code)


def test_a_bad_key_is_refused_before_the_body_is_read(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": [{"user": "u1", "item": "ghost", "type": "like"}]},
                    headers={"Authorization": "Bearer nonsense"})
    one_error(r, 401, "authorization")
    assert r.headers["www-authenticate"] == "Bearer"


def test_an_unexpected_error_shows_and_logs_no_detail(make_client: MakeClient,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def boom(user_id: str) -> None:
        raise RuntimeError(f"user {user_id} broke it with key {ADMIN_KEY}")

    client = make_client()
    client.app.add_api_route("/v1/boom/{user_id}", boom)  # type: ignore[attr-defined]
    loud = TestClient(client.app, raise_server_exceptions=True, headers=AUTH)  # nothing is re-raised
    with caplog.at_level("DEBUG"):
        r = loud.get("/v1/boom/secret-user")
    assert r.status_code == 500 and r.json() == {"errors": [{"field": "", "message": "internal error"}]}
    logged = "\n".join(rec.getMessage() + str(rec.exc_info or "") for rec in caplog.records
                       if rec.name != "httpx")  # the test's own client logs the URL it asked for
    assert "GET /v1/boom/{user_id}: RuntimeError at test_http_errors.py:" in logged  # enough to find the bug
    for secret in ("secret-user", ADMIN_KEY, "Traceback"):
        assert secret not in logged and secret not in r.text
