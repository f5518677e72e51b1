"""A small synthetic world whose right ranking is known by construction (for tests and smoke runs).

Items fall into `groups` (each group its own tag and creators) and every user belongs to one group.
Before `test_from` each user finishes some items of their group and swipes away early from items of
other groups; from `test_from` on they finish some more of their group's items, the positives to find.
Some items are more appealing than others (picked sooner, before and after `test_from`), and each user
also finishes one appealing item of another group before `test_from` and one after, so popularity helps
too. A model that learned "more of this group" ranks most positives first; only an oracle that knows
`truth[u]`, the list of them, ranks them all first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from foryou.evaluation.dataset import KIND, Catalogue, Dataset, make_events
from foryou.types import ItemIn, format_time

START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
DAY_S = 86400.0
DURATION_S = 10.0


@dataclass(frozen=True)
class World:
    dataset: Dataset
    test_from: float
    truth: dict[int, set[int]]  # user index -> the items they finish after test_from
    group_of_user: np.ndarray
    group_of_item: np.ndarray


def make_world(users: int = 80, items: int = 160, groups: int = 4, train_picks: int = 6, test_picks: int = 4,
               train_days: int = 6, test_days: int = 2, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    group_of_item = np.arange(items) % groups
    group_of_user = np.arange(users) % groups
    catalogue_items = tuple(
        ItemIn(id=f"i{i}", creator=f"c{group_of_item[i]}-{i % 3}", duration_s=DURATION_S,
               tags=[f"group{group_of_item[i]}"], created_at=format_time(START - DAY_S))
        for i in range(items))
    test_from = START + train_days * DAY_S
    rows: list[tuple[int, int, int, float, float]] = []
    truth: dict[int, set[int]] = {}
    appeal = 1.0 / (1.0 + rng.permutation(items))  # some items are more popular than others
    for u in range(users):
        in_group = group_of_item == group_of_user[u]
        mine = _appealing_first(rng, np.flatnonzero(in_group), appeal)
        hits = _appealing_first(rng, np.flatnonzero(~in_group), appeal)  # popular beyond the group
        swiped = rng.permutation(hits[2:])[:5]
        cut = min(train_picks, len(mine) - 1)
        train_liked = [*mine[:cut].tolist(), int(hits[0])]
        test_liked = [*mine[cut:cut + test_picks].tolist(), int(hits[1])]
        truth[u] = set(test_liked)
        times = np.sort(rng.uniform(START, test_from, size=len(train_liked) + 3))
        for t, i in zip(times, [*train_liked, *swiped[:3].tolist()], strict=True):
            rows.append(_view(u, i, t, DURATION_S * 1.1 if i in train_liked else 0.5))  # finished (looped) or not
            if i in train_liked and rng.random() < 0.3:
                rows.append((u, i, KIND["like"], 0.0, float(t) + 1.0))
        times = rng.uniform(test_from, test_from + test_days * DAY_S, size=len(test_liked) + 2)
        for t, i in zip(times, [*test_liked, *swiped[3:].tolist()], strict=True):
            rows.append(_view(u, i, t, DURATION_S if i in test_liked else 1.0))
            if i in test_liked and rng.random() < 0.3:
                rows.append((u, i, KIND["like"], 0.0, float(t) + 1.0))
    duration = np.full(items, DURATION_S)
    catalogue = Catalogue(catalogue_items, tuple(it.id for it in catalogue_items), duration,
                          tuple(f"u{u}" for u in range(users)))
    user, item, kind, watch, ts = zip(*rows, strict=True)
    dataset = Dataset(catalogue, make_events(user, item, kind, watch, ts, duration))
    return World(dataset, test_from, truth, group_of_user, group_of_item)


def _view(user: int, item: int, ts: float, watch_s: float) -> tuple[int, int, int, float, float]:
    return user, item, KIND["view"], watch_s, float(ts)


def _appealing_first(rng: np.random.Generator, pool: np.ndarray, appeal: np.ndarray) -> np.ndarray:
    """`pool` in a random order that favours appealing items."""
    weights = appeal[pool] / appeal[pool].sum()
    return rng.choice(pool, size=len(pool), replace=False, p=weights)


def write_jsonl(world: World, folder: Path) -> tuple[Path, Path]:
    """The world as the JSON Lines files of `foryou load` (items.jsonl, events.jsonl)."""
    from foryou.types import EVENT_TYPES

    folder.mkdir(parents=True, exist_ok=True)
    catalogue, events = world.dataset.catalogue, world.dataset.events
    items_path, events_path = folder / "items.jsonl", folder / "events.jsonl"
    items_path.write_bytes(b"".join(orjson.dumps(it.model_dump(exclude_none=True)) + b"\n" for it in catalogue.items))
    lines = []
    for n, (u, i, k, w, t) in enumerate(zip(events.user.tolist(), events.item.tolist(), events.kind.tolist(),
                                            events.watch_s.tolist(), events.ts.tolist(), strict=True)):
        event: dict[str, object] = {"id": f"e{n}", "user": catalogue.user_ids[u], "item": catalogue.item_ids[i],
                                    "type": EVENT_TYPES[k], "ts": format_time(t)}
        if EVENT_TYPES[k] == "view":
            event["watch_s"] = w
        lines.append(orjson.dumps(event) + b"\n")
    events_path.write_bytes(b"".join(lines))
    return items_path, events_path
