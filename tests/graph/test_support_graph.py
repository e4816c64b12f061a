"""The support graph's wiring and orchestration, with scripted fake models.

These tests are about where work goes and what each specialist is handed, not about model
output, so every model call is answered by a ScriptedChatModel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from tests.stacks import LOCAL, scripted_services

SNAPSHOT = Path(__file__).parent / "support_graph.mmd"


def test_graph_wiring_matches_the_committed_drawing(make_settings):
    graph = build_support_graph(Services(make_settings()))
    drawing = graph.get_graph().draw_mermaid()
    if os.environ.get("SWITCHBOARD_UPDATE_SNAPSHOT") == "1":  # a deliberate rewiring: rewrite, review, commit
        SNAPSHOT.write_text(drawing)
    assert SNAPSHOT.exists(), f"{SNAPSHOT} is missing: write it with SWITCHBOARD_UPDATE_SNAPSHOT=1 and commit it"
    assert drawing == SNAPSHOT.read_text(), \
        "graph wiring changed: rerun with SWITCHBOARD_UPDATE_SNAPSHOT=1, review tests/graph/support_graph.mmd, commit"
    for node in ("triage", "sql", "rag", "vision", "general", "synthesize"):
        assert node in drawing


@pytest.fixture
async def sb(make_settings):
    from langgraph.checkpoint.memory import InMemorySaver

    services, fake = scripted_services(make_settings())
    graph = build_support_graph(services=services, checkpointer=InMemorySaver())
    board = Switchboard(graph, services)
    board.fake = fake
    return board


async def test_two_part_turn_fans_out_and_answers_both(sb):
    turn = await sb.ask("How many customers do we have, and what is your refund policy?", thread_id="a")
    assert [s.agent for s in turn.subtasks] == ["sql", "rag"]
    assert "We have 59 customers." in turn.answer          # the number comes from the real database
    assert "14 days" in turn.answer and "Sources: [1]" in turn.answer
    assert turn.answer.index("59") < turn.answer.index("14 days")
    assert {r["agent"] for r in turn.results} == {"sql", "rag"}
    assert all(s.model == LOCAL for s in turn.subtasks)
    assert len(turn.ledger) == 2                            # one call per specialist, none for triage/synthesis


async def test_single_part_turn_spends_exactly_one_model_call(sb):
    turn = await sb.ask("How many customers do we have?", thread_id="b")
    assert turn.answer == "We have 59 customers."
    assert len(sb.fake.calls) == 1


async def test_follow_up_handoff_carries_summary_not_history(sb):
    await sb.ask("How many customers do we have?", thread_id="c")
    turn = await sb.ask("and how many of them are from Brazil?", thread_id="c")
    assert turn.answer == "5 of them are from Brazil."
    prompt = str(sb.fake.calls[-1][-1].content)
    assert "Conversation so far:" in prompt
    assert "User: How many customers do we have? | sql: We have 59 customers." in prompt
    assert "SQL: SELECT COUNT(*) FROM Customer" in prompt
    assert prompt.rstrip().endswith("Question: and how many of them are from Brazil?")


async def test_state_stays_bounded_over_a_long_conversation(make_settings):
    from langgraph.checkpoint.memory import InMemorySaver

    services, _ = scripted_services(make_settings(summary_max_chars=400))
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    for i in range(12):
        turn = await board.ask(f"Hello number {i}", thread_id="long")
    assert len(turn.summary) <= 400
    assert "Hello number 11" in turn.summary and "Hello number 0 " not in turn.summary


async def test_a_failing_specialist_does_not_lose_the_other_part(make_settings):
    from langgraph.checkpoint.memory import InMemorySaver

    def broken_sql(messages):
        raise ConnectionError("model server went away")

    services, _ = scripted_services(make_settings(), sql=broken_sql)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await board.ask("How many customers do we have, and what is your refund policy?", thread_id="f")
    by_agent = {r["agent"]: r for r in turn.results}
    assert by_agent["sql"]["ok"] is False and "connection failed" in by_agent["sql"]["error"]
    assert "could not answer this part" in turn.answer
    assert by_agent["rag"]["ok"] is True and "14 days" in turn.answer


async def test_unsafe_sql_is_refused_and_retried_with_the_reason(make_settings):
    from langgraph.checkpoint.memory import InMemorySaver

    replies = iter([
        "SQL: DELETE FROM Customer\nANSWER: done",
        "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers.",
    ])
    services, fake = scripted_services(make_settings(), sql=lambda m: next(replies))
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await board.ask("How many customers do we have?", thread_id="u")
    assert turn.answer == "We have 59 customers."
    attempts = turn.results[0]["evidence"]["attempts"]
    assert attempts[0]["sql"].startswith("DELETE") and attempts[0]["error"]
    assert "failed" in str(fake.calls[-1][-1].content)  # the refusal went back to the model


async def test_conversation_survives_a_process_restart(make_settings):
    settings = make_settings()
    services, _ = scripted_services(settings)
    from switchboard.persistence import open_checkpointer

    async with open_checkpointer(settings) as saver:
        await Switchboard(build_support_graph(services=services, checkpointer=saver), services).ask(
            "How many customers do we have?", thread_id="r"
        )
    # a brand-new Services/graph/checkpointer over the same SQLite file = a restarted process
    services2, fake2 = scripted_services(settings)
    async with open_checkpointer(settings) as saver:
        turn = await Switchboard(build_support_graph(services=services2, checkpointer=saver), services2).ask(
            "and how many of them are from Brazil?", thread_id="r"
        )
    assert turn.answer == "5 of them are from Brazil."
    assert "We have 59 customers." in str(fake2.calls[-1][-1].content)
    assert settings.checkpoint_sqlite_path.exists()


async def test_a_run_without_a_policy_uses_the_configured_default_not_another(make_settings):
    """One default: a run whose context names no policy gets ``Settings.routing_policy``."""
    from langgraph.checkpoint.memory import InMemorySaver

    from graphs.state import Context
    from graphs.support import turn_input

    services, _ = scripted_services(make_settings(routing_policy="cost-saver"))
    graph = build_support_graph(services, checkpointer=InMemorySaver())
    state = await graph.ainvoke(turn_input("Hello there!"), config={"configurable": {"thread_id": "p"}},
                                context=Context())
    assert state["turn_meta"]["policy"] == "cost-saver"
    assert all(e.get("model") == LOCAL for e in state["ledger"])
