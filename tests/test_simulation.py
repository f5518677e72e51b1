"""`foryou simulate` (issue 5, point 7): the metrics on hand-computed inputs, the world and the behaviour
model, runs that repeat exactly, an engine that learns each user's hidden interest (a test that fails
if it stops learning), the CLI, and the HTTP mode against a real server."""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import ADMIN_KEY

from foryou.cli import main
from foryou.config import load_settings
from foryou.signals import is_completion, is_early_swipe
from foryou.simulation import Result, make_world, metrics, report, simulate
from foryou.simulation.behaviour import Behaviour, react
from foryou.simulation.world import SENSITIVE, TOPICS

SMALL = {"users": 20, "views": 60, "items": 1500, "new_items": 6}


# -- metrics, by hand --


def test_metrics_doctests() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0


def test_gini_of_equal_exposure_is_zero_and_of_one_creator_is_near_one() -> None:
    assert metrics.gini(np.full(50, 7.0)) == pytest.approx(0.0, abs=1e-12)
    one = np.zeros(100)
    one[3] = 40.0
    assert metrics.gini(one) == pytest.approx(0.99)  # (n - 1) / n
    assert metrics.gini(np.array([1.0, 3.0])) == pytest.approx(0.25)  # mean |xi - xj| / (2 mean) = 1 / 4
    assert metrics.gini(np.zeros(5)) == 0.0


def test_lorenz_curve_runs_from_origin_to_one() -> None:
    x, y = metrics.lorenz(np.array([0.0, 1.0, 3.0]))
    assert x.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.25, 1.0])


def test_longest_run_and_entropy() -> None:
    assert metrics.longest_run([1, 1, 2, 2, 2, 1, 2]) == 3
    assert metrics.longest_run([5]) == 1
    assert metrics.longest_run([]) == 0
    assert metrics.entropy_bits([0, 1, 2, 3]) == pytest.approx(2.0)
    assert metrics.entropy_bits([4, 4, 4]) == 0.0
    assert metrics.entropy_bits([0, 0, 0, 1]) == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))


def test_views_until_needs_a_full_trailing_window() -> None:
    on = np.array([1, 0, 0, 0, 1, 1, 1, 0, 1, 1], bool)
    # windows of 4: views 1-4 share 0.25, 2-5 0.25, 3-6 0.5, 4-7 0.75
    assert metrics.views_until(on, 0.75, window=4) == 7
    assert metrics.views_until(on, 0.5, window=4) == 6
    assert metrics.views_until(on, 1.0, window=4) is None
    assert metrics.views_until(np.ones(3, bool), 0.5, window=4) is None  # a lucky start is not a full window
    assert metrics.median_or_none([10, None, 30]) == 30.0  # "never" counts as larger than any number
    assert metrics.median_or_none([10, None, None]) is None


def test_window_share_averages_users_and_skips_missing_views() -> None:
    m = metrics.by_user(np.array([0, 0, 0, 1]), np.array([1, 2, 3, 1]), np.array([1.0, 0.0, 1.0, 0.0]), 2, 3)
    assert metrics.window_share(m, 1, 3) == pytest.approx((2 / 3 + 0.0) / 2)
    assert metrics.window_share(m, 2, 3) == pytest.approx(0.5)  # only user 0 got that far
    assert metrics.share_curve(m).tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert metrics.coverage(np.array([3, 3, 1]), 10) == pytest.approx(0.2)
    assert metrics.nth_after(np.array([30.0, 10.0, 20.0]), 5.0, 2) == 15.0
    assert metrics.nth_after(np.array([30.0]), 5.0, 2) is None


# -- the world and the behaviour model --


def test_world_is_seeded_and_has_the_shape_of_the_issue() -> None:
    world = make_world(users=50, views=100, items=900, new_items=10, seed=3)
    assert world == make_world(users=50, views=100, items=900, new_items=10, seed=3)
    assert world != make_world(users=50, views=100, items=900, new_items=10, seed=4)
    assert len(TOPICS) == 30 and set(SENSITIVE) <= set(TOPICS)
    assert all(1 <= len(u.interests) <= 2 and u.drift_at is None for u in world.users)
    assert {it.kind for it in world.uploads} == {"good", "bad"}
    assert min(it.quality for it in world.uploads if it.kind == "good") > max(
        it.quality for it in world.uploads if it.kind == "bad")
    for it in world.catalogue[:50]:
        assert it.tags[0] == TOPICS[it.topic] and 2 <= len(it.tags) <= 3
        assert all(t.startswith(TOPICS[it.topic] + "-") for t in it.tags[1:])
        assert 8.0 <= it.duration_s <= 60.0 and 0.0 <= it.quality <= 1.0
    drifting = make_world(users=50, views=100, items=900, new_items=10, drift=True, seed=3)
    user = drifting.users[0]
    assert user.drift_at is not None and user.interests_at(user.drift_at + 1) != user.interests


def test_reactions_follow_the_engine_definitions() -> None:
    rng = np.random.default_rng(0)
    strict = Behaviour(noise=0.0, finish_base=1.0, finish_quality=0.0, finish_off=0.0)
    for _ in range(200):
        duration = float(rng.uniform(8, 60))
        assert is_completion(react(rng, True, duration, 0.5, strict).watch_s, duration)
        off = react(rng, False, duration, 0.5, strict)
        assert is_early_swipe(off.watch_s, duration) and not off.like
    # with `finish_off`, quality raises everyone's completions: a very good video is sometimes finished
    # off-interest; by default only noise (5%) makes an off-interest view a completion
    tempting = Behaviour(finish_off=0.3)
    views = [react(rng, False, 30.0, 1.0, tempting) for _ in range(2000)]
    assert 0.1 < np.mean([is_completion(r.watch_s, 30.0) for r in views]) < 0.6
    assert np.mean([is_completion(react(rng, False, 30.0, 0.05, tempting).watch_s, 30.0)
                    for _ in range(2000)]) < 0.1
    plain = [is_completion(react(rng, False, 30.0, 1.0, Behaviour()).watch_s, 30.0) for _ in range(2000)]
    assert 0.02 < np.mean(plain) < 0.08


# -- whole runs --


@pytest.fixture(scope="module")
def small() -> Result:
    return simulate(**SMALL, seed=1)


def test_same_seed_same_report_other_seed_other_report(small: Result) -> None:
    assert simulate(**SMALL, seed=1).report == small.report
    assert simulate(**SMALL, seed=2, arms=["foryou"]).report["arms"]["foryou"] != small.report["arms"]["foryou"]


def test_the_engine_learns_hidden_interests(small: Result) -> None:
    """Random serves a user's 1.5 topics out of 30 (about 5%); a feed that learns from watch time does
    far better once it has seen 20 views per user. Fails if the engine stops learning."""
    share = {name: metrics.window_share(report.on_matrix(run, SMALL["users"], SMALL["views"]), 21, 60)
             for name, run in small.runs.items()}
    assert share["random"] is not None and share["random"] < 0.1
    assert share["foryou"] is not None and share["foryou"] > max(0.15, 3 * share["random"])
    assert share["foryou"] > share["popularity"]


def test_every_arm_serves_each_user_each_item_once(small: Result) -> None:
    for name, run in small.runs.items():
        assert len(run.item) == SMALL["users"] * SMALL["views"], name
        pairs = run.user.astype(np.int64) * 10**6 + run.item
        assert len(np.unique(pairs)) == len(pairs), name
        assert sorted(run.position[run.user == 0].tolist()) == list(range(1, SMALL["views"] + 1))


def test_report_has_every_metric(small: Result) -> None:
    arms = small.report["arms"]
    assert list(arms) == ["foryou", "popularity", "random"]
    for name, arm in arms.items():
        assert set(arm["on_interest"]) == {"1-50", "51-100", "101-200"}, name
        assert arm["on_interest"]["101-200"] is None  # 60 views: nobody got there
        assert 0.0 <= arm["coverage"] <= 1.0 and 0.0 <= arm["creator_gini"] < 1.0
        assert arm["longest_topic_run"] >= 1 and arm["topic_entropy_bits"] > 0
        new = arm["new_items"]
        assert new["good"]["uploaded"] + new["bad"]["uploaded"] == new["uploaded"] <= SMALL["new_items"]
    assert arms["popularity"]["creator_gini"] > arms["random"]["creator_gini"]  # rich get richer
    assert [t["target"] for t in small.report["targets"]][:2] == [
        "on-interest share, views 1-50", "on-interest share, views 101-200"]
    text = report.text(small.report)
    assert "on-interest share, views 1-50" in text and "targets (the foryou arm):" in text


# -- the CLI --


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["simulate", *args])
    return code, out.getvalue(), err.getvalue()


TINY = ("--users", "6", "--views", "25", "--items", "400", "--new-items", "4", "--seed", "5")


def test_cli_prints_one_json_object_and_writes_plots(tmp_path: Path) -> None:
    code, out, err = _cli(*TINY, "--json", "--data", str(tmp_path / "data"), "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)  # only one JSON object: anything else fails here
    assert set(parsed) == {"params", "arms", "targets"}
    assert parsed["params"]["users"] == 6 and parsed["params"]["arms"] == ["foryou", "popularity", "random"]
    assert set(parsed["arms"]["foryou"]) >= {
        "views_until_target", "on_interest", "exploration_share", "topic_entropy_bits", "longest_topic_run",
        "coverage", "creator_gini", "new_items"}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["foryou", "popularity", "random"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["lorenz.png", "new_items.png", "share.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (tmp_path / "plots").iterdir())
    assert "foryou: 150 views" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--arms", "foryou,oracle"], "unknown arm(s) oracle"),
    (["--users", "0"], "--users: must be at least 1"),
    (["--target-share", "1.5"], "--target-share: must lie in (0, 1]"),
    (["--url", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9"),
])
def test_cli_errors_are_named(args: list[str], message: str) -> None:
    code, out, err = _cli(*TINY, "--quiet", *args)
    assert code == 2 and out == ""
    assert message in err


def test_cli_refuses_a_data_directory_that_holds_a_run(tmp_path: Path) -> None:
    (tmp_path / "foryou").mkdir()
    (tmp_path / "foryou" / "catalog.db").write_bytes(b"")
    code, _, err = _cli(*TINY, "--quiet", "--data", str(tmp_path))
    assert code == 2 and "already holds data" in err


# -- HTTP mode, against a real server --


@contextlib.contextmanager
def _server(data: Path) -> Iterator[str]:
    import uvicorn

    from foryou.engine import Engine
    from foryou.http import create_app
    from foryou.privacy.keys import KeyRing

    engine = Engine.open(load_settings(overrides={"server.data": str(data)}, env={}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(engine, KeyRing(data, ADMIN_KEY))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.close()


def test_http_mode_drives_a_real_server(tmp_path: Path) -> None:
    with _server(tmp_path / "server") as url:
        result = simulate(users=6, views=25, items=400, new_items=4, seed=5, arms=["foryou", "random"], url=url,
                          api_key=ADMIN_KEY)
    arms = result.report["arms"]
    assert result.report["params"]["url"] == url
    assert arms["foryou"]["views"] == arms["random"]["views"] == 150
    run = result.runs["foryou"]
    assert len(np.unique(run.user.astype(np.int64) * 10**6 + run.item)) == 150  # no repeats, through HTTP too
    assert run.model == {}  # not known over HTTP
