"""How well learned retrieval's ANN index finds what the model scores highest: recall@k against the
exact top k by inner product, for real users' query vectors, of the index a loaded data directory
holds (`HnswIndex`: the reduction of maximum-inner-product search to nearest neighbours in L2, Bachrach
et al., RecSys 2014: each item vector gets one more coordinate, sqrt(M^2 - |x|^2) for a bound M on the
norms, the query a 0 there, so that the L2 order is the inner-product order), and of two graphs built
afresh from the same vectors: that reduction, and usearch's inner product as such (the layout before).

    .venv/bin/python benchmarks/ann_recall.py                          # the 1M-item directory of run.py
    .venv/bin/python benchmarks/ann_recall.py --data DIR --k 400 --users 200

Needs a directory whose learned model is trained (run.py's, after a load and a first open). Prints a
table; writes nothing (the directory is opened without catching up and closed without a checkpoint).
"""

from __future__ import annotations

import argparse
import random
import time

import harness as bench
import numpy as np
from usearch.index import Index

from foryou.config import load_settings
from foryou.engine import Engine


def recall(found: list[np.ndarray], exact: list[np.ndarray]) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact, strict=True)]))


def timed(search, queries: np.ndarray) -> tuple[list[np.ndarray], float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    found = [search(q) for q in queries]
    return found, (time.perf_counter() - started) / len(queries) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(bench.OUT / "data-1000000i-100000u-5000000e-s7"))
    p.add_argument("--k", type=int, default=400, help="neighbours asked (the feed asks twice its learned budget)")
    p.add_argument("--users", type=int, default=200, help="users whose vectors are the queries")
    p.add_argument("--user-count", type=int, default=100_000, help="users u0..u<n-1> to draw from")
    a = p.parse_args()
    settings = load_settings(overrides={"server.data": a.data, "learning.duel": False})
    engine = Engine.open(settings, catch_up=False)
    try:
        learner, rng = engine.learner, random.Random(3)
        users = [f"u{rng.randrange(a.user_count)}" for _ in range(a.users)]
        learner.load_users("us", users)
        p_u = learner.model.user_vectors(["us"] * len(users), users)
        queries = np.array([learner.model.query(v) for v in p_u if v.any()], np.float32)
        index = learner.index
        vecs = index.stored(np.arange(len(engine.live.catalog)))
    finally:
        engine.store.close()
    held = np.flatnonzero(~np.isnan(vecs[:, 0]))
    vecs = np.ascontiguousarray(vecs[held])
    print(f"{len(held):,} vectors of dim {vecs.shape[1]}, {len(queries)} user queries, k = {a.k}\n")
    exact = [held[np.argpartition(-(vecs @ q), a.k)[:a.k]] for q in queries]
    found, ms = timed(lambda q: index.search(q, a.k)[0], queries)
    rows = [(f"the index as held ({type(index).__name__})", recall(found, exact), ms)]
    norms = np.linalg.norm(vecs, axis=1)
    bound = float(norms.max())
    extra = np.sqrt(np.maximum(bound * bound - norms * norms, 0.0))[:, None]
    for name, metric, held_vecs, tail in (
            ("reduced to L2 nearest neighbours", "l2sq", np.hstack([vecs, extra]), [np.float32(0.0)]),
            ("inner product as such", "ip", vecs, [])):
        started = time.perf_counter()
        graph = Index(ndim=held_vecs.shape[1], metric=metric, dtype="f32", connectivity=16, expansion_add=128,
                      expansion_search=64)
        graph.add(held.astype(np.uint64), held_vecs.astype(np.float32), threads=0)
        build_s = time.perf_counter() - started
        found, ms = timed(lambda q, g=graph, t=tail: g.search(np.append(q, t).astype(np.float32),  # type: ignore[misc]
                                                               count=a.k).keys.astype(np.int64), queries)
        rows.append((f"a new graph, {name} (built in {build_s:.0f} s)", recall(found, exact), ms))
    print(f"| Index | recall@{a.k} | ms a search |\n|---|---:|---:|")
    for name, got, took in rows:
        print(f"| {name} | {got:.3f} | {took:.3f} |")


if __name__ == "__main__":
    main()
