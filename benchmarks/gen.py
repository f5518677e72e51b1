"""Synthetic catalogue and interaction stream for the benchmarks, written as the JSON Lines that
`foryou load` reads.

Items: creators (Zipf-ish: a few prolific ones), sounds (half the items use one, popular sounds reused),
1-3 tags drawn from a few hundred topics (the first tag is the primary topic), log-normal durations,
upload times over the last 60 days (about 1% in the last day, so "fresh" has something to offer).

Events: each user has 3 favourite topics. Half of a user's events are on items of a favourite topic,
the rest on popular items anywhere. Watch time depends on interest: an interesting video is often
finished (or looped), an uninteresting one is usually swiped away in the first seconds. Likes, shares,
comments and follows happen mostly on interesting items; "not interested" on the others. Every event
carries an idempotency id and a timestamp over the last 7 days, in order.

    python benchmarks/gen.py --items 20000 --users 10000 --events 200000 --out benchmarks/out/x
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CHUNK = 200_000


def _iso(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds -> RFC 3339 strings in UTC with milliseconds."""
    ms = (ts * 1000).astype("int64").astype("datetime64[ms]")
    return np.char.add(np.datetime_as_string(ms, unit="ms"), "Z")


def _zipf_index(rng: np.random.Generator, n: int, size: int, power: float) -> np.ndarray:
    """Indexes in [0, n) skewed towards 0 (u ** power)."""
    return np.minimum((n * rng.random(size) ** power).astype(np.int64), n - 1)


def write_items(path: Path, n_items: int, n_topics: int, rng: np.random.Generator,
                now: float) -> tuple[np.ndarray, np.ndarray]:
    """Writes items.jsonl; returns each item's primary topic and duration."""
    n_creators = max(1, n_items // 20)
    n_sounds = max(1, n_items // 50)
    topic = _zipf_index(rng, n_topics, n_items, 1.6)
    # secondary tags: nearby topics (related), sometimes none
    n_extra = rng.choice(3, size=n_items, p=[0.3, 0.45, 0.25])
    extra1 = (topic + rng.integers(1, 12, n_items)) % n_topics
    extra2 = (topic + rng.integers(12, 40, n_items)) % n_topics
    creator = _zipf_index(rng, n_creators, n_items, 2.0)
    has_sound = rng.random(n_items) < 0.5
    sound = _zipf_index(rng, n_sounds, n_items, 2.5)
    duration = np.clip(rng.lognormal(np.log(25.0), 0.8, n_items), 3.0, 600.0).round(1)
    age = np.where(rng.random(n_items) < 0.01, rng.random(n_items) * 86400, rng.random(n_items) * 60 * 86400)
    created = _iso(now - age)
    mature = rng.random(n_items) < 0.02
    with path.open("w") as fh:
        lines = []
        for i in range(n_items):
            t = int(topic[i])
            tags = [f"t{t}"]
            if n_extra[i] >= 1:
                tags.append(f"t{extra1[i]}")
            if n_extra[i] >= 2:
                tags.append(f"t{extra2[i]}")
            tag_json = '","'.join(tags)
            snd = f',"sound":"s{sound[i]}"' if has_sound[i] else ""
            mat = ',"mature":true' if mature[i] else ""
            lines.append(f'{{"id":"i{i}","creator":"c{creator[i]}","duration_s":{duration[i]},'
                         f'"caption":"video {i} about t{t}","tags":["{tag_json}"]{snd},'
                         f'"created_at":"{created[i]}"{mat}}}\n')
            if len(lines) >= CHUNK:
                fh.writelines(lines)
                lines = []
        fh.writelines(lines)
    return topic, duration


def write_events(path: Path, n_events: int, n_users: int, item_topic: np.ndarray, n_topics: int,
                 rng: np.random.Generator, now: float, durations: np.ndarray) -> None:
    n_items = len(item_topic)
    favourites = _zipf_index(rng, n_topics, n_users * 3, 1.5).reshape(n_users, 3)
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity /= activity.sum()
    by_topic = np.argsort(item_topic, kind="stable")
    counts = np.bincount(item_topic, minlength=n_topics)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    popular = rng.permutation(n_items)  # global popularity order
    span = 7 * 86400.0
    t_begin = now - span - 60.0
    with path.open("w") as fh:
        done = 0
        while done < n_events:
            m = min(CHUNK, n_events - done)
            users = rng.choice(n_users, size=m, p=activity)
            pick_fav = rng.random(m) < 0.5
            fav_topic = favourites[users, rng.integers(0, 3, m)]
            in_topic = counts[fav_topic] > 0
            pos = (counts[fav_topic] * rng.random(m) ** 2).astype(np.int64)
            fav_item = by_topic[np.minimum(starts[fav_topic] + pos, len(by_topic) - 1)]
            any_item = popular[_zipf_index(rng, n_items, m, 3.0)]
            items = np.where(pick_fav & in_topic, fav_item, any_item)
            topic = item_topic[items]
            interested = (favourites[users] == topic[:, None]).any(axis=1)
            frac = np.where(interested, rng.beta(4.0, 1.5, m) * 1.3, rng.beta(1.0, 5.0, m) * 0.8)
            watch = (frac * durations[items]).round(2)
            r = rng.random(m)
            kind = np.full(m, "view", dtype=object)
            # interested: 85% views, 9% likes, 2% shares, 2% comments, 2% follows
            kind[interested & (r >= 0.85) & (r < 0.94)] = "like"
            kind[interested & (r >= 0.94) & (r < 0.96)] = "share"
            kind[interested & (r >= 0.96) & (r < 0.98)] = "comment"
            kind[interested & (r >= 0.98)] = "follow"
            # not interested: 97% views, 2% not_interested, 1% likes
            kind[~interested & (r >= 0.97) & (r < 0.99)] = "not_interested"
            kind[~interested & (r >= 0.99)] = "like"
            ts = _iso(t_begin + span * (done + np.arange(m)) / n_events)
            lines = []
            for k in range(m):
                typ = kind[k]
                watch_part = f',"watch_s":{watch[k]}' if typ == "view" else ""
                lines.append(f'{{"id":"e{done + k}","user":"u{users[k]}","item":"i{items[k]}","type":"{typ}"'
                             f'{watch_part},"ts":"{ts[k]}"}}\n')
            fh.writelines(lines)
            done += m


def generate(out: Path, n_items: int, n_users: int, n_events: int, n_topics: int = 300, seed: int = 7,
             now: float | None = None) -> tuple[Path, Path]:
    """Writes out/items.jsonl and out/events.jsonl (skipped when a matching pair is already there)."""
    out.mkdir(parents=True, exist_ok=True)
    items, events, stamp = out / "items.jsonl", out / "events.jsonl", out / "DONE"
    if stamp.exists():
        return items, events
    now = time.time() if now is None else now
    rng = np.random.default_rng(seed)
    topic, durations = write_items(items, n_items, n_topics, rng, now)
    write_events(events, n_events, n_users, topic, n_topics, rng, now, durations)
    stamp.write_text(f"{n_items} {n_users} {n_events} {n_topics} {seed} {now}\n")
    return items, events


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--topics", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    started = time.perf_counter()
    items, events = generate(a.out, a.items, a.users, a.events, a.topics, a.seed)
    print(f"wrote {items} and {events} in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
