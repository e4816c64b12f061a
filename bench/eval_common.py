"""Evaluation code the classifier and router benchmarks share (one copy, not one per benchmark).

* latency percentiles of per-call timings;
* accuracy / recall and the out-of-scope (OOS) trade-off of a confidence threshold, with a sweep
  and an explicit selection criterion;
* RouteLLM's way of comparing routers: a router gives each prompt a score; every threshold sends
  the prompts scoring at or above it to the strong model; replaying the stored per-prompt quality
  of both models gives a curve of quality against the share of strong calls. From that curve:
  PGR (performance gap recovered), APGR (its area; random routing = 0.5), CPT(x%) (the smallest
  strong-call share recovering x% of the gap) and the share needed for a quality target such as
  95% of strong-only quality;
* an on-disk embedding cache keyed by content hash, so re-running a benchmark skips the slow
  embedding step (MMLU's 14k prompts take minutes on two shared cores).

Tables and the machine-load note come from ``bench/common.py`` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import format_table, machine_load  # noqa: E402
from tools.observability.stats import percentile  # noqa: E402 - one definition, re-exported for the benches

__all__ = [
    "EmbeddingCache",
    "RoutingCurve",
    "accuracy",
    "apgr",
    "Panel",
    "Series",
    "best_threshold",
    "bootstrap_apgr",
    "line_chart_png",
    "cpt",
    "format_table",
    "latency_summary",
    "machine_load",
    "oos_rates",
    "percentile",
    "pgr",
    "recall",
    "routing_curve",
    "share_for_quality",
    "strong_share_at",
]

DEFAULT_CACHE_DIR = Path(os.environ.get("SWITCHBOARD_BENCH_CACHE", Path.home() / ".cache" / "switchboard" / "bench"))


# --- latency (percentiles: tools.observability.stats, nearest rank, the same as the audit summary) ------------
def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max in milliseconds of per-call timings given in seconds."""
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return {
        "n": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


# --- classification --------------------------------------------------------------------------
def accuracy(y_true: Sequence[object], y_pred: Sequence[object]) -> float:
    """Share of exact matches."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"length mismatch: {len(y_true)} labels, {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no labels")
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def recall(y_true: Sequence[object], y_pred: Sequence[object], positive: object) -> float:
    """Share of the ``positive`` items that were predicted ``positive`` (nan if there are none)."""
    hits = [p == positive for t, p in zip(y_true, y_pred, strict=True) if t == positive]
    return sum(hits) / len(hits) if hits else float("nan")


def apply_threshold(labels: Sequence[str], confidences: Sequence[float], threshold: float, fallback: str) -> list[str]:
    """Replace a prediction whose confidence is below ``threshold`` by ``fallback``."""
    return [lab if c >= threshold else fallback for lab, c in zip(labels, confidences, strict=True)]


def oos_rates(
    y_true: Sequence[str], labels: Sequence[str], confidences: Sequence[float], threshold: float, oos: str = "oos"
) -> tuple[float, float]:
    """(in-scope accuracy, out-of-scope recall) after thresholding, the CLINC150 convention.

    In-scope accuracy counts an in-scope utterance rejected as ``oos`` as wrong; OOS recall is
    the share of ``oos`` utterances predicted ``oos`` (by the threshold or an explicit class).
    """
    pred = apply_threshold(labels, confidences, threshold, oos)
    ins = [(t, p) for t, p in zip(y_true, pred, strict=True) if t != oos]
    out = [p for t, p in zip(y_true, pred, strict=True) if t == oos]
    in_acc = sum(t == p for t, p in ins) / len(ins) if ins else float("nan")
    oos_rec = sum(p == oos for p in out) / len(out) if out else float("nan")
    return in_acc, oos_rec


def best_threshold(
    thresholds: Sequence[float], objective: Callable[[float], float]
) -> tuple[float, float]:
    """The threshold maximising ``objective`` (first one on ties) and its value.

    The objective is passed in so each benchmark states its own criterion in one place.
    """
    if not thresholds:
        raise ValueError("no thresholds to sweep")
    best_t, best_v = thresholds[0], objective(thresholds[0])
    for t in thresholds[1:]:
        v = objective(t)
        if v > best_v:
            best_t, best_v = t, v
    return float(best_t), float(best_v)


# --- routing curves (RouteLLM's method) -------------------------------------------------------
@dataclass(frozen=True)
class RoutingCurve:
    """Quality against strong-call share, one point per distinct router score.

    ``shares[0] == 0`` (all weak) and ``shares[-1] == 1`` (all strong). Prompts with equal
    scores are one step: between its end points the curve is the straight line that a random
    tie-break gives in expectation, so a constant score (random routing) is the diagonal from
    weak-only to strong-only quality and has APGR exactly 0.5.
    ``thresholds[i]`` is the score threshold giving point ``i`` (route to strong iff
    score >= threshold; ``inf`` for point 0).
    """

    shares: np.ndarray
    quality: np.ndarray
    thresholds: np.ndarray
    weak_quality: float
    strong_quality: float

    @property
    def gap(self) -> float:
        return self.strong_quality - self.weak_quality


def routing_curve(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> RoutingCurve:
    """Replay stored per-prompt quality of both models under every threshold of ``scores``.

    ``scores``: higher = more in need of the strong model. ``weak``/``strong``: each model's
    quality on each prompt (1/0 correctness, or a judge score); quality is their mean.
    """
    s = np.asarray(scores, dtype=float)
    w = np.asarray(weak, dtype=float)
    g = np.asarray(strong, dtype=float) - w
    n = len(s)
    if n == 0 or len(w) != n or len(g) != n:
        raise ValueError(f"need equal, non-zero lengths: {len(s)} scores, {len(w)} weak, {len(g)} strong")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s_sorted, g_sorted = s[order], g[order]
    # group boundaries: the last index of each run of equal scores
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True]) + 1
    cum_gain = np.r_[0.0, np.cumsum(g_sorted)[ends - 1]]
    shares = np.r_[0.0, ends / n]
    base = w.mean()
    return RoutingCurve(
        shares=shares,
        quality=base + cum_gain / n,
        thresholds=np.r_[np.inf, s_sorted[ends - 1]],
        weak_quality=float(base),
        strong_quality=float(base + g.sum() / n),
    )


def pgr(curve: RoutingCurve) -> np.ndarray:
    """Performance gap recovered at each point: (quality - weak) / (strong - weak)."""
    if curve.gap <= 0:
        raise ValueError(f"strong quality {curve.strong_quality:.4g} is not above weak {curve.weak_quality:.4g}: PGR undefined")
    return (curve.quality - curve.weak_quality) / curve.gap


def apgr(curve: RoutingCurve) -> float:
    """Area under PGR vs strong-call share (trapezoids); random routing 0.5, a perfect router near 1."""
    y, x = pgr(curve), curve.shares
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def share_for_quality(curve: RoutingCurve, target: float) -> float:
    """The smallest strong-call share at which the curve first reaches ``target`` quality.

    Linear within a step (the random tie-break expectation). ``nan`` when never reached, 0 when
    weak-only already reaches it.
    """
    q, x = curve.quality, curve.shares
    if q[0] >= target:
        return 0.0
    for i in range(1, len(q)):
        if q[i] >= target:
            frac = (target - q[i - 1]) / (q[i] - q[i - 1])
            return float(x[i - 1] + frac * (x[i] - x[i - 1]))
    return float("nan")


def cpt(curve: RoutingCurve, recovered: float) -> float:
    """CPT(x): the smallest strong-call share recovering ``recovered`` (0-1) of the weak->strong gap."""
    return share_for_quality(curve, curve.weak_quality + recovered * curve.gap)


def strong_share_at(curve: RoutingCurve, fraction_of_strong: float = 0.95) -> float:
    """Strong-call share needed for ``fraction_of_strong`` of strong-only quality (RouteLLM's 95% claim)."""
    return share_for_quality(curve, fraction_of_strong * curve.strong_quality)


# --- embedding cache ---------------------------------------------------------------------------
class EmbeddingCache:
    """Embeds texts once per content: ``<cache_dir>/<sha256>.npy`` keyed by model and texts.

    The key covers the embedder's name, its pinned weights hash and truncation length and every
    text in order, so any change re-embeds instead of silently reusing stale vectors. Texts are
    embedded sorted by length (less padding per batch, noticeably faster on long prompts) and
    returned in the caller's order (``tools.routing.tier_router.embed_by_length``).
    """

    def __init__(self, cache_dir: Path | None = None, embedder: object | None = None) -> None:
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        self._embedder = embedder

    @property
    def embedder(self):  # noqa: ANN201 - MiniLMEmbedder, imported lazily (loading it is slow)
        if self._embedder is None:
            from tools.models.embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    @staticmethod
    def key(texts: Sequence[str], model: str) -> str:
        """Content hash of the model identity and the texts (unit separator between texts)."""
        h = hashlib.sha256(model.encode())
        for t in texts:
            h.update(b"\x1f")
            h.update(t.encode("utf-8"))
        return h.hexdigest()

    def model_id(self) -> str:
        from tools.models.embeddings import MAX_TOKENS, MODEL_SHA256

        name = getattr(self._embedder, "name", None) or "all-MiniLM-L6-v2-int8"
        return f"{name}|{MODEL_SHA256}|{MAX_TOKENS}"

    def path_for(self, texts: Sequence[str]) -> Path:
        return self.cache_dir / f"{self.key(texts, self.model_id())}.npy"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` (from disk when this exact list was embedded before)."""
        path = self.path_for(texts)
        if path.is_file():
            vecs = np.load(path)
            if vecs.shape[0] == len(texts):
                return vecs
        from tools.routing.tier_router import embed_by_length

        vecs = embed_by_length(self.embedder, list(texts))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
        return vecs


def bootstrap_apgr(
    scores: Sequence[float], weak: Sequence[float], strong: Sequence[float], reps: int = 500, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of APGR over prompts (resamples with no gap are skipped).

    On 72 MT-Bench questions the interval is wide; printing it keeps a lucky split from reading
    as a result.
    """
    s, w, g = (np.asarray(a, dtype=float) for a in (scores, weak, strong))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(reps):
        idx = rng.integers(0, len(s), len(s))
        curve = routing_curve(s[idx], w[idx], g[idx])
        if curve.gap > 0:
            vals.append(apgr(curve))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


# --- a line chart without matplotlib (not a project dependency) ---------------------------------
@dataclass(frozen=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int]
    dashed: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    series: Sequence[Series]
    xlabel: str = ""
    ylabel: str = ""


def line_chart_png(path: Path, panels: Sequence[Panel], panel_size: tuple[int, int] = (520, 420)) -> Path:
    """Panels side by side, drawn with Pillow's ImageDraw: axes, 5 ticks, lines and a legend."""
    from PIL import Image, ImageDraw, ImageFont

    pw, ph = panel_size
    img = Image.new("RGB", (pw * len(panels), ph), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    left, right, top, bottom = 60, 15, 30, 55
    for k, panel in enumerate(panels):
        ox = k * pw
        x0, x1, y0, y1 = ox + left, ox + pw - right, top, ph - bottom
        xs_all = [x for s in panel.series for x in s.xs]
        ys_all = [y for s in panel.series for y in s.ys]
        xmin, xmax = min(xs_all), max(xs_all)
        ymin, ymax = min(ys_all), max(ys_all)
        pad = (ymax - ymin) * 0.05 or 1.0
        ymin, ymax = ymin - pad, ymax + pad

        def px(x: float, y: float, xmin=xmin, xmax=xmax, ymin=ymin, ymax=ymax, x0=x0, x1=x1, y0=y0, y1=y1) -> tuple[float, float]:
            return (x0 + (x - xmin) / ((xmax - xmin) or 1) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

        draw.rectangle([x0, y0, x1, y1], outline="black")
        for i in range(6):
            xv, yv = xmin + i * (xmax - xmin) / 5, ymin + i * (ymax - ymin) / 5
            gx, _ = px(xv, ymin)
            _, gy = px(xmin, yv)
            draw.line([gx, y0, gx, y1], fill=(230, 230, 230))
            draw.line([x0, gy, x1, gy], fill=(230, 230, 230))
            draw.text((gx - 10, y1 + 4), f"{xv:.1f}", fill="black", font=font)
            draw.text((ox + 5, gy - 7), f"{yv:.3g}", fill="black", font=font)
        draw.text((x0, 8), panel.title, fill="black", font=font)
        draw.text(((x0 + x1) / 2 - 60, y1 + 22), panel.xlabel, fill="black", font=font)
        legend_x = x1 - 30 - max(draw.textlength(s.label, font=font) for s in panel.series)
        for j, s in enumerate(panel.series):
            pts = [px(x, y) for x, y in zip(s.xs, s.ys, strict=True)]
            for a, b in zip(pts[:-1], pts[1:], strict=True):
                if s.dashed:
                    _dashed_line(draw, a, b, s.color)
                else:
                    draw.line([a, b], fill=s.color, width=2)
            ly = y1 - 16 - 15 * (len(panel.series) - 1 - j)
            draw.line([legend_x, ly + 7, legend_x + 20, ly + 7], fill=s.color, width=2)
            draw.text((legend_x + 25, ly), s.label, fill=s.color, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _dashed_line(draw, a: tuple[float, float], b: tuple[float, float], color: tuple[int, int, int], dash: float = 6) -> None:  # noqa: ANN001
    (ax, ay), (bx, by) = a, b
    length = max(((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5, 1e-9)
    steps = int(length // dash)
    for i in range(0, steps + 1, 2):
        t0, t1 = i * dash / length, min((i + 1) * dash / length, 1.0)
        draw.line([ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1], fill=color, width=2)
