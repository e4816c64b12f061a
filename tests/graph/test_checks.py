"""Checks before an answer leaves: validation against evidence (retry on heavy, or an honest
"could not verify"), and the triage ensemble vote, with scripted fake models."""

from __future__ import annotations

from langgraph.checkpoint.memory import InMemorySaver

from agents.validation import parse_verdict
from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from tests.fakes import ScriptedChatModel, by_system_prompt

SQL = "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers."
ASK = "How many customers do we have?"


def registry_file(tmp_path, heavy: bool) -> str:
    f = tmp_path / "models.yaml"
    body = """
models:
  small: {provider: fake, model: small, version: s1, tier: light, price: {input: 0.1, output: 0.2}, enabled: true}
  checker: {provider: fake, model: checker, version: c1, tier: light, price: {input: 0.1, output: 0.2}, enabled: true}
"""
    if heavy:
        body += "  big: {provider: fake, model: big, version: b1, tier: heavy, price: {input: 5, output: 15}, enabled: true}\n"
    body += "policies:\n  balanced: {triage: light, sql: light, rag: light, vision: light, general: light}\n"
    f.write_text(body)
    return str(f)


def board(make_settings, tmp_path, *, heavy: bool, verdicts, small_sql=SQL, **kw):
    settings = make_settings(models_file=registry_file(tmp_path, heavy), cache_ttl_s=0, validate_agents=["sql"],
                             validator_model="checker", **kw)
    services = Services(settings)
    verdict_iter = iter(verdicts)
    models = {
        "small": ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": small_sql})),
        "checker": ScriptedChatModel(respond=by_system_prompt({"You check a support answer": lambda m: next(verdict_iter)})),
    }
    if heavy:
        models["big"] = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": SQL}))
    for name, fake in models.items():
        services.registry.use_chat_model(name, fake)
    return Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services), models


async def test_a_passing_answer_is_recorded_as_validated(make_settings, tmp_path):
    sb, models = board(make_settings, tmp_path, heavy=False, verdicts=["PASS: the count matches the result."])
    turn = await sb.ask(ASK, thread_id="v1")
    assert turn.answer == "We have 59 customers."
    v = turn.results[0]["evidence"]["validation"]
    assert v["verdict"] == "pass" and v["validator"] == "checker" and v["against"] == "the database result"
    # the validator saw the SQL result rows, not just the sentence
    prompt = str(models["checker"].calls[0][-1].content)
    assert "SELECT COUNT(*) FROM Customer" in prompt and "59" in prompt and "We have 59 customers." in prompt
    assert [(e["model"], e["role"]) for e in turn.ledger] == [("small", "serve"), ("checker", "validate")]
    [rec] = sb.services.audit.turns(thread="v1")
    assert rec["subtasks"][0]["validation"]["verdict"] == "pass"


async def test_a_failed_check_retries_once_on_the_heavy_tier(make_settings, tmp_path):
    wrong = "SQL: SELECT COUNT(*) FROM Customer WHERE Country = 'Brazil'\nANSWER: We have {result} customers."
    sb, models = board(make_settings, tmp_path, heavy=True, small_sql=wrong,
                       verdicts=["FAIL: the query counts only Brazil.", "PASS: matches."])
    turn = await sb.ask(ASK, thread_id="v2")
    assert turn.answer == "We have 59 customers."
    ev = turn.results[0]["evidence"]
    assert ev["model"] == "big" and ev["tier"]["tier"] == "heavy"
    assert ev["validation"]["verdict"] == "pass" and ev["validation"]["retried_on_heavy"] is True
    assert ev["validation"]["first"]["reason"] == "the query counts only Brazil."
    assert ev["escalations"][-1]["reason"].startswith("validation failed")
    assert [e["model"] for e in turn.ledger] == ["small", "checker", "big", "checker"]
    # the heavy retry is typed as an escalation in the ledger, and the audit trail counts it
    assert [e["escalated"] for e in turn.ledger] == [False, False, True, False]
    [record] = sb.services.audit.turns(thread="v2")
    served = [c for c in sb.services.audit.calls() if c["turn_id"] == record["turn_id"] and c["model"] == "big"]
    assert [c["escalated"] for c in served] == [1]


async def test_without_a_heavy_tier_a_failed_check_is_said_honestly(make_settings, tmp_path):
    sb, models = board(make_settings, tmp_path, heavy=False, verdicts=["FAIL: the number is not in the result."])
    turn = await sb.ask(ASK, thread_id="v3")
    assert turn.answer.startswith("We have 59 customers.")
    assert "could not verify this against the database result" in turn.answer
    assert turn.results[0]["evidence"]["validation"]["verdict"] == "fail"


async def test_agents_not_configured_are_not_checked(make_settings, tmp_path):
    sb, models = board(make_settings, tmp_path, heavy=False, verdicts=[])
    turn = await sb.ask("Hello there, how are you today?", thread_id="v4")
    assert models["checker"].calls == []
    assert "validation" not in turn.results[0]["evidence"]


def test_verdict_parsing():
    assert parse_verdict("PASS: fine") == ("pass", "fine")
    assert parse_verdict("**FAIL** - wrong year") == ("fail", "wrong year")
    verdict, reason = parse_verdict("I think it is probably right")
    assert verdict == "fail" and "not PASS or FAIL" in reason


async def test_unsure_triage_is_decided_by_a_recorded_vote(make_settings, tmp_path):
    f = tmp_path / "models.yaml"
    f.write_text("""
models:
  a: {provider: fake, model: a, tier: light, enabled: true}
  b: {provider: fake, model: b, tier: light, enabled: true}
  c: {provider: fake, model: c, tier: light, enabled: true}
policies:
  balanced: {triage: light, sql: light, rag: light, vision: light, general: light}
""")
    services = Services(make_settings(models_file=f, cache_ttl_s=0, triage_voters=["a", "b", "c"],
                                      triage_threshold=0.999))  # every clause is "unsure"
    route_by = {"a": "sql", "b": "sql", "c": "rag"}
    for name, route in route_by.items():
        services.registry.use_chat_model(name, ScriptedChatModel(respond=by_system_prompt({
            "route one customer-support": route, "SQLite SELECT": SQL})))
    decision = await services.triage.decide("Could you look something up for me", has_image=False)
    [sub] = decision.subtasks
    assert sub.votes["a"] == "sql" and sub.votes["c"] == "rag" and "classifier" in sub.votes
    assert sub.route == "sql" and sub.llm_asked and "vote chose sql" in sub.reason
    assert [e.role for e in decision.ledger] == ["vote", "vote", "vote"] and decision.llm_calls == 3
