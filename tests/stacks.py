"""What many test modules build: the support graph's services with one scripted model, and a
real uvicorn server on a loopback port. Shared here so that test modules never import each other."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings
from tools.models.scripted import ScriptedChatModel, by_system_prompt
from tools.models.values import LedgerEntry

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


def user(text: str) -> list[dict[str, Any]]:
    """One user message, as chat-completion requests carry it."""
    return [{"role": "user", "content": text}]


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


def scripted_board(settings: Settings, **rules: Any) -> tuple[Switchboard, ScriptedChatModel, ScriptedChatModel]:
    """The HTTP door's board; ``rules`` replace the text model's replies (see ``scripted_services``)."""
    services, fake = scripted_services(settings, **rules)
    vision = ScriptedChatModel(respond=vision_reply)
    services.registry.use_chat_model("vision-fake", vision)
    return Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services), fake, vision


# --- human review: a sensitive question and two model tiers (tests/graph/test_human_review.py) ---
PHONE_Q = "What is the phone number of customer Luís Gonçalves?"
PHONE_SQL = "SELECT Phone FROM Customer WHERE FirstName = 'Luís' AND LastName = 'Gonçalves'"
PHONE = "+55 (12) 3923-5555"
EMAIL = "luisg@embraer.com.br"
TWO_PART = "What is the phone number of customer Luís Gonçalves, and what is your refund policy?"
COUNT_REPLY = "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers."


def phone_reply(messages) -> str:
    return f"SQL: {PHONE_SQL}\nANSWER: Luís Gonçalves's phone number is {{result}}."


def scripted(settings, sql=phone_reply, **rules) -> tuple[Services, ScriptedChatModel]:
    services = Services(settings)
    fake = ScriptedChatModel(respond=by_system_prompt({
        "SQLite SELECT": sql,
        "help-center passages": rules.get("rag", "Refunds are possible within 14 days [1]."),
        "support assistant of Chinook": rules.get("general", "Hello! How can I help?"),
        "route one customer-support": rules.get("triage", "sql"),
    }))
    services.registry.use_chat_model(LOCAL, fake)
    return services, fake


def board(settings, sql=phone_reply, saver=None, **rules) -> tuple[Switchboard, ScriptedChatModel]:
    services, fake = scripted(settings, sql, **rules)
    return Switchboard(build_support_graph(services=services, checkpointer=saver or InMemorySaver()), services), fake


TWO_TIERS = """
models:
  small: {provider: fake, model: small, version: s1, tier: light, price: {input: 0.1, output: 0.2}, enabled: true}
  big: {provider: fake, model: big, version: b1, tier: heavy, price: {input: 5.0, output: 15.0}, enabled: true}
policies:
  cost-saver:   {triage: light, sql: light, rag: light, vision: light, general: light}
  balanced:     {triage: light, sql: light, rag: light, vision: light, general: light}
  best-quality: {triage: light, sql: heavy, rag: heavy, vision: heavy, general: heavy}
"""


def tiered(make_settings, tmp_path: Path, big_sql=COUNT_REPLY, small_sql=COUNT_REPLY, **kw):
    f = tmp_path / "models.yaml"
    f.write_text(TWO_TIERS)
    services = Services(make_settings(models_file=f, cache_ttl_s=0, **kw))
    small = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": small_sql}))
    big = ScriptedChatModel(respond=by_system_prompt({"SQLite SELECT": big_sql}))
    services.registry.use_chat_model("small", small)
    services.registry.use_chat_model("big", big)
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    return sb, small, big


def spend(sb: Switchboard, thread: str, usd: float) -> None:
    sb.services.registry.gateway.ledger.record(
        LedgerEntry(agent="sql", task="earlier", model="big", model_version="b1", tokens_in=0, tokens_out=0,
                    cost_usd=usd, latency_ms=0), thread)


# --- registries of loopback OpenAI-compatible fakes (tests/fake_openai.py) ------------------------
def models_file(tmp_path: Path, primary_url: str, backup_url: str) -> Path:
    f = tmp_path / "models.yaml"
    f.write_text(f"""
models:
  primary:
    provider: openai_compatible
    base_url: {primary_url}
    model: big-model
    version: big-1
    tier: heavy
    price: {{input: 10.0, output: 30.0}}
    enabled: true
    fallbacks: [backup]
  backup:
    provider: openai_compatible
    base_url: {backup_url}
    model: small-model
    version: small-1
    tier: light
    price: {{input: 0.1, output: 0.2}}
    enabled: true
policies:
  balanced: {{triage: light, sql: heavy, rag: heavy, vision: light, general: heavy}}
""")
    return f


def registry_file(tmp_path: Path, url: str) -> Path:
    f = tmp_path / "models.yaml"
    f.write_text(
        "models:\n"
        "  vision-server:\n"
        "    provider: openai_compatible\n"
        f"    base_url: {url}\n"
        "    model: llava-test\n"
        "    version: llava-test-1\n"
        "    tier: light\n"
        "    price: {input: 1.0, output: 2.0}\n"
        "    capabilities: [vision]\n"
        "    enabled: true\n"
    )
    return f
