"""bench/vision_receipts.py --model scores a configured vision model (here a loopback fake of an
OpenAI-compatible server that always reads the same fields: a hand-written fixture reply)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from tests.conftest import SHARED_DATA, require_shared
from tests.fake_openai import FakeOpenAI
from tests.stacks import registry_file

RECEIPTS = SHARED_DATA / "vision" / "softmatic_receipts_de"
BENCH = Path(__file__).parents[2] / "bench" / "vision_receipts.py"


def test_bench_scores_a_configured_vision_model(tmp_path, monkeypatch, capsys):
    require_shared(RECEIPTS / "labels.jsonl")
    first = json.loads((RECEIPTS / "labels.jsonl").read_text().splitlines()[0])
    spec = importlib.util.spec_from_file_location("vision_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vision_bench", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    label = bench.load_labels(RECEIPTS)[0]
    reply = json.dumps({"merchant": first["merchant"], "date": label.date_iso, "total": label.total})
    with FakeOpenAI(respond=lambda body: reply) as fake:
        monkeypatch.setenv("SWITCHBOARD_MODELS_FILE", str(registry_file(tmp_path, fake.url)))
        assert bench.main(["--model", "vision-server", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert len(fake.requests) == 2
    assert "Vision model vision-server" in out
    # the fake reads receipt 1's fields for both receipts: right once, wrong once (unless equal)
    second = bench.load_labels(RECEIPTS)[1]
    expected_total = 1 + (second.total == label.total)
    assert "total exact" in out and f"{expected_total / 2:.1%}" in out
