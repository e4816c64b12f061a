"""What many test modules build: the support graph's services with one scripted model, and a
real uvicorn server on a loopback port. Shared here so that test modules never import each other."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from langgraph.checkpoint.memory import InMemorySaver

from graphs import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings
from tools.scripted import ScriptedChatModel, by_system_prompt

LOCAL = "local-qwen2.5-coder-1.5b"


def sql_reply(messages) -> str:
    q = str(messages[-1].content)
    if "how many of them" in q.lower():
        return "SQL: SELECT COUNT(*) FROM Customer WHERE Country = 'Brazil'\nANSWER: {result} of them are from Brazil."
    return "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers."


def scripted_services(settings, **rules) -> tuple[Services, ScriptedChatModel]:
    services = Services(settings)
    fake = ScriptedChatModel(
        respond=by_system_prompt(
            {
                "SQLite SELECT": rules.get("sql", sql_reply),
                "help-center passages": rules.get("rag", "Refunds are possible within 14 days [1]."),
                "support assistant of Chinook": rules.get("general", "Hello! How can I help?"),
                "route one customer-support": rules.get("triage", "general"),
            }
        )
    )
    services.registry.use_chat_model(LOCAL, fake)
    return services, fake


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


# --- the HTTP door's stack: a scripted text model and a scripted vision model ---------------
KEY = "sk-" + "test-http-0123456789abcdef"  # built at run time, so scripts/scan_secrets.py passes
OTHER_KEY = "second-key-0123456789abcdef"
INVOICE = REPO_ROOT / "tests" / "fixtures" / "images" / "chinook_invoice_98.png"
VISION_ANSWER = "The total on this invoice is 3.98 USD."
REGISTRY = f"""
models:
  {LOCAL}:
    provider: llamacpp
    model: scripted
    tier: light
    price: {{input: 1.0, output: 2.0}}
    capabilities: [json]
    enabled: true
  vision-fake:
    provider: fake
    model: vision-fake
    tier: light
    capabilities: [vision]
    enabled: true
"""


def vision_reply(messages: list[Any]) -> str:
    parts = messages[-1].content
    assert any(isinstance(p, dict) and p.get("type") == "image_url" for p in parts), "no image reached the model"
    return VISION_ANSWER


def scripted_board(settings: Settings) -> tuple[Switchboard, ScriptedChatModel, ScriptedChatModel]:
    services, fake = scripted_services(settings)
    vision = ScriptedChatModel(respond=vision_reply)
    services.registry.use_chat_model("vision-fake", vision)
    return Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services), fake, vision
