"""`foryou evaluate` (issue 3, item 3): `--json` prints only one JSON object on stdout, in the shape the
issue gives; without it, tables; `--plots DIR` writes PNGs; bad input and a missing `eval` extra give a
clear error. The dataset is the synthetic world, written here as JSON Lines."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest

from foryou.cli import main
from foryou.evaluation import MODELS
from foryou.evaluation.synthetic import make_world, write_jsonl
from foryou.types import format_time

RANKING = {"ndcg@10", "recall@10", "recall@50", "recall@200", "hr@10", "coverage@10"}
HEADS = {f"{kind}:{head}" for kind in ("auc", "gauc") for head in ("complete", "like", "comment", "share", "follow")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    world = make_world(users=40, items=80, seed=2)
    items, events = write_jsonl(world, tmp_path_factory.mktemp("world"))
    return items, events, format_time(world.test_from).replace("Z", "+00:00")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def report(dataset: tuple[Path, Path, str]) -> dict[str, Any]:
    items, events, test_from = dataset
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["evaluate", "--items", str(items), "--events", str(events), "--test-from", test_from, "--json"])
    assert code == 0, err.getvalue()
    parsed: dict[str, Any] = json.loads(out.getvalue())  # only one JSON object: anything else fails here
    parsed["_stderr"] = err.getvalue()
    return parsed


def test_json_has_the_shape_of_the_issue(report: dict[str, Any], dataset: tuple[Path, Path, str]) -> None:
    assert report["protocol"] == "split"
    assert report["test_from"] == dataset[2]
    assert report["users"] > 0
    assert list(report["models"]) == list(MODELS)
    for name, metrics in report["models"].items():
        with_heads = ("foryou", "foryou_heuristic", "popularity", "recent_popularity")
        expected = RANKING | HEADS if name in with_heads else RANKING
        assert set(metrics) == expected, name
        assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values()), name
        assert set(report["stderr"][name]) == RANKING - {"coverage@10"}, name
    daily = report["daily"]
    assert daily["protocol"] == "daily" and daily["test_from"] == dataset[2]
    assert list(daily["models"]) == list(MODELS) == list(daily["stderr"])
    assert daily["users"] == sum(day["users"] for day in daily["days"])
    assert [day["from"][:10] for day in daily["days"]] == ["2024-01-07", "2024-01-08"]
    online = ("foryou", "foryou_heuristic")
    assert daily["learning"] == {name: "online" if name in online else "refit daily" for name in MODELS}
    assert set(report["valid"]["tuned"]) == {"item_knn", "implicit_als"}
    assert report["valid"]["valid_from"] < dataset[2]
    assert report["events"]["train"] > 0 and report["events"]["test"] > 0


def test_json_progress_goes_to_stderr(report: dict[str, Any]) -> None:
    assert "step" in report["_stderr"]  # the progress bar


def test_tables_without_json(capsys: pytest.CaptureFixture[str], dataset: tuple[Path, Path, str],
                             tmp_path: Path) -> None:
    items, events, test_from = dataset
    code, out, _ = run(capsys, "evaluate", "--items", str(items), "--events", str(events), "--test-from", test_from,
                       "--models", "foryou,popularity", "--quiet", "--plots", str(tmp_path / "plots"))
    assert code == 0
    assert out.startswith("split protocol:")
    assert "ndcg@10" in out and "daily protocol:" in out and "foryou gauc" in out
    assert "not tuned here: foryou, popularity" in out
    assert "calibration on the same views" in out and "foryou ece" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["calibration.png", "daily.png", "metrics.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (tmp_path / "plots").iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--test-from", "yesterday"], "--test-from: must be an RFC 3339 timestamp"),
    (["--test-from", "2020-01-01T00:00:00Z"], "inside the event log"),
    (["--test-from", "2024-01-07T00:00:00Z", "--valid-from", "2024-01-08T00:00:00Z"], "valid_from must come"),
    (["--test-from", "2024-01-07T00:00:00Z", "--models", "foryou,gpt"], "unknown model(s) gpt"),
])
def test_bad_arguments_are_named(capsys: pytest.CaptureFixture[str], dataset: tuple[Path, Path, str],
                                 args: list[str], message: str) -> None:
    items, events, _ = dataset
    code, out, err = run(capsys, "evaluate", "--items", str(items), "--events", str(events), "--quiet", *args)
    assert code == 2 and out == ""
    assert message in err


def test_missing_eval_extra_names_the_install_command(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      dataset: tuple[Path, Path, str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "implicit" else real(name, *a))
    items, events, test_from = dataset
    code, out, err = run(capsys, "evaluate", "--items", str(items), "--events", str(events), "--test-from", test_from)
    assert code == 2 and out == ""
    assert "pip install 'foryou-engine[eval]'" in err and "implicit" in err
