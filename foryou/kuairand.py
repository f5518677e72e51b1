"""Convert the KuaiRand-Pure files (Gao et al., CIKM 2022; CC BY-SA 4.0) into ForYou's JSON Lines.

Each log row becomes a `view` (watch time = play_time_ms; a row with zero play time is a video shown
and swiped away at once) plus one event per explicit signal: like, comment, share (forward), follow,
not_interested (hate). Event ids are derived from (user, video, time, type), so the log's exact
duplicate rows count once when loaded. Times are Beijing time (+08:00), as the logs are.
"""

from __future__ import annotations

import csv
import gzip
import statistics
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import orjson

BEIJING = timezone(timedelta(hours=8))
LOG_FILE = "log_standard_4_25_to_5_08_pure.csv.gz"
ITEM_FILE = "video_features_basic_pure.csv"
SIGNALS = (("is_like", "like"), ("is_comment", "comment"), ("is_forward", "share"),
           ("is_follow", "follow"), ("is_hate", "not_interested"))
DEFAULT_DURATION_S = 15.0


def _open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="")


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, BEIJING).isoformat(timespec="milliseconds")


def log_rows(src: Path) -> Iterator[dict[str, str]]:
    with _open_text(src / LOG_FILE) as fh:
        yield from csv.DictReader(fh)


def convert(src: Path, out: Path, max_rows: int | None = None, since_ms: int | None = None) -> tuple[int, int]:
    """Write `items.jsonl` and `events.jsonl` into `out`; returns (items, events) written.
    `since_ms`/`max_rows` keep a slice of the log (rows are in user order, so `since_ms` slices by time)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in log_rows(src) if since_ms is None or int(r["time_ms"]) >= since_ms]
    rows.sort(key=lambda r: (int(r["time_ms"]), int(r["user_id"])))
    if max_rows is not None:
        rows = rows[:max_rows]
    log_durations: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if int(r["duration_ms"]) > 0:
            log_durations[r["video_id"]].append(int(r["duration_ms"]) / 1000)
    items = 0
    with _open_text(src / ITEM_FILE) as fh, (out / "items.jsonl").open("wb") as sink:
        for v in csv.DictReader(fh):
            duration = float(v["video_duration"]) / 1000 if v["video_duration"] not in ("", "nan") else 0.0
            if duration <= 0:
                seen = log_durations.get(v["video_id"])
                duration = statistics.median(seen) if seen else DEFAULT_DURATION_S
            tags = [f"tag{t.strip()}" for t in v["tag"].split(",") if t.strip()] if v["tag"] else []
            item: dict[str, object] = {
                "id": f"v{v['video_id']}", "creator": f"a{v['author_id']}",
                "duration_s": round(min(duration, 3600.0), 3), "tags": tags[:32],
                "created_at": f"{v['upload_dt']}T00:00:00+08:00",
            }
            if v["music_id"] not in ("", "0", "nan"):
                item["sound"] = f"m{v['music_id']}"
            sink.write(orjson.dumps(item) + b"\n")
            items += 1
    events = 0
    with (out / "events.jsonl").open("wb") as sink:
        for r in rows:
            user, video, ms = f"u{r['user_id']}", f"v{r['video_id']}", int(r["time_ms"])
            ts = _time(ms)
            key = f"k{r['user_id']}-{r['video_id']}-{ms}"
            sink.write(orjson.dumps({"id": f"{key}-view", "user": user, "item": video, "type": "view",
                                     "watch_s": int(r["play_time_ms"]) / 1000, "ts": ts}) + b"\n")
            events += 1
            for column, kind in SIGNALS:
                if r[column] == "1":
                    sink.write(orjson.dumps({"id": f"{key}-{kind}", "user": user, "item": video,
                                             "type": kind, "ts": ts}) + b"\n")
                    events += 1
    return items, events
