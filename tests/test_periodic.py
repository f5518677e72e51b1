"""Periodic work survives its own errors: a task that raises is logged, counted in /metrics and
retried; the other tasks go on; after three failures in a row /healthz says 503 degraded, and 200
again once the task succeeds."""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest
from conftest import MakeClient
from factories import Clock

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from foryou.periodic import MISSED, Periodic


class Flaky:
    """A task that fails while `broken`, counting its calls."""

    def __init__(self, broken: bool = True) -> None:
        self.broken = broken
        self.calls = 0

    def __call__(self, now: float) -> None:
        self.calls += 1
        if self.broken:
            raise RuntimeError("user u-123 broke it")  # a message that must not reach the log


def test_a_failing_task_neither_stops_the_others_nor_itself(caplog: pytest.LogCaptureFixture) -> None:
    bad, good = Flaky(), Flaky(broken=False)
    periodic = Periodic({"bad": bad, "good": good}, interval_s=0.5)
    now = 0.0
    for _ in range(40):  # 20 s of ticks
        periodic.run(now)
        now += 0.5
    assert good.calls == 40
    # retried with a backoff that doubles: at 0, 0.5, 1.5, 3.5, 7.5, 15.5 s
    assert bad.calls == 6 and periodic.failures == {"bad": 6, "good": 0}
    assert periodic.failing() == ["bad"]
    assert "RuntimeError at" in caplog.text and "u-123" not in caplog.text
    bad.broken = False
    periodic.run(100.0)
    assert periodic.failing() == [] and periodic.failures["bad"] == 6  # the count is kept for /metrics


def test_failing_only_after_missed_intervals_in_a_row() -> None:
    bad = Flaky()
    periodic = Periodic({"bad": bad}, interval_s=0.5)
    now = 0.0
    for _ in range(MISSED - 1):
        periodic.run(now)
        now = periodic.retry_at["bad"]
    assert periodic.failing() == []
    bad.broken = False
    periodic.run(now)  # a success in between starts the count again
    bad.broken = True
    for _ in range(MISSED - 1):
        periodic.run(now)
        now = periodic.retry_at["bad"]
    assert periodic.failing() == []
    periodic.run(now)
    assert periodic.failing() == ["bad"]


def test_healthz_degrades_and_recovers_and_metrics_count(make_client: MakeClient) -> None:
    clock = Clock(1_700_000_000.0)
    client = make_client(clock=clock)
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    flaky = Flaky()
    engine.periodic.tasks["learning"] = flaky
    for _ in range(MISSED):
        engine.tick(clock())
        clock.advance(60.0)
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "degraded", "failing": ["learning"]}
    metrics = client.get("/metrics").text
    assert f'foryou_periodic_failures_total{{task="learning"}} {MISSED}' in metrics
    assert 'foryou_periodic_failing{task="learning"} 1' in metrics
    assert 'foryou_periodic_failures_total{task="checkpoint"} 0' in metrics
    flaky.broken = False
    engine.tick(clock())
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_servers_tick_loop_survives_an_exception(make_client: MakeClient) -> None:
    """On the server's own schedule (the app's lifespan): one exception used to end the loop for good."""
    client = make_client()
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    flaky = Flaky()
    retention = Flaky(broken=False)
    engine.periodic.tasks["learning"] = flaky
    engine.periodic.tasks["retention"] = retention
    with TestClient(client.app, raise_server_exceptions=False):
        deadline = time.monotonic() + 10
        while (flaky.calls < 3 or retention.calls < 5) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert flaky.calls >= 3 and retention.calls >= 5


def test_a_task_failing_for_days_is_still_retried() -> None:
    """The backoff is capped before its power overflows (1,024 failures in a row, about 17 hours)."""
    bad = Flaky()
    periodic = Periodic({"bad": bad}, interval_s=0.5)
    now = before = 0.0
    for _ in range(2000):
        before = now
        periodic.run(now)
        now = periodic.retry_at["bad"]
    assert bad.calls == 2000 and now - before == 60.0  # the longest backoff, still
    bad.broken = False
    periodic.run(now)
    assert periodic.failing() == []


def test_a_checkpoint_behind_a_backlog_runs_in_several_slices_a_round(make_client: MakeClient) -> None:
    """A round of the periodic work saves up to 10 slices of 200 users, requests let in between each:
    one slice a round (400 users a second) fell behind 1,000 new users a second."""
    import asyncio

    from foryou.http.app import run_periodic
    from foryou.types import EventIn, ItemIn

    clock = Clock(1_700_000_000.0)
    client = make_client(clock=clock, **{"learning.enabled": False})
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    engine.items.upsert([ItemIn(id="v", creator="c", duration_s=10.0)])
    engine.live.prefetch([f"u{k}" for k in range(3000)])  # users in memory (active), as a feed reads them
    engine.events.ingest([EventIn(user=f"u{k}", item="v", type="like") for k in range(3000)])

    def dirty() -> int:
        return sum(len(users) for users in engine.live.dirty_users.values())

    assert dirty() == 3000
    clock.advance(engine.settings.store.user_save_after_s + 1)  # past the interval and the users' save age
    asyncio.run(run_periodic(engine))
    assert dirty() == 3000 - 10 * 200
    asyncio.run(run_periodic(engine))
    assert dirty() == 0


def test_a_changed_user_is_saved_once_unsaved_for_the_save_age_and_read_right_meanwhile(tmp_path: Any) -> None:
    """A user active all along is not saved at every checkpoint interval, only once their state has been
    unsaved for `store.user_save_after_s`; the watermark stays below their change until then; another
    engine reading the user meanwhile catches up from the log."""
    from foryou.config import load_settings
    from foryou.engine import Engine
    from foryou.types import EventIn, ItemIn

    clock = Clock(1_700_000_000.0)
    settings = load_settings(overrides={"server.data": str(tmp_path / "d"), "learning.enabled": False}, env={})
    engine = Engine.open(settings, clock=clock, seed=0)
    try:
        engine.items.upsert([ItemIn(id=f"v{k}", creator=f"c{k}", duration_s=10.0, tags=[f"t{k}"]) for k in range(3)])
        engine.live.prefetch(["u1"])
        engine.events.ingest([EventIn(user="u1", item="v1", type="like")])
        seq = engine.live.users["u1"].dirty_since
        assert seq > 0
        age = settings.store.user_save_after_s
        for _ in range(int(age / 0.5) - 2):  # checkpoints come and go: u1 waits
            clock.advance(0.5)
            engine.tick(clock())
        assert engine.live.users["u1"].dirty and engine.store.load_user_state("us", "u1") is None
        assert engine.store.user_state_watermark("us") < seq
        weights = dict(engine.live.users["u1"].state.weights)
        assert weights  # the like moved u1's interests: what the other engine must find too
        other = Engine.open(settings, clock=clock, seed=0)  # as another server would read u1 now
        try:
            assert other.live.user("u1").state.weights == weights
        finally:
            other.store.close()
        for _ in range(12):
            clock.advance(0.5)
            engine.tick(clock())
        assert not engine.live.users["u1"].dirty and engine.store.load_user_state("us", "u1") is not None
        assert engine.store.user_state_watermark("us") >= seq
    finally:
        engine.close()
