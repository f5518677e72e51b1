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
from foryou.store import sqlite as sqlite_store
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
    monkeypatch.setattr(sqlite_store, "_WAL_FOLD_BYTES", 256 << 10)
    monkeypatch.setattr(sqlite_store, "_WAL_EVERY_S", 0.05)
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


def test_full_collections_are_periodic_work() -> None:
    before = gc.get_freeze_count()
    try:
        server.collect_garbage()
        assert gc.get_freeze_count() > before  # what survived is set aside: the next collection skips it
    finally:
        gc.unfreeze()
