"""User-data protection: the export (right of access and portability) holds everything about the user,
and nothing about anyone else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import MakeClient
from factories import Clock

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.errors import NotFound
from foryou.types import ControlsIn, EventIn, ItemIn, UserIn, format_time

T0 = 1_700_000_000.0


def world() -> list[ItemIn]:
    return [ItemIn(id=f"i{k}", creator=f"c{k % 3}", duration_s=10.0, tags=[f"t{k % 2}"], sound=f"s{k % 2}",
                   created_at=format_time(T0 - 86400)) for k in range(12)]


def test_export_holds_everything_about_the_user_and_nothing_else(tmp_path: Path) -> None:
    clock = Clock(T0)
    settings = load_settings(overrides={"server.data": str(tmp_path), "server.regions": "us,eu",
                                        "learning.min_examples": 1, "learning.index": "exact"}, env={})
    with Engine.open(settings, clock=clock, seed=0) as e:
        e.items.upsert(world())
        e.users.put("amy", UserIn(region="eu", interests=["t1"], lang="fr"))
        e.users.set_controls("amy", ControlsIn(blocked_keywords=["spoiler"], topic_weights={"t0": -0.5}))
        e.events.ingest([EventIn(user="amy", item="i0", type="view", watch_s=10.0, id="e1"),
                         EventIn(user="amy", item="i1", type="follow"),
                         EventIn(user="amy", item="i2", type="not_interested"),
                         EventIn(user="bob", item="i3", type="view", watch_s=10.0)])
        served = [i.id for i in e.feeds.feed("amy", 3).items]
        e.feeds.feed("bob", 3)
        data = e.privacy.export("amy")
        assert data["profile"]["region"] == "eu" and data["profile"]["lang"] == "fr"  # type: ignore[index]
        assert data["controls"]["blocked_keywords"] == ["spoiler"]  # type: ignore[index]
        events = data["events"]
        assert [(x["item"], x["type"]) for x in events] == [  # type: ignore[union-attr, index]
            ("i0", "view"), ("i1", "follow"), ("i2", "not_interested")]
        assert events[0]["id"] == "e1" and events[0]["watch_s"] == 10.0  # type: ignore[index]
        assert [x["item"] for x in data["served"]] == served  # type: ignore[union-attr, index]
        inferred = data["inferred"]
        weights = {(x["kind"], x["name"]): x["weight"] for x in inferred["interests"]}  # type: ignore[index]
        # i0 (topic t0, creator c0) was finished: +1 on the topic; i2 (t0, c2) was "not interested": -4
        assert weights[("topic", "t0")] == pytest.approx(-3.0)
        assert weights[("creator", "c0")] > 0 > weights[("creator", "c2")]
        assert ("topic", "t1") in weights  # the declared interest
        assert inferred["follows"] == ["c1"]  # type: ignore[index]
        muted = {(x["kind"], x["name"]) for x in inferred["not_interested"]}  # type: ignore[index]
        assert muted == {("creator", "c2"), ("sound", "s0")}
        assert inferred["topic_views"] == {"t0": {"views": 1.0, "completions": 1.0}}  # type: ignore[index]
        vector = inferred["learned_vector"]  # type: ignore[index]
        assert vector is not None and len(vector) == settings.learning.dim
        assert "bob" not in str(data)  # nothing of the other user (ids, events, served rows)
        with pytest.raises(NotFound):
            e.privacy.export("nobody")


def test_export_over_http(make_client: MakeClient) -> None:
    client = make_client()
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    assert client.get("/v1/users/amy/data").status_code == 404
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "view", "watch_s": 3}]})
    r = client.get("/v1/users/amy/data")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"exported_at", "profile", "controls", "events", "served", "inferred"}
    assert body["profile"]["id"] == "amy" and [x["item"] for x in body["events"]] == ["a"]


# -- the audit log --
def audited_engine(tmp_path: Path) -> Engine:
    settings = load_settings(overrides={"server.data": str(tmp_path), "learning.enabled": False}, env={})
    engine = Engine.open(settings, clock=Clock(T0), seed=0)
    engine.items.upsert(world())
    engine.events.ingest([EventIn(user="amy", item="i0", type="view", watch_s=10.0)])
    engine.privacy.export("amy")
    engine.feeds.feed("amy", 2, explain=True)
    engine.feeds.feed("amy", 2)  # a plain feed reads no raw data: not audited
    engine.users.refresh("amy")
    with pytest.raises(NotFound):
        engine.privacy.export("nobody")
    engine.feeds.algorithm()
    return engine


def test_privacy_and_admin_calls_are_audited_without_user_ids(tmp_path: Path) -> None:
    from foryou.privacy import verify

    with audited_engine(tmp_path) as e:
        records = e.audit.page()
        assert [(r["seq"], r["action"], r["outcome"]) for r in records] == [
            (1, "export", "ok"), (2, "explain", "ok"), (3, "refresh", "ok"), (4, "export", "NotFound"),
            (5, "algorithm", "ok")]
        assert records[0]["subject"] == e.audit.subject("amy") != e.audit.subject("nobody")
        assert records[4]["subject"] is None and e.audit.page(after=3, limit=1) == [records[3]]
    log = (tmp_path / "audit.log").read_bytes()
    assert b"amy" not in log and b"nobody" not in log  # keyed hashes only
    assert verify(tmp_path).problem is None and verify(tmp_path).records == 5
    with audited_engine(tmp_path) as again:  # a restart continues the chain
        assert again.audit.page()[-1]["seq"] == 10
    assert verify(tmp_path).records == 10 and verify(tmp_path).problem is None


def _tamper(path: Path, how: str) -> None:
    lines = (path / "audit.log").read_bytes().splitlines(keepends=True)
    if how == "edit":
        lines[2] = lines[2].replace(b'"refresh"', b'"export"')
    elif how == "delete":
        del lines[1]
    elif how == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif how == "truncate":
        lines = lines[:3]
    elif how == "garbage":
        lines[3] = b"not json\n"
    elif how == "scalar":
        lines[3] = b"1\n"
    elif how == "rewound":  # cut off, and the head rewritten to match: only an anchor catches it
        lines = lines[:3]
        last = orjson.loads(lines[-1])
        (path / "audit.head").write_bytes(orjson.dumps({"seq": last["seq"], "hash": last["hash"]}))
    (path / "audit.log").write_bytes(b"".join(lines))


@pytest.mark.parametrize("how, first_bad", [("edit", "record 3"), ("delete", "record 2"), ("reorder", "record 2"),
                                            ("truncate", "ends at record 3"), ("garbage", "record 4"),
                                            ("scalar", "record 4"), ("rewound", "before the anchor's record")])
def test_verify_names_the_first_bad_record(tmp_path: Path, how: str, first_bad: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from foryou import cli
    from foryou.privacy import verify

    audited_engine(tmp_path).close()
    assert cli.main(["audit", "verify", "--data", str(tmp_path)]) == 0
    anchor = capsys.readouterr().out.rsplit("head ", 1)[1].strip()  # kept elsewhere by the operator
    assert verify(tmp_path, anchor).problem is None
    _tamper(tmp_path, how)
    problem = verify(tmp_path, anchor).problem
    assert problem is not None and first_bad in problem, problem
    assert cli.main(["audit", "verify", "--data", str(tmp_path), "--anchor", anchor]) == 1
    if how == "rewound":  # without the anchor, a rewritten head hides the cut: the documented limit
        assert verify(tmp_path).problem is None


def test_a_damaged_audit_log_stops_audited_calls_and_nothing_else(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(data=tmp_path / "d")
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "like"}]})
    assert client.get("/v1/users/amy/data").status_code == 200
    (tmp_path / "d" / "audit.head").write_bytes(b"")
    for method, path in (("GET", "/v1/users/amy/data"), ("DELETE", "/v1/users/amy"), ("GET", "/v1/algorithm")):
        r = client.request(method, path)
        assert r.status_code == 503 and "audit" in r.text, (path, r.text)
    assert client.get("/v1/users/amy/feed").status_code == 200  # serving goes on
    assert client.get("/v1/users/amy").status_code == 503  # a read of the profile is audited
    with (tmp_path / "d" / "audit.log").open("ab") as log:
        log.write(b"not json\n")
    assert client.get("/v1/audit").status_code == 503


def test_audit_over_http(make_client: MakeClient) -> None:
    client = make_client()
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "view", "watch_s": 3}]})
    assert client.get("/v1/users/amy/data").status_code == 200
    assert client.get("/v1/users/ghost/data").status_code == 404
    body = client.get("/v1/audit").json()
    assert [(r["action"], r["outcome"]) for r in body["records"]] == [("export", "ok"), ("export", "NotFound")]
    assert body["next"] is None
    page = client.get("/v1/audit?after=0&limit=1").json()
    assert [r["seq"] for r in page["records"]] == [1] and page["next"] == 1
    assert client.get("/v1/audit").json()["records"][-1]["action"] == "audit_read"  # reading it is recorded
    assert client.get("/v1/audit?limit=0").status_code == 422


# -- retention --
def test_retention_deletes_old_events_and_keeps_what_they_taught(tmp_path: Path) -> None:
    from foryou import cli

    clock = Clock(T0)
    settings = load_settings(overrides={"server.data": str(tmp_path), "privacy.retention_days": 30,
                                        "learning.min_examples": 1, "learning.index": "exact"}, env={})
    e = Engine.open(settings, clock=clock, seed=0)
    e.items.upsert(world())
    e.events.ingest([EventIn(user="amy", item="i0", type="view", watch_s=10.0, ts=format_time(T0))])
    clock.advance(40 * 86400)
    e.events.ingest([EventIn(user="amy", item="i1", type="view", watch_s=10.0, ts=format_time(clock.t))])
    weights = dict(e.live.user("amy").state.weights)
    served = {i.id for i in e.feeds.feed("amy", 4).items}
    assert e.retention.run() == {"us": 1}
    assert [x.item for x in e.live.store.user_events("us", "amy")] == ["i1"]
    assert e.retention.run() == {"us": 0}
    assert e.feeds.algorithm()["privacy"]["retention_days"] == 30.0  # type: ignore[index]
    assert [r["action"] for r in e.audit.page()][-3:] == ["retention", "retention", "algorithm"]
    e.close()
    # a start-up needs none of the purged events: the derived state is as it was
    again = Engine.open(settings, clock=clock, seed=0)
    try:
        assert again.live.user("amy").state.weights == pytest.approx(weights)
        assert again.items.get("i0")["stats"]["views"] == 1  # type: ignore[index]
        # served rows are kept: what was served is still never served again (a view of an item the
        # engine never served is forgotten with its event: documented)
        assert not served & {i.id for i in again.feeds.feed("amy", 12).items}
    finally:
        again.close()
    assert cli.main(["retention", "run", "--data", str(tmp_path)]) == 0  # nothing older now (wall clock)


def test_retention_over_http_runs_on_the_servers_schedule(make_client: MakeClient) -> None:
    import time

    clock = Clock(T0)
    client = make_client(clock=clock, **{"privacy.retention_days": 30})
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10},
                                             {"id": "b", "creator": "d", "duration_s": 10}]})
    old = {"user": "amy", "item": "a", "type": "view", "watch_s": 10, "ts": format_time(T0 - 40 * 86400)}
    new = {"user": "amy", "item": "b", "type": "view", "watch_s": 10, "ts": format_time(T0)}
    assert client.post("/v1/events", json={"events": [old, new]}).status_code == 200
    assert client.get("/v1/algorithm").json()["privacy"]["retention_days"] == 30.0
    with client:  # the lifespan: the server's ticks run retention (hourly; the first tick is due at once)
        deadline = time.monotonic() + 10
        while len(client.get("/v1/users/amy/data").json()["events"]) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [x["item"] for x in client.get("/v1/users/amy/data").json()["events"]] == ["b"]
    assert "retention" in [r["action"] for r in client.get("/v1/audit").json()["records"]]


def test_retention_is_off_unless_configured(tmp_path: Path) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path)}, env={})
    with Engine.open(settings, clock=Clock(T0 + 400 * 86400), seed=0) as e:
        e.items.upsert(world())
        e.events.ingest([EventIn(user="amy", item="i0", type="view", watch_s=10.0, ts=format_time(T0))])
        assert not e.retention.due(T0 + 400 * 86400) and e.retention.run() == {}
        assert len(e.live.store.user_events("us", "amy")) == 1


# -- erasure --
ERIN = "erin-7f3a9c"  # a user id that occurs nowhere else


def files_holding(folder: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_erasure_leaves_the_id_in_no_file_and_refuses_the_user_after(tmp_path: Path) -> None:
    from foryou.errors import Gone

    clock = Clock(T0)
    settings = load_settings(overrides={"server.data": str(tmp_path), "server.regions": "us,eu",
                                        "learning.min_examples": 1, "learning.index": "exact"}, env={})
    e = Engine.open(settings, clock=clock, seed=0)
    e.items.upsert(world())
    e.users.put(ERIN, UserIn(region="eu", interests=["t1"]))
    e.users.set_controls(ERIN, ControlsIn(blocked_keywords=["spoiler"]))
    e.events.ingest([EventIn(user=ERIN, item=f"i{k}", type="view", watch_s=10.0, id=f"{ERIN}-e{k}")
                     for k in range(4)] + [EventIn(user=ERIN, item="i1", type="like", request_id=f"{ERIN}-r")])
    e.events.ingest([EventIn(user=u, item=f"i{k}", type="view", watch_s=10.0) for u in ("zed", "bob")
                     for k in range(3)])
    e.feeds.feed(ERIN, 3, explain=True)
    e.feeds.feed("zed", 3)
    e.privacy.export(ERIN)
    e.checkpoint()
    clock.advance(120)
    e.learner.tick(clock.t)  # joins closed: the user's examples learned and their row saved
    e.checkpoint()
    assert files_holding(tmp_path, ERIN.encode()), "the test must start with the id stored somewhere"
    zed_events = len(e.live.store.user_events("us", "zed"))

    receipt = e.erasure.erase(ERIN)
    assert receipt["erased"] is True and receipt["region"] == "eu"
    deleted = receipt["deleted"]
    assert deleted["profile"] == 1 and deleted["events"] == 5 and deleted["event_ids"] == 4  # type: ignore[index]
    assert deleted["served"] == 3 and deleted["controls"] == 1 and deleted["interest_state"] == 1  # type: ignore[index]
    assert files_holding(tmp_path, ERIN.encode()) == []
    e.close()
    assert files_holding(tmp_path, ERIN.encode()) == []  # nor after the shutdown's checkpoint and index save

    again = Engine.open(settings, clock=clock, seed=0)
    try:
        with pytest.raises(NotFound):
            again.privacy.export(ERIN)
        with pytest.raises(Gone):  # in-flight events cannot bring the user back
            again.events.ingest([EventIn(user="zed", item="i5", type="view", watch_s=1.0),
                                 EventIn(user=ERIN, item="i5", type="view", watch_s=1.0)])
        with pytest.raises(Gone):
            again.feeds.feed(ERIN, 3)
        with pytest.raises(Gone):
            again.users.put(ERIN, UserIn())
        assert len(again.live.store.user_events("us", "zed")) == zed_events  # the refused batch stored nothing
        assert again.items.get("i0")["stats"]["views"] == 3  # type: ignore[index]  # anonymous aggregates stay
        actions = [(r["action"], r["outcome"]) for r in again.audit.page()]
        assert ("erase", "ok") in actions and actions[-1] == ("export", "NotFound")
        clock.advance(31 * 86400)  # after the window the id is free again
        assert again.feeds.feed(ERIN, 1).items
    finally:
        again.close()
    with pytest.raises(NotFound):
        Engine.open(settings, clock=clock, seed=0).erasure.erase("nobody")


def test_erasure_leaves_no_stale_copy_in_index_pages(tmp_path: Path) -> None:
    """Many users' events interleaved, so that the user index's pages split and merge around the
    erased user's entries (this layout left five stale copies before the indexes were rebuilt)."""
    import random

    settings = load_settings(overrides={"server.data": str(tmp_path), "learning.enabled": False}, env={})
    rng, user = random.Random(0), "erin-7f3a9c"
    with Engine.open(settings, clock=Clock(T0), seed=0) as e:
        e.items.upsert([ItemIn(id=f"i{k}", creator=f"c{k % 3}", duration_s=10.0, tags=["t"]) for k in range(50)])
        for b in range(200):
            batch = [EventIn(user=f"u{k:05d}", item=f"i{rng.randrange(50)}", type="like") for k in range(50)]
            if b < 20:
                batch += [EventIn(user=user, item=f"i{k}", type="like") for k in range(9)]
            rng.shuffle(batch)
            e.events.ingest(batch)
        e.checkpoint()
        assert files_holding(tmp_path, user.encode())
        assert e.erasure.erase(user)["deleted"]["events"] == 180  # type: ignore[index]
        assert files_holding(tmp_path, user.encode()) == []


def test_retraining_after_erasure_leaves_nothing_the_model_learned_from_the_user(tmp_path: Path) -> None:
    """The shared model learned from the erased user's events. Retrained after the erasure, it is
    exactly the model of an engine that never learned while the user's events were there: a function
    of the remaining log and of the item counters (which keep the user's share as anonymous counts)."""

    def run(folder: Path, learn_live: bool) -> tuple[dict[str, bytes], dict[str, bytes]]:
        overrides = {"server.data": str(folder), "learning.min_examples": 1, "learning.index": "exact"}
        clock = Clock(T0 + 1000)
        live_settings = load_settings(overrides={**overrides, "learning.enabled": learn_live}, env={})
        with Engine.open(live_settings, clock=clock, seed=0) as e:
            e.items.upsert(world())
            e.events.ingest([EventIn(user=u, item=f"i{(k * 5 + len(u)) % 12}", type="view",
                                     watch_s=10.0 if k % 3 else 2.0, ts=format_time(T0 + 10 * k))
                             for k in range(40) for u in ("amy", "bob")])
            clock.advance(3600)
            e.learner.tick(clock.t)
            e.erasure.erase("bob")
        settings = load_settings(overrides=overrides, env={})
        before = shared_rows(settings)
        with Engine.relearn(settings, clock=clock, seed=0) as e:
            clock.advance(3600)
            e.learner.tick(clock.t)
        return before, shared_rows(settings)

    def shared_rows(settings: Any) -> dict[str, bytes]:
        from foryou.learning import publication
        from foryou.learning.online import dense_version
        from foryou.store import open_store

        store = open_store(settings.server.data, settings.server.regions)
        try:
            blob = store.get_model_blob("model")  # the dense weights and their optimiser state
            if blob is None:
                return {}
            found = publication.snapshot_and_after(store, dense_version(blob))
            assert found is not None
            snap, deltas = found
            rows: dict[str, bytes] = {}
            for pub in [snap, *deltas] if snap is not None else deltas:  # the item-side tables as published
                for name, part in pub.parts.items():
                    for j, key in enumerate(part.keys):
                        rows[f"{name}/{key}"] = part.vectors[j].tobytes() + part.accum[j].tobytes()
                    for key in part.removed:
                        rows.pop(f"{name}/{key}", None)
            return {**rows, "blob": blob}
        finally:
            store.close()

    learned_with_bob, retrained = run(tmp_path / "a", learn_live=True)
    never_learned, trained_after = run(tmp_path / "b", learn_live=False)
    assert learned_with_bob and never_learned == {}
    assert learned_with_bob != retrained  # bob's events had shaped the shared rows ...
    assert retrained == trained_after  # ... and after retraining nothing of that is left


def test_retrain_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from foryou.cli import main

    settings = load_settings(overrides={"server.data": str(tmp_path), "learning.min_examples": 1}, env={})
    with Engine.open(settings) as e:
        e.items.upsert(world())
        e.events.ingest([EventIn(user="amy", item=f"i{k}", type="view", watch_s=10.0) for k in range(6)])
    assert main(["retrain", "--data", str(tmp_path)]) == 0
    assert re.match(r"retrained from the log: \d+ examples, \d+ rows, in ", capsys.readouterr().out)
    assert '"action":"retrain"' in (tmp_path / "audit.log").read_text()
    from foryou.datadir import exclusive

    monkeypatch.setenv("FORYOU_PRIVACY_RETENTION_DAYS", "30")
    with exclusive(settings.server.data, "a test"):  # as a running server holds it
        for command in (["retrain"], ["retention", "run"], ["load", "--items", str(tmp_path / "x.jsonl")]):
            assert main([*command, "--data", str(tmp_path)]) == 2
            assert "another foryou process (a server?) is using" in capsys.readouterr().err
    monkeypatch.setenv("FORYOU_LEARNING_ENABLED", "false")
    assert main(["retrain", "--data", str(tmp_path)]) == 2
    assert "no model to retrain" in capsys.readouterr().err


def test_minors_over_http(make_client: MakeClient) -> None:
    client = make_client(**{"privacy.personalize_minors": False})
    items = [{"id": f"v{k}", "creator": f"c{k}", "duration_s": 10, "tags": [f"t{k % 3}"], "mature": k % 2 == 0}
             for k in range(12)]
    client.post("/v1/items", json={"items": items})
    for user, band in (("teen", "13-17"), ("adult", "18+"), ("unknown", None)):
        assert client.put(f"/v1/users/{user}", json={"age_band": band}).status_code == 200
        client.post("/v1/events", json={"events": [{"user": user, "item": "v1", "type": "like"}]})
        got = client.get(f"/v1/users/{user}/feed?n=10&explain=true").json()["items"]
        mature = [x["id"] for x in got if int(x["id"][1:]) % 2 == 0]
        assert (mature != []) == (band == "18+"), (user, mature)  # mature items only for known adults
        ranker = got[0]["explain"]["ranker"]
        assert (ranker == "not_personalized") == (band == "13-17"), (user, ranker)


def test_erasure_over_http(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(data=tmp_path / "d")
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    assert client.delete("/v1/users/amy").status_code == 404
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "view", "watch_s": 3}]})
    assert client.get("/v1/users/amy/feed").status_code == 200
    client.app.state.engine.checkpoint()  # type: ignore[attr-defined]
    assert files_holding(tmp_path / "d", b"amy")  # the scan can find it
    r = client.delete("/v1/users/amy")
    assert r.status_code == 200 and r.json()["deleted"]["events"] == 1 and r.json()["refused_until"].endswith("Z")
    r = client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "view", "watch_s": 3}]})
    refused = "user 'amy' was erased: events and requests about them are refused for now"
    assert r.status_code == 410 and r.json()["errors"][0] == {"field": "user", "index": 0, "message": refused}
    assert client.get("/v1/users/amy/feed").status_code == 410
    assert client.get("/v1/users/amy").status_code == 404
    client.app.state.engine.checkpoint()  # type: ignore[attr-defined]
    assert files_holding(tmp_path / "d", b"amy") == []  # the scan, after erasure through the API


# -- residency --
def test_no_byte_of_a_users_data_is_outside_their_regions_file(make_client: MakeClient, tmp_path: Path) -> None:
    """Two users of two regions, placed by X-Region and by their profile, with profile, controls,
    events, feeds, an export, model training and checkpoints, all through the API: each one's id
    and every value only they sent occur only in their own region's files."""
    clock = Clock(T0)
    data = tmp_path / "data"
    client = make_client(data=data, clock=clock, **{"server.regions": "us,eu", "learning.min_examples": 1,
                                                      "learning.index": "exact"})
    engine = client.app.state.engine  # type: ignore[attr-defined]
    items = [i.model_dump(exclude_none=True) for i in world()]
    assert client.post("/v1/items", json={"items": items}).status_code == 200
    users = {"us": "usr-a41f09", "eu": "eur-b73c18"}  # ids and values that occur nowhere else
    for region, user in users.items():
        marks = {"X-Region": region}
        assert client.get(f"/v1/users/{user}/feed?n=2", headers=marks).status_code == 200  # created in region
        r = client.put(f"/v1/users/{user}", json={"region": region, "interests": ["t0"], "lang": f"x-{user[:3]}q"})
        assert r.status_code == 200
        r = client.put(f"/v1/users/{user}/controls", json={"blocked_keywords": [f"kw{user[4:]}"]}, headers=marks)
        assert r.status_code == 200
        events = [{"user": user, "item": f"i{k}", "type": "view", "watch_s": 10.0, "id": f"ev-{user[4:]}-{k}",
                   "request_id": f"rq-{user[4:]}"} for k in range(4)]
        assert client.post("/v1/events", json={"events": events}, headers=marks).status_code == 200
        assert client.get(f"/v1/users/{user}/feed?n=3&explain=true", headers=marks).status_code == 200
        assert client.get(f"/v1/users/{user}/data").json()["profile"]["region"] == region
    clock.advance(120)
    engine.learner.tick(clock.t)
    engine.checkpoint()
    for region, user in users.items():
        for value in (user, f"x-{user[:3]}q", f"kw{user[4:]}", f"ev-{user[4:]}", f"rq-{user[4:]}"):
            holding = files_holding(data, value.encode())
            files = tuple(f"region-{region}{part}.db" for part in ("", "-index", "-model"))
            assert holding and all(name.startswith(files) for name in holding), (value, holding)


def test_an_unwritable_audit_log_refuses_audited_calls_before_they_act(make_client: MakeClient, tmp_path: Path) -> None:
    from foryou.privacy import verify

    client = make_client(data=tmp_path / "d")
    client.post("/v1/items", json={"items": [{"id": "a", "creator": "c", "duration_s": 10}]})
    client.post("/v1/events", json={"events": [{"user": "amy", "item": "a", "type": "like"}]})
    assert client.get("/v1/users/amy/data").status_code == 200
    log, aside = tmp_path / "d" / "audit.log", tmp_path / "audit.log.aside"
    log.rename(aside)
    log.mkdir()  # a log that cannot be opened for writing, as on a read-only or failed disk
    try:
        r = client.delete("/v1/users/amy")
        assert r.status_code == 503 and "cannot be written" in r.text
        assert client.get("/v1/users/amy/data", headers={"Authorization": "Bearer nonsense"}).status_code == 401
        assert "unreadable" in str(verify(tmp_path / "d").problem)
    finally:
        log.rmdir()
        aside.rename(log)
    assert client.get("/v1/users/amy/data").json()["events"]  # the erasure did not happen unrecorded
