"""A fast local intent classifier: sentence embeddings + multinomial logistic regression.

Routes are data (name, description, examples, agents) loaded from a YAML file. ``fit`` trains
on labelled utterances in well under a second; ``predict`` scores a clause in milliseconds with
no LLM. The same class is used by the CLINC150/Banking77 benchmark, so what we measure there is
what triage runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression

from tools.models.embeddings import MiniLMEmbedder, get_embedder


@dataclass(frozen=True)
class Route:
    name: str
    agents: tuple[str, ...]
    description: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class RouteConfig:
    routes: dict[str, Route]
    threshold: float

    @classmethod
    def load(cls, path: Path) -> RouteConfig:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        routes = {
            name: Route(
                name=name,
                agents=tuple(body["agents"]),
                description=body.get("description", ""),
                examples=tuple(body.get("examples", [])),
            )
            for name, body in (raw.get("routes") or {}).items()
        }
        if not routes:
            raise ValueError(f"{path} defines no routes")
        for r in routes.values():
            if not r.examples:
                raise ValueError(f"route {r.name!r} in {path} has no examples")
        return cls(routes=routes, threshold=float(raw.get("threshold", 0.5)))


class LabelledTexts(Protocol):
    """Training data with per-example weights (``tools.routing.generate.TrainingSet``)."""

    @property
    def texts(self) -> tuple[str, ...]: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def weights(self) -> tuple[float, ...]: ...


@dataclass
class Prediction:
    label: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)


class IntentClassifier:
    """Embeddings + logistic regression; ``confidence`` is the top class probability."""

    def __init__(self, embedder: MiniLMEmbedder | None = None, C: float = 10.0) -> None:
        self._embedder = embedder
        self.C = C
        self._clf: LogisticRegression | None = None
        self.labels: list[str] = []

    @property
    def embedder(self) -> MiniLMEmbedder:
        return self._embedder or get_embedder()

    def fit(self, texts: Sequence[str], labels: Sequence[str],
            sample_weight: Sequence[float] | np.ndarray | None = None) -> IntentClassifier:
        return self.fit_vectors(self.embedder.embed(list(texts)), labels, sample_weight=sample_weight)

    def fit_vectors(self, X: np.ndarray, labels: Sequence[str],
                    sample_weight: Sequence[float] | np.ndarray | None = None) -> IntentClassifier:
        """Fit on embeddings; ``sample_weight`` (one per example) scales each example's loss."""
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weights is not None and weights.shape != (len(labels),):
            raise ValueError(f"{weights.shape[0] if weights.ndim else 0} sample weights for {len(labels)} examples")
        self._clf = LogisticRegression(C=self.C, max_iter=2000)
        self._clf.fit(X, list(labels), sample_weight=weights)
        self.labels = [str(c) for c in self._clf.classes_]
        return self

    def predict_vectors(self, X: np.ndarray) -> list[Prediction]:
        if self._clf is None:
            raise RuntimeError("IntentClassifier.fit must be called before predict")
        probs = self._probabilities(np.asarray(X, dtype=np.float64))
        out = []
        for row in probs:
            best = int(np.argmax(row))
            out.append(
                Prediction(
                    label=self.labels[best],
                    confidence=float(row[best]),
                    scores={lab: round(float(p), 4) for lab, p in zip(self.labels, row, strict=True)},
                )
            )
        return out

    def _probabilities(self, X: np.ndarray) -> np.ndarray:
        """``predict_proba`` of the fitted model, computed here: a matrix product and a softmax (a
        sigmoid for two routes). scikit-learn's own call spends most of its ~0.5 ms per turn
        validating its input; this is triage's share of every turn's CPU (``bench/overhead.py``)."""
        assert self._clf is not None
        scores = X @ self._clf.coef_.T + self._clf.intercept_
        if scores.shape[1] == 1:  # binary: scikit-learn keeps one row of weights, for the second class
            second = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - second, second])
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.predict_vectors(self.embedder.embed(list(texts)))

    @classmethod
    def from_routes(cls, config: RouteConfig, embedder: MiniLMEmbedder | None = None) -> IntentClassifier:
        texts: list[str] = []
        labels: list[str] = []
        for route in config.routes.values():
            texts.extend(route.examples)
            labels.extend([route.name] * len(route.examples))
        return cls(embedder).fit(texts, labels)

    @classmethod
    def from_training_set(cls, ts: LabelledTexts, embedder: MiniLMEmbedder | None = None) -> IntentClassifier:
        """Fit on a weighted training set (the routes file plus generated examples, see
        ``tools.routing.generate``); ``generate.load_or_train`` does the same with a disk cache."""
        return cls(embedder).fit(ts.texts, ts.labels, sample_weight=ts.weights)
