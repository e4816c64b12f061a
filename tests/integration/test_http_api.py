"""The HTTP door, driven over loopback by the official ``openai`` client (and raw ``httpx`` where a
well-behaved client cannot send the request, e.g. malformed JSON).

The server is the real app under uvicorn on a free port; the graph behind it runs with scripted
models (these tests are about the API, not model output). The SQL fake answers a follow-up
("how many of them") from the conversation summary, which shows continuity end to end.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest

from switchboard import server
from switchboard.api import Switchboard
from switchboard.server import MissingAPIKeys, ServerSettings, create_app
from switchboard.settings import REPO_ROOT, Settings
from tests.fakes import ScriptedChatModel
from tests.stacks import (
    INVOICE,
    KEY,
    LOCAL,
    OTHER_KEY,
    REGISTRY,
    VISION_ANSWER,
    scripted_board,
    serve_in_thread,
    user,
)


@dataclass
class Stack:
    url: str
    board: Switchboard
    fake: ScriptedChatModel
    vision: ScriptedChatModel
    settings: Settings

    def post(self, body: Any, *, key: str | None = KEY, raw: bytes | None = None, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}/v1/chat/completions", json=None if raw is not None else body, content=raw,
                          headers={**auth, **headers}, timeout=60)

    def get(self, path: str, *, key: str | None = KEY) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One server for the module (building the graph fits the router: seconds, not milliseconds).
    Tests use their own conversation ids, so sharing it does not couple them."""
    root = tmp_path_factory.mktemp("http")
    registry = root / "models.yaml"
    registry.write_text(REGISTRY)
    # no model-response cache: tests count the fake's calls, and share one data dir
    settings = Settings(data_dir=root / "data", models_file=registry, cache_ttl_s=0)
    board, fake, vision = scripted_board(settings)
    app = create_app(settings, board, api_keys=[KEY, OTHER_KEY])
    with serve_in_thread(app) as url:
        yield Stack(url, board, fake, vision, settings)


@pytest.fixture
def stack(served: Stack) -> Stack:
    served.fake.calls.clear()
    served.vision.calls.clear()
    return served


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --- the OpenAI protocol -------------------------------------------------------------------------


def test_non_streaming_reply_is_a_chat_completion_with_usage(stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="switchboard", messages=user("How many customers do we have?"))
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "We have 59 customers."   # the number is the real database's
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    conversation = raw.headers["X-Conversation-Id"]
    assert conversation.startswith("conv-")                 # no id given: a new conversation
    extra = completion.model_extra["switchboard"]
    assert extra["conversation_id"] == conversation
    assert [(r["agent"], r["route"], r["model"]) for r in extra["routes"]] == [("sql", "sql", LOCAL)]
    assert extra["cost_usd"] > 0 and extra["llm_calls"] == 1


def test_streaming_chunks_assemble_to_the_answer(stack: Stack, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="cost-saver", messages=user("How many customers do we have?"), stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Conversation-Id": "stream-1"},
    )
    assert stream.response.headers["X-Conversation-Id"] == "stream-1"
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "We have 59 customers."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert {c.model for c in chunks} == {"cost-saver"}


def test_the_raw_stream_is_server_sent_events_ending_with_done(stack: Stack) -> None:
    r = stack.post({"model": "switchboard", "stream": True, "messages": user("How many customers do we have?")})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_models_lists_the_routing_policies(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["switchboard", "cost-saver", "balanced", "best-quality"]


# --- conversations -------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["header", "user"])
def test_second_turn_continues_the_first(stack: Stack, client: openai.OpenAI, by: str) -> None:
    ids: dict[str, Any] = {"extra_headers": {"X-Conversation-Id": "shop-42"}} if by == "header" else {"user": "customer-7"}
    client.chat.completions.create(model="switchboard", messages=user("How many customers do we have?"), **ids)
    raw = client.chat.completions.with_raw_response.create(
        model="switchboard", messages=user("and how many of them are from Brazil?"), **ids)
    assert raw.parse().choices[0].message.content == "5 of them are from Brazil."
    conversation = raw.headers["X-Conversation-Id"]
    assert conversation == "shop-42" if by == "header" else re.fullmatch(r"user-[0-9a-f]{32}", conversation)
    prompt = str(stack.fake.calls[-1][-1].content)
    assert "User: How many customers do we have? | sql: We have 59 customers." in prompt


def test_the_header_wins_over_the_user_field(stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="switchboard", messages=user("How many customers do we have?"), user="someone",
        extra_headers={"X-Conversation-Id": "from-header"})
    assert raw.headers["X-Conversation-Id"] == "from-header"


def test_without_an_id_each_request_is_a_new_conversation(stack: Stack, client: openai.OpenAI) -> None:
    first = client.chat.completions.with_raw_response.create(model="switchboard", messages=user("How many customers do we have?"))
    second = client.chat.completions.with_raw_response.create(model="switchboard", messages=user("Hello there"))
    assert first.headers["X-Conversation-Id"] != second.headers["X-Conversation-Id"]
    assert "Conversation so far" not in str(stack.fake.calls[-1][-1].content)


def test_only_the_last_user_message_is_the_turn(stack: Stack, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "What's your refund policy?"},
                {"role": "assistant", "content": "Arr."},
                {"role": "user", "content": "How many customers do we have?"}]
    completion = client.chat.completions.create(model="switchboard", messages=messages)
    assert completion.choices[0].message.content == "We have 59 customers."
    assert len(stack.fake.calls) == 1 and "pirate" not in str(stack.fake.calls[0])


def test_thread_history_has_each_turn_with_routes_and_costs(stack: Stack, client: openai.OpenAI) -> None:
    ids = {"X-Conversation-Id": "hist-1"}
    first = client.chat.completions.create(
        model="switchboard", messages=user("How many customers do we have, and hello, who are you?"), extra_headers=ids)
    second = client.chat.completions.create(
        model="switchboard", messages=user("and how many of them are from Brazil?"), extra_headers=ids)
    history = stack.get("/v1/threads/hist-1").json()
    assert history["object"] == "thread" and history["id"] == "hist-1"
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][-1]["content"] == "5 of them are from Brazil."
    turns = history["turns"]
    assert [t["question"] for t in turns] == ["How many customers do we have, and hello, who are you?",
                                              "and how many of them are from Brazil?"]
    assert [r["agent"] for r in turns[0]["routes"]] == ["sql", "general"]
    assert [r["agent"] for r in turns[1]["routes"]] == ["sql"]
    assert all(r["model"] == LOCAL and r["ok"] for t in turns for r in t["routes"])
    assert turns[0]["cost_usd"] == first.model_extra["switchboard"]["cost_usd"] > 0
    assert turns[1]["cost_usd"] == second.model_extra["switchboard"]["cost_usd"] > 0
    assert history["cost_usd"] == pytest.approx(turns[0]["cost_usd"] + turns[1]["cost_usd"])
    assert turns[0]["llm_calls"] == 2 and "How many customers do we have?" in history["summary"]
    latest = stack.get("/v1/threads/hist-1?limit=1").json()
    assert [t["question"] for t in latest["turns"]] == ["and how many of them are from Brazil?"] and latest["has_more"]
    missing = stack.get("/v1/threads/nobody-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "thread_not_found"


# --- images --------------------------------------------------------------------------------------


def image_turn(question: str, url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_an_image_part_reaches_the_vision_agent(stack: Stack, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="switchboard", messages=image_turn("What is the total on this receipt?", data_url(INVOICE.read_bytes())))
    assert completion.choices[0].message.content == VISION_ANSWER
    (call,) = stack.vision.calls
    sent = next(p for p in call[-1].content if isinstance(p, dict) and p.get("type") == "image_url")
    assert base64.b64decode(sent["image_url"]["url"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(r["agent"], r["model"]) for r in completion.model_extra["switchboard"]["routes"]] == [("vision", "vision-fake")]
    uploads = stack.settings.data_dir / "uploads"
    assert uploads.is_dir() and list(uploads.iterdir()) == []   # the upload is gone after the turn


def test_a_bad_image_is_refused_with_a_clear_message(stack: Stack, client: openai.OpenAI) -> None:
    """Uploads are typed by content: whatever MIME type the client claims, a PDF or an SVG (with a
    script) is refused at the door, saying what it is; no turn runs and nothing is stored."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for data, mime, what in ((b"%PDF-1.7 not an image", "image/png", "PDF"), (svg, "image/png", "SVG"),
                             (svg, "image/svg+xml", "SVG")):
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(
                model="switchboard", messages=image_turn("What is the total on this receipt?", data_url(data, mime)))
        assert exc.value.body["code"] == "unsupported_image" and what in exc.value.body["message"]
    assert stack.vision.calls == [] and stack.fake.calls == []
    uploads = stack.settings.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_an_upload_is_typed_by_its_content_not_its_claimed_mime(stack: Stack, client: openai.OpenAI) -> None:
    """A PNG sent as image/jpeg is stored and read as the PNG it is."""
    completion = client.chat.completions.create(
        model="switchboard",
        messages=image_turn("What is the total on this receipt?", data_url(INVOICE.read_bytes(), "image/jpeg")))
    assert completion.choices[0].message.content
    assert server.decode_image(data_url(INVOICE.read_bytes(), "image/svg+xml"), 10_000_000)[1] == "image/png"


def test_remote_and_broken_image_urls_are_refused(client: openai.OpenAI) -> None:
    for url, code in (("https://example.com/receipt.png", "invalid_image_url"),
                      ("data:image/png;base64,@@not-base64@@", "invalid_image_url")):
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="switchboard", messages=image_turn("What is this?", url))
        assert exc.value.body["code"] == code


# --- authentication, limits and errors -----------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_keys_are_never_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"model": "switchboard", "messages": user("How many customers do we have?")}
    for key in (None, "wrong-key-0123456789abcdef", KEY[:-1]):
        r = stack.post(body, key=key)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
    assert stack.post(body, key=None, Authorization=f"Basic {KEY}").status_code == 401
    assert stack.get("/v1/threads/anything", key=None).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="nope-nope-nope", max_retries=0).models.list()
    assert stack.post(body, key=OTHER_KEY).status_code == 200      # every configured key works
    assert stack.get("/healthz", key=None).json() == {"status": "ok"}
    assert stack.fake.calls and len(stack.fake.calls) == 1             # refused requests never ran a turn
    assert KEY not in caplog.text and OTHER_KEY not in caplog.text


def test_oversized_bodies_are_413(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="switchboard", messages=user("x" * 1_100_000))
    assert exc.value.status_code == 413 and exc.value.body["code"] == "request_too_large"
    assert "1048576 bytes" in exc.value.body["message"]
    huge = image_turn("What is this?", data_url(b"\0" * 11_000_000))
    r = stack.post({"model": "switchboard", "messages": huge})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"
    assert stack.fake.calls == []


def test_malformed_and_invalid_bodies_get_clear_json_errors(stack: Stack) -> None:
    r = stack.post(None, raw=b'{"model": "switchboard", "messages": [', **{"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "not valid JSON" in r.json()["error"]["message"]
    cases = [
        ({"model": "switchboard", "messages": [{"role": "bot", "content": "hi"}]}, 400, "invalid_request_body"),
        ({"model": "switchboard", "messages": []}, 400, "invalid_request_body"),
        ({"model": "switchboard", "messages": [{"role": "system", "content": "hi"}]}, 400, "invalid_request_body"),
        ({"model": "switchboard", "messages": user("   ")}, 400, "invalid_request_body"),
        ([1, 2, 3], 400, "invalid_request_body"),
        ({"model": "gpt-4o", "messages": user("hi")}, 404, "model_not_found"),
    ]
    for body, status, code in cases:
        r = stack.post(body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), body
        assert "Traceback" not in r.text
    r = stack.post({"model": "switchboard", "messages": user("hi")}, **{"X-Conversation-Id": "no spaces please"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Conversation-Id"
    assert stack.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert stack.fake.calls == []


def test_an_internal_failure_is_generic_both_plain_and_streamed(stack: Stack, client: openai.OpenAI,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")
        yield  # an async generator, like Switchboard.stream, which both kinds of request use

    monkeypatch.setattr(stack.board, "stream", broken)
    logging.getLogger("uvicorn.error").disabled = True  # the expected traceback; it is still logged normally
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="switchboard", messages=user("Hello"))
        assert exc.value.body["code"] == "internal_error" and "secret" not in json.dumps(exc.value.body)
        with pytest.raises(openai.APIError) as streamed:
            list(client.chat.completions.create(model="switchboard", messages=user("Hello"), stream=True))
        assert "secret" not in str(streamed.value) and "failed on the server" in str(streamed.value)
    finally:
        logging.getLogger("uvicorn.error").disabled = False


def test_the_server_refuses_to_start_without_api_keys(make_settings, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from switchboard import cli

    monkeypatch.delenv("SWITCHBOARD_API_KEYS", raising=False)
    no_env = ServerSettings(_env_file=None)
    with pytest.raises(MissingAPIKeys, match="--insecure-no-auth"):
        create_app(make_settings(), server_settings=no_env)
    monkeypatch.chdir(make_settings().data_dir.parent)   # no .env with keys here
    assert cli.main(["serve", "--port", "1"]) == 2
    assert "SWITCHBOARD_API_KEYS is not set" in capsys.readouterr().err
    monkeypatch.setenv("SWITCHBOARD_API_KEYS", f" {KEY} , ,{OTHER_KEY}")
    assert ServerSettings(_env_file=None).key_list() == [KEY, OTHER_KEY]


def test_the_server_refuses_to_start_on_another_models_vectors(make_settings, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An upgrade that changed the knowledge base's embedding model (or a variable set by mistake)
    stops at start with the way out, instead of failing every help-center part it would answer."""
    from fastapi.testclient import TestClient

    from knowledge.store import OtherModelsVectors, open_collection
    from switchboard import cli
    from switchboard.services import Services

    settings = make_settings(knowledge_embeddings="mpnet")
    # a knowledge base made with MiniLM (empty: its record of the model is what counts; none is loaded)
    open_collection(chroma_dir=settings.chroma_dir, name=settings.collection, embeddings="minilm")
    with pytest.raises(OtherModelsVectors, match="switchboard ingest --reembed"), \
            TestClient(create_app(settings, api_keys=[KEY])):
        pass
    monkeypatch.setenv("SWITCHBOARD_API_KEYS", KEY)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SWITCHBOARD_KNOWLEDGE_EMBEDDINGS", "mpnet")
    monkeypatch.chdir(settings.data_dir.parent)
    assert cli.main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds vectors of the 'minilm' embeddings" in err and "SWITCHBOARD_KNOWLEDGE_EMBEDDINGS=minilm" in err
    Services(make_settings(knowledge_embeddings="minilm")).check_knowledge_base()  # the other way out passes
    Services(make_settings(data_dir=settings.data_dir / "new")).check_knowledge_base()  # nothing ingested yet


def test_insecure_no_auth_serves_without_a_key(stack: Stack) -> None:
    app = create_app(switchboard=stack.board, api_keys=[], insecure_no_auth=True)
    with serve_in_thread(app) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "switchboard", "messages": user("How many customers do we have?")})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "We have 59 customers."


# --- the example bot -----------------------------------------------------------------------------


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_webhook_bot_answers_through_the_api(stack: Stack) -> None:
    bot = load_example("webhook_bot")
    platform_id = "slack T01/C02 thread 1700000000.0001"        # not a valid id as is: the bot maps it
    with serve_in_thread(bot.create_bot(f"{stack.url}/v1", KEY, webhook_secret="hook-secret")) as url:
        def send(text: str, secret: str = "hook-secret") -> httpx.Response:
            return httpx.post(f"{url}/webhook", json={"conversation_id": platform_id, "text": text},
                              headers={"X-Webhook-Secret": secret}, timeout=60)

        assert send("How many customers do we have?").json() == {"conversation_id": platform_id,
                                                                  "text": "We have 59 customers."}
        assert send("and how many of them are from Brazil?").json()["text"] == "5 of them are from Brazil."
        assert send("Hello", secret="wrong").status_code == 401
    history = stack.get(f"/v1/threads/{bot.thread_for(platform_id)}").json()
    assert len(history["turns"]) == 2
    with serve_in_thread(bot.create_bot(f"{stack.url}/v1", "not-a-valid-key-123")) as url:
        r = httpx.post(f"{url}/webhook", json={"conversation_id": "c1", "text": "Hello"}, timeout=60)
    assert r.json()["text"] == bot.APOLOGY                            # Switchboard said 401: the customer gets an apology
