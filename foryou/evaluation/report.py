"""An evaluation's outcome as one JSON object, as text tables, or as PNG plots."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from foryou.evaluation import metrics
from foryou.evaluation.grading import RANKING_METRICS
from foryou.evaluation.harness import Graded, Outcome
from foryou.evaluation.split import HEADS

_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})$")


def zone_of(timestamp: str) -> tzinfo:
    """The UTC offset an RFC 3339 timestamp was written with (times in the report use it too)."""
    match = _OFFSET.search(timestamp.strip())
    if not match:
        return UTC
    sign = 1 if match[1] == "+" else -1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def format_time(ts: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(ts, zone).isoformat()


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _models(graded: Graded) -> dict[str, dict[str, float | None]]:
    return {name: {k: _clean(v) for k, v in values.items()} for name, values in graded.models.items()}


def _stderr(graded: Graded) -> dict[str, dict[str, float | None]]:
    return {name: {k: _clean(v) for k, v in values.items()} for name, values in graded.stderr.items()}


def as_json(outcome: Outcome, zone: tzinfo = UTC) -> dict[str, Any]:
    """`{"protocol": "split", "test_from", "users", "models": {model: {metric: value}}, "stderr": {model:
    {metric: standard error of the mean over users}}, "daily": {...the same shape, plus "days": each
    day's}, "valid": {what was tuned on it}, ...}`; NaN becomes null."""
    when = format_time(outcome.test_from, zone)
    return {
        "protocol": "split",
        "test_from": when,
        "users": outcome.split.users,
        "models": _models(outcome.split),
        "stderr": _stderr(outcome.split),
        "daily": {
            "protocol": "daily",
            "test_from": when,
            "users": outcome.daily.users,
            "models": _models(outcome.daily),
            "stderr": _stderr(outcome.daily),
            "learning": dict(outcome.learning),
            "days": [{"from": format_time(at, zone), "users": graded.users, "models": _models(graded)}
                     for at, graded in outcome.days],
        },
        "valid": {
            "protocol": "valid",
            "valid_from": format_time(outcome.valid_from, zone),
            "users": outcome.valid.users,
            "tuned": outcome.tuning,
        },
        "calibration": _calibration(outcome),
        "events": {"train": outcome.train_events, "test": outcome.test_events},
        "seconds": {k: round(v, 1) for k, v in outcome.seconds.items()},
    }


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def ranking_table(graded: Graded) -> str:
    """One row per model; `±se` is the standard error of NDCG@10 (of the mean over users)."""
    rows = [[name, _number(values.get(RANKING_METRICS[0])),
             _number(graded.stderr.get(name, {}).get(RANKING_METRICS[0])),
             *(_number(values.get(m)) for m in RANKING_METRICS[1:])] for name, values in graded.models.items()]
    return _table(["model", RANKING_METRICS[0], "±se", *RANKING_METRICS[1:]], rows)


def heads_table(graded: Graded) -> str:
    """One row per head, AUC and GAUC of each model with heads."""
    names = [n for n, values in graded.models.items() if any(k.startswith("auc:") for k in values)]
    if not names:
        return ""
    header = ["head", *(f"{n} {kind}" for n in names for kind in ("auc", "gauc"))]
    rows = [[head, *(_number(graded.models[n].get(f"{kind}:{head}")) for n in names for kind in ("auc", "gauc"))]
            for head in HEADS]
    return _table(header, rows)


def _calibration(outcome: Outcome) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per model and head: mean predicted, observed rate, and the expected calibration error."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, heads in outcome.calibration.items():
        for head, (pred, obs, counts) in heads.items():
            total = float(counts.sum())
            out.setdefault(name, {})[head] = {
                "predicted": _clean(float((pred * counts).sum() / total)) if total else None,
                "observed": _clean(float((obs * counts).sum() / total)) if total else None,
                "ece": _clean(metrics.calibration_error(pred, obs, counts))}
    return out


def calibration_table(outcome: Outcome) -> str:
    """One row per head: each model's mean P against the observed rate, and its calibration error."""
    summary = _calibration(outcome)
    if not summary:
        return ""
    names = list(summary)
    header = ["head", *(f"{n} {kind}" for n in names for kind in ("mean p", "rate", "ece"))]
    rows = [[head, *(_number(summary[n].get(head, {}).get(k)) for n in names for k in ("predicted", "observed", "ece"))]
            for head in HEADS]
    return _table(header, rows)


def text(outcome: Outcome, zone: tzinfo = UTC) -> str:
    """The tables `foryou evaluate` prints."""
    test_from = format_time(outcome.test_from, zone)
    out = [f"split protocol: trained on {outcome.train_events:,} events before {test_from}, "
           f"tested on {outcome.test_events:,}; {outcome.split.users:,} users", "",
           ranking_table(outcome.split)]
    heads = heads_table(outcome.split)
    if heads:
        out += ["", "prediction heads on the test views (split)", heads]
        out += ["", "calibration on the same views: mean P(head), observed rate, expected calibration error "
                "(10 bins of equal count)", calibration_table(outcome)]
    learning = ", ".join(f"{m} {how}" for m, how in outcome.learning.items())
    out += ["", f"daily protocol: {len(outcome.days)} days from {test_from}, {outcome.daily.users:,} user-days "
            f"({learning})", "", ranking_table(outcome.daily)]
    if outcome.days:
        names = list(outcome.daily.models)
        rows = [[format_time(at, zone)[:10], *(_number(g.models.get(n, {}).get("ndcg@10")) for n in names)]
                for at, g in outcome.days]
        out += ["", "ndcg@10 by test day", _table(["day", *names], rows)]
    out += ["", f"tuned on the validation split ({format_time(outcome.valid_from, zone)} to {test_from}, "
            f"{outcome.valid.users:,} users), by ndcg@10; the test period tuned nothing:"]
    for name, tuning in outcome.tuning.items():
        tried = "; ".join(f"{_params(t['params'])}: {t['ndcg@10']:.4f}" for t in tuning["tried"])
        out.append(f"  {name}: {_params(tuning['chosen'])} (tried {tried})")
    untuned = [n for n in outcome.split.models if n not in outcome.tuning]
    if untuned:
        out.append(f"  not tuned here: {', '.join(untuned)} (the engine runs with its settings as served; its defaults "
                   "were chosen on the validation split, docs/evaluation.md)")
    reading = outcome.seconds.get("reading", 0.0)
    out += ["", f"took {outcome.seconds.get('total', 0.0) + reading:.1f}s ({reading:.1f}s reading the files)"]
    return "\n".join(out)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def plots(outcome: Outcome, folder: Path, zone: tzinfo = UTC) -> list[Path]:
    """metrics.png (split, per model), daily.png (by test day), calibration.png (models with heads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    names = list(outcome.split.models)
    fig, axes = plt.subplots(1, len(RANKING_METRICS), figsize=(3 * len(RANKING_METRICS), 3.6))
    for ax, metric in zip(axes, RANKING_METRICS, strict=True):
        ax.bar(range(len(names)), [outcome.split.models[n].get(metric, 0.0) for n in names],
               color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(metric)
    fig.suptitle(f"split protocol, test from {format_time(outcome.test_from, zone)}")
    fig.tight_layout()
    written.append(folder / "metrics.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    if outcome.days:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        days = [format_time(at, zone)[5:10] for at, _ in outcome.days]
        for ax, metric in zip(axes, ("ndcg@10", "recall@50"), strict=True):
            for i, name in enumerate(names):
                ax.plot(days, [g.models.get(name, {}).get(metric, math.nan) for _, g in outcome.days],
                        marker="o", color=f"C{i}", label=name)
            ax.set_title(f"{metric} by test day")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        written.append(folder / "daily.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    curves = {(m, h): c for m, heads in outcome.calibration.items() for h, c in heads.items() if len(c[0])}
    if curves:
        heads = sorted({h for _, h in curves}, key=lambda h: HEADS.index(h) if h in HEADS else len(HEADS))
        fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads), 3.4), squeeze=False)
        for ax, head in zip(axes[0], heads, strict=True):
            top = 0.0
            for i, name in enumerate(names):
                if (name, head) in curves:
                    pred, seen, _ = curves[(name, head)]
                    ax.plot(pred, seen, marker="o", color=f"C{i}", label=name)
                    top = max(top, float(pred.max()), float(seen.max()))
            ax.plot([0, top], [0, top], color="grey", linestyle=":")
            ax.set_title(f"P({head})")
            ax.set_xlabel("predicted")
        axes[0][0].set_ylabel("observed")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        written.append(folder / "calibration.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
