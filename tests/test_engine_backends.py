"""The engine on each store backend (chosen by URL): the same calls give the same state, and a reopen
of the same location brings it back. The storage contract itself is tests/contracts/test_store.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from factories import Clock

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.types import EventIn, ItemIn, format_time

T0 = 1_700_000_000.0
_names = itertools.count()


def url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store'}" if kind == "sqlite" else f"memory://engine-test-{next(_names)}"


def run(engine: Engine) -> list[str]:
    engine.items.upsert([ItemIn(id=f"v{k}", creator=f"c{k % 3}", duration_s=10.0, tags=[f"t{k % 4}"],
                                created_at=format_time(T0 - 3600)) for k in range(30)])
    engine.events.ingest([EventIn(user=f"u{k % 5}", item=f"v{k % 30}", type="view", watch_s=10.0, id=f"e{k}")
                          for k in range(100)])
    return [i.id for i in engine.feeds.feed("u0", 10).items]


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_the_engine_runs_and_restarts_on_every_backend(kind: str, tmp_path: Path) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    where = url(kind, tmp_path)
    engine = Engine.open(settings, clock=Clock(T0), store_url=where, seed=0)
    served = run(engine)
    views = engine.items.get("v3")["stats"]["views"]  # type: ignore[index]
    engine.close()
    assert len(served) == 10 and views == 4
    with Engine.open(settings, clock=Clock(T0 + 60), store_url=where, seed=0) as again:
        assert again.items.get("v3")["stats"]["views"] == views  # type: ignore[index]
        assert again.events.ingest([EventIn(user="u1", item="v1", type="view", watch_s=1.0, id="e1")]).duplicates == 1
        second = [i.id for i in again.feeds.feed("u0", 10).items]
        assert not set(second) & set(served)  # nothing served twice, across the restart


def test_backends_agree(tmp_path: Path) -> None:
    got = []
    for kind in ("sqlite", "memory"):
        settings = load_settings(overrides={"server.data": str(tmp_path / kind), "learning.enabled": False}, env={})
        with Engine.open(settings, clock=Clock(T0), store_url=url(kind, tmp_path / kind), seed=0) as engine:
            got.append((run(engine), engine.live.catalog.stats.copy().tolist()))
    assert got[0] == got[1]


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_user_read_again_needs_only_their_later_served_rows(kind: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved state holds what the user was served and viewed: read again after a restart, the user
    costs one look-up of the rows served since it was saved, not their whole log, and is still never
    served an item twice (also one served after the last checkpoint, before a crash)."""
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    where = url(kind, tmp_path)
    engine = Engine.open(settings, clock=Clock(T0), store_url=where, seed=0)
    first = run(engine)  # u0 viewed v0, v5, v10, ...: never to be served
    viewed = {f"v{k % 30}" for k in range(0, 100, 5)}
    engine.live.checkpoint()
    later = [i.id for i in engine.feeds.feed("u0", 5).items]  # served, not checkpointed: then a crash
    engine.store.close()
    again = Engine.open(settings, clock=Clock(T0 + 60), store_url=where, seed=0)
    whole_log: list[str] = []
    real = again.store.excluded_items
    monkeypatch.setattr(again.store, "excluded_items",
                        lambda region, user: whole_log.append(user) or real(region, user))
    third = [i.id for i in again.feeds.feed("u0", 10).items]
    assert whole_log == []
    assert len(later) == 5 and third and not set(third) & (set(first) | set(later) | viewed)
    again.close()
