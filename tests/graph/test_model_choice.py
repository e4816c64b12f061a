"""Per-subtask model choice: the tier router behind ``auto`` policy rules, and the SQL cascade
(light first, heavy when the light model's query fails), with scripted fake models."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from tests.fakes import ScriptedChatModel, by_system_prompt

TWO_TIERS = """
models:
  small:
    provider: fake
    model: small
    version: small-1
    tier: light
    price: {input: 0.1, output: 0.2}
    enabled: true
  big:
    provider: fake
    model: big
    version: big-1
    tier: heavy
    price: {input: 5.0, output: 15.0}
    enabled: true
policies:
  cost-saver:   {triage: light, sql: light, rag: light, vision: light, general: light}
  balanced:     {triage: light, sql: auto, rag: auto, vision: auto, general: auto}
  best-quality: {triage: light, sql: heavy, rag: heavy, vision: heavy, general: heavy}
"""

GOOD_SQL = "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers."
EASY = "How many customers do we have?"


def two_tier_settings(make_settings, tmp_path: Path, **kw):
    f = tmp_path / "models.yaml"
    f.write_text(TWO_TIERS)
    return make_settings(models_file=f, cache_ttl_s=0, **kw)


def board_with(settings, small_sql, big_sql) -> tuple[Switchboard, ScriptedChatModel, ScriptedChatModel]:
    services = Services(settings)
    small = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": small_sql}))
    big = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": big_sql}))
    services.registry.use_chat_model("small", small)
    services.registry.use_chat_model("big", big)
    return Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services), small, big


# --- the tier router ------------------------------------------------------------------------------

def test_auto_rule_asks_the_tier_router_with_the_policy_threshold(make_settings, tmp_path):
    reg = Services(two_tier_settings(make_settings, tmp_path)).registry
    hard = ("Prove that there are infinitely many primes and derive the asymptotic density "
            "using the prime number theorem")
    d_easy, d_hard = reg.decide_tier("general", "balanced", "hello"), reg.decide_tier("general", "balanced", hard)
    assert d_hard.score > d_easy.score
    assert (d_easy.tier, d_hard.tier) == ("light", "heavy")
    assert d_hard.threshold == pytest.approx(reg.tier_router.threshold_for("balanced"), abs=1e-4)
    assert "tier router" in d_hard.reason and "balanced" in d_hard.reason
    reg.use_chat_model("big", ScriptedChatModel(respond=lambda m: "ok"))
    handle, decision = reg.route("general", "balanced", task=hard)
    assert (handle.spec.name, decision.tier) == ("big", "heavy")


def test_policies_order_the_heavy_share(make_settings, tmp_path):
    """The same subtasks: cost-saver never sends more to heavy than balanced, nor balanced than
    best-quality (thresholds are monotone)."""
    reg = Services(two_tier_settings(make_settings, tmp_path)).registry
    router = reg.tier_router
    assert router.threshold_for("cost-saver") >= router.threshold_for("balanced") >= router.threshold_for("best-quality")


def test_fixed_rules_and_a_missing_heavy_model_skip_the_router(make_settings, tmp_path):
    reg = Services(two_tier_settings(make_settings, tmp_path)).registry
    assert reg.decide_tier("sql", "best-quality", EASY).tier == "heavy"
    assert reg.decide_tier("sql", "cost-saver", "prove the Riemann hypothesis").tier == "light"
    assert "tier_router" not in reg.__dict__  # fixed rules never load the router

    local_only = Services(make_settings()).registry  # the offline default: one model
    decision = local_only.decide_tier("general", "best-quality", "prove the Riemann hypothesis")
    assert decision.tier == "light" and "no distinct heavy model" in decision.reason
    assert "tier_router" not in local_only.__dict__


# --- the SQL cascade ------------------------------------------------------------------------------

async def test_failed_light_query_escalates_to_heavy_with_the_reason_logged(make_settings, tmp_path, caplog):
    settings = two_tier_settings(make_settings, tmp_path, routing_policy="cost-saver")
    board, small, big = board_with(
        settings, "SQL: SELECT COUNT(*) FROM Customers\nANSWER: We have {result} customers.", GOOD_SQL
    )
    with caplog.at_level(logging.INFO, logger="switchboard.agents.sql"):
        turn = await board.ask(EASY, thread_id="esc")
    assert turn.answer == "We have 59 customers."
    ev = turn.results[0]["evidence"]
    assert ev["tier"]["tier"] == "light"
    [esc] = ev["escalations"]
    assert (esc["from"], esc["to"]) == ("small", "big") and "Customers" in esc["reason"]
    assert [a["model"] for a in ev["attempts"]] == ["small", "big"]
    assert (len(small.calls), len(big.calls)) == (1, 1)
    assert [e["model"] for e in turn.ledger] == ["small", "big"]
    assert turn.ledger[1]["note"].startswith("escalated from small:")
    assert turn.ledger[0]["note"] == ""
    assert "escalating from small to big" in caplog.text
    # the heavy model gave a second opinion from the CREATE TABLE view of the schema
    assert "CREATE TABLE Customer (" in str(big.calls[0][0].content)
    assert [a["view"] for a in ev["attempts"]] == ["schema", "create-table"]
    assert "Customers" in ev["attempts"][0]["error"]


async def test_good_light_query_never_reaches_heavy(make_settings, tmp_path):
    board, small, big = board_with(two_tier_settings(make_settings, tmp_path, routing_policy="cost-saver"),
                                   GOOD_SQL, GOOD_SQL)
    turn = await board.ask(EASY, thread_id="ok")
    assert turn.answer == "We have 59 customers."
    assert (len(small.calls), len(big.calls)) == (1, 0)
    assert "escalations" not in turn.results[0]["evidence"]


async def test_a_refused_write_is_not_escalated(make_settings, tmp_path):
    """A query that would change data is the user's request, not the model's weakness: paying
    for the heavy model would not make it answerable."""
    replies = iter(["SQL: DELETE FROM Customer\nANSWER: done", "SQL: NONE\nANSWER: I can only read data."])
    board, small, big = board_with(two_tier_settings(make_settings, tmp_path, routing_policy="cost-saver"),
                                   lambda m: next(replies), GOOD_SQL)
    turn = await board.ask("Delete all customers from Brazil", thread_id="w")
    assert len(big.calls) == 0
    assert "only look data up" in turn.answer


async def test_without_a_heavy_model_the_light_one_retries(make_settings):
    services = Services(make_settings(cache_ttl_s=0))
    replies = iter(["SQL: SELECT COUNT(*) FROM Customers\nANSWER: x {result}", GOOD_SQL])
    fake = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": lambda m: next(replies)}))
    services.registry.use_chat_model("local-qwen2.5-coder-1.5b", fake)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await board.ask(EASY, thread_id="one")
    assert turn.answer == "We have 59 customers."
    assert len(fake.calls) == 2
    assert "escalations" not in turn.results[0]["evidence"]


async def test_a_hard_subtask_gets_the_heavy_tier_inside_a_turn(make_settings, tmp_path):
    """A hard open question gets the heavy model inside a real turn, and the result says why."""
    services = Services(two_tier_settings(make_settings, tmp_path, routing_policy="balanced"))
    rules = {"SQLite SELECT": GOOD_SQL, "support assistant of Chinook": "An answer."}
    small, big = ScriptedChatModel(respond=by_system_prompt(rules)), ScriptedChatModel(respond=by_system_prompt(rules))
    services.registry.use_chat_model("small", small)
    services.registry.use_chat_model("big", big)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await board.ask("Explain step by step why the halting problem is undecidable and what that implies "
                           "for program verification", thread_id="hard")
    [result] = turn.results
    assert result["agent"] == "general"
    assert result["evidence"]["tier"]["tier"] == "heavy" and result["evidence"]["model"] == "big"
    assert [e["model"] for e in turn.ledger if e["agent"] == "general"] == ["big"]
