"""A run's outcome as one JSON-ready dict (`summarise`), and that dict as a text table (`text`).

Everything here is derived from what each arm served and how the simulated users reacted, plus the
engine's exposure record of each new video where it gives one; nothing depends on wall time, so one
seed gives one report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foryou.simulation import metrics
from foryou.simulation.loop import ArmRun
from foryou.simulation.world import SENSITIVE, TOPICS, World

WINDOWS = ((1, 50), (51, 100), (101, 200))
_SENSITIVE = np.array([t in SENSITIVE for t in TOPICS])


def on_matrix(run: ArmRun, users: int, views: int) -> np.ndarray:
    """(user, view number) -> 1.0 on-interest, 0.0 off, NaN not viewed."""
    return metrics.by_user(run.user, run.position, run.on.astype(np.float64), users, views)


def summarise(world: World, runs: dict[str, ArmRun], params: dict[str, Any]) -> dict[str, Any]:
    views, target = int(params["views"]), float(params["target_share"])
    arms = {name: _arm(world, run, views, target, int(params["pool_impressions"])) for name, run in runs.items()}
    return {"params": params, "arms": arms, "targets": targets(arms)}


def _arm(world: World, run: ArmRun, views: int, target: float, nth: int) -> dict[str, Any]:
    users = len(world.users)
    on = on_matrix(run, users, views)
    reached = [metrics.views_until(row[~np.isnan(row)], target) for row in on]
    items = world.all_items()
    topic = np.array([it.topic for it in items], np.int64)
    creator_of = {c: k for k, c in enumerate(world.creators)}
    creator = np.array([creator_of[it.creator] for it in items], np.int64)
    order = np.lexsort((run.position, run.user))  # each user's views in order
    served_topics = [topic[run.item[order][run.user[order] == u]] for u in range(users)]
    out: dict[str, Any] = {
        "views": len(run.item),
        "users_short_of_items": run.short_users,
        "views_until_target": {"median": metrics.median_or_none(reached),
                               "never": _round(sum(r is None for r in reached) / users if users else 0.0)},
        "on_interest": {f"{a}-{b}": _round(metrics.window_share(on, a, min(b, views))) if a <= views else None
                        for a, b in WINDOWS},
        "on_interest_all": _round(float(run.on.mean()) if len(run.on) else None),
        "exploration_share": _round(float(run.exploration.mean())) if run.explained and len(run.item) else None,
        "fresh_pool_share": _round(float(run.fresh_pool.mean())) if run.explained and len(run.item) else None,
        "topic_entropy_bits": _round(float(np.mean([metrics.entropy_bits(t) for t in served_topics]))),
        "longest_topic_run": max((metrics.longest_run(t) for t in served_topics), default=0),
        "sensitive_share": _round(float(_SENSITIVE[topic[run.item]].mean()) if len(run.item) else None),
        "coverage": _round(metrics.coverage(run.item, len(world.catalogue) + len(run.uploaded_at))),
        "creator_gini": _round(metrics.gini(np.bincount(creator[run.item], minlength=len(world.creators)))),
        "new_items": _new_items(world, run, nth),
        "learned_model": run.model or None,
    }
    drift = [u.drift_at for u in world.users if u.drift_at is not None]
    if drift:
        out["after_drift"] = _after_drift(world, on)
    return out


def _new_items(world: World, run: ArmRun, nth: int) -> dict[str, Any]:
    n_catalogue = len(world.catalogue)
    items = world.all_items()
    first, nth_at = [], []
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in ("good", "bad"):
        uploads = [j for j in run.uploaded_at if items[j].kind == kind]
        impressions = [int((run.item == j).sum()) for j in uploads]
        completions = [int(((run.item == j) & run.completed).sum()) for j in uploads]
        exposures = [run.exposure.get(j) for j in uploads]
        statuses: dict[str, int] = {}
        for e in exposures:
            if e is not None:
                statuses[str(e.get("status"))] = statuses.get(str(e.get("status")), 0) + 1
        by_kind[kind] = {
            "uploaded": len(uploads),
            "impressions_mean": _round(float(np.mean(impressions)) if impressions else None),
            "completion_rate": _round(sum(completions) / sum(impressions) if sum(impressions) else None),
            "reached_pool_2": (sum(_reached_pool_2(e) for e in exposures if e is not None)
                               if uploads and all(e is not None for e in exposures) else None),
            "statuses": statuses if statuses else None,
        }
    for j, at in run.uploaded_at.items():
        times = run.at[run.item == j]
        first.append(metrics.nth_after(times, at, 1))
        nth_at.append(metrics.nth_after(times, at, nth))
    return {"uploaded": len(run.uploaded_at), "of": len(items) - n_catalogue,
            "first_impression_s": _rounded(metrics.summary(first)),
            "nth_impression": nth, "nth_impression_s": _rounded(metrics.summary(nth_at)), **by_kind}


def _reached_pool_2(exposure: dict[str, Any]) -> bool:
    """From the engine's exposure record: in pool 2 or past it, or promoted out of pool 1."""
    pools = [p for p in exposure.get("pools") or [] if isinstance(p, dict)]
    return (int(exposure.get("pool") or 0) >= 2 or exposure.get("status") in ("promoted", "graduated")
            or any(int(p.get("pool") or 0) >= 2 for p in pools)
            or any(p.get("pool") == 1 and p.get("outcome") == "promoted" for p in pools))


def _after_drift(world: World, on: np.ndarray) -> dict[str, float | None]:
    """The on-interest share in the 50 views after each user's interest moved, and the 50 after those."""
    rows: dict[str, list[float]] = {"1-50": [], "51-100": []}
    for u, user in enumerate(world.users):
        if user.drift_at is None:
            continue
        for key, lo in (("1-50", 0), ("51-100", 50)):
            part = on[u, user.drift_at + lo:user.drift_at + lo + 50]
            part = part[~np.isnan(part)]
            if len(part):
                rows[key].append(float(part.mean()))
    return {key: _round(float(np.mean(v)) if v else None) for key, v in rows.items()}


def targets(arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for the engine arm, each with the measured value and whether it is met."""
    engine = arms.get("foryou")
    if engine is None:
        return []
    rows = [  # (what, goal, value, at least or at most, bound)
        ("on-interest share, views 1-50", ">= 0.60", engine["on_interest"]["1-50"], 1, 0.60),
        ("on-interest share, views 101-200", ">= 0.75", engine["on_interest"]["101-200"], 1, 0.75),
        ("exploration share of served slots", ">= 0.05", engine["exploration_share"], 1, 0.05),
        ("longest single-topic run", "<= 4", engine["longest_topic_run"], -1, 4),
    ]
    out = [{"target": name, "goal": goal, "value": value,
            "met": None if value is None else bool(sign * value >= sign * bound)}
           for name, goal, value, sign, bound in rows]
    if "popularity" in arms:
        value, other = engine["creator_gini"], arms["popularity"]["creator_gini"]
        out.append({"target": "creator exposure Gini", "goal": f"< popularity's ({other})", "value": value,
                    "met": bool(value < other)})
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _rounded(values: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {k: _round(v, 1) if isinstance(v, float) else v for k, v in values.items()}


def text(report: dict[str, Any]) -> str:
    """The report as a table, one column per arm, then the targets."""
    p, arms = report["params"], report["arms"]
    names = list(arms)
    mode = f"HTTP {p['url']}" if p.get("url") else "Python API"
    lines = [f"simulation: {p['users']} users x {p['views']} views, {p['items']} items + {p['new_items']} new, "
             f"seed {p['seed']}, pages of {p['page']} ({mode}{', drift' if p['drift'] else ''}"
             f"{', onboarding' if p['onboarding'] else ''})", ""]
    rows: list[tuple[str, list[str]]] = [("", names)]

    def row(label: str, get: Any, fmt: str = "{:.3f}") -> None:
        rows.append((label, [_cell(get(arms[n]), fmt) for n in names]))

    share = round(100 * p["target_share"])
    row("views", lambda a: a["views"], "{}")
    row(f"views until {share}% on-interest (median)",
        lambda a: "never" if a["views_until_target"]["median"] is None else a["views_until_target"]["median"],
        "{:.0f}")
    row("  share of users never there", lambda a: a["views_until_target"]["never"], "{:.2f}")
    for window in arms[names[0]]["on_interest"]:
        row(f"on-interest share, views {window}", lambda a, w=window: a["on_interest"][w])
    if "after_drift" in arms[names[0]]:
        for window in ("1-50", "51-100"):
            row(f"  after the drift, views {window}", lambda a, w=window: a["after_drift"][w])
    row("exploration share", lambda a: a["exploration_share"])
    row("fresh-pool share", lambda a: a["fresh_pool_share"])
    row("learned model serving at the end", lambda a: _yes_no((a["learned_model"] or {}).get("serving")), "{}")
    row("topic entropy (bits, mean per user)", lambda a: a["topic_entropy_bits"], "{:.2f}")
    row("longest single-topic run", lambda a: a["longest_topic_run"], "{}")
    row("sensitive-topic share", lambda a: a["sensitive_share"])
    row("catalogue coverage", lambda a: a["coverage"])
    row("creator exposure Gini", lambda a: a["creator_gini"])
    row("new videos arrived", lambda a: f"{a['new_items']['uploaded']}/{a['new_items']['of']}", "{}")
    nth = arms[names[0]]["new_items"]["nth_impression"]
    for label, key in (("first impression", "first_impression_s"), (f"impression #{nth}", "nth_impression_s")):
        row(f"  {label}: median min", lambda a, k=key: _minutes(a["new_items"][k]["median"]), "{}")
        row("    max min (never)", lambda a, k=key: f"{_minutes(a['new_items'][k]['max'])} "
                                                    f"({a['new_items'][k]['missing']})", "{}")
    for kind in ("good", "bad"):
        row(f"  {kind}: impressions (mean)", lambda a, k=kind: a["new_items"][k]["impressions_mean"], "{:.1f}")
        row(f"  {kind}: completion rate", lambda a, k=kind: a["new_items"][k]["completion_rate"], "{:.2f}")
        row(f"  {kind}: reached pool 2", lambda a, k=kind: a["new_items"][k]["reached_pool_2"], "{}")
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(10, *(len(cells[i]) + 2 for _, cells in rows)) for i in range(len(names))]
    for label, cells in rows:
        lines.append(label.ljust(width) + "".join(c.rjust(w) for c, w in zip(cells, cols, strict=True)))
    if report["targets"]:
        lines += ["", "targets (the foryou arm):"]
        for t in report["targets"]:
            mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
            value = _cell(t["value"], "{}" if isinstance(t["value"], int) else "{:.3f}")
            lines.append(f"  [{mark}] {t['target']} {t['goal']}: {value}")
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return fmt.format(value)


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else "yes" if value else "no"


def _minutes(seconds: float | int | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"
