"""One arm of a run: users take turns in simulated time, each asking for a page, watching it video by
video, and posting what they did as one batch when they come back for the next page.

Time is event-driven: every user has their own timeline (they all watch at once, as on a real platform)
and the user whose next request is due first goes next, so the engine's clock only moves forward. A
page's events are posted when its last video ends, just before the next request: every event is in
the engine's past, and the engine sees a page's reactions before it picks the next page.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foryou.signals import is_completion
from foryou.simulation.arms import Arm
from foryou.simulation.behaviour import Behaviour, gap_s, react
from foryou.simulation.driver import Client, SimClock
from foryou.simulation.world import TOPICS, Item, World
from foryou.types import EventIn, ItemIn, format_time

PAGE_LATENCY_S = 0.3  # between asking for a page and its first video starting
TICK_EVERY_S = 5.0  # simulated seconds between two runs of the engine's periodic work (a server: 0.5 s of wall time)


@dataclass
class ArmRun:
    """What one arm served and how users reacted, one entry per view in the order they happened."""

    name: str
    user: np.ndarray  # user index
    item: np.ndarray  # world item index (catalogue, then uploads)
    position: np.ndarray  # the view's number for that user, from 1
    on: np.ndarray  # on-interest (the user's interests at that view)
    at: np.ndarray  # when the video started, seconds after the run started
    completed: np.ndarray
    exploration: np.ndarray  # the feed policy said "exploration"
    fresh_pool: np.ndarray  # ... "fresh_pool"
    uploaded_at: dict[int, float]  # upload (world index) -> seconds after the run started
    exposure: dict[int, dict[str, Any] | None]  # upload -> the engine's exposure record (engine arm only)
    explained: bool  # whether the engine explained its pages at all
    short_users: int  # users the arm ran out of items for
    model: dict[str, Any]  # the learned model at the end: {"serving", "examples"} (empty when unknown)
    seconds: float = 0.0  # wall time (not part of the report: runs repeat exactly, timings do not)


@dataclass
class _Log:
    rows: list[tuple[int, int, int, bool, float, bool, bool, bool]] = field(default_factory=list)
    explained: bool = False


def to_item_in(item: Item, created: float) -> ItemIn:
    return ItemIn(id=item.id, creator=item.creator, duration_s=item.duration_s, caption=item.caption,
                  tags=list(item.tags), topic=TOPICS[item.topic], sound=item.sound, created_at=format_time(created))


def run_arm(name: str, world: World, arm: Arm, client: Client, clock: SimClock, views: int, page: int,
            seed: int, behaviour: Behaviour, onboarding: bool = False, read_exposure: bool = False) -> ArmRun:
    started = time.perf_counter()
    start = clock.now
    items = world.all_items()
    n_catalogue = len(world.catalogue)
    client.upsert_items([to_item_in(it, start - it.age_s) for it in world.catalogue])
    arm.add_items(list(range(n_catalogue)))
    rngs = [np.random.default_rng([seed, 1, k]) for k in range(len(world.users))]
    index = {it.id: k for k, it in enumerate(items)}
    due = [round(it.due * views * len(world.users)) for it in world.uploads]
    queue = [(start + u.start_s, k) for k, u in enumerate(world.users)]
    heapq.heapify(queue)
    done = [0] * len(world.users)
    pending: dict[int, list[tuple[int, bool, list[EventIn]]]] = {}
    uploaded: dict[int, float] = {}
    log, short, total, last_tick = _Log(), 0, 0, start
    while queue:
        at, k = heapq.heappop(queue)
        clock.now = max(clock.now, at)
        while len(uploaded) < len(due) and total >= due[len(uploaded)]:
            j = n_catalogue + len(uploaded)
            client.upsert_items([to_item_in(items[j], clock.now)])
            arm.add_items([j])
            uploaded[j] = clock.now - start
        batch = pending.pop(k, [])
        client.ingest([e for _, _, events in batch for e in events])
        for j, completed, _ in batch:
            arm.observe(j, completed)
        if clock.now - last_tick >= TICK_EVERY_S:
            client.tick()
            last_tick = clock.now
        user = world.users[k]
        if done[k] >= views:
            continue
        if onboarding and done[k] == 0:
            client.put_user(user.id, [TOPICS[t] for t in user.interests])
        slots = arm.page(k, user.id, min(page, views - done[k]))
        if not slots:
            short += 1
            continue
        t = clock.now + PAGE_LATENCY_S
        batch = []
        for slot in slots:
            j = index[slot.id]
            item = items[j]
            done[k] += 1
            total += 1
            on = item.topic in user.interests_at(done[k])
            r = react(rngs[k], on, item.duration_s, item.quality, behaviour)
            completed = is_completion(r.watch_s, item.duration_s)
            log.explained = log.explained or bool(slot.policy)
            log.rows.append((k, j, done[k], on, t - start, completed, "exploration" in slot.policy,
                             "fresh_pool" in slot.policy))
            t += r.watch_s
            events = [EventIn(user=user.id, item=item.id, type="view", watch_s=r.watch_s, ts=format_time(t))]
            if r.like:
                events.append(EventIn(user=user.id, item=item.id, type="like", ts=format_time(t)))
            if r.share:
                events.append(EventIn(user=user.id, item=item.id, type="share", ts=format_time(t)))
            if r.not_interested:
                events.append(EventIn(user=user.id, item=item.id, type="not_interested", ts=format_time(t)))
            batch.append((j, completed, events))
            t += gap_s(rngs[k], behaviour)
        pending[k] = batch
        heapq.heappush(queue, (t, k))
    exposure = {j: _exposure(client, items[j].id) for j in uploaded} if read_exposure else {}
    return _finish(name, log, uploaded, exposure, short, client.model(), time.perf_counter() - started)


def _exposure(client: Client, item_id: str) -> dict[str, Any] | None:
    found = client.item(item_id).get("exposure")
    return found if isinstance(found, dict) else None


def _finish(name: str, log: _Log, uploaded: dict[int, float], exposure: dict[int, dict[str, Any] | None],
            short: int, model: dict[str, Any], seconds: float) -> ArmRun:
    rows = log.rows
    columns = list(zip(*rows, strict=True)) if rows else [()] * 8
    kinds = (np.int64, np.int64, np.int64, bool, np.float64, bool, bool, bool)
    user, item, position, on, at, completed, exploration, fresh = (
        np.asarray(c, dtype=kind) for c, kind in zip(columns, kinds, strict=True))
    return ArmRun(name, user, item, position, on, at, completed, exploration, fresh, uploaded, exposure,
                  log.explained, short, model, seconds)
