#!/usr/bin/env python3
"""Runs the simulations of docs/simulation.md and rewrites its measured part (between `<!-- simulation -->`
and `<!-- /simulation -->`; the rest of the file is left as it is), and the plots in docs/simulation/.

    .venv/bin/python benchmarks/simulation.py          # about 4 minutes on 2 cores

The main run is `foryou simulate --plots docs/simulation` (the defaults: all three arms); the scenarios
that follow run the `foryou` arm alone with one thing changed each. Everything is seeded: on the same code
the numbers come out the same, so a change in them is a change in the engine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from foryou.config import load_settings
from foryou.simulation import Behaviour, plots, report, simulate

ROOT = Path(__file__).absolute().parent.parent  # (not resolved: a checkout may link this file in)

DOC = ROOT / "docs" / "simulation.md"
PLOTS = ROOT / "docs" / "simulation"
BEGIN, END = "<!-- simulation -->\n", "<!-- /simulation -->\n"

# (name, what changes, flags of `foryou simulate`, keyword arguments of simulate(), engine settings)
SCENARIOS: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("drift", "each user's second (or only) interest moves to another topic after a view between 66 and 133",
     "--drift", {"drift": True}, {}),
    ("onboarding", "users declare their true interests when they arrive", "--onboarding", {"onboarding": True}, {}),
    ("no learning", "the hand-set ranking alone (learned model off)", "--no-learning", {},
     {"learning.enabled": False}),
    ("crowd, small pools", "600 users who watch 40 videos each, and exposure pools of 15, 150 and 1,500: a user "
     "sees a video once and a new video's pool is filled by its topic's fans, about 30 of 600 here, so the "
     "default pool of 300 cannot fill at this size", "--users 600 --views 40 --pool-impressions 15, with "
     "FORYOU_POLICY_FIRST_POOL=15", {"users": 600, "views": 40, "pool_impressions": 15}, {"policy.first_pool": 15}),
    ("no duel", "the learned model serves whenever healthy, without having to beat the hand-set ranking "
     "(learning.duel off)", "with FORYOU_LEARNING_DUEL=false", {}, {"learning.duel": False}),
    ("skewed interests", "interest topics drawn with probability ~ 1/rank (Zipf) instead of uniformly",
     "--skew 1", {"skew": 1.0}, {}),
    ("pages of 5", "each request asks for 5 videos, so the feed reacts after 5 views instead of 10", "--n 5",
     {"page": 5}, {}),
    ("tempting videos", "a very good video is sometimes finished off-interest too (Behaviour(finish_off=0.3); "
     "no CLI flag)", "", {"behaviour": Behaviour(finish_off=0.3)}, {}),
]


def engine_version(note: str | None) -> str:
    if note:
        return note
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                   text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown revision"
    return f"`{described}`" + (" (with uncommitted changes)" if described.endswith("-dirty") else "")


def fmt(value: Any, spec: str = "{:.2f}") -> str:
    return "n/a" if value is None else spec.format(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--note", help="what code was measured (default: `git describe --always --dirty`)")
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/ alone")
    args = p.parse_args()
    started = time.perf_counter()
    settings = load_settings(env={})  # the engine's defaults, whatever this shell's FORYOU_* say

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    print("main run: foryou simulate --plots docs/simulation", file=sys.stderr)
    main_run = simulate(settings=settings, progress=progress)
    text = report.text(main_run.report)
    print(text)
    out = [f"Measured on {engine_version(args.note)}, {os.cpu_count()} cores.", "",
           "`foryou simulate --plots docs/simulation` (the defaults: 100 users x 200 views,",
           "6,000 videos + 20 new, seed 0):", "", "```text", text, "```", "",
           "| target (the `foryou` arm) | goal | measured | met |", "|---|---|---|---|"]
    for t in main_run.report["targets"]:
        mark = {True: "met", False: "**not met**", None: "n/a"}[t["met"]]
        out.append(f"| {t['target']} | {t['goal']} | {fmt(t['value'], '{}')} | {mark} |")
    out += ["", "The `foryou` arm alone with one thing changed (`foryou simulate --arms foryou` plus the flags; "
                "seed 0):", "",
            "| scenario | flags | views 1-50 | 51-100 | 101-200 | median views until 60% | coverage | creator Gini "
            "| longest topic run | after the drift: 1-50, 51-100 | new videos, good / bad: impressions (mean), "
            "reached pool 2 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("defaults", "the main run above", "", main_run.report["arms"]["foryou"])]
    for name, what, flag, kwargs, overrides in SCENARIOS:
        print(f"scenario {name}: foryou simulate --arms foryou {flag}", file=sys.stderr)
        run = simulate(arms=["foryou"], settings=load_settings(env={}, overrides=overrides), progress=progress,
                       **kwargs)
        rows.append((name, what, flag, run.report["arms"]["foryou"]))
    for name, what, flag, arm in rows:
        share, until, drift = arm["on_interest"], arm["views_until_target"]["median"], arm.get("after_drift")
        after = f"{fmt(drift['1-50'])}, {fmt(drift['51-100'])}" if drift else "-"
        good, bad = arm["new_items"]["good"], arm["new_items"]["bad"]
        new = (f"{fmt(good['impressions_mean'], '{:.0f}')} / {fmt(bad['impressions_mean'], '{:.0f}')}, "
               f"{fmt(good['reached_pool_2'], '{}')} / {fmt(bad['reached_pool_2'], '{}')} of {good['uploaded']} / "
               f"{bad['uploaded']}")
        out.append(f"| {name}: {what} | {f'`{flag}`' if flag else '-'} | {fmt(share['1-50'])} | "
                   f"{fmt(share['51-100'])} | {fmt(share['101-200'])} | {fmt(until, '{:.0f}') if until else 'never'} "
                   f"| {fmt(arm['coverage'])} | {fmt(arm['creator_gini'])} | {arm['longest_topic_run']} | {after} "
                   f"| {new} |")
    took = time.perf_counter() - started
    out += ["", f"(All {len(rows)} runs took {took / 60:.1f} minutes.)"]
    block = "\n".join(out) + "\n"
    print(block)
    if args.no_doc:
        return
    for path in plots.write(main_run.world, main_run.runs, 200, PLOTS, 0.6):
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    doc = DOC.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{DOC.relative_to(ROOT)} needs the markers {BEGIN.strip()} and {END.strip()}")
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + block + END + rest.split(END, 1)[1], encoding="utf-8")
    print(f"updated {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
