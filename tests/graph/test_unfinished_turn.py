"""A turn cut off part-way (here: its task cancelled mid-RAG, as a crash would cut it) is finished
before the next question on the same thread, so no question is silently dropped. The real
process kill is tests/integration/test_kill_and_resume.py."""

from __future__ import annotations

import asyncio
import threading

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import RecoveryGuard, RetryFailed, Switchboard
from tests.stacks import scripted_services


async def test_asking_on_a_thread_with_an_unfinished_turn_finishes_it_first(make_settings):
    board, _, fake = await cut_off_turn(make_settings, "cut")
    assert board.services.audit.turns(thread="cut") == []
    sql_calls = sum("SQLite SELECT" in str(c[0].content) for c in fake.calls)

    new = await board.ask("Hello!", thread_id="cut")
    assert new.answer == "Hello! How can I help?"
    assert sum("SQLite SELECT" in str(c[0].content) for c in fake.calls) == sql_calls  # SQL not re-run
    state = (await board.graph.aget_state({"configurable": {"thread_id": "cut"}})).values
    texts = [str(m.content) for m in state["messages"]]
    assert texts[0].startswith("How many customers") and "We have 59 customers." in texts[1]
    assert "14 days" in texts[1] and texts[2:] == ["Hello!", "Hello! How can I help?"]
    assert [t["turn_id"] for t in board.services.audit.turns(thread="cut")] == ["cut:0", "cut:1"]


async def cut_off_turn(make_settings, thread: str):
    """A two-part turn cut off mid-RAG (its task cancelled, as a crash would cut it) after its SQL
    part was checkpointed. Returns the board, the thread's config and the scripted model."""
    services, fake = scripted_services(make_settings(cache_ttl_s=0))
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    rag_started, crash = asyncio.Event(), {"on": True}

    async def gate(messages):
        if crash["on"] and "help-center passages" in str(messages[0].content):
            rag_started.set()
            await asyncio.Event().wait()

    fake.before_reply = gate
    turn = asyncio.create_task(board.ask("How many customers do we have, and what is your refund policy?",
                                         thread_id=thread))
    await asyncio.wait_for(rag_started.wait(), 30)
    config = {"configurable": {"thread_id": thread}}
    while not any(t.name == "sql" and t.result is not None for t in (await board.graph.aget_state(config)).tasks):
        await asyncio.sleep(0.01)
    turn.cancel()
    await asyncio.gather(turn, return_exceptions=True)
    crash["on"] = False
    assert await board.unfinished(thread)
    return board, config, fake


async def test_a_cut_off_turn_that_fails_again_is_closed_as_failed_keeping_what_finished(make_settings,
                                                                                          monkeypatch):
    board, config, _ = await cut_off_turn(make_settings, "again")

    real_run = board._run

    async def retry_fails(graph_input, *args, **kwargs):  # the retry of the cut-off turn crashes again
        if graph_input is None:
            raise RuntimeError("the same crash")
        async for event in real_run(graph_input, *args, **kwargs):
            yield event

    monkeypatch.setattr(board, "_run", retry_fails)
    new = await board.ask("Hello!", thread_id="again")
    assert new.answer == "Hello! How can I help?"  # the next question is answered
    assert not await board.unfinished("again")
    texts = [str(m.content) for m in (await board.graph.aget_state(config)).values["messages"]]
    assert "could not be answered: it failed again when it was retried (RuntimeError)" in texts[1]
    assert "We have 59 customers." in texts[1]  # what the finished SQL part found is kept
    assert texts[2:] == ["Hello!", "Hello! How can I help?"]
    records = board.services.audit.turns(thread="again")
    assert [t["turn_id"] for t in records] == ["again:0", "again:1"]


async def test_a_cut_off_turn_is_not_retried_after_it_stopped_the_process_twice(make_settings, monkeypatch):
    board, config, _ = await cut_off_turn(make_settings, "twice")
    checkpoint = (await board.graph.aget_state(config)).config["configurable"]["checkpoint_id"]
    for _ in range(2):  # two retries that each died with the process (counted before they ran)
        board.services.audit.count_recovery_attempt("twice", checkpoint)

    real_run = board._run

    async def must_not_retry(graph_input, *args, **kwargs):
        assert graph_input is not None, "retried a third time"
        async for event in real_run(graph_input, *args, **kwargs):
            yield event

    monkeypatch.setattr(board, "_run", must_not_retry)
    new = await board.ask("Hello!", thread_id="twice")
    assert new.answer == "Hello! How can I help?"
    texts = [str(m.content) for m in (await board.graph.aget_state(config)).values["messages"]]
    assert "it stopped part-way again when it was retried" in texts[1] and "We have 59 customers." in texts[1]
    assert not await board.unfinished("twice")


async def test_a_door_that_showed_the_failure_closes_the_turn_through_the_same_guard(make_settings):
    """The chat UI finishes a cut-off turn its own way (streaming) and raises RetryFailed when that
    fails, having shown why: the shared guard closes the turn without naming an exception, and a
    guard that has already given up does not run the door's retry at all."""
    board, config, _ = await cut_off_turn(make_settings, "door")
    guard = RecoveryGuard(board.graph, board.services)
    runs = []

    async def door_retry() -> None:
        runs.append(1)
        raise RetryFailed("shown in the chat already")

    result, closed = await guard.finish(await board.graph.aget_state(config), "door", door_retry)
    assert result is None and runs == [1]
    assert closed.endswith("could not be answered: it failed again when it was retried.\n\n"
                           "What was found before it stopped:\n\nWe have 59 customers.")
    assert not await board.unfinished("door")

    board2, config2, _ = await cut_off_turn(make_settings, "door2")
    snapshot = await board2.graph.aget_state(config2)
    checkpoint = snapshot.config["configurable"]["checkpoint_id"]
    for _ in range(2):
        board2.services.audit.count_recovery_attempt("door2", checkpoint)
    result, closed = await RecoveryGuard(board2.graph, board2.services).finish(snapshot, "door2", door_retry)
    assert runs == [1] and "stopped part-way again" in closed


class DiesBeforeSynthesize(InMemorySaver):
    """A checkpointer in a process that dies right after a specialist finished: that node's writes
    are saved (pending writes), the checkpoint that schedules ``synthesize`` is not. Found by the
    cluster test (tests/integration/test_cluster.py), where a replica was killed in that window.
    LangGraph saves checkpoints in the background while the next step runs, so the test also holds
    ``synthesize`` back (its audit write waits) until the failed save has ended the run."""

    armed = True

    async def aput(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001 - LangGraph's signature
        if self.armed and "branch:to:synthesize" in checkpoint["channel_versions"]:
            self.armed = False
            raise ConnectionError("the process is gone")
        return await super().aput(config, checkpoint, metadata, new_versions)


async def test_a_turn_cut_off_after_a_step_finished_is_not_taken_for_done(make_settings, monkeypatch):
    services, _ = scripted_services(make_settings(cache_ttl_s=0))
    saver = DiesBeforeSynthesize()
    board = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
    record_turn, released = services.audit.record_turn, threading.Event()

    def held_back(record):  # noqa: ANN001
        if saver.armed or not released.is_set():
            released.wait(2)  # LangGraph lets a running node end before the failed save ends the run
            raise RuntimeError("never written: the process was gone")
        return record_turn(record)

    monkeypatch.setattr(services.audit, "record_turn", held_back)
    with pytest.raises(ConnectionError):
        await board.ask("How many customers do we have?", thread_id="late")
    released.set()
    head = await board.graph.aget_state({"configurable": {"thread_id": "late"}})
    assert not saver.armed and head.next == () and head.tasks  # looks answered, but synthesize never ran
    assert board.services.audit.turns(thread="late") == []
    assert await board.unfinished("late")

    new = await board.ask("Hello!", thread_id="late")
    assert new.answer == "Hello! How can I help?"
    state = await board.graph.aget_state({"configurable": {"thread_id": "late"}})
    texts = [str(m.content) for m in state.values["messages"]]
    assert texts == ["How many customers do we have?", "We have 59 customers.", "Hello!", "Hello! How can I help?"]
    assert [t["turn_id"] for t in board.services.audit.turns(thread="late")] == ["late:0", "late:1"]


async def test_a_turn_an_earlier_graph_left_with_nothing_scheduled_is_finished_first(make_settings):
    """Upgrading over a conversation a crash cut off before a step that no longer exists (``join``,
    ``remember``): the checkpoint schedules nothing this graph has, yet its turn never got an
    answer. The next message finishes it first, as any cut-off turn; nothing is dropped."""
    from langgraph.constants import END

    services, _ = scripted_services(make_settings(cache_ttl_s=0))
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    config = {"configurable": {"thread_id": "old"}}
    async for _ in board.graph.astream({"question": "How many customers do we have?", "image_path": None,
                                        "messages": []}, config, interrupt_after=["sql"]):
        pass
    await board.graph.aupdate_state(config, None, as_node=END)  # what an unknown node's schedule comes to
    head = await board.graph.aget_state(config)
    assert head.next == () and not head.tasks and head.values["results"] and "answer" not in head.values
    assert await board.unfinished("old")

    new = await board.ask("Hello!", thread_id="old")
    assert new.answer == "Hello! How can I help?"
    state = (await board.graph.aget_state(config)).values
    assert [t["question"] for t in state["turns"]] == ["How many customers do we have?", "Hello!"]
    assert state["turns"][0]["answer"] == "We have 59 customers."
    assert [t["turn_id"] for t in board.services.audit.turns(thread="old")] == ["old:0", "old:1"]
    assert not await board.unfinished("old")
