"""Training the tier router (``tools.routing.tier_router``) from stored outcomes of both tiers.

Nothing here runs at serve time: it loads outcome files, fits the logistic regression (C picked
by held-out APGR) and sets each policy's threshold by how much of the light->heavy quality gap
it recovers on held-out training prompts (:data:`~tools.routing.tier_router.POLICY_TARGETS`).
Outcome formats understood by :func:`load_outcomes`:

* RouteLLM MMLU / GSM8K CSV: a ``prompt`` column and one True/False column per model;
* RouteLLM MT-Bench ``judgements.jsonl`` (GPT-4 judge, 1-10) with ``question.jsonl`` beside it:
  routed on the first turn, quality = mean over the two turns (as RouteLLM does);
* generic JSONL: ``{"text": ..., "weak_score": ..., "strong_score": ...}`` (or ``"weak_ok"``).

A ``contaminated_prompts.jsonl`` in the file's folder or its parent (RouteLLM ships one per data
set) lists prompts to drop.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.routing.tier_router import POLICY_TARGETS, TierRouter, TierRouterError, embed_by_length

ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_STRONG = "gpt-4-1106-preview"
CONTAMINATED = "contaminated_prompts.jsonl"
DEFAULT_CS = (0.1, 1.0, 10.0)


# --- outcomes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """How the light (weak) and heavy (strong) model did on one prompt."""

    text: str
    weak_score: float
    strong_score: float
    source: str = ""


def _parse_score(value: object, where: str) -> float:
    """True/False (RouteLLM's CSVs) or a number; anything else is a format error."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        if math.isnan(float(value)):
            raise TierRouterError(f"{where}: score is NaN")
        return float(value)
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return 1.0 if text.lower() == "true" else 0.0
    try:
        out = float(text)
    except ValueError:
        raise TierRouterError(f"{where}: {value!r} is neither True/False nor a number") from None
    if math.isnan(out):
        raise TierRouterError(f"{where}: score is NaN")
    return out


def contaminated_prompts(path: Path) -> set[str]:
    """Prompts listed in a ``contaminated_prompts.jsonl`` next to ``path`` or one folder up."""
    for folder in (path.parent, path.parent.parent):
        candidate = folder / CONTAMINATED
        if candidate.is_file():
            out: set[str] = set()
            for line in candidate.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    out.add(row.get("eval_prompt") or row.get("prompt") or row.get("text") or "")
            out.discard("")
            return out
    return set()


def _load_csv(path: Path, weak_model: str, strong_model: str) -> list[Outcome]:
    csv.field_size_limit(1 << 24)  # GSM8K rows carry whole responses
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        text_col = next((c for c in ("prompt", "text") if c in cols), None)
        missing = [c for c in (weak_model, strong_model) if c not in cols]
        if text_col is None or missing:
            raise TierRouterError(
                f"{path}: expected a 'prompt' (or 'text') column and model columns {weak_model!r} and "
                f"{strong_model!r}; found {cols}. Name the models with --weak-model/--strong-model."
            )
        # RouteLLM layout: mmlu/responses/mmlu_<subject>.csv -> "mmlu"; gsm8k_responses.csv -> "gsm8k"
        source = path.parent.parent.name if path.parent.name == "responses" else path.stem.removesuffix("_responses")
        return [
            Outcome(
                text=row[text_col],
                weak_score=_parse_score(row[weak_model], f"{path}:{n}"),
                strong_score=_parse_score(row[strong_model], f"{path}:{n}"),
                source=source,
            )
            for n, row in enumerate(reader, 2)
        ]


def _load_mt_bench(path: Path, rows: list[dict], weak_model: str, strong_model: str) -> list[Outcome]:
    qpath = path.parent / "question.jsonl"
    if not qpath.is_file():
        raise TierRouterError(f"{path} holds MT-Bench judgements but {qpath} (the questions) is missing")
    questions = {}
    for line in qpath.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            questions[q["question_id"]] = q["turns"]
    scores: dict[tuple[int, str], list[float]] = defaultdict(list)
    for n, r in enumerate(rows, 1):
        scores[(r["question_id"], r["model"])].append(_parse_score(r["score"], f"{path}:{n}"))
    out = []
    for qid, turns in sorted(questions.items()):
        w, s = scores.get((qid, weak_model)), scores.get((qid, strong_model))
        if not w or not s:
            continue
        out.append(Outcome(text=turns[0], weak_score=sum(w) / len(w), strong_score=sum(s) / len(s), source="mt_bench"))
    if not out:
        raise TierRouterError(f"{path}: no question has judgements of both {weak_model!r} and {strong_model!r}")
    return out


def _load_jsonl(path: Path, weak_model: str, strong_model: str) -> list[Outcome]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TierRouterError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TierRouterError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise TierRouterError(f"{path}: no outcomes")
    if {"question_id", "model", "score"} <= rows[0].keys():
        return _load_mt_bench(path, rows, weak_model, strong_model)
    out = []
    for n, row in enumerate(rows, 1):
        where = f"{path}: row {n}"
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise TierRouterError(f'{where}: needs a non-empty "text"')
        if "weak_score" in row and "strong_score" in row:
            weak, strong = _parse_score(row["weak_score"], where), _parse_score(row["strong_score"], where)
        elif "weak_ok" in row:
            # Only the light model's verdict: assume the heavy model would have been right.
            weak, strong = _parse_score(row["weak_ok"], where), 1.0
        else:
            raise TierRouterError(f'{where}: needs "weak_score" and "strong_score" (or "weak_ok"); has {sorted(row)}')
        out.append(Outcome(text=row["text"], weak_score=weak, strong_score=strong, source=path.stem))
    return out


def pooled_scores(outcomes: Sequence[Outcome]) -> tuple[np.ndarray, np.ndarray]:
    """(weak, strong) quality arrays with each source scaled to at most 1.

    Pooling 0/1 correctness with 1-10 judge scores (or a 0-100 audit score) would let the
    larger scale dominate the quality gap that sets the policy thresholds; dividing a source by
    its largest score when that exceeds 1 keeps every source's gap on a comparable footing.
    The training target (heavy strictly better) is unaffected.
    """
    top: dict[str, float] = defaultdict(float)
    for o in outcomes:
        top[o.source] = max(top[o.source], abs(o.weak_score), abs(o.strong_score))
    scale = np.array([top[o.source] if top[o.source] > 1 else 1.0 for o in outcomes])
    weak = np.array([o.weak_score for o in outcomes]) / scale
    strong = np.array([o.strong_score for o in outcomes]) / scale
    return weak, strong


def load_outcomes(
    path: Path | str,
    weak_model: str = ROUTELLM_WEAK,
    strong_model: str = ROUTELLM_STRONG,
    drop_contaminated: bool = True,
) -> list[Outcome]:
    """Outcomes from one file (format by extension and content, see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise TierRouterError(f"no such outcome file: {path}")
    if path.suffix == ".csv":
        out = _load_csv(path, weak_model, strong_model)
    elif path.suffix in (".jsonl", ".json"):
        out = _load_jsonl(path, weak_model, strong_model)
    else:
        raise TierRouterError(f"{path}: unknown outcome format (expected .csv or .jsonl)")
    if drop_contaminated:
        bad = contaminated_prompts(path)
        out = [o for o in out if o.text not in bad]
    return out


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; a folder stands for the .csv/.jsonl files directly inside it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in (".csv", ".jsonl") and f.name != CONTAMINATED)
        else:
            out.append(p)
    return out


# --- fitting --------------------------------------------------------------------------------
def heavy_needed(
    weak: Sequence[float] | Sequence[bool] | np.ndarray, strong: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Training target: True where the light model is not enough.

    With both scores: the heavy model scored strictly higher (where both fail or both succeed,
    calling the heavy model buys nothing). With only ``weak`` (light model ok?): the light model
    failed.
    """
    w = np.asarray(weak, dtype=float)
    if strong is None:
        return w < 0.5
    s = np.asarray(strong, dtype=float)
    if s.shape != w.shape:
        raise ValueError(f"{len(w)} weak scores but {len(s)} strong scores")
    return s > w


def _recovered_curve(scores: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Share of the total heavy-over-light gain recovered after sending the 1, 2, ... n
    top-scored prompts to heavy (the PGR curve without tie handling; scores are continuous)."""
    order = np.argsort(-scores, kind="stable")
    return np.cumsum(gain[order]) / float(gain.sum())


def held_out_apgr(scores: np.ndarray, gain: np.ndarray) -> float:
    """Area under the gap-recovered curve vs heavy share (random 0.5): used to pick C."""
    if float(gain.sum()) <= 0:
        return float("nan")
    y = np.r_[0.0, _recovered_curve(scores, gain)]
    return float(((y[1:] + y[:-1]) / 2).sum() / (len(y) - 1))


def _threshold_recovering(scores: np.ndarray, gain: np.ndarray, share_of_gap: float) -> float:
    """The score threshold at which routing the top-scored prompts to heavy first recovers
    ``share_of_gap`` of the total heavy-over-light gain (1.0 if heavy gains nothing overall)."""
    if float(gain.sum()) <= 0:
        return 1.0
    recovered = _recovered_curve(scores, gain)
    idx = int(np.argmax(recovered >= share_of_gap - 1e-12))
    return float(np.sort(scores, kind="stable")[::-1][idx])


def fit(
    router: TierRouter,
    texts: Sequence[str],
    weak: Sequence[bool] | Sequence[float] | np.ndarray,
    strong: Sequence[float] | np.ndarray | None = None,
) -> TierRouter:
    """Train ``router`` (at its ``C``) on outcomes and return it: ``weak`` is light-model-ok
    booleans when ``strong`` is None, else the light model's per-prompt quality with ``strong``
    the heavy model's."""
    return fit_vectors(router, router.embed(texts), weak, strong)


def fit_vectors(
    router: TierRouter,
    X: np.ndarray,
    weak: Sequence[bool] | Sequence[float] | np.ndarray,
    strong: Sequence[float] | np.ndarray | None = None,
) -> TierRouter:
    """As :func:`fit`, from precomputed embeddings (benchmarks cache them)."""
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(X, dtype=np.float64)
    y = heavy_needed(weak, strong)
    if X.ndim != 2 or X.shape[0] != len(y):
        raise ValueError(f"need one vector per outcome: X {X.shape}, {len(y)} outcomes")
    if y.all() or not y.any():
        raise TierRouterError(
            f"all {len(y)} outcomes say the light model is {'not ' if y.all() else ''}enough: "
            "a router needs examples of both"
        )
    w = np.asarray(weak, dtype=float)
    s = np.ones_like(w) if strong is None else np.asarray(strong, dtype=float)
    clf = LogisticRegression(C=router.C, max_iter=5000)
    clf.fit(X, y)
    router.coef = clf.coef_[0].astype(np.float64)
    router.intercept = float(clf.intercept_[0])
    held_out, how = _held_out_scores(router, X, y)
    router.policies = {
        name: _threshold_recovering(held_out, s - w, target) for name, target in POLICY_TARGETS.items()
    }
    router.meta.update(
        n=int(len(y)),
        heavy_needed_rate=round(float(y.mean()), 4),
        weak_quality=round(float(w.mean()), 4),
        strong_quality=round(float(s.mean()), 4),
        policy_thresholds_from=how,
        held_out_apgr=round(held_out_apgr(held_out, s - w), 4),
        target="strong_score > weak_score" if strong is not None else "not weak_ok",
    )
    return router


def _held_out_scores(router: TierRouter, X: np.ndarray, y: np.ndarray, folds: int = 5) -> tuple[np.ndarray, str]:
    """Scores of each training prompt by a model that did not see it, to set the policy
    thresholds without the optimism of in-sample scores. Tiny sets use in-sample scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if len(y) < 50 or min(int(y.sum()), int((~y).sum())) < folds:
        return router.score_vectors(X), "in-sample scores (too few outcomes for cross-validation)"
    out = np.empty(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        clf = LogisticRegression(C=router.C, max_iter=5000).fit(X[train], y[train])
        fold = TierRouter(coef=clf.coef_[0].astype(np.float64), intercept=float(clf.intercept_[0]))
        out[test] = fold.score_vectors(X[test])
    return out, f"{folds}-fold cross-validated scores (seed 0)"


def fit_select_C(
    X: np.ndarray,
    weak: Sequence[bool] | Sequence[float] | np.ndarray,
    strong: Sequence[float] | np.ndarray | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
) -> TierRouter:
    """Fit one router per C and keep the one whose held-out APGR (training prompts only,
    cross-validated) is best; the candidates' values are kept in ``meta["C_candidates"]``."""
    if not Cs:
        raise ValueError("no C values to try")
    best: TierRouter | None = None
    tried: dict[str, float] = {}
    for c in Cs:
        r = fit_vectors(TierRouter(C=float(c)), X, weak, strong)
        apgr = r.meta["held_out_apgr"]
        tried[str(c)] = apgr
        if best is None or apgr > best.meta["held_out_apgr"]:
            best = r
    assert best is not None
    best.meta["C_candidates"] = tried
    return best


def train_from_files(
    paths: Sequence[Path | str],
    *,
    weak_model: str = ROUTELLM_WEAK,
    strong_model: str = ROUTELLM_STRONG,
    C: float | None = None,
    drop_contaminated: bool = True,
) -> tuple[TierRouter, dict[str, int]]:
    """Load every outcome file and train a router on all of them (``C=None``: pick C from
    :data:`DEFAULT_CS` by held-out APGR); also return the number of outcomes per source."""
    files = expand_paths(paths)
    if not files:
        raise TierRouterError("no outcome files given")
    outcomes: list[Outcome] = []
    for f in files:
        outcomes += load_outcomes(f, weak_model, strong_model, drop_contaminated)
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        counts[o.source] += 1
    from tools.models.embeddings import get_embedder

    embedder = get_embedder()
    X = embed_by_length(embedder, [o.text for o in outcomes])
    weak, strong = pooled_scores(outcomes)
    router = fit_vectors(TierRouter(C=C), X, weak, strong) if C is not None else fit_select_C(X, weak, strong)
    router.embedder = embedder
    router.meta["sources"] = dict(counts)
    return router, dict(counts)
