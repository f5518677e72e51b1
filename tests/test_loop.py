"""The server's event loop is watched (issue 12): how long each step of a request or of the periodic
work held it, and how late a probe woke, are in /metrics; the SQLite WAL is folded beside the request
path, not in whichever commit finds it full; full garbage collections are periodic work."""

from __future__ import annotations

import gc
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeClient

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from foryou.http import server
from foryou.store import wal
from foryou.store.sqlite import SQLiteStore
from foryou.types import EventRecord


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, name
    return float(found[1])


def test_a_request_holding_the_loop_is_measured(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    real = engine.feeds.feed

    def slow_feed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.12)  # holds the loop: nothing else runs meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.feeds, "feed", slow_feed)
    with TestClient(client.app, raise_server_exceptions=False, headers=client.headers) as live:
        assert live.get("/v1/users/amy/feed").status_code == 200
        time.sleep(0.1)  # the probe wakes (late) and the ticks run
        text = live.get("/metrics").text
    assert metric(text, 'foryou_loop_hold_max_seconds{kind="request"}') >= 0.12
    assert metric(text, "foryou_event_loop_lag_max_seconds") >= 0.05
    assert metric(text, 'foryou_loop_hold_max_seconds{kind="periodic"}') < 0.12  # the ticks did not hold it so


def test_the_wal_is_folded_beside_the_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "FOLD_BYTES", 256 << 10)
    monkeypatch.setattr(wal, "EVERY_S", 0.05)
    store = SQLiteStore(tmp_path, ["us"])
    try:
        conn = store._region["us"]
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] >= 100_000  # commits never fold it
        for k in range(40):  # a few MB through the WAL
            store.append_events("us", [EventRecord(f"u{k}-{j}", "i" * 40, "view", 1.0, 1.0) for j in range(500)],
                                [])
        deadline = time.monotonic() + 10
        while store._folder.folds == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._folder.folds > 0
        check = sqlite3.connect(tmp_path / "region-us.db")
        assert check.execute("SELECT count(*) FROM events").fetchone()[0] == 20_000  # nothing lost by folding
        check.close()
    finally:
        store.close()
    assert not store._folder.is_alive()


def test_full_collections_are_periodic_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from foryou.periodic import Periodic

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    collections: list[int] = []
    monkeypatch.setattr(server, "GC_EVERY_S", 0.0)
    periodic = Periodic({}, interval_s=0.5)

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collections.append(info["generation"])

    try:
        server.collect_periodically(periodic)
        assert gc.get_threshold()[2] == server.FULL_NEVER  # the collector never starts one on its own
        assert gc.get_freeze_count() > frozen  # what survived is set aside: the next one skips it
        gc.callbacks.append(watch)
        periodic.run(1.0)
        assert "gc" in periodic.tasks and 2 in collections  # the periodic work runs a full one
    finally:
        if watch in gc.callbacks:
            gc.callbacks.remove(watch)
        gc.set_threshold(*threshold)
        gc.unfreeze()


def test_an_erasure_empties_the_wal_even_while_it_is_being_folded(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The folding thread's checkpoint made the erasure's truncating one fail (busy), leaving the
    erased rows' old pages in the WAL: the two now take turns."""
    from foryou.types import UserRecord

    monkeypatch.setattr(wal, "FOLD_BYTES", 0)  # fold all the time
    monkeypatch.setattr(wal, "EVERY_S", 0.0005)
    for trial in range(8):
        folder = tmp_path / f"t{trial}"
        store = SQLiteStore(folder, ["us"])
        victim = f"victim-{trial}-zq"
        try:
            for k in range(15):
                batch = [EventRecord(victim if j == 0 else f"o{k}-{j}", "i" * 30, "view", 1.0, 1.0, f"e{k}-{j}")
                         for j in range(300)]
                store.append_events("us", batch, [UserRecord(victim, "us")] if k == 0 else [])
            store.erase_user("us", victim, [])
            log = folder / "region-us.db-wal"
            assert victim.encode() not in (log.read_bytes() if log.exists() else b""), trial
        finally:
            store.close()


def test_the_trainers_writes_never_take_the_logs_write_lock(tmp_path: Path) -> None:
    """Users' model rows live in the region's model file: a trainer's publication does not make the
    server's appends wait (SQLite's busy handler slept them 8-12% of the time while ingesting)."""
    from foryou.types import UserRecord

    server = SQLiteStore(tmp_path, ["us"])
    trainer = SQLiteStore(tmp_path, ["us"], fold=False)
    try:
        server.append_events("us", [], [UserRecord("u1", "us")])
        log = sqlite3.connect(tmp_path / "region-us.db", isolation_level=None, timeout=0)
        log.execute("BEGIN IMMEDIATE")  # a writer holds the log
        try:  # needing the log's lock, this would wait out the busy timeout and raise "database is locked"
            assert trainer.save_model_rows("us", "user", [("u1", b"r"), ("gone", b"g")], [], 1, "refreshed") == ["gone"]
        finally:
            log.execute("ROLLBACK")
            log.close()
        assert server.get_model_rows("us", "user", ["u1"]) == {"u1": b"r"}
        server.erase_user("us", "u1", [])
        assert server.get_model_rows("us", "user", ["u1"]) == {}
        assert b"u1" not in (tmp_path / "region-us-model.db").read_bytes()
    finally:
        trainer.close()
        server.close()


def test_model_tables_kept_with_the_log_and_the_catalogue_by_earlier_versions_move_to_model_files(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, ["us"])
    store.save_model_rows("us", "user", [("u1", b"new")], [])
    store.save_model_blob("model", b"new")
    store.close()
    rows = "CREATE TABLE model_rows (tbl TEXT, key TEXT, row BLOB NOT NULL, PRIMARY KEY (tbl, key))"
    with sqlite3.connect(tmp_path / "region-us.db") as old:  # as an earlier version left them
        old.execute(rows)
        old.executemany("INSERT INTO model_rows VALUES (?,?,?)", [("user", "u1", b"old"), ("user", "u2", b"two")])
    old.close()
    with sqlite3.connect(tmp_path / "catalog.db") as old:
        old.execute(rows)
        old.execute("INSERT INTO model_rows VALUES ('item', 'i1', x'01')")
        old.execute("CREATE TABLE model_blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        old.executemany("INSERT INTO model_blobs VALUES (?,?)", [("model", b"old"), ("duel", b"d")])
        old.execute("CREATE TABLE model_deltas (version INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
        old.execute("INSERT INTO model_deltas VALUES (3, x'02')")
    old.close()
    store = SQLiteStore(tmp_path, ["us"])
    try:
        assert dict(store.iter_model_rows("us", "user")) == {"u1": b"new", "u2": b"two"}  # the model file's win
        assert dict(store.iter_model_rows(None, "item")) == {"i1": b"\x01"}
        assert (store.get_model_blob("model"), store.get_model_blob("duel")) == (b"new", b"d")
        assert store.model_deltas(0) == [(3, b"\x02")]
    finally:
        store.close()
    for name in ("region-us.db", "catalog.db"):
        with sqlite3.connect(tmp_path / name) as left:
            assert not left.execute("SELECT 1 FROM sqlite_master WHERE name LIKE 'model_%'").fetchone(), name
        left.close()
