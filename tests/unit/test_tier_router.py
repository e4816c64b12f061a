"""The tier router: learns from outcomes which texts need the heavy model; policies are ordered
thresholds; a saved router reloads to identical scores; the shipped default is small and fast;
``switchboard train-router`` reads outcome files and rejects bad ones clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from switchboard.cli import main as cli_main
from switchboard.settings import Settings
from tools.routing.tier_router import POLICY_TARGETS, TierRouter, TierRouterError
from tools.routing.training import fit, fit_vectors, heavy_needed, load_outcomes

HARD = [
    "Prove that the integral of x squared from 0 to 1 equals one third.",
    "Prove that there are infinitely many prime numbers.",
    "Evaluate the integral of sin(x) * e^x dx and prove your answer.",
    "Prove by induction that the sum of the first n odd numbers is n squared.",
    "Compute the definite integral of 1/(1+x^2) from 0 to infinity, with proof.",
    "Prove that the square root of 2 is irrational.",
    "Find the integral of ln(x) and prove the result by differentiation.",
    "Prove the triangle inequality for complex numbers.",
    "Evaluate the improper integral of e^(-x^2) over the real line and prove it.",
    "Prove that every bounded monotone sequence converges.",
]
EASY = [
    "hello",
    "Hello there!",
    "hello, how are you?",
    "Hi, hello, good morning",
    "hello again",
    "Hello! Thanks for your help.",
    "hey hello",
    "hello, nice to meet you",
    "Hello, good evening.",
    "hello hello",
]
ORDER = ["best-quality", "balanced", "cost-saver"]


@pytest.fixture(scope="module")
def router() -> TierRouter:
    texts = HARD + EASY
    return fit(TierRouter(C=10.0), texts, [False] * len(HARD) + [True] * len(EASY))


def test_learns_that_proofs_need_the_heavy_model(router: TierRouter) -> None:
    hard = router.score("Prove that the integral of cos(x) from 0 to pi is zero.")
    easy = router.score("hello, anyone there?")
    assert hard > 0.5 > easy
    assert router.choose("Prove that the integral of cos(x) from 0 to pi is zero.", threshold=0.5).tier == "heavy"
    tier, score, threshold = router.choose("hello, anyone there?", threshold=0.5)
    assert (tier, threshold) == ("light", 0.5) and score == pytest.approx(easy)


def test_policies_are_monotone_thresholds(router: TierRouter) -> None:
    assert set(router.policies) == set(POLICY_TARGETS)
    thresholds = [router.threshold_for(p) for p in ORDER]
    assert thresholds == sorted(thresholds)  # best-quality sends the most to heavy
    for text in HARD:  # training texts: every policy's threshold was set on them
        assert router.choose(text, policy="best-quality").tier == "heavy"
    assert router.choose("hello", policy="cost-saver").tier == "light"
    with pytest.raises(TierRouterError, match="unknown policy"):
        router.threshold_for("yolo")


def test_save_load_round_trip_gives_identical_scores(router: TierRouter, tmp_path: Path) -> None:
    path = router.save(tmp_path / "r.json")
    again = TierRouter.load(path)
    X = router.embedder.embed(HARD + EASY)
    assert np.array_equal(router.score_vectors(X), again.score_vectors(X))
    assert again.policies == router.policies
    assert again.score("Prove Fermat's little theorem") == router.score("Prove Fermat's little theorem")


def test_targets() -> None:
    assert heavy_needed([True, False]).tolist() == [False, True]
    assert heavy_needed([0, 1, 0, 8.0], [1, 1, 0, 9.5]).tolist() == [True, False, False, True]


def test_one_class_outcomes_are_refused() -> None:
    with pytest.raises(TierRouterError, match="both"):
        fit_vectors(TierRouter(), np.zeros((3, 384)), [True, True, True])


def test_shipped_default_loads_and_scores() -> None:
    # how fast it is belongs in bench/ (tests never assert on wall-clock time)
    router = TierRouter.load(Settings().tier_router_file)
    assert Settings().tier_router_file.stat().st_size < 64_000  # weights, not embeddings
    assert {"mmlu", "gsm8k", "mt_bench"} <= set(router.meta["sources"])
    thresholds = [router.threshold_for(p) for p in ORDER]
    assert thresholds == sorted(thresholds)
    s = router.score("What is the capital of France?")
    assert 0.0 <= s <= 1.0


def test_routellm_csv_and_contamination(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"
        'q1,True,True\n"q2, with comma",False,True\nq3,False,False\n'
    )
    (tmp_path / "contaminated_prompts.jsonl").write_text(json.dumps({"train_prompt": "x", "eval_prompt": "q3"}) + "\n")
    outs = load_outcomes(tmp_path / "m.csv")
    assert [(o.text, o.weak_score, o.strong_score) for o in outs] == [("q1", 1, 1), ("q2, with comma", 0, 1)]
    assert len(load_outcomes(tmp_path / "m.csv", drop_contaminated=False)) == 3
    with pytest.raises(TierRouterError, match="--weak-model"):
        load_outcomes(tmp_path / "m.csv", weak_model="llama")


def test_mt_bench_judgements_average_turns_and_route_on_turn_one(tmp_path: Path) -> None:
    (tmp_path / "question.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["first", "second"]}) + "\n")
    rows = [(1, "weak", 6, 1), (1, "weak", 8, 2), (1, "strong", 9, 1), (1, "strong", 10, 2)]
    (tmp_path / "judgements.jsonl").write_text(
        "".join(json.dumps({"question_id": q, "model": m, "score": s, "turn": t}) + "\n" for q, m, s, t in rows)
    )
    [o] = load_outcomes(tmp_path / "judgements.jsonl", weak_model="weak", strong_model="strong")
    assert (o.text, o.weak_score, o.strong_score) == ("first", 7.0, 9.5)


def test_cli_train_router_writes_a_loadable_router(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "outcomes.jsonl"
    rows = [{"text": t, "weak_score": 0, "strong_score": 1} for t in HARD]
    rows += [{"text": t, "weak_score": 1, "strong_score": 1} for t in EASY]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "router.json"
    assert cli_main(["train-router", str(src), "--out", str(out), "--C", "10"]) == 0
    assert "wrote" in capsys.readouterr().out
    router = TierRouter.load(out)
    assert router.meta["n"] == 20 and router.score(HARD[0]) > router.score(EASY[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "hi", "weak_score": 1}\n', 'needs "weak_score" and "strong_score"'),
        ("not json\n", "not JSON"),
        ('{"text": "hi", "weak_score": "maybe", "strong_score": 1}\n', "neither True/False nor a number"),
        ('{"text": "a", "weak_score": 1, "strong_score": 1}\n', "needs examples of both"),
    ],
)
def test_cli_train_router_bad_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    assert cli_main(["train-router", str(src), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r.json").exists()


def test_loading_something_else_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(TierRouterError, match="not a tier router file"):
        TierRouter.load(tmp_path / "x.json")
    with pytest.raises(TierRouterError, match="train-router"):
        TierRouter.load(tmp_path / "missing.json")
