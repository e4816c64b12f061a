"""Tier router on RouteLLM's evaluation data: how many heavy-model calls does it save?

RouteLLM stored, per prompt, whether GPT-4 (strong / heavy) and Mixtral-8x7B (weak / light) were
right on MMLU and GSM8K, and GPT-4-judge scores (1-10) on MT-Bench. The router scores each prompt
from its text; sweeping its threshold and replaying the stored outcomes gives quality against the
share of strong calls, summarised as APGR, CPT(50%), CPT(80%) and the strong-call share needed
for 95% of strong-only quality (``bench/eval_common.py``), beside random routing, the weak-only
and strong-only baselines and an oracle that knows the outcomes.

Evaluation (all prompts decontaminated with RouteLLM's lists):

* in-domain: 5-fold cross-fitting, folds by distinct prompt text (seed 0): every prompt is
  scored by a router trained on the other 80% of its own data set, so the whole set is the
  test set and no prompt (or verbatim duplicate) is scored by a router that saw it. C is chosen
  inside each training part (held-out APGR of an inner 5-fold split), never on the scored fold.
  This is easier than RouteLLM's setting (their routers were trained on other data, Chatbot
  Arena preferences).
* cross-dataset: trained on the other two data sets, scores all of this one -- closer to
  RouteLLM's setting.
* the "weak-wrong" variant trains on "the light model was wrong" instead of "the heavy model did
  better" (binary data sets only).

    .venv/bin/python bench/tier_routellm.py [--folds 5] [--seed 0] [--png bench/out/tier_routellm.png]

The shipped default router (switchboard/config/tier_router.json) is trained on all three data
sets, C chosen by held-out APGR -- what ``switchboard train-router`` does from the same files
(``--write-default PATH`` does it from this script's embedding cache instead of re-embedding):

    switchboard train-router EVALS/mmlu/responses EVALS/gsm8k/gsm8k_responses.csv \
        EVALS/mt_bench/judgements.jsonl --out switchboard/config/tier_router.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.eval_common import (  # noqa: E402
    EmbeddingCache,
    Panel,
    RoutingCurve,
    Series,
    apgr,
    bootstrap_apgr,
    cpt,
    format_table,
    line_chart_png,
    machine_load,
    routing_curve,
    strong_share_at,
)
from tools.routing.tier_router import POLICY_TARGETS  # noqa: E402
from tools.routing.training import Outcome, expand_paths, fit_select_C, load_outcomes, pooled_scores  # noqa: E402

EVALS = ROOT.parent / "shared" / "data" / "routing" / "routellm" / "evals"
DATASETS: dict[str, list[Path]] = {
    "mmlu": [EVALS / "mmlu" / "responses"],
    "gsm8k": [EVALS / "gsm8k" / "gsm8k_responses.csv"],
    "mt_bench": [EVALS / "mt_bench" / "judgements.jsonl"],
}
# RouteLLM (Ong et al. 2024; lmsys blog): 95% of GPT-4 quality with about 45% / 35% / 85% fewer
# GPT-4 calls, i.e. strong-call shares of about 55% / 65% / 15% (best router per benchmark,
# trained on Arena data augmented with judge labels, not on these benchmarks).
PUBLISHED_SHARE_95 = {"mmlu": 0.55, "gsm8k": 0.65, "mt_bench": 0.15}


@dataclass
class Data:
    name: str
    outcomes: list[Outcome]
    X: np.ndarray

    @property
    def weak(self) -> np.ndarray:
        return np.array([o.weak_score for o in self.outcomes])

    @property
    def strong(self) -> np.ndarray:
        return np.array([o.strong_score for o in self.outcomes])

    @property
    def binary(self) -> bool:
        return set(np.unique(np.r_[self.weak, self.strong])) <= {0.0, 1.0}


def load_all(cache: EmbeddingCache) -> dict[str, Data]:
    """Decontaminated outcomes and (cached) embeddings of every data set."""
    out = {}
    for name, paths in DATASETS.items():
        files = expand_paths(paths)
        raw = sum(len(load_outcomes(f, drop_contaminated=False)) for f in files)
        outcomes = [o for f in files for o in load_outcomes(f)]
        t = time.perf_counter()
        X = cache.embed([o.text for o in outcomes])
        print(f"{name}: {len(outcomes)}/{raw} prompts after decontamination; embeddings {time.perf_counter() - t:.1f} s")
        out[name] = Data(name, outcomes, X)
    return out


def text_folds(texts: list[str], k: int, seed: int) -> np.ndarray:
    """Fold id per row; rows with the same text share a fold (MMLU repeats some prompts)."""
    distinct = sorted(set(texts))
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(distinct, rng.permutation(len(distinct)) % k, strict=True))
    return np.array([fold_of[t] for t in texts])


def cross_fitted(d: Data, k: int, seed: int, weak_wrong: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray], list[float]]:
    """Out-of-fold scores, out-of-fold policy decisions (heavy?) and the C chosen per fold."""
    folds = text_folds([o.text for o in d.outcomes], k, seed)
    scores = np.empty(len(folds))
    heavy = {p: np.zeros(len(folds), dtype=bool) for p in POLICY_TARGETS}
    chosen = []
    for f in range(k):
        tr, te = folds != f, folds == f
        if weak_wrong:
            router = fit_select_C(d.X[tr], d.weak[tr] >= 0.5)
        else:
            router = fit_select_C(d.X[tr], d.weak[tr], d.strong[tr])
        scores[te] = router.score_vectors(d.X[te])
        for p in POLICY_TARGETS:
            heavy[p][te] = scores[te] >= router.policies[p]
        chosen.append(router.C)
    return scores, heavy, chosen


def metrics_row(label: str, curve: RoutingCurve, ci: tuple[float, float] | None = None) -> list[str]:
    a = apgr(curve)
    ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return [label, f"{a:.3f}{ci_txt}", pct(cpt(curve, 0.5)), pct(cpt(curve, 0.8)), pct(strong_share_at(curve, 0.95))]


def pct(x: float) -> str:
    return "never" if np.isnan(x) else f"{x:.1%}"


def write_default(data: dict[str, Data], path: Path) -> None:
    """Train on every decontaminated prompt of all data sets (as ``switchboard train-router``)."""
    ds = list(data.values())
    router = fit_select_C(np.vstack([d.X for d in ds]), *pooled_scores([o for d in ds for o in d.outcomes]))
    router.meta["sources"] = {d.name: len(d.outcomes) for d in ds}
    print(f"C={router.C:g} (held-out APGR per C: {router.meta['C_candidates']}); policies {router.policies}")
    print(f"wrote {router.save(path)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path, default=ROOT / "bench" / "out" / "tier_routellm.png")
    ap.add_argument("--write-default", type=Path, metavar="PATH",
                    help="only train the router on all three data sets and save it to PATH")
    args = ap.parse_args()
    print(machine_load())
    data = load_all(EmbeddingCache())
    if args.write_default:
        write_default(data, args.write_default)
        return
    panels = []
    for name, d in data.items():
        t = time.perf_counter()
        w, s = d.weak, d.strong
        in_scores, in_heavy, cs = cross_fitted(d, args.folds, args.seed)
        others = [o for o in data.values() if o.name != name]
        cross = fit_select_C(np.vstack([o.X for o in others]), *pooled_scores([x for o in others for x in o.outcomes]))
        x_scores = cross.score_vectors(d.X)
        curves = {
            "random": routing_curve(np.zeros(len(w)), w, s),
            "oracle": routing_curve(s - w, w, s),
            "router in-domain": routing_curve(in_scores, w, s),
            "router cross-dataset": routing_curve(x_scores, w, s),
        }
        cis = {"router in-domain": bootstrap_apgr(in_scores, w, s), "router cross-dataset": bootstrap_apgr(x_scores, w, s)}
        if d.binary:
            ww_scores, _, _ = cross_fitted(d, args.folds, args.seed, weak_wrong=True)
            curves["router in-domain, weak-wrong"] = routing_curve(ww_scores, w, s)
            cis["router in-domain, weak-wrong"] = bootstrap_apgr(ww_scores, w, s)
        c0 = curves["random"]
        print(f"\n== {name}: {len(w)} prompts; weak-only (Mixtral) {c0.weak_quality:.4f}, strong-only (GPT-4) "
              f"{c0.strong_quality:.4f}; 95% of strong = {0.95 * c0.strong_quality:.4f}; "
              f"in-domain C per fold {cs}; cross-dataset C {cross.C} ({time.perf_counter() - t:.0f} s)")
        rows = [["weak-only", "-", "-", "-", "never" if c0.weak_quality < 0.95 * c0.strong_quality else "0.0%"],
                ["strong-only", "-", "-", "-", "100.0%"]]
        rows += [metrics_row(k, c, cis.get(k)) for k, c in curves.items()]
        rows.append(["RouteLLM published (other data)", "-", "-", "-", f"~{PUBLISHED_SHARE_95[name]:.0%}"])
        print(format_table(["router", "APGR [95% CI]", "CPT(50%)", "CPT(80%)", "strong share for 95% of strong"], rows))
        prow = []
        for p, target in POLICY_TARGETS.items():
            h = in_heavy[p]
            q = float(np.where(h, s, w).mean())
            prow.append([p, f"{target:.0%}", f"{h.mean():.1%}", f"{(q - c0.weak_quality) / c0.gap:.1%}", f"{q:.4f}"])
        print("policies (thresholds set on each training part, applied to its held-out fold):")
        print(format_table(["policy", "target PGR", "heavy share", "PGR reached", "quality"], prow))
        palette = {"random": (150, 150, 150), "oracle": (46, 160, 44), "router in-domain": (31, 119, 180),
                   "router cross-dataset": (255, 127, 14), "router in-domain, weak-wrong": (148, 103, 189)}
        series = [Series(k, list(c.shares), list(c.quality), palette[k], dashed=k in ("random", "oracle"))
                  for k, c in curves.items()]
        series.append(Series("95% of strong", [0, 1], [0.95 * c0.strong_quality] * 2, (214, 39, 40), dashed=True))
        panels.append(Panel(f"{name} (n={len(w)}): quality vs strong-call share", series, xlabel="strong-call share"))
    print(f"\n{machine_load()}")
    print(f"wrote {line_chart_png(args.png, panels, panel_size=(560, 460))}")


if __name__ == "__main__":
    main()
