"""The HTTP door streams for real: ``stream: true`` sends the answer while the model writes it, and
a client that goes away stops the turn.

The server is the real app under uvicorn in a thread of this process, so the scripted model's
``token_times`` (``time.monotonic()`` of each word it yields) and the client's receive times are on
the same clock: a delta received before the model's last word can only come from a real stream,
not from a finished answer replayed in pieces.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from switchboard.api import Switchboard
from switchboard.server import create_app
from switchboard.settings import Settings
from tests.fakes import ScriptedChatModel
from tests.stacks import KEY, REGISTRY, scripted_board, serve_in_thread, user

# the general specialist's answer: 40 words, written one word per ``token_delay_s``
GENERAL = ("Hello there! I am the Chinook support assistant and I can help with orders, downloads, invoices "
           "and refunds. Tell me what you bought and when, and I will look it up for you. Music is "
           "waiting, so let us sort this out together quickly and politely today.")
WORDS = len(GENERAL.split())
HELLO = "Hello there, how are you?"
TWO_PART = "How many customers do we have, and hello, who are you?"


@dataclass
class Stack:
    url: str
    board: Switchboard
    fake: ScriptedChatModel

    def headers(self, conversation: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": conversation}

    def thread(self, conversation: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/v1/threads/{conversation}", headers=self.headers(conversation), timeout=60)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("http-streaming")
    registry = root / "models.yaml"
    registry.write_text(REGISTRY)
    # no response cache: every turn calls the (slow) model, so each stream is a real model call
    settings = Settings(data_dir=root / "data", models_file=registry, cache_ttl_s=0)
    board, fake, _ = scripted_board(settings, general=GENERAL)
    with serve_in_thread(create_app(settings, board, api_keys=[KEY])) as url:
        yield Stack(url, board, fake)


@pytest.fixture
def stack(served: Stack) -> Stack:
    served.fake.calls.clear()
    served.fake.token_times.clear()
    served.fake.token_delay_s = 0.05
    return served


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def streamed(client: openai.OpenAI, question: str, conversation: str) -> list[tuple[float, str]]:
    """The content deltas of a streamed turn, each with when the client received it."""
    stream = client.chat.completions.create(model="switchboard", messages=user(question), stream=True,
                                            extra_headers={"X-Conversation-Id": conversation})
    deltas = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append((time.monotonic(), chunk.choices[0].delta.content))
    return deltas


def answered(client: openai.OpenAI, question: str, conversation: str) -> str:
    completion = client.chat.completions.create(model="switchboard", messages=user(question),
                                                extra_headers={"X-Conversation-Id": conversation})
    return completion.choices[0].message.content or ""


def test_a_one_part_answer_arrives_while_the_model_is_still_writing(stack: Stack, client: openai.OpenAI) -> None:
    whole = answered(client, HELLO, "plain-1")
    assert whole == GENERAL
    stack.fake.token_times.clear()
    deltas = streamed(client, HELLO, "streamed-1")
    assert len(stack.fake.token_times) == WORDS  # this turn's model call, word by word
    first_received = deltas[0][0]
    assert first_received < stack.fake.token_times[-1]  # text reached the client before the model's last word
    assert sum(1 for t, _ in deltas if t < stack.fake.token_times[-1]) > 1  # and not only the first piece
    assert len(deltas) > WORDS // 2  # word by word, not one piece at the end
    assert "".join(d for _, d in deltas) == whole


def test_a_two_part_answer_streams_to_the_non_streamed_answer(stack: Stack, client: openai.OpenAI) -> None:
    whole = answered(client, TWO_PART, "plain-2")
    assert "We have 59 customers." in whole and GENERAL in whole  # both parts, laid out with their labels
    stack.fake.token_times.clear()
    deltas = streamed(client, TWO_PART, "streamed-2")
    # several parts stream part by part (server.py, lifecycle.TextStream): each once it and the parts
    # asked before it are done, so the SQL part is sent while the general part's model still writes
    assert [d for _, d in deltas][0] == "**How many customers do we have?**\nWe have 59 customers."
    assert deltas[0][0] < stack.fake.token_times[-1]
    assert "".join(d for _, d in deltas) == whole


def test_a_client_that_goes_away_stops_the_turn(stack: Stack, client: openai.OpenAI) -> None:
    stack.fake.token_delay_s = 0.2  # the full answer would take WORDS * 0.2 s
    conversation = "gone-1"
    body = {"model": "switchboard", "stream": True, "messages": user(HELLO)}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=stack.headers(conversation),
                      timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break  # the first words arrived: the user closes the tab
    # leaving the block closed the connection: the server cancels the turn and closes it
    deadline = time.monotonic() + 30
    while stack.thread(conversation)["messages"][-1]["role"] != "assistant" and time.monotonic() < deadline:
        time.sleep(0.1)
    history = stack.thread(conversation)
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert "you stopped it" in history["messages"][-1]["content"]
    written = len(stack.fake.token_times)
    time.sleep(10 * stack.fake.token_delay_s)  # ten more words' time: a model still writing would add them
    assert len(stack.fake.token_times) == written < WORDS // 2  # the model call was cancelled early

    stack.fake.token_delay_s = 0.01
    calls = len(stack.fake.calls)
    assert answered(client, HELLO, conversation) == GENERAL  # the next message is answered as usual
    assert len(stack.fake.calls) == calls + 1  # only the new turn ran: the stopped one was closed, not finished
    history = stack.thread(conversation)
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][-1]["content"] == GENERAL
