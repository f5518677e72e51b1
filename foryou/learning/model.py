"""The learned model: a two-tower retrieval model and a multi-task ranking model over shared id
embeddings, trained online by Adagrad (sparse rows) and AdaGrad on the dense head weights.

Retrieval: score(u, i) = p_u . q_i + b_i, with p_u the user's row and q_i the sum of the item's,
its creator's and the mean of its tags' rows (so a new item of a known creator starts somewhere
sensible). It is trained by logistic loss on positives (completions and explicit actions), the
user's skips as real negatives, and items sampled uniformly from the catalogue as negatives.

Ranking: for each head h, logit_h = W_h . [item features, p_u * q_i, score(u, i)] + the item's and the
creator's bias for h. The heads share the embeddings but do not train them (the retrieval loss does),
so a rare head cannot pull the shared rows around; each head trains only on the examples whose label
for it is known (a mask).

`gradients` computes a step without changing anything and `apply` applies it, so the trainer can
inspect a step (NaN, exploding loss) and drop it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from foryou.catalog import Catalog
from foryou.learning.embeddings import EmbeddingTable
from foryou.learning.features import HEADS, N_DENSE, WatchQuantiles, dense

H = len(HEADS)
_EPS = 1e-8
INIT = 0.1  # initial scale of embedding rows: large enough to break the symmetry between rows quickly


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@dataclass
class Examples:
    """Training pairs: users (their keys and regions), catalogue items, labels per head with a mask
    of which are known, and the retrieval label (-1: not a retrieval example)."""

    regions: list[str]
    users: list[str]
    items: np.ndarray
    labels: np.ndarray  # (n, H)
    mask: np.ndarray  # (n, H) bool
    retrieval: np.ndarray  # (n,) 1 positive, 0 real negative, -1 none


@dataclass
class Step:
    """A computed update: per table, rows and gradients; the dense gradient; the losses."""

    sparse: list[tuple[EmbeddingTable, np.ndarray, np.ndarray]] = field(default_factory=list)
    dense: np.ndarray | None = None
    retrieval_loss: float = 0.0
    ranking_loss: float = 0.0
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # catalogue items

    def finite(self) -> bool:
        arrays = [g for _, _, g in self.sparse] + ([self.dense] if self.dense is not None else [])
        return (np.isfinite(self.retrieval_loss) and np.isfinite(self.ranking_loss)
                and all(bool(np.isfinite(a).all()) for a in arrays))


class Model:
    def __init__(self, regions: Sequence[str], dim: int = 16, negatives: int = 4, lr: float = 0.05,
                 dense_lr: float = 0.05, l2: float = 1e-4, min_count: int = 1, ttl_s: float = 0.0,
                 seed: int = 0) -> None:
        self.dim = dim
        self.negatives = negatives
        self.dense_lr = dense_lr
        self.l2 = l2
        self.users = {r: EmbeddingTable(dim, min_count, ttl_s, lr, INIT, seed + n) for n, r in enumerate(regions)}
        self.items = EmbeddingTable(dim + 1 + H, min_count, ttl_s, lr, INIT, seed + 100)
        self.creators = EmbeddingTable(dim + H, min_count, ttl_s, lr, INIT, seed + 101)
        self.tags = EmbeddingTable(dim, min_count, ttl_s, lr, INIT, seed + 102)
        self.n_inputs = N_DENSE + dim + 1
        self.weights = np.zeros((H, self.n_inputs), np.float32)
        self.weights_accum = np.zeros_like(self.weights)
        self.watch = WatchQuantiles()
        self.rng = np.random.default_rng(seed)

    def tables(self) -> dict[str, EmbeddingTable]:
        return {"item": self.items, "creator": self.creators, "tag": self.tags,
                **{f"user:{r}": t for r, t in self.users.items()}}

    # -- item side --
    def _item_rows(self, catalog: Catalog, idx: np.ndarray, now: float,
                   train: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def rows(table: EmbeddingTable, keys: list[str]) -> np.ndarray:
            return table.rows(keys, now) if train else table.lookup(keys)

        ids = catalog.ids
        item_rows = rows(self.items, [ids[i] for i in idx.tolist()])
        codes, inverse = np.unique(catalog.creator[idx], return_inverse=True)
        names = catalog.creators.names
        creator_rows = rows(self.creators, [names[c] for c in codes.tolist()])[inverse]
        tag_codes = catalog.tag_cols[idx]
        codes, inverse = np.unique(tag_codes, return_inverse=True)
        tag_names = catalog.tags.names
        found = rows(self.tags, [tag_names[c] for c in codes.tolist() if c >= 0])
        by_code = np.concatenate([np.full(int((codes < 0).sum()), -1, np.int64), found])
        tag_rows = by_code[inverse].reshape(tag_codes.shape)
        return item_rows, creator_rows, tag_rows

    def _towers(self, item_rows: np.ndarray, creator_rows: np.ndarray,
                tag_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """q (item vectors), b (retrieval biases), head biases, and the tag counts."""
        d = self.dim
        item, creator = self.items.get(item_rows), self.creators.get(creator_rows)
        tags = self.tags.get(tag_rows.ravel()).reshape(*tag_rows.shape, d)
        count = np.maximum((tag_rows >= 0).sum(axis=1), 1).astype(np.float32)
        q = item[:, :d] + creator[:, :d] + tags.sum(axis=1) / count[:, None]
        return q, item[:, d], item[:, d + 1:] + creator[:, d:], count

    def item_vectors(self, catalog: Catalog, idx: np.ndarray) -> np.ndarray:
        """[q_i, b_i] for the ANN index: the inner product with [p_u, 1] is the retrieval score."""
        q, b, _, _ = self._towers(*self._item_rows(catalog, idx, 0.0, train=False))
        return np.hstack([q, b[:, None]]).astype(np.float32)

    def user_vectors(self, regions: Sequence[str], users: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(users), self.dim), np.float32)
        for region in set(regions):
            at = np.array([r == region for r in regions])
            keys = [u for u, a in zip(users, at, strict=True) if a]
            out[at] = self.users[region].get(self.users[region].lookup(keys))
        return out

    # -- serving --
    def predict(self, catalog: Catalog, region: str, user: str, idx: np.ndarray, now: float,
                totals: np.ndarray) -> dict[str, np.ndarray]:
        """P(head) for each candidate (watch: the expected quantile), plus the retrieval score."""
        p = self.user_vectors([region], [user])
        q, b, head_bias, _ = self._towers(*self._item_rows(catalog, idx, now, train=False))
        score = q @ p[0] + b
        x = np.hstack([dense(catalog, idx, now, totals), q * p, score[:, None]])
        probs = _sigmoid(x @ self.weights.T + head_bias)
        out = {h: probs[:, k].astype(np.float64) for k, h in enumerate(HEADS)}
        out["retrieval"] = score.astype(np.float64)
        return out

    # -- training --
    def _user_rows(self, regions: Sequence[str], users: Sequence[str],
                   now: float) -> list[tuple[EmbeddingTable, np.ndarray, np.ndarray]]:
        """Per region: (table, positions in the batch, rows)."""
        out = []
        regions_a = np.array(regions)
        for region in sorted(set(regions)):
            where = np.flatnonzero(regions_a == region)
            table = self.users[region]
            out.append((table, where, table.rows([users[w] for w in where.tolist()], now)))
        return out

    def sample_negatives(self, catalog: Catalog, n: int) -> np.ndarray:
        alive = np.flatnonzero(catalog.alive[:len(catalog)])
        if not len(alive):
            return np.zeros(0, np.int64)
        return alive[self.rng.integers(0, len(alive), n)]

    def gradients(self, catalog: Catalog, ex: Examples, now: float, totals: np.ndarray) -> Step:
        d, n = self.dim, len(ex.items)
        step = Step()
        # Sampled negatives: `negatives` random items for each positive, for the same user.
        pos = np.flatnonzero(ex.retrieval == 1)
        neg_items = self.sample_negatives(catalog, len(pos) * self.negatives)
        neg_of = np.repeat(pos, self.negatives)[:len(neg_items)]
        items = np.concatenate([ex.items, neg_items])
        users = list(ex.users) + [ex.users[i] for i in neg_of.tolist()]
        regions = list(ex.regions) + [ex.regions[i] for i in neg_of.tolist()]
        retrieval_y = np.concatenate([ex.retrieval, np.zeros(len(neg_items))]).astype(np.float32)
        step.touched = np.unique(items)

        item_rows, creator_rows, tag_rows = self._item_rows(catalog, items, now, train=True)
        q, b, head_bias, count = self._towers(item_rows, creator_rows, tag_rows)
        p = np.zeros((len(items), d), np.float32)
        user_parts = self._user_rows(regions, users, now)
        for table, where, rows in user_parts:
            p[where] = table.get(rows)
        score = (p * q).sum(axis=1) + b

        # Retrieval: logistic loss on positives, real negatives and sampled negatives.
        use = retrieval_y >= 0
        g = np.where(use, _sigmoid(score) - retrieval_y, 0.0).astype(np.float32)
        step.retrieval_loss = float(_bce(_sigmoid(score[use]), retrieval_y[use]).mean()) if use.any() else 0.0
        grad_q = g[:, None] * p
        grad_item = np.zeros((len(items), self.items.dim), np.float32)
        grad_item[:, :d] = grad_q
        grad_item[:, d] = g
        grad_creator = np.zeros((len(items), self.creators.dim), np.float32)
        grad_creator[:, :d] = grad_q
        grad_tags = np.repeat((grad_q / count[:, None])[:, None, :], tag_rows.shape[1], axis=1)
        for table, where, rows in user_parts:
            grad_p = g[where, None] * q[where] + self.l2 * p[where]
            step.sparse.append((table, rows, grad_p))

        # Ranking: the first n rows are the examples (sampled negatives carry no ranking labels).
        x = np.hstack([dense(catalog, ex.items, now, totals), q[:n] * p[:n], score[:n, None]])
        probs = _sigmoid(x @ self.weights.T + head_bias[:n])
        mask = ex.mask.astype(np.float32)
        known = max(float(mask.sum()), 1.0)
        step.ranking_loss = float((_bce(probs, ex.labels) * mask).sum() / known)
        err = (probs - ex.labels) * mask
        step.dense = (err.T @ x) / max(n, 1) + self.l2 * self.weights
        grad_item[:n, d + 1:] = err
        grad_creator[:n, d:] = err
        step.sparse += [(self.items, item_rows, grad_item), (self.creators, creator_rows, grad_creator),
                        (self.tags, tag_rows.ravel(), grad_tags.reshape(-1, d))]
        return step

    def apply(self, step: Step) -> None:
        for table, rows, grads in step.sparse:
            table.update(rows, grads)
        if step.dense is not None:
            self.weights_accum += step.dense * step.dense
            self.weights -= self.dense_lr * step.dense / np.sqrt(self.weights_accum + _EPS)
