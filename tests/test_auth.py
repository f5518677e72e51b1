"""API keys through the HTTP API and the CLI: 401 without a valid key, 403 outside the key's scopes or
region (before anything else about the request), keys stored only as salted hashes, revocation and
rotation at once on a running server, the admin key `serve` and `demo` print, region routing."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeClient
from factories import ADMIN_KEY, AUTH

from foryou import cli
from foryou.errors import InvalidInput
from foryou.privacy.audit import LOG
from foryou.privacy.keys import FILE, SCOPES, KeyRing

# What the issue says each route needs; written out here rather than read from the app, so that a
# route whose scope changes fails this test.
ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/v1/items", "catalog"),
    ("GET", "/v1/items/a", "catalog"),
    ("DELETE", "/v1/items/a", "catalog"),
    ("POST", "/v1/items/a/restore", "catalog"),
    ("POST", "/v1/events", "events"),
    ("PUT", "/v1/users/amy", "feed"),
    ("GET", "/v1/users/amy", "feed"),
    ("GET", "/v1/users/amy/controls", "feed"),
    ("PUT", "/v1/users/amy/controls", "feed"),
    ("POST", "/v1/users/amy/refresh", "feed"),
    ("GET", "/v1/users/amy/feed", "feed"),
    ("GET", "/v1/users/amy/data", "privacy"),
    ("DELETE", "/v1/users/amy", "privacy"),
    ("GET", "/v1/algorithm", "admin"),
    ("GET", "/v1/audit", "admin"),
    ("GET", "/metrics", "admin"),
]
NOW = time.time()  # keys live in wall-clock time, as the server checks them


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def handed_over(text: str) -> str:
    """The key a command said: on a terminal the key itself, else the path of the 0600 file it wrote."""
    found = re.search(r"fy_\w+", text)
    if found:
        return found[0]
    path = Path(re.findall(r"(/\S+key-\w+\.txt)", text)[0])
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


def keyring(client: Any) -> KeyRing:
    keys: KeyRing = client.app.state.keys
    return keys


def make_key(client: Any, *scopes: str, region: str | None = None) -> str:
    return keyring(client).create("test", list(scopes), NOW, region)[1]


def test_every_route_in_the_app_is_in_the_table(make_client: MakeClient) -> None:
    client = make_client()
    schema = client.get("/openapi.json").json()
    routed = {(method.upper(), re.sub(r"\{\w+\}", "x", path)) for path, ops in schema["paths"].items()
              for method in ops}
    listed = {(m, re.sub(r"/(a|amy)(?=/|$)", "/x", p)) for m, p, _ in ROUTES} | {("GET", "/healthz")}
    assert routed == listed
    for path, ops in schema["paths"].items():  # the scope is documented with each operation
        for op in ops.values():
            assert path == "/healthz" or op["security"] == [{"bearer": []}]


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_no_valid_key_is_401_before_anything_else(make_client: MakeClient, method: str, path: str,
                                                   scope: str) -> None:
    client = make_client()
    revoked = make_key(client, "admin")
    keyring(client).revoke(revoked.split("_")[1], NOW)
    wrong_secret = revoked.rsplit("_", 1)[0] + "_" + "0" * 48
    for headers in ({"Authorization": ""}, bearer("nonsense"), bearer(revoked), bearer(wrong_secret), bearer(""),
                    {"Authorization": f"Basic {ADMIN_KEY}"}, {"Authorization": ADMIN_KEY}):
        # a malformed body would be a 400 and an unknown item a 404: the key is checked first
        r = client.request(method, path, content=b"{not json", headers={**headers, "X-Region": "??"})
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["errors"][0]["field"] == "authorization"
        assert ADMIN_KEY not in r.text


def test_health_and_docs_need_no_key(make_client: MakeClient) -> None:
    client = make_client()
    for path in ("/healthz", "/docs", "/openapi.json"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200


@pytest.mark.parametrize("held", SCOPES)
def test_a_key_reaches_only_its_scopes(make_client: MakeClient, held: str) -> None:
    client = make_client()
    token = make_key(client, held)
    for method, path, needed in ROUTES:
        r = client.request(method, path, content=b"{not json", headers=bearer(token))
        if held in (needed, "admin"):
            assert r.status_code != 403, (method, path, r.text)
        else:
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["errors"] == [{"field": "authorization",
                                           "message": f"this key lacks the {needed!r} scope"}]


def test_scopes_combine_and_unknown_scopes_are_refused(make_client: MakeClient) -> None:
    client = make_client()
    token = make_key(client, "catalog", "events")
    r = client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]}, headers=bearer(token))
    assert r.status_code == 200
    ev = {"events": [{"user": "amy", "item": "a", "type": "view", "watch_s": 5}]}
    assert client.post("/v1/events", json=ev, headers=bearer(token)).status_code == 200
    assert client.get("/v1/users/amy/feed", headers=bearer(token)).status_code == 403
    for scopes in ([], ["root"], ["feed", "everything"]):
        with pytest.raises(InvalidInput):
            keyring(client).create("x", scopes, NOW)


def test_age_band_needs_a_feed_or_admin_key(make_client: MakeClient) -> None:
    client = make_client()
    body = {"age_band": "13-17"}
    for scope in ("catalog", "events", "privacy"):
        assert client.put("/v1/users/kid", json=body, headers=bearer(make_key(client, scope))).status_code == 403
    assert client.get("/v1/users/kid").status_code == 404  # nothing was stored by the refused calls
    r = client.put("/v1/users/kid", json=body, headers=bearer(make_key(client, "feed")))
    assert r.json()["age_band"] == "13-17"


def test_keys_are_stored_only_as_salted_hashes(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(data=tmp_path / "d")
    tokens = [make_key(client, "feed") for _ in range(3)]
    stored = (tmp_path / "d" / FILE).read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "d").glob(f"{FILE}-*"))
    for token in tokens:
        secret = token.rsplit("_", 1)[1]
        assert secret.encode() not in stored and bytes.fromhex(secret) not in stored
    rows = keyring(client).db.execute("SELECT salt, hash FROM api_keys").fetchall()
    assert len({salt for salt, _ in rows}) == len(rows) == 3  # a salt of its own each
    assert ADMIN_KEY.encode() not in stored  # the environment's key is never written
    assert (tmp_path / "d" / FILE).stat().st_mode & 0o777 == 0o600


def test_revoke_and_rotate_take_effect_on_a_running_server(make_client: MakeClient, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d"
    client = make_client(data=data)
    assert cli.main(["keys", "create", "--data", str(data), "--name", "app", "--scopes", "feed"]) == 0
    first = handed_over(capsys.readouterr().out)
    key_id = first.split("_")[1]
    assert client.get("/v1/users/amy/feed", headers=bearer(first)).status_code == 200
    assert cli.main(["keys", "rotate", key_id, "--data", str(data)]) == 0
    second = handed_over(capsys.readouterr().out)
    assert client.get("/v1/users/amy/feed", headers=bearer(first)).status_code == 401
    assert client.get("/v1/users/amy/feed", headers=bearer(second)).status_code == 200
    assert cli.main(["keys", "rotate", second.split("_")[1], "--grace-s", "3600", "--data", str(data)]) == 0
    third = handed_over(capsys.readouterr().out)
    assert client.get("/v1/users/amy/feed", headers=bearer(second)).status_code == 200  # within its grace
    assert client.get("/v1/users/amy/feed", headers=bearer(third)).status_code == 200
    # a key in its grace period cannot be rotated again (that would lengthen its life)
    assert cli.main(["keys", "rotate", second.split("_")[1], "--grace-s", "1e9", "--data", str(data)]) == 2
    assert cli.main(["keys", "revoke", third.split("_")[1], "--data", str(data)]) == 0
    assert client.get("/v1/users/amy/feed", headers=bearer(third)).status_code == 401
    assert cli.main(["keys", "revoke", third.split("_")[1], "--data", str(data)]) == 0  # said, not recorded
    capsys.readouterr()
    assert cli.main(["keys", "list", "--data", str(data)]) == 0
    listed = capsys.readouterr().out
    assert listed.count(" app ") == 3 and "revoked" in listed and "expires in" in listed
    assert first.split("_")[2] not in listed
    audit = (data / LOG).read_text()
    assert audit.count('"key_rotate"') == 2 and audit.count('"key_revoke"') == 1 and '"key_create"' in audit
    assert cli.main(["keys", "revoke", "nosuchkey", "--data", str(data)]) == 2
    assert cli.main(["keys", "create", "--data", str(data), "--name", "x", "--scopes", "root"]) == 2


def test_audit_records_name_the_key(make_client: MakeClient) -> None:
    client = make_client()
    token = make_key(client, "privacy", "events", "catalog")
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]}, headers=bearer(token))
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "like"}]}, headers=bearer(token))
    assert client.get("/v1/users/amy/data", headers=bearer(token)).status_code == 200
    client.get("/metrics")  # the admin key from the environment
    records = client.get("/v1/audit").json()["records"]
    assert [(r["action"], r["key"]) for r in records] == [("export", token.split("_")[1]), ("metrics_read", "env")]


def test_a_region_bound_key_stays_in_its_region(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    client.put("/v1/users/sam", json={"region": "us"})
    eu = make_key(client, "feed", "events", "privacy", region="eu")
    assert client.get("/v1/users/sam", headers=bearer(eu)).status_code == 403  # a user of another region
    assert client.get("/v1/users/sam/data", headers=bearer(eu)).status_code == 403
    assert client.delete("/v1/users/sam", headers=bearer(eu)).status_code == 403
    r = client.get("/v1/users/new/feed", headers={**bearer(eu), "X-Region": "us"})
    assert r.status_code == 403 and "region 'eu'" in r.text
    for twice in ([("X-Region", "us"), ("X-Region", "eu")], [("X-Region", "eu"), ("X-Region", "us")]):
        r = client.get("/v1/users/new2/feed", headers=[("Authorization", f"Bearer {eu}"), *twice])
        assert r.status_code == 403, twice  # a second header cannot smuggle another region past the check
    assert client.get("/v1/users/new/feed", headers=bearer(eu)).status_code == 200  # created in its region
    assert client.get("/v1/users/new").json()["region"] == "eu"
    ev = {"events": [{"user": "sam", "item": "a", "type": "like"}, {"user": "ann", "item": "a", "type": "like"}]}
    assert client.post("/v1/events", json=ev, headers=bearer(eu)).status_code == 403
    assert client.get("/v1/users/ann").status_code == 404  # nothing of the refused batch was stored
    assert client.get("/v1/users/sam/data").json()["events"] == []
    ev["events"] = ev["events"][1:]
    assert client.post("/v1/events", json=ev, headers=bearer(eu)).status_code == 200
    assert client.get("/v1/users/ann").json()["region"] == "eu"
    assert client.get("/v1/users/sam").status_code == 200  # the unbound admin key reaches every region
    assert client.put("/v1/users/zed", json={"region": "us"}, headers=bearer(eu)).status_code == 403
    refused = {r["target"] for r in client.get("/v1/audit?limit=1000").json()["records"] if r["action"] == "refused"}
    assert {"POST /v1/events", "PUT /v1/users/{user_id}", "GET /v1/users/{user_id}/data"} <= refused


def test_x_region_routes_users_and_refuses_regions_not_held(make_client: MakeClient) -> None:
    client = make_client(**{"server.regions": "us,eu"})
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    assert client.get("/v1/users/pia/feed", headers={"X-Region": "eu"}).status_code == 200
    assert client.get("/v1/users/pia").json()["region"] == "eu"
    ev = {"events": [{"user": "lou", "item": "a", "type": "like"}]}
    assert client.post("/v1/events", json=ev, headers={"X-Region": "eu"}).status_code == 200
    assert client.get("/v1/users/lou").json()["region"] == "eu"
    for method, path, _ in ROUTES:
        if "/users/" not in path and path != "/v1/events":
            continue
        body = ev if path == "/v1/events" else {}
        r = client.request(method, path.replace("amy", "pia"), json=body, headers={"X-Region": "cn"})
        assert r.status_code == 409, (method, path, r.text)
        assert "region 'cn' is not held by this server" in r.text
        if path != "/v1/events":  # pia is of eu: naming another held region is a conflict too
            r = client.request(method, path.replace("amy", "pia"), json=body, headers={"X-Region": "us"})
            assert r.status_code == 409 and "belongs to region 'eu'" in r.text, (method, path, r.text)
    assert client.get("/v1/users/pia/data").status_code == 200  # still there, in eu
    r = client.put("/v1/users/kim", json={"region": "us"}, headers={"X-Region": "eu"})
    assert r.status_code == 409 and client.get("/v1/users/kim").status_code == 404
    assert client.get("/v1/users/x/feed", headers={"X-Region": "EU!"}).status_code == 422


def test_the_environment_admin_key_must_be_long(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        KeyRing(tmp_path, admin_key="short")


def test_serve_makes_an_admin_key_once_and_demo_a_new_one_each_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    banners: list[list[str]] = []
    monkeypatch.setattr(cli, "_serve", lambda settings, keys, banner=list, config=None: banners.append(banner()))
    monkeypatch.delenv("FORYOU_ADMIN_KEY", raising=False)
    data = str(tmp_path / "d")
    assert cli.main(["serve", "--data", data]) == 0
    token = [handed_over(" ".join(banners[-1]))]
    assert "fy_" not in " ".join(banners[-1])  # stdout is no terminal here: the key went to a file
    ring = KeyRing(tmp_path / "d")
    key = ring.authenticate(token[0], NOW)
    assert key is not None and key.scopes == ("admin",)
    assert cli.main(["serve", "--data", data]) == 0
    assert banners[-1] == []  # a key exists: none is made or shown again
    monkeypatch.setenv("FORYOU_ADMIN_KEY", ADMIN_KEY)
    assert cli.main(["serve", "--data", str(tmp_path / "e")]) == 0
    assert banners[-1] == []  # the environment's key is the admin key
    monkeypatch.delenv("FORYOU_ADMIN_KEY")
    ring.create("seed", ["catalog"], NOW)  # demo loads nothing into a directory that has items
    from foryou.config import load_settings
    from foryou.engine import Engine
    from foryou.types import ItemIn

    with Engine.open(load_settings(overrides={"server.data": data}, env={})) as engine:
        engine.items.upsert([ItemIn(id="a", creator="c", duration_s=10)])
    demo_tokens = []
    for _ in range(2):
        assert cli.main(["demo", "--data", data]) == 0
        written = re.findall(r"(/\S+key-\w+\.txt)", banners[-1][0])[0]
        assert f"Bearer $(cat {written})" in banners[-1][-1]  # the curl line reads it
        demo_tokens.append(handed_over(banners[-1][0]))
    now = time.time()
    assert ring.authenticate(demo_tokens[1], now) is not None
    assert ring.authenticate(demo_tokens[0], now) is None  # the last start's demo key stops working
    assert '"key_revoke"' in (tmp_path / "d" / LOG).read_text()
    assert ring.authenticate(token[0], now) is not None


def test_nothing_slips_in_between_the_chunks_of_a_large_batch(make_client: MakeClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of events is appended in chunks, letting other requests in between. An erasure that
    arrives meanwhile waits for the batch, then removes its events too; a profile or a feed naming
    another region for one of the batch's new users finds the user already placed."""
    import asyncio

    import httpx

    from foryou.http import app as app_module

    monkeypatch.setattr(app_module, "INGEST_CHUNK", 1)  # a yield after every event
    client = make_client(**{"server.regions": "us,eu"})
    client.post("/v1/items", json={"items": [{"id": f"i{k}", "creator": "c", "duration_s": 10} for k in range(5)]})
    client.put("/v1/users/vic", json={"region": "us"})
    eu_events = make_key(client, "events", region="eu")
    filler = [{"user": f"f{k}", "item": f"i{k % 5}", "type": "like"} for k in range(150)]

    async def race() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
            async def later(method: str, path: str, **kw: Any) -> httpx.Response:
                await asyncio.sleep(0.02)  # while the batch is in its chunks
                return await c.request(method, path, **kw)

            batch1 = {"events": [*filler, {"user": "vic", "item": "i1", "type": "like"}]}
            others = [{**e, "user": "g" + str(e["user"])} for e in filler]  # of no region yet
            batch2 = {"events": [*others, {"user": "neo", "item": "i2", "type": "like"}]}
            first = await asyncio.gather(c.post("/v1/events", json=batch1), later("DELETE", "/v1/users/vic"))
            second = await asyncio.gather(c.post("/v1/events", json=batch2, headers=bearer(eu_events)),
                                          later("PUT", "/v1/users/neo", json={"region": "us"}),
                                          later("GET", "/v1/users/neo/feed", headers={"X-Region": "us"}))
            return [*first, *second]

    posted, erased, posted_eu, placed, fed = asyncio.run(race())
    assert posted.status_code == 200 and erased.status_code == 200, (posted.text, erased.text)
    assert erased.json()["deleted"]["events"] == 1  # it waited for the batch, and erased its event too
    assert client.get("/v1/users/vic/data").status_code == 404
    assert posted_eu.status_code == 200 and placed.status_code == 409, (posted_eu.text, placed.text)
    assert fed.status_code == 409 and "belongs to region 'eu'" in fed.text  # placed already, not waiting
    assert client.get("/v1/users/neo").json()["region"] == "eu"


def test_refused_privacy_and_admin_calls_are_audited(make_client: MakeClient) -> None:
    client = make_client()
    feed = make_key(client, "feed")
    assert client.get("/v1/users/amy/data", headers=bearer(feed)).status_code == 403
    assert client.get("/v1/items/a", headers=bearer(feed)).status_code == 403  # every 403
    assert client.get("/v1/items/a", headers={"Authorization": ""}).status_code == 401  # not audited: catalog
    if time.time() % 60 > 50:  # the flood below must fall within one minute of the wall clock
        time.sleep(61 - time.time() % 60)
    for _ in range(70):  # a flood without a key: at most 60 records a minute
        assert client.get("/v1/audit", headers=bearer("nonsense")).status_code == 401
    assert client.get("/v1/audit", headers=[("Authorization", f"Bearer {ADMIN_KEY}"),
                                            ("Authorization", "Bearer nonsense")]).status_code == 401  # one header
    engine = client.app.state.engine  # type: ignore[attr-defined]
    records = client.get("/v1/audit?limit=1000").json()["records"]
    refused = [(r["key"], r["outcome"], r["target"], r["subject"]) for r in records if r["action"] == "refused"]
    feed_id = feed.split("_")[1]
    assert refused[:2] == [(feed_id, "Forbidden", "GET /v1/users/{user_id}/data", engine.audit.subject("amy")),
                           (feed_id, "Forbidden", "GET /v1/items/{item_id}", None)]
    assert refused[2:] == [(None, "Unauthorized", "GET /v1/audit", None)] * 60


def test_users_data_files_are_private(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(data=tmp_path / "d", **{"server.regions": "us,eu"})
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "like"}]})
    assert client.get("/v1/users/amy/data").status_code == 200  # audited: the log and its head exist
    assert client.post("/v1/events", json={"events": []}, headers={"X-Region": "cn"}).status_code == 409
    names = ["region-us.db", "region-eu.db", "region-us-model.db", "region-us.db-wal", "region-us.db-shm",
             "audit.log", "audit.head", "keys.db", "privacy.key"]
    for name in names:
        assert (tmp_path / "d" / name).stat().st_mode & 0o777 == 0o600, name
