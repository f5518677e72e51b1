"""The learned model: a two-tower retrieval model and a multi-task ranking model over shared id
embeddings, trained online by Adagrad (sparse rows) and AdaGrad on the dense head weights.

Retrieval: score(u, i) = lift(u, i) + gamma . z_i, where lift(u, i) = p_u . q_i + b_i is learned:
p_u the user's row, q_i the sum of the item's, its creator's and the mean of its tags' rows (so a new
item of a known creator starts somewhere sensible), b_i the item's bias. z_i is the item's exact
popularity (log(1 + positives ever), log(1 + trending score)), weighted by settings. The lift is
trained by a softmax over the items of each step's positives (in-batch negatives, which come in
proportion to popularity, so the lift learns what popularity does not explain) and by logistic loss
on the user's skips as real negatives. Learning popularity through sampled negatives instead took
over a hundred uniform negatives per positive to come close, on KuaiRand.

Ranking: for each head h, logit_h = W_h . [item features, p_u * q_i, lift(u, i)] + the item's and the
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
from foryou.learning.embeddings import EmbeddingTable, RowsByCode
from foryou.learning.features import HEADS, N_DENSE, WatchQuantiles, dense

H = len(HEADS)
_EPS = 1e-8
HEAD_L2 = 0.05
PRIOR_RATE = np.array([0.3, 0.5, 0.02, 0.003, 0.001, 0.001, 0.3], np.float32)  # in the order of HEADS
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

    # Per table: rows, gradients, and the sums of the squares of the per-example gradients they add up.
    sparse: list[tuple[EmbeddingTable, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    dense: np.ndarray | None = None
    retrieval_loss: float = 0.0
    ranking_loss: float = 0.0
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # catalogue items
    positives: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def finite(self) -> bool:
        arrays = [g for _, _, g, _ in self.sparse] + ([self.dense] if self.dense is not None else [])
        return (np.isfinite(self.retrieval_loss) and np.isfinite(self.ranking_loss)
                and all(bool(np.isfinite(a).all()) for a in arrays))


class Model:
    def __init__(self, regions: Sequence[str], dim: int = 16, popularity_weights: Sequence[float] = (1.0, 0.0),
                 memory: int = 512,
                 lr: float = 0.05, dense_lr: float = 0.05, l2: float = 1e-4, min_count: int = 1,
                 ttl_s: float = 0.0, seed: int = 0) -> None:
        self.dim = dim
        self.popularity_weights = popularity_weights
        self.memory = memory
        self.recent = np.zeros(0, np.int64)  # the last `memory` positive items, softmax columns
        self.dense_lr = dense_lr
        self.l2 = l2
        # A user's row: the vector, then a bias per head (users differ a lot in how often they like).
        self.users = {r: EmbeddingTable(dim + H, min_count, ttl_s, lr, INIT, seed + n) for n, r in enumerate(regions)}
        self.items = EmbeddingTable(dim + 1 + H, min_count, ttl_s, lr, INIT, seed + 100)
        self.creators = EmbeddingTable(dim + H, min_count, ttl_s, lr, INIT, seed + 101)
        self.tags = EmbeddingTable(dim, min_count, ttl_s, lr, INIT, seed + 102)
        self._by_code = {"item": RowsByCode(), "creator": RowsByCode(), "tag": RowsByCode()}  # serving look-ups
        self.n_inputs = N_DENSE + dim + 1
        self.weights = np.zeros((H, self.n_inputs), np.float32)
        # Each head starts at a typical rate (through the constant input): Adagrad's steps are too
        # small to walk a rare head's logit from 0 to -6 in reasonable time.
        self.weights[:, 0] = np.log(PRIOR_RATE / (1 - PRIOR_RATE))
        self.weights_accum = np.zeros_like(self.weights)
        self.gamma = np.array(popularity_weights, np.float32)
        self.watch = WatchQuantiles()
        self.rng = np.random.default_rng(seed)

    def item_tables(self) -> dict[str, EmbeddingTable]:
        """The shared tables, published as deltas and snapshots (`publication.py`)."""
        return {"item": self.items, "creator": self.creators, "tag": self.tags}

    def warm(self, catalog: Catalog) -> None:
        """Resolve the serving look-ups of every item, creator and tag now (after a load)."""
        self._by_code["item"].fill(self.items, catalog.ids)
        self._by_code["creator"].fill(self.creators, catalog.creators.names)
        self._by_code["tag"].fill(self.tags, catalog.tags.names)

    def tables(self) -> dict[tuple[str, str | None], EmbeddingTable]:
        """Every table by (name, region): users' tables are per region, the others shared (None)."""
        return {("item", None): self.items, ("creator", None): self.creators, ("tag", None): self.tags,
                **{("user", r): t for r, t in self.users.items()}}

    # -- item side --
    def _item_rows(self, catalog: Catalog, idx: np.ndarray, now: float,
                   train: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not train:  # serving: by catalogue and vocabulary codes, no admission, no change
            by_code = self._by_code
            item_rows = by_code["item"].get(self.items, idx, catalog.ids, catalog.index)
            creator_rows = by_code["creator"].get(self.creators, catalog.creator[idx], catalog.creators.names,
                                                  catalog.creators.ids)
            tag_codes = catalog.tag_cols[idx]
            tag_rows = np.full(tag_codes.shape, -1, np.int64)
            has = tag_codes >= 0
            tag_rows[has] = by_code["tag"].get(self.tags, tag_codes[has], catalog.tags.names, catalog.tags.ids)
            return item_rows, creator_rows, tag_rows
        ids = catalog.ids
        codes, inverse = np.unique(idx, return_inverse=True)  # each id counted once
        item_rows = self.items.rows([ids[i] for i in codes.tolist()], now)[inverse]
        codes, inverse = np.unique(catalog.creator[idx], return_inverse=True)
        names = catalog.creators.names
        creator_rows = self.creators.rows([names[c] for c in codes.tolist()], now)[inverse]
        tag_codes = catalog.tag_cols[idx]
        codes, inverse = np.unique(tag_codes, return_inverse=True)
        tag_names = catalog.tags.names
        found = self.tags.rows([tag_names[c] for c in codes.tolist() if c >= 0], now)
        of_code = np.concatenate([np.full(int((codes < 0).sum()), -1, np.int64), found])
        tag_rows = of_code[inverse].reshape(tag_codes.shape)
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

    def item_vectors(self, catalog: Catalog, idx: np.ndarray, pop: np.ndarray) -> np.ndarray:
        """[q_i, b_i + gamma . z_i] for the ANN index: the inner product with `query(p_u)` is the score."""
        q, b, _, _ = self._towers(*self._item_rows(catalog, idx, 0.0, train=False))
        return np.hstack([q, (b + pop @ self.gamma)[:, None]]).astype(np.float32)

    def query(self, p: np.ndarray) -> np.ndarray:
        return np.append(p, np.float32(1.0)).astype(np.float32)

    def user_vectors(self, regions: Sequence[str], users: Sequence[str]) -> np.ndarray:
        return self._user_rows_of(regions, users)[:, :self.dim]

    def _user_rows_of(self, regions: Sequence[str], users: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(users), self.dim + H), np.float32)
        for region in set(regions):
            at = np.array([r == region for r in regions])
            keys = [u for u, a in zip(users, at, strict=True) if a]
            out[at] = self.users[region].get(self.users[region].lookup(keys))
        return out

    # -- serving --
    def predict(self, catalog: Catalog, region: str, user: str, idx: np.ndarray, now: float,
                totals: np.ndarray, pop: np.ndarray) -> dict[str, np.ndarray]:
        """P(head) for each candidate (watch: the expected quantile), plus the retrieval score."""
        row = self._user_rows_of([region], [user])
        p = row[:, :self.dim]
        q, b, head_bias, _ = self._towers(*self._item_rows(catalog, idx, now, train=False))
        lift = q @ p[0] + b
        x = np.hstack([dense(catalog, idx, now, totals), q * p, lift[:, None]])
        probs = _sigmoid(x @ self.weights.T + head_bias + row[:, self.dim:])
        out = {h: probs[:, k].astype(np.float64) for k, h in enumerate(HEADS)}
        out["retrieval"] = (lift + pop @ self.gamma).astype(np.float64)
        return out

    # -- training --
    def _user_rows(self, regions: Sequence[str], users: Sequence[str],
                   now: float) -> list[tuple[EmbeddingTable, np.ndarray, np.ndarray]]:
        """Per region: (table, positions in the batch, rows)."""
        out = []
        regions_a = np.array(regions)
        users_a = np.array(users, dtype=object)
        for region in sorted(set(regions)):
            where = np.flatnonzero(regions_a == region)
            table = self.users[region]
            keys, inverse = np.unique(users_a[where], return_inverse=True)
            out.append((table, where, table.rows(keys.tolist(), now)[inverse]))
        return out

    def gradients(self, catalog: Catalog, ex: Examples, now: float, totals: np.ndarray,
                  seen_at: float | None = None) -> Step:
        """`now`: the examples' time (for item ages); `seen_at`: the engine's time, which the rows
        trained are marked with for expiry (historical events, as in a bulk load, are not idle rows)."""
        seen = now if seen_at is None else seen_at
        d, n = self.dim, len(ex.items)
        step = Step()
        pos = np.flatnonzero(ex.retrieval == 1)
        step.positives = ex.items[pos]
        # Rows after the n examples: recent positives of earlier steps, extra softmax columns.
        recent = self.recent if len(pos) else np.zeros(0, np.int64)
        items = np.concatenate([ex.items, recent])
        step.touched = np.unique(items)
        item_rows, creator_rows, tag_rows = self._item_rows(catalog, items, seen, train=True)
        q, b, head_bias, count = self._towers(item_rows, creator_rows, tag_rows)
        user = np.zeros((n, d + H), np.float32)
        user_parts = self._user_rows(ex.regions, ex.users, seen)
        for table, where, rows in user_parts:
            user[where] = table.get(rows)
        p = user[:, :d]
        score = (p * q[:n]).sum(axis=1) + b[:n]  # the lift: popularity is added at serving time only

        # Real negatives (early swipes, not interested, reports): logistic loss towards 0.
        neg = ex.retrieval == 0
        g = np.where(neg, _sigmoid(score), 0.0).astype(np.float32)
        loss = float(_bce(_sigmoid(score[neg]), np.zeros(int(neg.sum()))).sum())
        # Positives: a softmax over the items of this step's positives and of the last `memory` positives
        # before it (in-batch and cross-batch negatives; a request's batch often holds one user only).
        # Those come in proportion to popularity, so the logits learn each item's lift over its
        # popularity (the logQ correction of Yi et al., RecSys 2019, folded in): serving adds it back.
        grad_p = g[:, None] * q[:n] + self.l2 * p
        sq_p = grad_p * grad_p
        grad_q = np.zeros((len(items), d), np.float32)
        grad_q[:n] = g[:, None] * p
        sq_q = grad_q * grad_q
        grad_b = np.concatenate([g, np.zeros(len(recent), np.float32)])
        sq_b = grad_b * grad_b
        if len(pos) and len(pos) + len(recent) > 1:
            candidates = np.concatenate([pos, np.arange(n, len(items))])
            _, first, inverse = np.unique(items[candidates], return_index=True, return_inverse=True)
            at = candidates[first]  # where each column's item sits among the rows
            target = inverse[:len(pos)]
            logits = p[pos] @ q[at].T + b[at][None, :]
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            loss -= float(np.log(np.maximum(probs[np.arange(len(pos)), target], 1e-12)).sum())
            grad = probs.astype(np.float32)
            grad[np.arange(len(pos)), target] -= 1.0
            grad_p[pos] += grad @ q[at]
            sq_p[pos] += (grad * grad) @ (q[at] * q[at])
            grad_q[at] += grad.T @ p[pos]
            sq_q[at] += (grad * grad).T @ (p[pos] * p[pos])
            grad_b[at] += grad.sum(axis=0)
            sq_b[at] += (grad * grad).sum(axis=0)
        step.retrieval_loss = loss / max(int(neg.sum()) + len(pos), 1)
        grad_item = np.zeros((len(items), self.items.dim), np.float32)
        head_bias = head_bias[:n]
        grad_item[:, :d] = grad_q
        grad_item[:, d] = grad_b
        grad_creator = np.zeros((len(items), self.creators.dim), np.float32)
        grad_creator[:, :d] = grad_q
        grad_tags = np.repeat((grad_q / count[:, None])[:, None, :], tag_rows.shape[1], axis=1)
        sq_tags = np.repeat((sq_q / (count * count)[:, None])[:, None, :], tag_rows.shape[1], axis=1)

        # Ranking: the first n rows are the examples (the recent positives after them carry no labels).
        x = np.hstack([dense(catalog, ex.items, now, totals), q[:n] * p, score[:, None]])
        probs = _sigmoid(x @ self.weights.T + head_bias + user[:, d:])
        mask = ex.mask.astype(np.float32)
        known = max(float(mask.sum()), 1.0)
        step.ranking_loss = float((_bce(probs, ex.labels) * mask).sum() / known)
        err = (probs - ex.labels) * mask
        step.dense = (err.T @ x) / max(n, 1) + self.l2 * self.weights
        # The per-id head biases are shrunk towards 0 (an L2 pull on each example), so that a rare id's
        # bias stays near the shared rate features until its own examples say otherwise.
        grad_item[:n, d + 1:] = err + HEAD_L2 * self.items.get(item_rows[:n])[:, d + 1:]
        grad_creator[:n, d:] = err + HEAD_L2 * self.creators.get(creator_rows[:n])[:, d:]
        sq_item, sq_creator = grad_item * grad_item, grad_creator * grad_creator
        sq_item[:, :d], sq_item[:, d], sq_creator[:, :d] = sq_q, sq_b, sq_q
        user_err = err + HEAD_L2 * user[:, d:]
        grad_user = np.hstack([grad_p, user_err])
        sq_user = np.hstack([sq_p, user_err * user_err])
        for table, where, rows in user_parts:
            step.sparse.append((table, rows, grad_user[where], sq_user[where]))
        step.sparse += [(self.items, item_rows, grad_item, sq_item),
                        (self.creators, creator_rows, grad_creator, sq_creator),
                        (self.tags, tag_rows.ravel(), grad_tags.reshape(-1, d), sq_tags.reshape(-1, d))]
        return step

    def apply(self, step: Step) -> None:
        self.recent = np.concatenate([self.recent, step.positives])[-self.memory:]
        for table, rows, grads, squares in step.sparse:
            table.update(rows, grads, squares)
        if step.dense is not None:
            self.weights_accum += step.dense * step.dense
            self.weights -= self.dense_lr * step.dense / np.sqrt(self.weights_accum + _EPS)

