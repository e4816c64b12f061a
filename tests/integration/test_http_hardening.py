"""Issue 15, lower items at the HTTP door (real app under uvicorn on loopback, scripted models):
deeply nested JSON, a huge text-only body, an e-mail address as the ``user`` field."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import httpx
import pytest

from switchboard import server as server_module
from switchboard.server import ServerSettings, user_conversation_id, user_id_key
from tests.integration import test_http_api as http

served, stack = http.served, http.stack  # the same server fixture as tests/integration/test_http_api.py
KEY = http.KEY


def chat(text: str) -> dict[str, Any]:
    return {"model": "switchboard", "messages": http.user(text)}


def raw_post(url: str, body: bytes, client: httpx.Client | None = None) -> httpx.Response:
    send = client.post if client else httpx.post
    return send(f"{url}/v1/chat/completions", content=body, timeout=120,
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})


def openai_error(r: httpx.Response) -> dict[str, Any]:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


def test_deeply_nested_json_is_a_400_and_the_connection_stays_usable(stack: http.Stack) -> None:
    with httpx.Client() as client:  # one keep-alive connection: a crash would close it
        for depth in (1_000, 100_000):
            nested = b'{"model": "switchboard", "messages": ' + b"[" * depth + b"]" * depth + b"}"
            r = raw_post(stack.url, nested, client)
            assert r.status_code == 400, r.text
            error = openai_error(r)
            assert error["code"] == "invalid_json" and "nested too deeply" in error["message"]
        ok = client.post(f"{stack.url}/v1/chat/completions", json=chat("How many customers do we have?"),
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "We have 59 customers."


def test_a_large_text_only_body_is_413_before_it_is_parsed(stack: http.Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    real = server_module.parse_chat_request
    monkeypatch.setattr(server_module, "parse_chat_request", lambda body: (parsed.append(len(body)), real(body))[1])
    text = "x" * int(12.8 * 1024 * 1024)
    valid = httpx.Request("POST", "/", json=chat(text)).content
    for body in (valid, valid[:-2]):  # valid JSON, and the same body broken: both refused unread
        r = raw_post(stack.url, body)
        assert r.status_code == 413, r.text[:300]
        assert openai_error(r)["code"] == "request_too_large" and "1048576 bytes" in r.json()["error"]["message"]
    assert parsed == [] and stack.fake.calls == []
    # an image still gets the larger limit (the text beside it stays under the text limit)
    image = http.image_turn("What is the total on this receipt?", http.data_url(http.INVOICE.read_bytes() + b"\0" * 3_000_000))
    r = raw_post(stack.url, httpx.Request("POST", "/", json={"model": "switchboard", "messages": image}).content)
    assert r.status_code == 200, r.text[:300]


def test_an_email_as_user_never_becomes_a_stored_thread_id(stack: http.Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    email = "luis.goncalves@embraer.example.com"
    headers = {"Authorization": f"Bearer {KEY}"}
    first = httpx.post(f"{stack.url}/v1/chat/completions", json={**chat("How many customers do we have?"), "user": email},
                       headers=headers, timeout=60)
    second = httpx.post(f"{stack.url}/v1/chat/completions",
                        json={**chat("and how many of them are from Brazil?"), "user": email}, headers=headers, timeout=60)
    assert first.status_code == second.status_code == 200
    conversation = first.headers["X-Conversation-Id"]
    assert re.fullmatch(r"user-[0-9a-f]{32}", conversation) and second.headers["X-Conversation-Id"] == conversation
    assert second.json()["choices"][0]["message"]["content"] == "5 of them are from Brazil."  # same conversation
    other = httpx.post(f"{stack.url}/v1/chat/completions", json={**chat("Hello"), "user": "someone.else@example.com"},
                       headers=headers, timeout=60)
    assert other.headers["X-Conversation-Id"] not in (conversation, "someone.else@example.com")
    thread_ids = {t["thread_id"] for t in stack.board.services.audit.turns()}
    assert conversation in thread_ids and not any("@" in t for t in thread_ids)
    for path in stack.settings.data_dir.rglob("*"):  # audit trail, ledger, checkpoints, caches
        if path.is_file():
            data = path.read_bytes()
            assert email.encode() not in data and b"luis.goncalves" not in data, path
    assert email not in caplog.text and "luis.goncalves" not in caplog.text


def test_the_user_id_key_is_kept_owner_only_and_survives_a_restart(tmp_path) -> None:
    settings = ServerSettings(_env_file=None)
    key = user_id_key(settings, tmp_path)
    assert len(key) == 64 and user_id_key(settings, tmp_path) == key
    assert os.stat(tmp_path / "user-id.key").st_mode & 0o777 == 0o600
    assert user_conversation_id("a@example.com", key) == user_conversation_id("a@example.com", user_id_key(settings, tmp_path))
    assert user_conversation_id("a@example.com", key) != user_conversation_id("a@example.com", b"another key")
    configured = ServerSettings(_env_file=None, user_id_key="shared-secret")
    assert user_id_key(configured, tmp_path) == b"shared-secret"
