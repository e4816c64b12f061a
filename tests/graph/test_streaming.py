"""Switchboard.stream: one turn as events, tokens from the model calls themselves.

The scripted model writes word by word, 30 ms apart, and notes when it yielded each word, so a
test can tell a real stream (text before the model has finished) from a replay of a finished
answer."""

from __future__ import annotations

import asyncio
import time

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agents.streaming import PartStream
from graphs.support import SPECIALISTS, build_support_graph
from switchboard import lifecycle
from switchboard.api import Switchboard
from tests.stacks import LOCAL, scripted_services

GENERAL = "Hello there! I can help with orders, downloads and refunds. What do you need today?"


@pytest.fixture
def board(make_settings):
    services, fake = scripted_services(make_settings(), general=GENERAL)
    fake.token_delay_s = 0.03
    sb = Switchboard(build_support_graph(services, checkpointer=InMemorySaver()), services)
    sb.fake = fake
    return sb


async def test_a_one_part_answer_streams_before_the_model_has_finished(board):
    seen: list[tuple[float, lifecycle.Event]] = []
    async for event in board.stream("Hello there, how are you?", thread_id="s1"):
        seen.append((time.monotonic(), event))
    tokens = [(t, e) for t, e in seen if isinstance(e, lifecycle.Token)]
    assert len(tokens) > 5  # word by word, not one piece at the end
    assert tokens[0][0] < board.fake.token_times[-1]  # the first token came before the model's last
    answer = seen[-1][1]
    assert isinstance(answer, lifecycle.Answer)
    assert "".join(e.text for _, e in tokens) == answer.turn.answer == GENERAL
    kinds = [type(e).__name__ for _, e in seen]
    assert kinds.index("TriageDone") < kinds.index("PartStarted") < kinds.index("ModelCalled") \
        < kinds.index("Token") < kinds.index("PartFinished") < kinds.index("Answer")
    [called] = [e for _, e in seen if isinstance(e, lifecycle.ModelCalled)]
    assert (called.agent, called.model, called.tier, called.answer) == ("general", LOCAL, "light", True)
    assert answer.turn.answer_id and answer.turn.cost_usd == 0.0


async def test_ask_is_stream_collected(board):
    turn = await board.ask("How many customers do we have, and what is your refund policy?", thread_id="s2")
    streamed = [e async for e in board.stream("How many customers do we have, and what is your refund policy?",
                                              thread_id="s3")]
    final = streamed[-1]
    assert isinstance(final, lifecycle.Answer) and final.turn.answer == turn.answer
    texts: dict[str, str] = {}
    for e in streamed:
        if isinstance(e, lifecycle.PartRestarted):
            texts[e.subtask_id] = ""
        elif isinstance(e, lifecycle.Token):
            texts[e.subtask_id] = texts.get(e.subtask_id, "") + e.text
    subtasks = next(e.subtasks for e in streamed if isinstance(e, lifecycle.TriageDone))
    labels = {s.name: s.label for s in SPECIALISTS}
    assert lifecycle.layout(subtasks, texts, labels) == turn.answer  # the streamed parts make the answer
    sql = next(e for e in streamed if isinstance(e, lifecycle.ModelCalled) and e.agent == "sql")
    assert not sql.answer and sql.cached  # the same question: from the cache; SQL answers once its result is known
    fresh = [e async for e in board.stream("How many customers are in our records?", thread_id="s3b")]
    sql_tokens = [i for i, e in enumerate(fresh) if isinstance(e, lifecycle.Token) and e.agent == "sql"]
    finished = next(i for i, e in enumerate(fresh) if isinstance(e, lifecycle.PartFinished) and e.agent == "sql")
    assert sql_tokens == [finished - 1]  # one token, with the part's result: "We have 59 customers."
    assert fresh[finished - 1].text == fresh[finished].result["answer"]
    assert any(isinstance(e, lifecycle.StepToken) and e.agent == "sql" and "SELECT" in e.text for e in fresh)


async def test_without_progress_only_how_the_turn_ended_is_streamed(board):
    question = "How many customers do we have, and what is your refund policy?"
    quiet = [e async for e in board.stream(question, thread_id="q1", progress=False)]
    assert [type(e).__name__ for e in quiet] == ["Answer"]  # no triage, part, call or token events
    loud = [e async for e in board.stream(question, thread_id="q2")]
    assert any(isinstance(e, lifecycle.Token) for e in loud)
    assert quiet[0].turn.answer == loud[-1].turn.answer and len(quiet[0].turn.subtasks) == 2
    assert [r["ok"] for r in quiet[0].turn.results] == [True, True]
    turn = await board.ask("And how many invoices are there?", thread_id="q1")  # the quiet thread goes on
    assert turn.answer and turn.thread_id == "q1"


async def test_stopping_the_stream_cancels_the_model_call_and_the_next_message_works(board):
    events = board.stream("Hello there, how are you?", thread_id="s4")
    async for event in events:
        if isinstance(event, lifecycle.Token):
            break  # the user pressed stop mid-answer
    await events.aclose()
    written = len(board.fake.token_times)
    await asyncio.sleep(0.3)
    assert len(board.fake.token_times) == written < len(GENERAL.split())  # the model call was cancelled
    assert await board.unfinished("s4")
    closing = await board.stop("s4")
    assert "could not be answered: you stopped it" in closing
    assert not await board.unfinished("s4")
    turn = await board.ask("How many customers do we have?", thread_id="s4")
    assert "59" in turn.answer


async def test_a_fallback_mid_stream_restarts_the_part(monkeypatch):
    """The doors drop a part's text when another attempt starts: a failed model's half-answer
    never stays in what the user reads."""
    sent: list[dict] = []
    monkeypatch.setattr("agents.streaming.announce", sent.append)
    part = PartStream("t1", "general")
    await part.start("small")
    for word in ["Refunds ", "are ", "possi"]:
        await part.token(word)
    await part.start("fallback")  # the first model failed; the gateway starts the fallback
    for word in ["You ", "can ", "get ", "a ", "refund."]:
        await part.token(word)
    events = lifecycle.TurnEvents(frozenset({"general"}))
    out = [e for s in sent for e in events.feed("custom", s)]
    restarted = [i for i, e in enumerate(out) if isinstance(e, lifecycle.PartRestarted)]
    assert len(restarted) == 1
    after = "".join(e.text for e in out[restarted[0]:] if isinstance(e, lifecycle.Token))
    assert after == "You can get a refund"  # the end mark waits: a citation may go before it
    finished = events.finish_part({"subtask_id": "t1", "agent": "general", "answer": "You can get a refund."}, [])
    assert [type(e).__name__ for e in finished] == ["Token", "PartFinished"] and finished[0].text == "."


@pytest.mark.parametrize("pieces", [
    ["Refunds take ", "14 days", " [2", "]. You ", "can ask ", "support [1", "]. Thanks"],
    ["  Leading", " space.", "\nNew line", " and double  ", "space ", "[9] gone."],
])
async def test_what_a_part_sends_is_always_the_start_of_its_answer(monkeypatch, pieces):
    """Whatever the specialist's processing does to finished text (here: renumbering citations
    and dropping a marker that points at nothing, like the RAG specialist), the text sent so far
    is the beginning of the answer it returns."""
    import re

    def process(text: str) -> str:
        seen: dict[str, int] = {}

        def renumber(m: re.Match[str]) -> str:
            if int(m.group(1)) > 3:
                return ""
            return f"[{seen.setdefault(m.group(1), len(seen) + 1)}]"

        return re.sub(r"[ \t]{2,}", " ", re.sub(r"\[(\d+)\]", renumber, text)).strip()

    sent: list[dict] = []
    monkeypatch.setattr("agents.streaming.announce", sent.append)
    part = PartStream("t1", "rag", process)
    await part.start("m")
    so_far = ""
    for piece in pieces:
        await part.token(piece)
        so_far = "".join(e["text"] for e in sent)
    final = process("".join(pieces))
    assert final.startswith(so_far) and len(so_far) > len(final) // 2


async def test_a_lead_is_sent_before_the_model_writes_and_a_dropped_sentence_never_shows(monkeypatch):
    """RAG's quoted sentence goes out when the call starts; after it only whole processed sentences
    are sent, so a sentence the specialist drops (a decline after a lead) is never half-shown."""
    sent: list[dict] = []
    monkeypatch.setattr("agents.streaming.announce", sent.append)
    lead = "Refunds are possible within 14 days [1]."

    def process(text: str) -> str:
        kept = " ".join(s for s in text.strip().split(". ") if "could not find" not in s)
        return f"{lead}\n\n{kept}" if kept else lead

    part = PartStream("t1", "rag", process, lead=lead)
    await part.start("small")
    assert [s["text"] for s in sent] == [lead]  # before any token
    for word in ["I ", "could ", "not ", "find ", "it. ", "Ask ", "support."]:
        await part.token(word)
    shown = "".join(s["text"] for s in sent)
    assert "could not" not in shown and shown.startswith(lead)
    events = lifecycle.TurnEvents(frozenset({"rag"}))
    for s in sent:
        list(events.feed("custom", s))
    finished = events.finish_part({"subtask_id": "t1", "agent": "rag", "answer": process("I could not find it. Ask support.")}, [])
    assert "".join(e.text for e in finished if isinstance(e, lifecycle.Token)) == "\n\nAsk support."
