"""The tier router: will the light model do for this subtask, or is the heavy one needed?

It reads the subtask text only (no model is called): MiniLM sentence embeddings and a logistic
regression trained on stored outcomes of both tiers on past prompts (RouteLLM's evaluation files,
or our own audit trail later; training lives in ``tools.routing.training``). ``score`` is the
estimated probability that the light model is *not* enough -- that the heavy model would do
better. One threshold knob turns it into a tier; the named policies are thresholds fixed at
training time by how much of the light->heavy quality gap they recover on held-out training
prompts (:data:`POLICY_TARGETS`):

* ``cost-saver``   -- recover 50% of the gap with as few heavy calls as possible,
* ``balanced``     -- 80%,
* ``best-quality`` -- 95%.

A saved router is a small JSON file (the regression's 384 weights, not embeddings), so the
shipped default loads in milliseconds and scoring costs one embedding (a few ms) plus a dot
product. This module is what runs at serve time: loading, saving and scoring.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tools.models.embeddings import DIM, MODEL_SHA256
from tools.models.values import POLICIES, Tier

if TYPE_CHECKING:
    from tools.models.embeddings import MiniLMEmbedder

FORMAT = "switchboard-tier-router"
FORMAT_VERSION = 1
EMBEDDER_NAME = "all-MiniLM-L6-v2-int8"
# Share of the light->heavy quality gap each policy must recover (on held-out training prompts);
# written into every saved router beside the thresholds it produced.
POLICY_TARGETS: dict[str, float] = dict(zip(POLICIES, (0.5, 0.8, 0.95), strict=True))  # cheapest first


class TierRouterError(ValueError):
    """A router file or an outcome file cannot be used; the message says why."""


class Choice(NamedTuple):
    """A routing decision; unpacks as ``tier, score, threshold``."""

    tier: Tier
    score: float
    threshold: float


@dataclass
class TierRouter:
    """Light or heavy, from the text alone; see the module docstring.

    ``coef``/``intercept`` are a logistic regression over the embedder's L2-normalised vectors
    (fitted by ``tools.routing.training``); scoring is done with numpy from them (not through
    scikit-learn), so a saved and reloaded router gives bit-identical scores.
    """

    C: float = 1.0
    coef: np.ndarray | None = None
    intercept: float = 0.0
    policies: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    embedder: MiniLMEmbedder | None = field(default=None, repr=False)

    # scoring ---------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors the router scores (loads the shared embedder on first use)."""
        if self.embedder is None:
            from tools.models.embeddings import get_embedder

            self.embedder = get_embedder()
        return embed_by_length(self.embedder, texts)

    def score_vectors(self, X: np.ndarray) -> np.ndarray:
        """Probability that the light model is not enough, per embedding row."""
        if self.coef is None:
            raise RuntimeError("TierRouter has no model: train one (tools.routing.training) or TierRouter.load() first")
        return _sigmoid(np.asarray(X, dtype=np.float64) @ self.coef + self.intercept)

    def score_many(self, texts: Sequence[str]) -> np.ndarray:
        return self.score_vectors(self.embed(texts))

    def score(self, text: str) -> float:
        """Probability that the light model is not enough for ``text``."""
        return float(self.score_many([text])[0])

    def threshold_for(self, policy: str) -> float:
        try:
            return self.policies[policy]
        except KeyError:
            raise TierRouterError(f"unknown policy {policy!r}; this router knows {sorted(self.policies)}") from None

    def choose(self, text: str, policy: str | None = "balanced", threshold: float | None = None) -> Choice:
        """``heavy`` when the score reaches the threshold (an explicit one wins over the policy's)."""
        t = threshold if threshold is not None else self.threshold_for(policy or "balanced")
        sc = self.score(text)
        return Choice("heavy" if sc >= t else "light", sc, float(t))

    # persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        if self.coef is None:
            raise RuntimeError("nothing to save: the router is not trained")
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "embedder": EMBEDDER_NAME,
            "embedder_sha256": MODEL_SHA256,
            "C": self.C,
            "intercept": self.intercept,
            "coef": [float(c) for c in self.coef],  # repr of a float64 round-trips exactly
            "policies": self.policies,
            "policy_targets": POLICY_TARGETS,
            "meta": self.meta,
        }

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path | str, embedder: MiniLMEmbedder | None = None) -> TierRouter:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TierRouterError(f"no tier router at {path}; train one with `switchboard train-router`") from None
        except json.JSONDecodeError as exc:
            raise TierRouterError(f"{path} is not a tier router file: {exc.msg}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise TierRouterError(f"{path} is not a tier router file (format {FORMAT!r} expected)")
        if raw.get("version") != FORMAT_VERSION:
            raise TierRouterError(f"{path}: router format version {raw.get('version')} is not {FORMAT_VERSION}")
        if raw.get("embedder_sha256") != MODEL_SHA256 or len(raw.get("coef", [])) != DIM:
            raise TierRouterError(f"{path} was trained on other embeddings ({raw.get('embedder')}); retrain it")
        return cls(
            C=float(raw["C"]),
            coef=np.asarray(raw["coef"], dtype=np.float64),
            intercept=float(raw["intercept"]),
            policies={k: float(v) for k, v in raw["policies"].items()},
            meta=dict(raw.get("meta") or {}),
            embedder=embedder,
        )


def embed_by_length(embedder: MiniLMEmbedder, texts: Sequence[str]) -> np.ndarray:
    """Embed in order of length and restore the caller's order: batches pad to their longest
    text, so mixing a 2,000-character MMLU passage with short questions wastes most of a batch."""
    if len(texts) <= 1:
        return embedder.embed(list(texts))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vecs_sorted = embedder.embed([texts[i] for i in order])
    vecs = np.empty_like(vecs_sorted)
    vecs[order] = vecs_sorted
    return vecs


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))
