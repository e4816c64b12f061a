"""The audit trail: one decision record per turn, written by the graph, queried by `switchboard audit`."""

from __future__ import annotations

import csv
import io
import json

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.cli import main
from tests.stacks import LOCAL, scripted_services
from tools.observability.audit import answer_id_for, build_turn_record, parse_since

TWO_PART = "How many customers do we have, and what is your refund policy?"


@pytest.fixture
async def board(make_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))  # the CLI reads the same trail
    services, _ = scripted_services(make_settings(cache_ttl_s=0))
    return Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)


async def test_a_two_part_turn_writes_one_decision_record(board):
    turn = await board.ask(TWO_PART, thread_id="t1")
    [rec] = board.services.audit.turns(thread="t1")
    assert rec["turn_id"] == "t1:0" and rec["turn_index"] == 0 and rec["policy"] == "balanced"
    assert [s["agent"] for s in rec["subtasks"]] == ["sql", "rag"]
    for s in rec["subtasks"]:
        assert s["route"] and s["scores"] and s["reason"] and s["confidence"] > 0
        assert s["model"] == LOCAL and s["tier"]["tier"] == "light" and s["ok"] is True
    assert sorted(c["agent"] for c in rec["calls"]) == ["rag", "sql"]  # parallel parts: either order
    for c in rec["calls"]:
        assert c["model"] == LOCAL and c["model_version"].startswith("sha256:") and c["tokens_in"] > 0
        assert c["role"] == "serve" and c["call_id"]
    assert rec["llm_calls"] == 2 and rec["cache_hits"] == 0 and rec["errors"] == 0
    assert rec["tokens_in"] == sum(e["tokens_in"] for e in turn.ledger)
    # the answer's id is the id of the answer message in the conversation: what feedback refers to
    assert rec["answer_id"] == answer_id_for("t1", 0)
    state = await board.graph.aget_state({"configurable": {"thread_id": "t1"}})
    assert state.values["messages"][-1].id == rec["answer_id"]


async def test_turns_are_numbered_per_conversation_and_recorded_once(board):
    await board.ask("How many customers do we have?", thread_id="t2")
    await board.ask("Hello!", thread_id="t2")
    recs = board.services.audit.turns(thread="t2")
    assert [r["turn_id"] for r in recs] == ["t2:0", "t2:1"]
    # a resumed turn writes its record again: the trail keeps one
    state = (await board.graph.aget_state({"configurable": {"thread_id": "t2"}})).values
    again = build_turn_record(state, "t2", 1)
    assert board.services.audit.record_turn(again) is False
    assert len(board.services.audit.turns(thread="t2")) == 2


async def test_personal_data_typed_by_the_user_is_redacted_in_the_trail(board):
    turn = await board.ask("My email is jane.doe@example.com, what is your refund policy?", thread_id="pii")
    [rec] = board.services.audit.turns(thread="pii")
    blob = json.dumps(rec)
    assert "jane.doe@example.com" not in blob and "[email]" in rec["question"]
    assert turn.answer  # the user still got an answer


async def test_failed_subtask_and_escalation_counts(make_settings, tmp_path):
    def broken(messages):
        raise ConnectionError("model server went away")

    services, _ = scripted_services(make_settings(cache_ttl_s=0), sql=broken)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    await board.ask(TWO_PART, thread_id="f")
    [rec] = services.audit.turns(thread="f")
    assert rec["errors"] == 1
    sql = next(s for s in rec["subtasks"] if s["agent"] == "sql")
    assert sql["ok"] is False and "connection failed" in sql["error"]


async def test_audit_cli_filters_and_formats(board, capsys):
    await board.ask(TWO_PART, thread_id="c1")
    await board.ask("Hello!", thread_id="c2")

    assert main(["audit", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["thread_id"] for x in lines] == ["c1", "c2"]

    assert main(["audit", "--thread", "c2", "--json"]) == 0
    assert [json.loads(x)["thread_id"] for x in capsys.readouterr().out.splitlines()] == ["c2"]

    assert main(["audit", "--agent", "rag", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["thread_id"] for r in rows] == ["c1"] and rows[0]["agents"] == "sql+rag"

    assert main(["audit", "--model", "no-such-model"]) == 0
    assert "no turns recorded" in capsys.readouterr().out

    assert main(["audit", "--since", "1h"]) == 0
    table = capsys.readouterr().out
    assert "c1" in table and "c2" in table and "2 turn(s)" in table

    assert main(["audit", "--since", "yesterday-ish"]) == 2
    assert "--since" in capsys.readouterr().err


async def test_audit_summary_per_model_and_agent(board, capsys):
    await board.ask(TWO_PART, thread_id="s1")
    await board.ask("How many customers do we have?", thread_id="s2")
    summary = board.services.audit.summary()
    by_agent = {r["agent"]: r for r in summary["agent"]}
    assert by_agent["sql"]["calls"] == 2 and by_agent["rag"]["calls"] == 1
    [model] = summary["model"]
    assert model["model"] == LOCAL and model["calls"] == 3 and model["escalation_rate"] == 0
    # nearest rank over the three served calls' own latencies: p50 the 2nd of 3, p95 the 3rd
    live = sorted(c["latency_ms"] for c in board.services.audit.calls() if c["model"] == LOCAL and not c["cached"])
    assert len(live) == 3 and model["p50_ms"] == live[1] and model["p95_ms"] == live[2]
    assert main(["audit", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "per model" in out and "per agent" in out and LOCAL in out and "p95 ms" in out


def test_parse_since():
    now = 1_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("30m", now) == now - 1800
    assert parse_since("1970-01-02") == 86400
    with pytest.raises(ValueError, match="ISO date"):
        parse_since("soon")


def test_the_trail_works_on_postgresql(tmp_path):
    import os

    url = os.environ.get("SWITCHBOARD_PG_URL")
    if not url:
        pytest.skip("SWITCHBOARD_PG_URL is not set: eval \"$(scripts/postgres.sh)\"")
    from switchboard.services import Services
    from switchboard.settings import Settings
    from tools.observability.audit import audit_url

    settings = Settings(data_dir=tmp_path, checkpoint_url=url)
    assert audit_url(settings.checkpoint_url, settings.data_dir).startswith("postgresql+psycopg://")
    trail = Services(settings).audit
    thread = f"pg-{os.getpid()}-{tmp_path.name}"
    state = {"question": "hi", "subtasks": [], "results": [],
             "ledger": [{"agent": "general", "model": "m", "tokens_in": 3, "tokens_out": 2, "cost_usd": 0.1,
                         "latency_ms": 5, "cached": False, "note": ""}]}
    assert trail.record_turn(build_turn_record(state, thread, 0)) is True
    assert trail.record_turn(build_turn_record(state, thread, 0)) is False
    [rec] = trail.turns(thread=thread)
    assert rec["cost_usd"] == pytest.approx(0.1) and rec["calls"][0]["model"] == "m"


def test_percentile_is_nearest_rank_and_the_same_for_the_audit_and_the_benches():
    from bench.eval_common import percentile as bench_percentile
    from tools.observability.audit import percentile
    from tools.observability.stats import percentile as the_one

    assert percentile is the_one and bench_percentile is the_one
    assert percentile([10, 20], 50) == 10 and percentile([10, 20], 95) == 20
    assert percentile(list(range(1, 101)), 95) == 95
