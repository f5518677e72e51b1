"""foryou/evaluation/metrics.py on tiny cases computed by hand (issue 3, item 7)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from foryou.evaluation import metrics
from foryou.evaluation.metrics import (
    auc,
    calibration,
    calibration_error,
    coverage,
    gauc,
    group_auc,
    hit_matrix,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
)

LOG2_3, LOG2_4 = math.log2(3), math.log2(4)


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_hit_matrix_marks_each_rows_relevant_items() -> None:
    ranked = np.array([[3, 1, 2], [1, 3, 0]])
    # user 0 likes items 1 and 0; user 1 likes item 0
    hits = hit_matrix(ranked, np.array([0, 0, 1]), np.array([1, 0, 0]), n_items=4)
    assert hits.tolist() == [[False, True, False], [False, False, True]]


def test_ndcg_by_hand() -> None:
    hits = np.array([
        [True, False, True],   # relevant at ranks 1 and 3, 2 relevant in all
        [False, True, False],  # relevant at rank 2, 3 relevant in all (two never ranked)
        [False, False, False],  # none found
    ])
    got = ndcg_at_k(hits, np.array([2, 3, 1]), 3)
    assert got[0] == pytest.approx((1 + 1 / LOG2_4) / (1 + 1 / LOG2_3))
    assert got[1] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3 + 1 / LOG2_4))
    assert got[2] == 0.0
    # at k=1 only the first rank counts, and the ideal is one hit
    assert ndcg_at_k(hits, np.array([2, 3, 1]), 1).tolist() == [1.0, 0.0, 0.0]


def test_ndcg_perfect_list_is_one_and_more_relevant_than_k_is_capped() -> None:
    hits = np.ones((1, 10), dtype=bool)
    assert ndcg_at_k(hits, np.array([25]), 10)[0] == pytest.approx(1.0)


def test_recall_and_hit_rate_by_hand() -> None:
    hits = np.array([[True, False, True, False], [False, False, False, True]])
    n_rel = np.array([4, 1])
    assert recall_at_k(hits, n_rel, 2).tolist() == [0.25, 0.0]
    assert recall_at_k(hits, n_rel, 4).tolist() == [0.5, 1.0]
    assert hit_rate_at_k(hits, 2).tolist() == [1.0, 0.0]
    assert hit_rate_at_k(hits, 4).tolist() == [1.0, 1.0]


def test_coverage_counts_distinct_items_in_the_top_k() -> None:
    ranked = np.array([[0, 1, 9], [1, 2, 8]])
    assert coverage(ranked, 2, n_items=10) == pytest.approx(3 / 10)  # items 0, 1, 2
    assert coverage(ranked, 3, n_items=10) == pytest.approx(5 / 10)


def test_auc_by_hand() -> None:
    # positives 0.9 and 0.4, negatives 0.5 and 0.1: of 4 pairs, 3 ordered right
    assert auc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert auc(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0])) == pytest.approx(0.75)
    assert auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert math.isnan(auc(np.array([0.3, 0.4]), np.array([1, 1])))


def test_auc_matches_the_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(scores, labels) == pytest.approx(pairwise)


def test_gauc_weights_each_users_auc_by_their_impressions() -> None:
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.5, 0.7, 0.6])
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    groups = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    # user 0: AUC 1 (2 impressions); user 1: 0.2 < 0.3 and < 0.8 -> AUC 0 (3); user 2: 0.5 below both -> 0 (3)
    values, sizes = group_auc(scores, labels, groups)
    assert values.tolist() == [1.0, 0.0, 0.0]
    assert sizes.tolist() == [2, 3, 3]
    assert gauc(scores, labels, groups) == pytest.approx(2 / 8)


def test_gauc_skips_users_with_one_class() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.4])
    labels = np.array([1, 0, 1, 1])  # user 1 has only positives
    assert gauc(scores, labels, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert math.isnan(gauc(scores[2:], labels[2:], np.array([1, 1])))


def test_calibration_bins_of_equal_count() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.7])
    labels = np.array([0, 0, 1, 1, 1, 0])
    pred, seen, count = calibration(probs, labels, bins=2)
    assert pred.tolist() == pytest.approx([0.2, 0.8])
    assert seen.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert count.tolist() == [3, 3]
    # |0.2 - 1/3| and |0.8 - 2/3|, each over half the views
    assert calibration_error(pred, seen, count) == pytest.approx((2 / 15 + 2 / 15) / 2)
    assert calibration_error(seen, seen, count) == 0.0
