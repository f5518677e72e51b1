"""PNG plots of a run (matplotlib, imported only here and only when plots are asked for: it is in the
`eval` extra, not a dependency of the engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foryou.errors import ForYouError
from foryou.simulation import metrics
from foryou.simulation.loop import ArmRun
from foryou.simulation.report import on_matrix
from foryou.simulation.world import World

SMOOTH = 10  # views in the moving average of the share curve


def write(world: World, runs: dict[str, ArmRun], views: int, folder: Path, target: float) -> list[Path]:
    """share.png (on-interest share by view number), lorenz.png (creator exposure), new_items.png
    (impressions of new videos after upload, good and bad)."""
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        raise ForYouError("plots need matplotlib: pip install 'foryou-engine[eval]'", field="--plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    users = len(world.users)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, run) in enumerate(runs.items()):
        curve = metrics.share_curve(on_matrix(run, users, views))
        smooth = np.convolve(np.nan_to_num(curve), np.ones(SMOOTH) / SMOOTH, mode="valid")
        ax.plot(np.arange(SMOOTH, len(curve) + 1), smooth, color=f"C{k}", label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target share {target:g}")
    ax.set_xlabel("view number")
    ax.set_ylabel(f"on-interest share (mean over users, {SMOOTH}-view average)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, folder / "share.png"))

    items = world.all_items()
    creator_of = {c: k for k, c in enumerate(world.creators)}
    creator = np.array([creator_of[it.creator] for it in items], np.int64)
    fig, ax = plt.subplots(figsize=(5, 5))
    for k, (name, run) in enumerate(runs.items()):
        counts = np.bincount(creator[run.item], minlength=len(world.creators))
        x, y = metrics.lorenz(counts)
        ax.plot(x, y, color=f"C{k}", label=f"{name} (Gini {metrics.gini(counts):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="equal exposure")
    ax.set_xlabel("share of creators (fewest impressions first)")
    ax.set_ylabel("share of impressions")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, folder / "lorenz.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, run) in enumerate(runs.items()):
        for kind, style in (("good", "-"), ("bad", "--")):
            uploads = [j for j in run.uploaded_at if items[j].kind == kind]
            if not uploads:
                continue
            since = np.concatenate([run.at[run.item == j] - run.uploaded_at[j] for j in uploads]) / 60.0
            since.sort()
            ax.step(np.concatenate([[0.0], since]), np.arange(len(since) + 1) / len(uploads), where="post",
                    color=f"C{k}", linestyle=style, label=f"{name}, {kind} new videos")
    ax.set_xlabel("minutes since upload")
    ax.set_ylabel("impressions per new video (mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, folder / "new_items.png"))
    return written


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
