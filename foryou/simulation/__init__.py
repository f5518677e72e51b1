"""`foryou simulate`: synthetic users with hidden interests drive the engine through the same API as real
clients, in simulated time and with fixed seeds, next to two baselines; see docs/simulation.md.

    from foryou.simulation import simulate
    result = simulate(users=20, views=60, items=600, seed=1)
    print(report.text(result.report))
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foryou.config import Settings
from foryou.errors import ForYouError
from foryou.simulation import report
from foryou.simulation.arms import ARMS, Arm, EngineArm, PopularityArm, RandomArm
from foryou.simulation.behaviour import Behaviour
from foryou.simulation.driver import Client, HttpClient, LocalClient, SimClock
from foryou.simulation.loop import PAGE_LATENCY_S, ArmRun, run_arm
from foryou.simulation.world import DURATION_S, START, World, make_world

__all__ = ["ARMS", "Behaviour", "Result", "World", "make_world", "simulate"]

POOL_SIZE = 300  # the engine's first exposure pool: impressions a new video is promised
FULL_RUN_VIEWS = 20_000  # runs this size (the default) count to the full pool; smaller runs scale it down


@dataclass
class Result:
    world: World
    runs: dict[str, ArmRun]
    report: dict[str, Any]  # JSON-ready (see report.summarise)


def simulate(users: int = 100, views: int = 200, items: int = 6000, new_items: int = 20, seed: int = 0,
             page: int = 10, arms: Sequence[str] = ARMS, drift: bool = False, onboarding: bool = False,
             skew: float = 0.0,
             target_share: float = 0.6, pool_impressions: int | None = None, settings: Settings | None = None,
             data: Path | None = None, url: str | None = None, api_key: str | None = None,
             behaviour: Behaviour | None = None, progress: Callable[[str], None] | None = None) -> Result:
    """Run the same world and the same users through each arm. `settings`: the engine's (its data
    directory is replaced: each arm gets its own, under `data` or a temporary one). `url`: drive the
    `foryou` arm through a running server instead (the baselines still run here)."""
    arms = _check(users, views, items, new_items, page, arms, target_share, pool_impressions)
    if not 0.0 <= skew <= 5.0:
        raise ForYouError(f"must lie in [0, 5], got {skew}", field="--skew")
    settings = settings or Settings()
    behaviour = behaviour or Behaviour()
    total = users * views
    nth = pool_impressions or min(POOL_SIZE, max(1, math.ceil(POOL_SIZE * total / FULL_RUN_VIEWS)))
    world = make_world(users, views, items, new_items, drift=drift, seed=seed, skew=skew)
    # Over HTTP the server keeps its own (wall) clock: the run is placed in its past, close enough for
    # the new uploads to count as new, far enough back that no event lies in the server's future.
    start = START if url is None else float(math.floor(time.time()) - _span_bound(world, views, page))
    runs: dict[str, ArmRun] = {}
    with _folders(data, arms) as folders:
        for name in arms:
            clock = SimClock(start)
            client: Client = (HttpClient(url, api_key) if url is not None and name == "foryou"
                              else LocalClient(_open(settings, folders[name], clock, seed, learn=name == "foryou")))
            ids = tuple(it.id for it in world.all_items())
            arm: Arm = (EngineArm(client, {i: k for k, i in enumerate(ids)}) if name == "foryou"
                        else PopularityArm.new(ids, users, seed) if name == "popularity"
                        else RandomArm.new(ids, users, seed))
            try:
                runs[name] = run_arm(name, world, arm, client, clock, views, page, seed, behaviour, onboarding,
                                     read_exposure=name == "foryou")
            finally:
                client.close()
            if progress is not None:
                progress(f"{name}: {len(runs[name].item)} views in {runs[name].seconds:.1f}s")
    params = {"users": users, "views": views, "items": items, "new_items": new_items, "seed": seed, "page": page,
              "arms": list(arms), "drift": drift, "skew": skew, "onboarding": onboarding, "target_share": target_share,
              "pool_impressions": nth, "learning": settings.learning.enabled, "url": url}
    return Result(world, runs, report.summarise(world, runs, params))


def _check(users: int, views: int, items: int, new_items: int, page: int, arms: Sequence[str],
           target_share: float, pool_impressions: int | None) -> tuple[str, ...]:
    for name, value, low in (("--users", users, 1), ("--views", views, 1), ("--items", items, 1),
                             ("--new-items", new_items, 0), ("--n", page, 1),
                             ("--pool-impressions", 1 if pool_impressions is None else pool_impressions, 1)):
        if value < low:
            raise ForYouError(f"must be at least {low}, got {value}", field=name)
    if page > 100:
        raise ForYouError(f"a page holds at most 100 items, got {page}", field="--n")
    if not 0.0 < target_share <= 1.0:
        raise ForYouError(f"must lie in (0, 1], got {target_share}", field="--target-share")
    chosen = tuple(dict.fromkeys(a.strip() for a in arms if a.strip()))
    unknown = [a for a in chosen if a not in ARMS]
    if unknown or not chosen:
        raise ForYouError(f"unknown arm(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(ARMS)}",
                          field="--arms")
    return chosen


def _span_bound(world: World, views: int, page: int) -> float:
    """An upper bound of the run's simulated length (every video watched to its longest loop)."""
    per_view = DURATION_S[1] * 1.3 + 2 * Behaviour().swipe_gap_s
    return max(u.start_s for u in world.users) + views * per_view + (views // page + 1) * PAGE_LATENCY_S + 60.0


@contextlib.contextmanager
def _folders(data: Path | None, arms: Sequence[str]) -> Iterator[dict[str, Path]]:
    """One data directory per arm: under `data` (which must not hold an earlier run's), else temporary."""
    if data is None:
        with tempfile.TemporaryDirectory(prefix="foryou-sim-") as tmp:
            yield {a: Path(tmp) / a for a in arms}
        return
    folders = {a: Path(data) / a for a in arms}
    used = [str(f) for f in folders.values() if f.exists() and any(f.iterdir())]
    if used:
        raise ForYouError(f"{', '.join(used)} already holds data: a simulation starts from an empty engine",
                          field="--data")
    yield folders


def _open(settings: Settings, folder: Path, clock: SimClock, seed: int, learn: bool) -> Any:
    """An engine on `folder`. A baseline's engine only counts its events (nothing of it is served), so
    its learned model is off: it would only cost time. The learned model searches an exact index: usearch
    builds its HNSW graph on all cores, in an order that differs from run to run, and a run must repeat
    exactly (at simulator sizes the exact search costs nothing)."""
    from foryou.engine import Engine

    folder.mkdir(parents=True, exist_ok=True)
    learning = dataclasses.replace(settings.learning, enabled=settings.learning.enabled and learn, index="exact")
    # no feed time budget: a wall-clock cut-off would make a seed's report depend on the machine's speed
    server = dataclasses.replace(settings.server, data=str(folder), feed_budget_ms=0.0)
    arm_settings = dataclasses.replace(settings, server=server, learning=learning)
    return Engine.open(arm_settings, clock=clock, seed=seed)
