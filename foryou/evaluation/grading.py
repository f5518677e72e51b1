"""Grades: a model's ranked lists and head predictions on one or more tasks, summed up into metrics.
Per-user values are pooled over tasks (the daily protocol's days), so each (user, day) list counts once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foryou.evaluation import metrics
from foryou.evaluation.split import Impressions, Task

RECALL_AT = (10, 50, 200)
LIST_LENGTH = max(RECALL_AT)
COVERAGE_AT = 10
RANKING_METRICS = ("ndcg@10", "recall@10", "recall@50", "recall@200", "hr@10", "coverage@10")


@dataclass
class Grades:
    n_items: int
    per_user: dict[str, list[np.ndarray]] = field(default_factory=dict)
    tops: list[np.ndarray] = field(default_factory=list)
    heads: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    groups: int = 0  # user groups for GAUC so far (each task's users are new groups)

    def add_ranking(self, task: Task, ranked: np.ndarray) -> None:
        """`ranked`: the task's users' lists, best first (at least LIST_LENGTH long where possible)."""
        hits = metrics.hit_matrix(ranked, *task.relevant, self.n_items)
        n_rel = task.n_relevant
        values = {"ndcg@10": metrics.ndcg_at_k(hits, n_rel, 10), "hr@10": metrics.hit_rate_at_k(hits, 10)}
        for k in RECALL_AT:
            values[f"recall@{k}"] = metrics.recall_at_k(hits, n_rel, k)
        for name, value in values.items():
            self.per_user.setdefault(name, []).append(value)
        self.tops.append(ranked[:, :COVERAGE_AT])

    def add_heads(self, impressions: Impressions, predictions: dict[str, np.ndarray]) -> None:
        _, group = np.unique(impressions.user, return_inverse=True)
        for head, probs in predictions.items():
            if head in impressions.labels:
                self.heads.setdefault(head, []).append(
                    (np.asarray(probs, dtype=np.float64), impressions.labels[head], group + self.groups))
        self.groups += int(group.max()) + 1 if len(group) else 0

    def absorb(self, other: Grades) -> None:
        """Pool another task's grades into these (its users become new GAUC groups)."""
        for name, values in other.per_user.items():
            self.per_user.setdefault(name, []).extend(values)
        self.tops.extend(other.tops)
        for head, parts in other.heads.items():
            self.heads.setdefault(head, []).extend((p, y, g + self.groups) for p, y, g in parts)
        self.groups += other.groups

    def head_arrays(self, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = self.heads.get(head, [])
        if not parts:
            return np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        probs, labels, groups = zip(*parts, strict=True)
        return np.concatenate(probs), np.concatenate(labels), np.concatenate(groups)

    def stderr(self) -> dict[str, float]:
        """Standard error of each per-user mean (ranking metrics but coverage)."""
        out = {}
        for name in RANKING_METRICS[:-1]:
            parts = self.per_user.get(name, [])
            values = np.concatenate(parts) if parts else np.zeros(0)
            out[name] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
        return out

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in RANKING_METRICS[:-1]:
            parts = self.per_user.get(name, [])
            values = np.concatenate(parts) if parts else np.zeros(0)
            out[name] = float(values.mean()) if len(values) else float("nan")
        tops = np.concatenate(self.tops) if self.tops else np.zeros((0, COVERAGE_AT), dtype=np.int64)
        out["coverage@10"] = metrics.coverage(tops, COVERAGE_AT, self.n_items)
        for head in self.heads:
            probs, labels, groups = self.head_arrays(head)
            out[f"auc:{head}"] = metrics.auc(probs, labels)
            out[f"gauc:{head}"] = metrics.gauc(probs, labels, groups)
        return out
