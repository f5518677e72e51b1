"""Abuse is bounded (issue 12): per-key rate limits and a cap on the users a key's requests create
(429 with Retry-After, in the error shape), refusal budgets per peer address, idle users leaving
memory, and a real server that closes connections trickling headers or bodies and caps concurrency."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MakeClient
from factories import ADMIN_KEY, AUTH, Clock

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.http import create_app
from foryou.http import server as http_server
from foryou.http.refusals import REFUSALS_PER_MINUTE, client_address
from foryou.privacy.keys import KeyRing
from foryou.types import EventIn, ItemIn, UserIn

ITEMS = {"items": [{"id": f"v{k}", "creator": f"c{k}", "duration_s": 10} for k in range(40)]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Tick:
    """A monotonic clock for the limits, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limited(make_client: MakeClient, **overrides: Any) -> tuple[TestClient, Tick]:
    client = make_client(**overrides)
    tick = Tick()
    client.app.state.limits.clock = tick  # type: ignore[attr-defined]
    return client, tick


# -- per-key rate limits --

def test_a_keys_requests_are_rate_limited_with_retry_after(make_client: MakeClient) -> None:
    client, tick = limited(make_client, **{"limits.requests_per_s": 2.0, "limits.burst": 5})
    other = client.app.state.keys.create("other", ["catalog"], 0.0)[1]  # type: ignore[attr-defined]
    statuses = [client.get("/v1/items/none").status_code for _ in range(6)]
    assert statuses == [404] * 5 + [429]
    r = client.get("/v1/items/none")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert set(r.json()) == {"errors"} and "limits.requests_per_s" in r.json()["errors"][0]["message"]
    assert client.get("/v1/items/none", headers=bearer(other)).status_code == 404  # another key's own bucket
    tick.t += 1.0  # two more tokens
    assert [client.get("/v1/items/none").status_code for _ in range(3)] == [404, 404, 429]
    assert client.get("/healthz").status_code == 200  # no key, no limit


# -- the users a key may create --

def test_users_created_per_key_per_minute_are_capped_feeds_included(make_client: MakeClient) -> None:
    client, tick = limited(make_client, **{"limits.new_users_per_min": 3})
    client.post("/v1/items", json=ITEMS)
    for user in ("a", "b"):
        assert client.get(f"/v1/users/{user}/feed").status_code == 200  # a feed creates its user
    assert client.put("/v1/users/c", json={}).status_code == 200
    r = client.get("/v1/users/d/feed")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 20  # one user's worth: 60 s / 3
    assert r.json()["errors"][0]["field"] == "user"
    assert client.get("/v1/users/a/feed").status_code == 200  # known users are not counted
    batch = {"events": [{"user": u, "item": "v1", "type": "like"} for u in ("a", "e", "f")]}
    assert client.post("/v1/events", json=batch).status_code == 429
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    assert engine.live.regions_of(["d", "e", "f"]) == {}  # nothing of the refused requests was stored
    assert client.get("/v1/items/v1").json()["stats"]["likes"] == 0
    tick.t += 40.0
    assert client.post("/v1/events", json=batch).json()["accepted"] == 3
    too_many = {"events": [{"user": f"n{k}", "item": "v1", "type": "like"} for k in range(4)]}
    r = client.post("/v1/events", json=too_many)
    assert r.status_code == 422 and "smaller batches" in r.text


def test_users_a_key_may_create_keep_memory_flat(make_client: MakeClient) -> None:
    """80,000 random ids once took the server up by 1.2 KB each; now a key creates a bounded number."""
    client, _ = limited(make_client, **{"limits.new_users_per_min": 50})
    client.post("/v1/items", json=ITEMS)
    statuses = [client.get(f"/v1/users/r{k}/feed").status_code for k in range(120)]
    assert statuses.count(200) == 50 and statuses.count(429) == 70


# -- refusal budgets per peer --

def test_refusal_budgets_are_per_peer_address(make_client: MakeClient) -> None:
    client = make_client(**{"server.trusted_proxies": "10.0.0.2"})
    app: Any = client.app
    noisy = TestClient(app, client=("203.0.113.9", 4000), raise_server_exceptions=False)
    quiet = TestClient(app, client=("198.51.100.7", 4000), raise_server_exceptions=False)
    proxy = TestClient(app, client=("10.0.0.2", 4000), raise_server_exceptions=False)
    if time.time() % 60 > 50:  # the floods below must fall within one minute
        time.sleep(61 - time.time() % 60)
    for _ in range(REFUSALS_PER_MINUTE + 10):
        noisy.get("/v1/audit", headers=bearer("nonsense"))
    for _ in range(3):
        quiet.get("/v1/audit", headers=bearer("nonsense"))
        # through the proxy, the forwarded client counts; a spoofed hop before it does not matter
        proxy.get("/v1/audit", headers={**bearer("nonsense"), "X-Forwarded-For": "1.1.1.1, 192.0.2.5"})
    records = client.get("/v1/audit?limit=1000").json()["records"]
    refused = [r for r in records if r["action"] == "refused"]
    assert len(refused) == REFUSALS_PER_MINUTE + 3 + 3  # the noisy peer used up only its own budget


def test_refusals_without_a_key_are_bounded_however_many_addresses(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Addresses are cheap (IPv6, botnets): all callers without a key share an overall budget, and the
    table of counts stays small."""
    from foryou.http import refusals as module
    from foryou.privacy.audit import AuditLog

    audit = AuditLog(tmp_path, b"k" * 32)
    refusals = module.Refusals(audit, time.time)
    minute = [int(time.time() // 60)]
    monkeypatch.setattr(module.time, "time", lambda: minute[0] * 60.0 + 1)
    for k in range(3000):
        refusals.record(None, "Unauthorized", "GET /v1/audit", None, peer=f"2001:db8::{k:x}")
    assert len(refusals.counts) <= module.KEYLESS_PER_MINUTE
    assert sum(1 for r in audit.page(0, 5000) if r["action"] == "refused") == module.KEYLESS_PER_MINUTE
    minute[0] += 1  # the next minute: what was dropped is recorded, once
    refusals.record(None, "Unauthorized", "GET /v1/audit", None, peer="198.51.100.1")
    dropped = [r for r in audit.page(0, 5000) if r["action"] == "refused_dropped"]
    assert [r["target"] for r in dropped] == [str(3000 - module.KEYLESS_PER_MINUTE)]


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    def scope(peer: str, forwarded: str | None) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return {"client": (peer, 1), "headers": headers}

    assert client_address(scope("203.0.113.9", "1.2.3.4"), ["10.0.0.2"]) == "203.0.113.9"
    assert client_address(scope("10.0.0.2", "1.2.3.4, 192.0.2.5"), ["10.0.0.2"]) == "192.0.2.5"
    assert client_address(scope("10.0.0.2", "192.0.2.5, 10.0.0.1"), ["10.0.0.2", "10.0.0.1"]) == "192.0.2.5"
    assert client_address(scope("10.0.0.2", None), ["10.0.0.2"]) == "10.0.0.2"


# -- idle users leave memory --

@pytest.fixture
def small_cache(tmp_path: Path) -> Iterator[Engine]:
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "store.user_cache": 20,
                                        "learning.min_examples": 10, "learning.duel": False}, env={})
    engine = Engine.open(settings, clock=Clock(1_700_000_000.0), seed=0)
    engine.items.upsert([ItemIn(id=f"v{k}", creator=f"c{k % 7}", duration_s=10, tags=[f"t{k % 5}"])
                         for k in range(200)])
    yield engine
    engine.close()


def test_idle_users_leave_memory_and_come_back_whole(small_cache: Engine) -> None:
    engine, clock = small_cache, small_cache.clock
    events = [EventIn(user=f"u{u}", item=f"v{(u * 7 + k) % 200}", type="view", watch_s=10.0)
              for u in range(200) for k in range(5)]
    engine.events.ingest(events)
    engine.users.put("u3", UserIn(region="us"))
    clock.advance(120.0)  # type: ignore[attr-defined]
    engine.tick(clock())  # the views' joins close: their last training
    for u in range(200, 400):  # many others come and go
        engine.feeds.feed(f"u{u}", 5)
    engine.live.checkpoint()
    engine.learner.checkpoint()
    assert len(engine.live.users) <= 20
    assert len(engine.learner.model.users["us"]) <= 20
    table = engine.learner.model.users["us"]
    assert "u3" not in engine.live.users and "u3" not in table.index
    saved = engine.store.get_model_rows("us", "user", ["u3"])["u3"]
    # u3 comes back: the same region, state and learned vector, from the store
    assert engine.live.region_of("u3") == "us"
    assert engine.users.get("u3")["id"] == "u3"
    again = engine.learner.user_vector("us", "u3")
    assert again is not None and again.tobytes() == saved[:len(again) * 4]
    assert engine.privacy.export("u3")["inferred"]["learned_vector"] is not None  # type: ignore[index]


def test_refresh_of_an_idle_user_drops_their_saved_row(small_cache: Engine) -> None:
    engine = small_cache
    engine.events.ingest([EventIn(user="old", item=f"v{k}", type="view", watch_s=10.0) for k in range(5)])
    engine.learner.checkpoint()
    for u in range(60):
        engine.feeds.feed(f"x{u}", 3)
    engine.live.checkpoint()
    engine.learner.checkpoint()
    assert "old" not in engine.learner.model.users["us"].index
    assert engine.store.get_model_rows("us", "user", ["old"])
    engine.users.refresh("old")
    assert engine.learner.user_vector("us", "old") is None
    assert not engine.store.get_model_rows("us", "user", ["old"])


def test_saved_rows_of_users_idle_past_their_ttl_are_deleted(small_cache: Engine) -> None:
    engine, clock = small_cache, small_cache.clock
    engine.events.ingest([EventIn(user=f"w{u}", item=f"v{u}", type="view", watch_s=10.0) for u in range(50)])
    clock.advance(120.0)  # type: ignore[attr-defined]
    engine.tick(clock())  # the views' joins close: their last training
    for u in range(60):
        engine.feeds.feed(f"y{u}", 3)
    engine.live.checkpoint()
    engine.learner.checkpoint()
    stored = {k for k, _ in engine.store.iter_model_rows("us", "user")}
    assert {f"w{u}" for u in range(50)} <= stored
    clock.advance(engine.settings.learning.ttl_days * 86400 + 7200)  # type: ignore[attr-defined]
    for _ in range(5):
        engine.tick(clock())
    left = {k for k, _ in engine.store.iter_model_rows("us", "user")}
    assert not left & {f"w{u}" for u in range(50)}


# -- a real server: slow clients and concurrency --

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def real_server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    overrides = {"server.data": str(tmp_path / "d"), "server.port": port, "server.header_timeout_s": 0.5,
                 "server.body_timeout_s": 0.5, "server.max_concurrency": 4, "learning.enabled": False}
    settings = load_settings(overrides=overrides, env={})
    engine = Engine.open(settings)
    app = create_app(engine, KeyRing(tmp_path / "d", ADMIN_KEY))
    server = http_server.uvicorn.Server(http_server.config(app, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)
    engine.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_connection_trickling_headers_is_closed(real_server: int) -> None:
    with socket.create_connection(("127.0.0.1", real_server)) as slow:
        slow.sendall(b"GET /v1/users/a/feed HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert _closed_within(slow, 5.0)
        assert time.monotonic() - started < 3.0
    with socket.create_connection(("127.0.0.1", real_server)) as silent:  # connects, sends nothing
        assert _closed_within(silent, 5.0)
    assert httpx.get(f"http://127.0.0.1:{real_server}/healthz").status_code == 200


def test_a_body_trickling_in_gets_408(real_server: int) -> None:
    with socket.create_connection(("127.0.0.1", real_server)) as slow:
        slow.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"ev")
        slow.settimeout(5.0)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := slow.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b'"field":"body"' in reply


def test_a_body_trickling_after_an_early_refusal_is_cut_off(real_server: int) -> None:
    """A 401 is sent before the body is read: the connection must not stay open to a client that goes
    on trickling the body (a thousand such held `max_concurrency` against everyone, without a key)."""
    with socket.create_connection(("127.0.0.1", real_server)) as slow:
        slow.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
        slow.settimeout(5.0)
        assert slow.recv(4096).startswith(b"HTTP/1.1 401")
        started, closed = time.monotonic(), False
        while not closed and time.monotonic() - started < 8.0:  # a byte every 0.2 s
            try:
                slow.sendall(b"x")
                slow.settimeout(0.2)
                closed = slow.recv(4096) == b""
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                closed = True
        assert closed and time.monotonic() - started < 5.0  # body deadline 0.5 s, plus 1 s of grace


def test_concurrency_beyond_the_limit_gets_503(real_server: int) -> None:
    held = [socket.create_connection(("127.0.0.1", real_server)) for _ in range(4)]
    try:
        time.sleep(0.1)
        r = httpx.get(f"http://127.0.0.1:{real_server}/v1/items/x", headers=AUTH)
        assert r.status_code == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"http://127.0.0.1:{real_server}/v1/items/x", headers=AUTH).status_code == 404


def test_under_steady_ingestion_the_periodic_slices_keep_the_user_cache_bounded(small_cache: Engine) -> None:
    """Users with unsaved state cannot be evicted (nor saved before the item aggregates of their events
    are, once per `store.checkpoint_interval_s`): when more become dirty per tick than a slice saves,
    the slices grow, so the cache stays within about one interval's arrivals of its bound, and
    returns to it without a full checkpoint; the users left in it are saved once unsaved for
    `store.user_save_after_s`."""
    engine, clock = small_cache, small_cache.clock
    interval_ticks = int(engine.settings.store.checkpoint_interval_s / 0.5)
    save_ticks = int(engine.settings.store.user_save_after_s / 0.5)
    sizes = []
    for tick in range(60):
        engine.events.ingest([EventIn(user=f"t{tick}-{u}", item=f"v{u % 200}", type="view", watch_s=10.0)
                              for u in range(300)])  # 300 new users a tick: past the 200-user slice
        clock.advance(0.5)  # type: ignore[attr-defined]
        engine.tick(clock())
        sizes.append(len(engine.live.users))
    assert max(sizes) <= 20 + 300 * (interval_ticks + 2), sizes  # 200 a tick saved: ~7,000 at the end
    for _ in range(3 * interval_ticks):
        clock.advance(0.5)  # type: ignore[attr-defined]
        engine.tick(clock())
    assert len(engine.live.users) <= 20
    for _ in range(save_ticks):
        clock.advance(0.5)  # type: ignore[attr-defined]
        engine.tick(clock())
    assert not any(engine.live.dirty_users.values())
