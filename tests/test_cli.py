"""The command line (issue 2, section 7): `foryou load` (bulk import of JSON Lines, validated like the API,
a bad line named by file:line with nothing of its batch stored) and `foryou convert-kuairand` on a tiny
fixture in the KuaiRand-Pure CSV format (written here; the tests do not read ../shared)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from foryou.cli import main
from foryou.config import load_settings
from foryou.engine import Engine

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[Any], gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def open_engine(data: Path) -> Engine:
    return Engine.open(load_settings(overrides={"server.data": str(data)}, env={}))


def stored_ids(data: Path) -> set[str]:
    with open_engine(data) as engine:
        return set(engine.live.catalog.ids)


def item_stats(data: Path, item_id: str) -> dict[str, Any]:
    with open_engine(data) as engine:
        return engine.items.get(item_id)["stats"]  # type: ignore[return-value]


ITEMS = [
    {"id": "v1", "creator": "c1", "duration_s": 10, "tags": ["cooking"]},
    {"id": "v2", "creator": "c2", "duration_s": 20, "sound": "s1", "created_at": "2024-01-01T00:00:00Z"},
    {"id": "v3", "creator": "c1", "duration_s": 30, "mature": True, "regions": ["us"]},
]
EVENTS = [
    {"id": "e1", "user": "alice", "item": "v1", "type": "view", "watch_s": 10, "ts": "2024-05-01T12:00:00Z"},
    {"id": "e2", "user": "alice", "item": "v1", "type": "like", "ts": "2024-05-01T12:00:01Z"},
    {"id": "e2", "user": "alice", "item": "v1", "type": "like", "ts": "2024-05-01T12:00:01Z"},
    {"user": "bob", "item": "v2", "type": "view", "watch_s": 0.5},
    {"user": "bob", "item": "v3", "type": "share"},
]


# -- foryou load --

def test_load_valid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    items = write_jsonl(tmp_path / "items.jsonl", [ITEMS[0], "", ITEMS[1], "   ", ITEMS[2]])
    events = write_jsonl(tmp_path / "events.jsonl", EVENTS)
    code, out, err = run_cli(capsys, "load", "--items", str(items), "--events", str(events), "--data", str(data),
                             "--quiet")
    assert code == 0, err
    assert "3 items" in out and "4 events" in out and "1 duplicate" in out, out
    assert stored_ids(data) == {"v1", "v2", "v3"}
    s = item_stats(data, "v1")
    assert s["views"] == 1 and s["completions"] == 1 and s["likes"] == 1
    assert item_stats(data, "v3")["shares"] == 1
    with open_engine(data) as engine:
        assert engine.users.get("alice")["region"] == "us"
        assert engine.items.get("v2")["sound"] == "s1"
    # loading the same events again: every event with an id is a duplicate
    code, out, err = run_cli(capsys, "load", "--events", str(events), "--data", str(data), "--quiet")
    assert code == 0, err
    assert "0 items" in out and "2 events" in out and "3 duplicates" in out, out
    assert item_stats(data, "v1")["likes"] == 1


def test_load_gzip_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    items = write_jsonl(tmp_path / "items.jsonl.gz", ITEMS, gz=True)
    events = write_jsonl(tmp_path / "events.jsonl.gz", EVENTS[:2], gz=True)
    code, out, _ = run_cli(capsys, "load", "--items", str(items), "--events", str(events), "--data", str(data))
    assert code == 0
    assert "3 items" in out and "2 events" in out
    assert stored_ids(data) == {"v1", "v2", "v3"}


@pytest.mark.parametrize(("bad", "field"), [
    ({"id": "bad id", "creator": "c", "duration_s": 1}, "id"),
    ({"id": "x", "creator": "c", "duration_s": 0}, "duration_s"),
    ({"id": "x", "creator": "c", "duration_s": 5, "tags": ["ok", ""]}, "tags.1"),
    ({"id": "x", "creator": "c"}, "duration_s"),
    ({"id": "x", "creator": "c", "duration_s": 5, "created_at": "2024-01-01T00:00:00"}, "created_at"),
])
def test_load_invalid_item_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, Any],
                                field: str) -> None:
    data = tmp_path / "data"
    # line 1, 2 valid; line 3 blank; line 4 bad; line 5 valid
    items = write_jsonl(tmp_path / "items.jsonl", [ITEMS[0], ITEMS[1], "", bad, ITEMS[2]])
    code, _, err = run_cli(capsys, "load", "--items", str(items), "--data", str(data), "--quiet")
    assert code != 0
    assert f"{items}:4" in err, err
    assert field in err, err
    assert f"{items}:1" not in err and f"{items}:5" not in err
    assert stored_ids(data) == set(), "nothing from the failing batch is stored"


def test_load_malformed_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    items = write_jsonl(tmp_path / "items.jsonl", [ITEMS[0], "", "", '{"id": "v9", "creator": ', ITEMS[2]])
    code, _, err = run_cli(capsys, "load", "--items", str(items), "--data", str(data), "--quiet")
    assert code != 0
    assert f"{items}:4" in err, err
    assert "JSON" in err or "json" in err
    assert stored_ids(data) == set()


def test_load_event_for_unknown_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    items = write_jsonl(tmp_path / "items.jsonl", ITEMS)
    events = write_jsonl(tmp_path / "events.jsonl",
                         [EVENTS[0], EVENTS[1], {"user": "carol", "item": "nope", "type": "like"}, EVENTS[4]])
    code, _, err = run_cli(capsys, "load", "--items", str(items), "--events", str(events), "--data", str(data),
                           "--quiet")
    assert code != 0
    assert f"{events}:3" in err and "nope" in err, err
    assert stored_ids(data) == {"v1", "v2", "v3"}, "the items file loaded fine before the events failed"
    s = item_stats(data, "v1")
    assert s["views"] == 0 and s["likes"] == 0, "nothing from the failing events batch is stored"
    assert item_stats(data, "v3")["shares"] == 0
    # and the valid events' ids are not remembered: loading a fixed file accepts them
    fixed = write_jsonl(tmp_path / "fixed.jsonl", [EVENTS[0], EVENTS[1]])
    code, out, err = run_cli(capsys, "load", "--events", str(fixed), "--data", str(data), "--quiet")
    assert code == 0, err
    assert "2 events" in out and "0 duplicates" in out, out


@pytest.mark.parametrize(("bad", "field"), [
    ({"user": "u", "item": "v1", "type": "view"}, "watch_s"),
    ({"user": "u", "item": "v1", "type": "watched", "watch_s": 1}, "type"),
    ({"user": "u", "item": "v1", "type": "like",
      "ts": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}, "ts"),
])
def test_load_invalid_event_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, Any],
                                 field: str) -> None:
    data = tmp_path / "data"
    items = write_jsonl(tmp_path / "items.jsonl", ITEMS)
    events = write_jsonl(tmp_path / "events.jsonl", [EVENTS[1], "", bad])
    code, _, err = run_cli(capsys, "load", "--items", str(items), "--events", str(events), "--data", str(data),
                           "--quiet")
    assert code != 0
    assert f"{events}:3" in err and field in err, err
    assert item_stats(data, "v1")["likes"] == 0


def test_load_keeps_earlier_batches_and_drops_the_failing_one(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Batches are 10,000 lines: a bad line in the second batch keeps the first, stores nothing of the second."""
    data = tmp_path / "data"
    rows: list[Any] = [{"id": f"b{k}", "creator": f"c{k % 50}", "duration_s": 5} for k in range(10_005)]
    rows[10_002] = {"id": "broken", "creator": "c", "duration_s": -5}
    items = write_jsonl(tmp_path / "items.jsonl", rows)
    code, _, err = run_cli(capsys, "load", "--items", str(items), "--data", str(data), "--quiet")
    assert code != 0
    assert f"{items}:10003" in err, err
    ids = stored_ids(data)
    assert {f"b{k}" for k in range(10_000)} <= ids
    assert not ids & {"b10000", "b10001", "b10003", "b10004", "broken"}


def test_load_needs_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "load", "--data", str(tmp_path / "data"))
    assert code != 0
    assert "--items" in err


def test_load_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    proc = subprocess.run([sys.executable, "-m", "foryou.cli", "load", "--items", str(missing), "--data",
                           str(tmp_path / "data"), "--quiet"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# -- foryou convert-kuairand --

LOG_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
               "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
               "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab"]
VIDEO_COLUMNS = ["video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status",
                 "video_duration", "server_width", "server_height", "music_id", "music_type", "tag"]


def _log(user: int, video: int, ms: int, play: int, duration: int, like: int = 0, follow: int = 0,
         comment: int = 0, forward: int = 0, hate: int = 0) -> list[object]:
    return [user, video, 20220425, 1800, ms, 1, like, follow, comment, forward, hate, 0, play, duration, 0, 0, 0, 0, 1]


@pytest.fixture
def kuairand(tmp_path: Path) -> Path:
    src = tmp_path / "kuairand"
    src.mkdir()
    videos = [
        [0, 7349781, "NORMAL", "2022-04-10", "LongImport", "0.0", "87433.0", "720.0", "1280.0", "9155697141", "9.0",
         "39"],
        [1, 2103883, "NORMAL", "2022-04-10", "Kmovie", "0.0", "", "720.0", "1280.0", "0", "", "20,67"],
        [2, 5067285, "AD", "2022-04-09", "ShortImport", "0.0", "9233.0", "720.0", "1280.0", "6618412736", "4.0", ""],
        [3, 7349781, "NORMAL", "2022-04-11", "Web", "0.0", "", "720.0", "1280.0", "0", "", "7"],
    ]
    with (src / "video_features_basic_pure.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(VIDEO_COLUMNS)
        w.writerows(videos)
    rows = [
        _log(1, 2, 1650935000000, 5000, 9233, follow=1, comment=1, forward=1, hate=1),
        _log(0, 0, 1650882384975, 90000, 87433, like=1),
        _log(1, 2, 1650935000000, 5000, 9233, follow=1, comment=1, forward=1, hate=1),  # exact duplicate row
        _log(0, 1, 1650882390000, 0, 12000),
        _log(2, 1, 1650940000000, 14000, 14000),
    ]
    with gzip.open(src / "log_standard_4_25_to_5_08_pure.csv.gz", "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LOG_COLUMNS)
        w.writerows(rows)
    return src


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_convert_kuairand(kuairand: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "convert-kuairand", "--src", str(kuairand), "--out", str(out))
    assert code == 0, err
    assert "4 items" in stdout and "14 events" in stdout, stdout
    items = {i["id"]: i for i in read_jsonl(out / "items.jsonl")}
    assert set(items) == {"v0", "v1", "v2", "v3"}
    assert items["v0"]["creator"] == "a7349781" and items["v3"]["creator"] == "a7349781"
    assert items["v0"]["duration_s"] == pytest.approx(87.433)
    assert items["v1"]["duration_s"] == pytest.approx(13.0), "no duration: the median of the log's durations"
    assert 0 < items["v3"]["duration_s"] <= 3600, "no duration anywhere: a default"
    assert items["v0"]["tags"] == ["tag39"] and items["v1"]["tags"] == ["tag20", "tag67"]
    assert items["v2"].get("tags", []) == []
    assert items["v0"]["sound"] == "m9155697141" and "sound" not in items["v1"]
    assert datetime.fromisoformat(items["v0"]["created_at"]) == datetime.fromisoformat("2022-04-10T00:00:00+08:00")
    events = read_jsonl(out / "events.jsonl")
    assert len(events) == 14
    views = [e for e in events if e["type"] == "view"]
    assert len(views) == 5
    first = min(views, key=lambda e: datetime.fromisoformat(e["ts"]))
    assert first["user"] == "u0" and first["item"] == "v0" and first["watch_s"] == pytest.approx(90.0)
    assert datetime.fromisoformat(first["ts"]).timestamp() == pytest.approx(1650882384.975)
    assert sorted(e["type"] for e in events if e["user"] == "u1") == sorted(
        ["view", "follow", "comment", "share", "not_interested"] * 2)
    assert all(e.get("id") for e in events)
    assert len({e["id"] for e in events}) == 9, "the duplicate log row gives the same event ids"
    # the output loads, and the duplicate row counts once
    data = tmp_path / "data"
    code, stdout, err = run_cli(capsys, "load", "--items", str(out / "items.jsonl"), "--events",
                                str(out / "events.jsonl"), "--data", str(data), "--quiet")
    assert code == 0, err
    assert "4 items" in stdout and "9 events" in stdout and "5 duplicates" in stdout, stdout
    with open_engine(data) as engine:
        s0 = engine.items.get("v0")["stats"]
        s2 = engine.items.get("v2")["stats"]
        assert s0["views"] == 1 and s0["likes"] == 1 and s0["completions"] == 1  # type: ignore[index]
        assert s2["views"] == 1 and s2["follows"] == 1 and s2["comments"] == 1  # type: ignore[index]
        assert s2["shares"] == 1 and s2["not_interested"] == 1  # type: ignore[index]
        assert engine.users.get("u2")["id"] == "u2"


def test_convert_kuairand_max_rows(kuairand: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "convert-kuairand", "--src", str(kuairand), "--out", str(out), "--max-rows", "2")
    assert code == 0, err
    events = read_jsonl(out / "events.jsonl")
    assert {(e["user"], e["item"]) for e in events} == {("u0", "v0"), ("u0", "v1")}, "the two earliest rows"
    assert len(events) == 3
    assert len(read_jsonl(out / "items.jsonl")) == 4


# -- the console script itself --

@pytest.fixture
def console() -> Iterator[list[str]]:
    script = Path(sys.executable).parent / "foryou"
    yield [str(script)] if script.exists() else [sys.executable, "-m", "foryou.cli"]


def test_console_script_help_and_load(console: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*console, "--help"], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert proc.returncode == 0
    for command in ("serve", "load", "demo", "convert-kuairand"):
        assert command in proc.stdout
    items = write_jsonl(tmp_path / "items.jsonl", ITEMS)
    bad = write_jsonl(tmp_path / "bad.jsonl", [ITEMS[0], {"id": "x"}])
    data = tmp_path / "data"
    proc = subprocess.run([*console, "load", "--items", str(bad), "--data", str(data), "--quiet"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0
    assert f"{bad}:2" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run([*console, "load", "--items", str(items), "--data", str(data), "--quiet"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "3 items" in proc.stdout
    assert stored_ids(data) == {"v1", "v2", "v3"}
