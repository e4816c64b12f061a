"""A turn cut off part-way (here: its task cancelled mid-RAG, as a crash would cut it) is finished
before the next question on the same thread, so no question is silently dropped. The real
process kill is tests/integration/test_kill_and_resume.py."""

from __future__ import annotations

import asyncio

from langgraph.checkpoint.memory import InMemorySaver

from graphs import build_support_graph
from switchboard.api import Switchboard
from tests.graph.test_support_graph import scripted_services


async def test_asking_on_a_thread_with_an_unfinished_turn_finishes_it_first(make_settings):
    services, fake = scripted_services(make_settings(cache_ttl_s=0))
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    rag_started, crash = asyncio.Event(), {"on": True}

    async def gate(messages):
        if crash["on"] and "help-center passages" in str(messages[0].content):
            rag_started.set()
            await asyncio.Event().wait()  # never returns: the turn is cut off here

    fake.before_reply = gate
    turn = asyncio.create_task(board.ask("How many customers do we have, and what is your refund policy?",
                                         thread_id="cut"))
    await asyncio.wait_for(rag_started.wait(), 30)

    async def sql_checkpointed():  # the SQL branch finished and its result is saved
        while True:
            snap = await board.graph.aget_state({"configurable": {"thread_id": "cut"}})
            if any(t.name == "sql" and t.result is not None for t in snap.tasks):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(sql_checkpointed(), 30)
    turn.cancel()
    await asyncio.gather(turn, return_exceptions=True)
    assert await board.unfinished("cut")
    assert board.services.audit.turns(thread="cut") == []
    sql_calls = sum("SQLite SELECT" in str(c[0].content) for c in fake.calls)

    crash["on"] = False
    new = await board.ask("Hello!", thread_id="cut")
    assert new.answer == "Hello! How can I help?"
    assert sum("SQLite SELECT" in str(c[0].content) for c in fake.calls) == sql_calls  # SQL not re-run
    state = (await board.graph.aget_state({"configurable": {"thread_id": "cut"}})).values
    texts = [str(m.content) for m in state["messages"]]
    assert texts[0].startswith("How many customers") and "We have 59 customers." in texts[1]
    assert "14 days" in texts[1] and texts[2:] == ["Hello!", "Hello! How can I help?"]
    assert [t["turn_id"] for t in board.services.audit.turns(thread="cut")] == ["cut:0", "cut:1"]
