"""Trying a new model safely: A/B traffic share (sticky per conversation) and shadow mode
(background, recorded, never shown), then `switchboard compare` from the audit trail."""

from __future__ import annotations

import asyncio
import json

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.cli import main
from switchboard.services import Services
from tests.fakes import ScriptedChatModel, by_system_prompt
from tools.models.values import RegistryError, ab_bucket

GOOD_SQL = "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers."
ASK = "How many customers do we have?"


def registry_file(tmp_path, challengers: str) -> str:
    f = tmp_path / "models.yaml"
    f.write_text(f"""
models:
  champ:
    provider: fake
    model: champ
    version: champ-1
    tier: light
    price: {{input: 1.0, output: 2.0}}
    enabled: true
  rookie:
    provider: fake
    model: rookie
    version: rookie-7
    tier: light
    price: {{input: 0.5, output: 1.0}}
    enabled: true
policies:
  balanced: {{triage: light, sql: light, rag: light, vision: light, general: light}}
challengers:
{challengers}
""")
    return str(f)


def make_board(make_settings, tmp_path, challengers: str, rookie=GOOD_SQL):
    settings = make_settings(models_file=registry_file(tmp_path, challengers), cache_ttl_s=0)
    services = Services(settings)
    champ = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": GOOD_SQL}))
    new = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": rookie}) if isinstance(rookie, str) else rookie)
    services.registry.use_chat_model("champ", champ)
    services.registry.use_chat_model("rookie", new)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    return board, champ, new


async def test_ab_share_is_sticky_per_conversation_and_deterministic(make_settings, tmp_path):
    board, champ, rookie = make_board(make_settings, tmp_path, "  light: {model: rookie, mode: ab, share: 0.3}")
    threads = [f"conv-{i}" for i in range(30)]
    served = {}
    for t in threads:
        turn = await board.ask(ASK, thread_id=t)
        served[t] = turn.ledger[0]["model"]
        assert turn.answer == "We have 59 customers."
        assert turn.results[0]["evidence"]["tier"]["arm"] == ("challenger" if served[t] == "rookie" else "champion")
    assert served == {t: "rookie" if ab_bucket(t, "light") < 0.3 else "champ" for t in threads}
    assert 0 < sum(m == "rookie" for m in served.values()) < len(threads)
    for t in threads[:6]:  # the same conversation keeps its model
        turn = await board.ask(ASK, thread_id=t)
        assert turn.ledger[0]["model"] == served[t]


async def test_shadow_answers_a_copy_in_the_background_and_is_never_shown(make_settings, tmp_path):
    release = asyncio.Event()
    seen = []

    async def slow_rookie_gate(messages):
        await release.wait()

    def rookie(messages):
        seen.append(messages)
        return "SQL: SELECT 42\nANSWER: The rookie says {result}."

    board, champ, new = make_board(make_settings, tmp_path, "  light: {model: rookie, mode: shadow}", rookie=rookie)
    new.before_reply = slow_rookie_gate  # the shadow blocks until we release it
    turn = await board.ask(ASK, thread_id="sh")
    # the user's turn finished while the shadow was still waiting: it never delays the answer
    assert turn.answer == "We have 59 customers." and "rookie" not in turn.answer
    assert [e["model"] for e in turn.ledger] == ["champ"]
    assert not seen
    release.set()
    await board.services.registry.gateway.drain_shadows(timeout_s=10)
    assert len(seen) == 1 and seen[0] == champ.calls[0]  # the same messages, a copy of the subtask
    shadows = board.services.audit.calls(roles=["shadow"])
    [sh] = shadows
    assert sh["model"] == "rookie" and sh["shadow_of"] == turn.ledger[0]["call_id"]
    assert sh["thread_id"] == "sh" and "rookie says" in sh["answer"] and sh["tokens_out"] > 0
    assert sh["cost_usd"] > 0 and sh["error"] is None


async def test_a_failing_shadow_breaks_nothing_and_is_recorded(make_settings, tmp_path):
    def broken(messages):
        raise RuntimeError("challenger exploded")

    board, _, _ = make_board(make_settings, tmp_path, "  light: {model: rookie, mode: shadow}", rookie=broken)
    turn = await board.ask(ASK, thread_id="boom")
    assert turn.answer == "We have 59 customers."
    await board.services.registry.gateway.drain_shadows(timeout_s=10)
    [sh] = board.services.audit.calls(roles=["shadow"])
    assert "challenger exploded" in sh["error"]


async def test_compare_reports_both_models_side_by_side(make_settings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    board, _, _ = make_board(make_settings, tmp_path, "  light: {model: rookie, mode: shadow}")
    monkeypatch.setenv("SWITCHBOARD_MODELS_FILE", str(tmp_path / "models.yaml"))
    turns = [await board.ask(ASK, thread_id=f"cmp-{i}") for i in range(3)]
    await board.services.registry.gateway.drain_shadows(timeout_s=10)
    board.feedback(turns[0].answer_id, +1)
    board.feedback(turns[1].answer_id, -1)
    with pytest.raises(ValueError, match="must be"):
        board.feedback(turns[2].answer_id, 5)

    assert main(["compare", "champ", "rookie", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    a, b = report["champion"], report["challenger"]
    assert report["paired"] == 3
    assert (a["calls"], b["calls"], b["shadow_calls"]) == (3, 3, 3)
    assert (a["feedback_up"], a["feedback_down"]) == (1, 1)
    assert b["cost_usd"] < a["cost_usd"]  # rookie is priced at half
    assert a["escalation_rate"] == 0
    assert main(["compare", "champ", "rookie"]) == 0
    table = capsys.readouterr().out
    assert "champ" in table and "rookie" in table and "3 subtask(s) answered by both" in table


def test_challenger_config_is_checked(make_settings, tmp_path):
    settings = make_settings(models_file=registry_file(tmp_path, "  light: {model: nobody, mode: ab, share: 0.1}"))
    with pytest.raises(RegistryError, match="unknown model 'nobody'"):
        _ = Services(settings).registry
    settings = make_settings(models_file=registry_file(tmp_path, "  medium: {model: rookie, mode: shadow}"))
    with pytest.raises(RegistryError, match="not a tier"):
        _ = Services(settings).registry
