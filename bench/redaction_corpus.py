"""How well ``tools.observability.redaction`` finds personal data: per-kind true/false positives and false negatives
on the hand-written corpus ``tests/fixtures/redaction_corpus.yaml``.

    uv run python bench/redaction_corpus.py [--show-errors]

A finding counts as a true positive only when both its kind and its exact text match a labelled
span, so a phone number found one digit short is one false positive *and* one false negative:
a partly masked number still leaks. ``tests/unit/test_redaction.py`` uses the same scoring and
requires zero of both.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import format_table  # noqa: E402
from tools.observability.redaction import PERSONAL_KINDS, find_personal_data  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "redaction_corpus.yaml"


@dataclass(frozen=True)
class Case:
    text: str
    expected: tuple[tuple[str, str], ...]  # (kind, exact text); empty for a negative example


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass(frozen=True)
class Error:
    text: str
    kind: str
    span: str
    error: str  # "FP" or "FN"


def load_corpus(path: Path = CORPUS) -> tuple[list[Case], list[Case]]:
    """(positive cases, negative cases) from the YAML corpus."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    positives = [
        Case(str(item["text"]), tuple((k, str(v)) for span in item["expect"] for k, v in span.items()))
        for item in data["positives"]
    ]
    negatives = [Case(str(item["text"]), ()) for item in data["negatives"]]
    return positives, negatives


def score(cases: list[Case]) -> tuple[dict[str, Counts], list[Error]]:
    """Per-kind counts over ``cases``, and each false positive and false negative."""
    counts = {kind: Counts() for kind in PERSONAL_KINDS}
    errors: list[Error] = []
    for case in cases:
        expected = Counter(case.expected)
        found = Counter((f.kind, f.text) for f in find_personal_data(case.text))
        for (kind, _span), n in (expected & found).items():
            counts[kind].tp += n
        for (kind, span), n in (found - expected).items():
            counts[kind].fp += n
            errors += [Error(case.text, kind, span, "FP")] * n
        for (kind, span), n in (expected - found).items():
            counts[kind].fn += n
            errors += [Error(case.text, kind, span, "FN")] * n
    return counts, errors


def totals(counts: dict[str, Counts]) -> Counts:
    return Counts(*(sum(getattr(c, f) for c in counts.values()) for f in ("tp", "fp", "fn")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-errors", action="store_true", help="print every false positive and negative")
    args = parser.parse_args(argv)
    positives, negatives = load_corpus()
    counts, errors = score(positives + negatives)
    total = totals(counts)
    rows = [[kind, c.tp, c.fp, c.fn] for kind, c in counts.items()] + [["total", total.tp, total.fp, total.fn]]
    print(f"corpus: {CORPUS.relative_to(ROOT)} ({len(positives)} positive, {len(negatives)} negative examples, "
          f"{sum(len(c.expected) for c in positives)} labelled spans)")
    print(format_table(["kind", "TP", "FP", "FN"], rows))
    negatives_hit = sum(1 for c in negatives if find_personal_data(c.text))
    print(f"negative examples with any finding: {negatives_hit} of {len(negatives)}")
    if args.show_errors:
        for e in errors:
            print(f"{e.error} {e.kind}: {e.span!r} in {e.text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
