"""Human review over the HTTP door: a paused turn says so in its ``switchboard`` block, and
``/v1/threads/{id}/review`` lists what is pending and continues the turn with a decision.

The real app under uvicorn on a loopback port, with scripted models (see test_http_api.py). The
asker (``KEY``) is not a reviewer; decisions are made with ``REVIEWER_KEY`` (principal ``ops``,
in ``SWITCHBOARD_REVIEWERS``): separation of duties (tests/integration/test_ownership.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.server import create_app
from switchboard.settings import Settings
from tests.stacks import EMAIL, KEY, PHONE, PHONE_Q, PHONE_SQL, REGISTRY, TWO_PART, scripted, serve_in_thread

REVIEWER_KEY = "reviewer-key-0123456789abcdef"


class Client:
    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: Any = None, *, key: str | None = KEY, raw: bytes | None = None,
                **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, f"{self.url}{path}", json=None if raw is not None else body, content=raw,
                             headers={**auth, **headers}, timeout=60)

    def ask(self, text: str, conversation: str, **extra: Any) -> httpx.Response:
        return self.request("POST", "/v1/chat/completions",
                            {"model": "switchboard", "messages": [{"role": "user", "content": text}], **extra},
                            **{"X-Conversation-Id": conversation})

    def review(self, conversation: str, body: Any = None, **kw: Any) -> httpx.Response:
        kw.setdefault("key", REVIEWER_KEY)  # a reviewer who is not the asker
        return self.request("POST" if body is not None or "raw" in kw else "GET",
                            f"/v1/threads/{conversation}/review", body, **kw)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("review-http")
    registry = root / "models.yaml"
    registry.write_text(REGISTRY)
    settings = Settings(data_dir=root / "data", models_file=registry, reviewers=["ops"])
    services, _ = scripted(settings)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    with serve_in_thread(create_app(settings, board, api_keys=[f"asker={KEY}", f"ops={REVIEWER_KEY}"])) as url:
        yield Client(url)


def paused(api: Client, conversation: str, text: str = PHONE_Q) -> dict[str, Any]:
    r = api.ask(text, conversation)
    assert r.status_code == 200, r.text
    block = r.json()["switchboard"]
    assert block["conversation_id"] == conversation and block["pending_review"]
    return r.json()


def test_a_paused_turn_says_so_and_approve_continues_it(api: Client) -> None:
    body = paused(api, "h-approve")
    [pending] = body["switchboard"]["pending_review"]
    assert pending["kind"] == "sensitive_sql" and pending["sql"] == PHONE_SQL and pending["columns"] == ["Customer.Phone"]
    assert "waiting for a reviewer" in body["choices"][0]["message"]["content"]
    assert PHONE not in json.dumps(body)

    listed = api.review("h-approve").json()
    assert listed == {"object": "thread.review", "conversation_id": "h-approve", "pending": [pending]}

    r = api.review("h-approve", {"action": "approve"})
    assert r.status_code == 200 and r.headers["X-Conversation-Id"] == "h-approve"
    done = r.json()
    assert done["object"] == "chat.completion" and PHONE in done["choices"][0]["message"]["content"]
    assert done["switchboard"]["pending_review"] == [] and done["usage"]["total_tokens"] > 0
    assert api.review("h-approve").json()["pending"] == []
    again = api.review("h-approve", {"action": "approve"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_pending_review"
    history = api.request("GET", "/v1/threads/h-approve").json()
    assert [t["question"] for t in history["turns"]] == [PHONE_Q]  # the resumed turn is a normal turn
    assert api.ask("How many customers do we have?", "h-approve").status_code == 200


def test_a_new_message_on_a_paused_conversation_is_409(api: Client) -> None:
    paused(api, "h-409")
    for stream in (False, True):
        r = api.ask("How many customers do we have?", "h-409", stream=stream)
        assert r.status_code == 409 and r.json()["error"]["code"] == "review_pending"
        assert "/v1/threads/h-409/review" in r.json()["error"]["message"]
    assert len(api.review("h-409").json()["pending"]) == 1


def test_reject_and_edit(api: Client) -> None:
    paused(api, "h-reject")
    text = api.review("h-reject", {"action": "reject"}).json()["choices"][0]["message"]["content"]
    assert text.startswith("A reviewer declined") and PHONE not in text

    paused(api, "h-edit")
    edited = "SELECT Email FROM Customer WHERE FirstName = 'Luís'"
    body = api.review("h-edit", {"action": "edit", "sql": edited}).json()
    assert EMAIL in body["choices"][0]["message"]["content"]

    paused(api, "h-write")
    body = api.review("h-write", {"action": "edit", "sql": "UPDATE Customer SET Phone = NULL"}).json()
    assert "nothing was changed" in body["choices"][0]["message"]["content"]


def test_a_two_part_turn_keeps_its_other_part(api: Client) -> None:
    body = paused(api, "h-two", TWO_PART)
    assert [r["agent"] for r in body["switchboard"]["routes"]] == ["sql", "rag"]
    answer = api.review("h-two", {"action": "approve"}).json()["choices"][0]["message"]["content"]
    assert PHONE in answer and "14 days" in answer


def test_streamed_paused_turn_lists_the_review_in_its_last_chunk(api: Client) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model="switchboard", stream=True,
                                                 messages=[{"role": "user", "content": PHONE_Q}],
                                                 extra_headers={"X-Conversation-Id": "h-stream"}))
    assert "waiting for a reviewer" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [pending] = chunks[-1].model_extra["switchboard"]["pending_review"]
    assert pending["kind"] == "sensitive_sql"


def test_review_errors_have_the_openai_shape(api: Client) -> None:
    paused(api, "h-errors")
    cases = [
        ({"action": "maybe"}, 400, "invalid_request_body"),
        ([1, 2], 400, "invalid_request_body"),
        ({"action": "edit"}, 400, "invalid_review_decision"),
        ({"action": "approve", "interrupt_id": "0" * 32}, 400, "invalid_review_decision"),
    ]
    for body, status, code in cases:
        r = api.review("h-errors", body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    r = api.review("h-errors", raw=b'{"action": ', **{"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert api.review("no-such-thread").status_code == 404
    assert api.review("no-such-thread", {"action": "approve"}).json()["error"]["code"] == "thread_not_found"
    assert api.review("bad id!").json()["error"]["code"] in ("invalid_conversation_id", "not_found")
    for method, body in (("GET", None), ("POST", {"action": "approve"})):
        r = api.request(method, "/v1/threads/h-errors/review", body, key=None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert len(api.review("h-errors").json()["pending"]) == 1  # nothing above decided it
