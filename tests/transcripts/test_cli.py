"""The `switchboard` command: ask --json and route, replayed from the conversation cassettes."""

from __future__ import annotations

import json

from switchboard.cli import main
from tests.conftest import CASSETTES


def use_cassette(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SWITCHBOARD_RECORD_MODE", "replay")
    monkeypatch.setenv("SWITCHBOARD_CASSETTE_PATH", str(CASSETTES / f"test_conversations__{name}.yaml"))


def test_ask_json_prints_answer_thread_and_subtasks(monkeypatch, tmp_path, capsys):
    use_cassette(monkeypatch, tmp_path, "test_customers_from_brazil")
    assert main(["ask", "How many customers are from Brazil?", "--thread", "cli-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "5" in out["answer"] and out["thread_id"] == "cli-1"
    (sub,) = out["subtasks"]
    assert set(sub) == {"agent", "task", "model", "tokens_in", "tokens_out", "cost_usd", "latency_ms"}
    assert sub["agent"] == "sql" and sub["model"] == "local-qwen2.5-coder-1.5b"
    assert sub["tokens_in"] > 100 and sub["cost_usd"] == 0.0


def test_second_ask_on_the_same_thread_resolves_the_pronoun(monkeypatch, tmp_path, capsys):
    use_cassette(monkeypatch, tmp_path, "test_pronoun_is_resolved_from_context_after_a_restart")
    assert main(["ask", "How many customers do we have?", "--thread", "conv", "--json"]) == 0
    assert "59" in json.loads(capsys.readouterr().out)["answer"]
    assert main(["ask", "And how many of them are from Brazil?", "--thread", "conv", "--json"]) == 0
    assert "5" in json.loads(capsys.readouterr().out)["answer"]


def test_missing_image_is_a_clear_error(monkeypatch, tmp_path, capsys):
    use_cassette(monkeypatch, tmp_path, "test_customers_from_brazil")
    assert main(["ask", "What is this?", "--image", str(tmp_path / "nope.png")]) == 2
    assert "image file not found" in capsys.readouterr().err


def test_route_json_shows_subtasks_and_scores_without_running_specialists(monkeypatch, tmp_path, capsys):
    use_cassette(monkeypatch, tmp_path, "test_customers_from_brazil")
    assert main(["route", "How many customers are from Germany, and what are your support hours?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["agent"] for s in out["subtasks"]] == ["sql", "rag"]
    assert out["llm_calls"] == 0 and all(s["scores"] and s["reason"] for s in out["subtasks"])


def test_route_jsonl_prints_one_object_per_line_and_reports_bad_lines(monkeypatch, tmp_path, capsys):
    use_cassette(monkeypatch, tmp_path, "test_customers_from_brazil")
    f = tmp_path / "requests.jsonl"
    f.write_text('{"text": "What\'s your refund policy?", "image": false}\nnot json\n'
                 '{"text": "What is the total on this receipt?", "image": true}\n')
    assert main(["route", "--jsonl", str(f)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["line"] for x in lines] == [1, 2, 3]
    assert lines[0]["subtasks"][0]["agent"] == "rag"
    assert "bad line" in lines[1]["error"]
    assert lines[2]["subtasks"][0]["agent"] == "vision"
