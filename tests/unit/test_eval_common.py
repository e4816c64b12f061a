"""The shared benchmark metrics on tiny cases computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.eval_common import (
    EmbeddingCache,
    accuracy,
    apgr,
    best_threshold,
    bootstrap_apgr,
    cpt,
    latency_summary,
    oos_rates,
    percentile,
    pgr,
    recall,
    routing_curve,
    share_for_quality,
    strong_share_at,
)

# 4 prompts: the router ranks them 0.9 > 0.7 > 0.5 > 0.1.
# gains (strong - weak): +1, 0, +1, -1 -> weak 0.5, strong 0.75, gap 0.25
SCORES, WEAK, STRONG = [0.9, 0.7, 0.5, 0.1], [0, 1, 0, 1], [1, 1, 1, 0]


def test_routing_curve_replays_outcomes_in_score_order() -> None:
    c = routing_curve(SCORES, WEAK, STRONG)
    assert c.shares.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert c.quality.tolist() == [0.5, 0.75, 0.75, 1.0, 0.75]
    assert c.thresholds.tolist() == [math.inf, 0.9, 0.7, 0.5, 0.1]
    assert (c.weak_quality, c.strong_quality, c.gap) == (0.5, 0.75, 0.25)
    assert pgr(c).tolist() == [0, 1, 1, 2, 1]


def test_apgr_is_the_trapezoid_area_under_pgr() -> None:
    # 0.25 * ((0+1) + (1+1) + (1+2) + (2+1)) / 2
    assert apgr(routing_curve(SCORES, WEAK, STRONG)) == pytest.approx(1.125)


def test_cpt_and_share_for_quality_interpolate_within_a_step() -> None:
    c = routing_curve(SCORES, WEAK, STRONG)
    assert cpt(c, 0.5) == pytest.approx(0.125)  # target 0.625, half-way through the first step
    assert cpt(c, 1.0) == pytest.approx(0.25)  # reached exactly at the first point
    assert cpt(c, 2.0) == pytest.approx(0.75)  # above strong-only: the curve overshoots at 75%
    assert math.isnan(cpt(c, 2.5))  # never reached
    assert cpt(c, 0.0) == 0.0
    assert strong_share_at(c, 0.95) == pytest.approx(0.2125)  # target 0.7125 = 0.5 + 0.85 * 0.25
    assert share_for_quality(c, 0.4) == 0.0


def test_random_routing_is_the_diagonal_with_apgr_one_half() -> None:
    c = routing_curve([0.3] * 4, WEAK, STRONG)
    assert c.shares.tolist() == [0, 1]
    assert apgr(c) == pytest.approx(0.5)
    assert cpt(c, 0.5) == pytest.approx(0.5)
    assert cpt(c, 0.8) == pytest.approx(0.8)


def test_tied_scores_form_one_step() -> None:
    c = routing_curve([1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0])
    assert c.shares.tolist() == [0, 0.5, 1]
    assert c.quality.tolist() == [0, 0.5, 0.5]
    assert apgr(c) == pytest.approx(0.75)
    # a tie that mixes a gain and no gain is a straight line (random tie-break in expectation)
    assert apgr(routing_curve([1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0])) == pytest.approx(0.5)


def test_oracle_ordering_beats_random() -> None:
    gain = np.array(STRONG) - np.array(WEAK)
    assert apgr(routing_curve(gain, WEAK, STRONG)) > 0.5


def test_pgr_needs_a_gap_and_inputs_must_match() -> None:
    with pytest.raises(ValueError, match="PGR undefined"):
        pgr(routing_curve([0.1, 0.2], [1, 1], [1, 0]))
    with pytest.raises(ValueError, match="equal"):
        routing_curve([0.1], [1, 0], [1, 1])


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    weak = rng.integers(0, 2, 200)
    strong = np.maximum(weak, rng.integers(0, 2, 200))
    scores = (strong - weak) + rng.normal(0, 0.8, 200)
    lo, hi = bootstrap_apgr(scores, weak, strong, reps=200)
    assert lo < apgr(routing_curve(scores, weak, strong)) < hi


def test_oos_rates_count_rejected_in_scope_as_wrong() -> None:
    y_true = ["a", "b", "oos", "oos"]
    labels, conf = ["a", "c", "a", "oos"], [0.9, 0.9, 0.3, 0.8]
    assert oos_rates(y_true, labels, conf, 0.5) == (0.5, 1.0)
    assert oos_rates(y_true, labels, conf, 0.95) == (0.0, 1.0)
    assert oos_rates(y_true, labels, conf, 0.0) == (0.5, 0.5)


def test_accuracy_recall_and_threshold_choice() -> None:
    assert accuracy(["x", "y", "z"], ["x", "y", "y"]) == pytest.approx(2 / 3)
    assert recall(["p", "p", "n"], ["p", "n", "p"], "p") == 0.5
    assert math.isnan(recall(["n"], ["n"], "p"))
    with pytest.raises(ValueError):
        accuracy(["x"], [])
    # first of equal maxima wins
    assert best_threshold([0.1, 0.2, 0.3], lambda t: {0.1: 1, 0.2: 3, 0.3: 3}[t]) == (0.2, 3.0)


def test_latency_percentiles() -> None:
    s = latency_summary([0.001, 0.002, 0.003, 0.010])
    assert s["p50_ms"] == pytest.approx(2.0)  # nearest rank: the 2nd of 4, as the audit summary computes it
    assert s["max_ms"] == pytest.approx(10)
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0, 1.0], 50) == 1.0 and percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


class _CountingEmbedder:
    """Stands in for MiniLM: a text's vector is (its length, its first character code)."""

    name = "counting-fake"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def test_embedding_cache_restores_order_and_reuses_the_file(tmp_path: Path) -> None:
    fake = _CountingEmbedder()
    cache = EmbeddingCache(tmp_path, embedder=fake)
    texts = ["a long sentence here", "b", "cc medium"]
    first = cache.embed(texts)
    assert first.tolist() == [[20, ord("a")], [1, ord("b")], [9, ord("c")]]
    again = cache.embed(texts)
    assert fake.calls == 1 and np.array_equal(first, again)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    cache.embed(texts[::-1])  # different content (order) -> a different key
    assert fake.calls == 2 and len(list(tmp_path.glob("*.npy"))) == 2
