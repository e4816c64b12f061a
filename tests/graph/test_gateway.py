"""Provider faults, fallbacks, the circuit breaker, budgets and the cache, driven through the real
OpenAI client code against a loopback fake of the API that injects faults (no turn is lost)."""

from __future__ import annotations

import logging

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from tests.fake_openai import FakeOpenAI, Fault
from tests.stacks import models_file
from tools.models.gateway import AllModelsFailed, BudgetExceeded, call_model
from tools.models.registry import ModelRegistry


@pytest.fixture
def servers():
    faults: dict[str, list] = {"primary": [], "backup": []}

    def responder(name):
        def respond(body):
            queue = faults[name]
            return queue.pop(0) if queue else f"answer from {name}"
        return respond

    with FakeOpenAI(respond=responder("primary")) as p, FakeOpenAI(respond=responder("backup")) as b:
        yield p, b, faults


def registry(make_settings, tmp_path, p, b, **kw) -> ModelRegistry:
    settings = make_settings(models_file=models_file(tmp_path, p.url, b.url), model_max_retries=0,
                             model_timeout_s=1.0, **kw)
    return Services(settings).registry


async def ask(reg, text="hello", agent="general", max_tokens=256):
    return await call_model(reg.handle("primary", role=agent), [HumanMessage(text)], agent=agent, task=text,
                            max_tokens=max_tokens)


@pytest.mark.parametrize("fault, reason", [
    (Fault(status=429), "rate limited (429)"),
    (Fault(status=500), "server error (500)"),
    (Fault(status=503), "server error (503)"),
    (Fault(status=200, body="this is not json"), "malformed response"),
    (Fault(delay_s=2.5), "timeout"),
])
async def test_fault_falls_back_and_is_logged_in_the_ledger(make_settings, tmp_path, servers, fault, reason):
    p, b, faults = servers
    faults["primary"].append(fault)
    reg = registry(make_settings, tmp_path, p, b)
    msg, entry = await ask(reg)
    assert msg.content.strip() == "answer from backup"
    assert entry.model == "backup" and f"primary: {reason}" in entry.note
    assert entry.fallback and not entry.escalated  # typed, for the audit trail's fallback rate
    assert entry.cost_usd == pytest.approx((100 * 0.1 + 3 * 0.2) / 1e6)  # priced as the model that answered


async def test_client_retries_with_backoff_before_falling_back(make_settings, tmp_path, servers):
    p, b, faults = servers
    faults["primary"].append(Fault(status=429))
    reg = Services(
        make_settings(models_file=models_file(tmp_path, p.url, b.url), model_max_retries=1)
    ).registry
    msg, entry = await ask(reg)
    assert msg.content.strip() == "answer from primary" and entry.note == ""
    assert len(p.requests) == 2 and b.requests == []


async def test_circuit_opens_after_repeated_failures_then_skips_the_provider(make_settings, tmp_path, servers):
    p, b, faults = servers
    faults["primary"].extend([Fault(status=500)] * 3)
    reg = registry(make_settings, tmp_path, p, b, breaker_failures=3, breaker_cooldown_s=60, cache_ttl_s=0)
    for i in range(3):
        await ask(reg, f"q{i}")
    assert len(p.requests) == 3
    msg, entry = await ask(reg, "q-after")
    assert len(p.requests) == 3  # primary not called while cooling down
    assert "primary: cooling down" in entry.note and entry.model == "backup"


async def test_all_models_failing_is_a_clear_error(make_settings, tmp_path, servers):
    p, b, faults = servers
    faults["primary"].append(Fault(status=500))
    faults["backup"].append(Fault(status=502))
    reg = registry(make_settings, tmp_path, p, b)
    with pytest.raises(AllModelsFailed, match=r"primary: server error \(500\); backup: server error \(502\)"):
        await ask(reg)


async def test_identical_request_is_served_from_the_cache(make_settings, tmp_path, servers):
    p, b, _ = servers
    reg = registry(make_settings, tmp_path, p, b)
    _, first = await ask(reg, "same question")
    msg, second = await ask(reg, "same question")
    assert len(p.requests) == 1
    assert second.cached and second.cost_usd == 0 and msg.content.strip() == "answer from primary"
    assert not first.cached and first.cost_usd > 0


async def test_a_cached_answer_is_served_even_when_the_budget_is_spent(make_settings, tmp_path, servers):
    """A cached answer costs nothing: the budget check (and a cost review) come after the cache."""
    p, b, _ = servers
    data = tmp_path / "shared-data"
    _, first = await ask(registry(make_settings, tmp_path, p, b, data_dir=data), "cached question")
    spent = registry(make_settings, tmp_path, p, b, data_dir=data, budget_day_usd=0.0000001)
    msg, again = await ask(spent, "cached question")
    assert again.cached and again.cost_usd == 0 and msg.content.strip() == "answer from primary"
    assert len(p.requests) == 1
    with pytest.raises(BudgetExceeded):  # anything not cached is still refused
        await ask(spent, "a new question")


async def test_budget_alerts_at_80_percent_moves_heavy_to_light_then_refuses(make_settings, tmp_path, servers, caplog):
    p, b, _ = servers
    # each heavy call really costs $0.00109 (the fake reports 100 prompt + 3 output tokens)
    reg = registry(make_settings, tmp_path, p, b, budget_day_usd=0.0034, cache_ttl_s=0)
    caplog.set_level(logging.WARNING, logger="switchboard.gateway")
    models = [(await ask(reg, f"q{i}", max_tokens=4))[1] for i in range(4)]
    assert [e.model for e in models] == ["primary", "primary", "primary", "backup"]
    assert "budget: primary -> backup" in models[3].note
    alerts = [r.message for r in caplog.records if "budget alert" in r.message]
    assert len(alerts) == 1 and "daily spending" in alerts[0]
    reg2 = registry(make_settings, tmp_path, p, b, budget_day_usd=0.0000001, cache_ttl_s=0,
                    data_dir=tmp_path / "other")
    with pytest.raises(BudgetExceeded, match="daily budget of \\$0.00 would be exceeded"):
        await ask(reg2, "too expensive")


async def test_conversation_budget_refusal_reaches_the_user_clearly(make_settings, tmp_path, servers):
    p, b, _ = servers
    settings = make_settings(models_file=models_file(tmp_path, p.url, b.url), budget_conversation_usd=0.0000001)
    services = Services(settings)
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await sb.ask("Hello there, how are you?", thread_id="broke")
    assert "conversation budget" in turn.answer and "would be exceeded" in turn.answer
    assert p.requests == [] and b.requests == []


async def test_a_turn_survives_a_provider_outage(make_settings, tmp_path, servers):
    p, b, faults = servers
    faults["primary"].extend([Fault(status=503)] * 5)
    settings = make_settings(models_file=models_file(tmp_path, p.url, b.url), model_max_retries=0)
    services = Services(settings)
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await sb.ask("Hello there, how are you?", thread_id="outage")
    assert turn.answer.strip() == "answer from backup"
    assert "primary: server error (503)" in turn.ledger[-1]["note"]
