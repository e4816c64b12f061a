"""What a replica under load answers with: ``SWITCHBOARD_SETUP_HOOK=bench.scale_parts.replica:install``.

Every model of the registry :func:`write_registry` writes is one scripted fake
(``bench/overhead_parts/stack.py``'s competent answers) that takes ``SWITCHBOARD_BENCH_LATENCY_MS``
per call, asleep (no CPU, like a remote model); a question holding :data:`SLOW` takes
:data:`SLOW_S` (a turn a test can be sure is still in flight). The generalist echoes the question, so a load test
can check each answer against its own conversation (no cross-talk). :func:`write_registry` may give
the fake a price (USD per million tokens), for the budget race."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import BaseMessage

from bench.fake_models import BenchChatModel, by_system_prompt
from bench.overhead_parts.stack import BENCH_MODEL, TRIAGE_PROMPT, sql_reply
from switchboard.settings import REPO_ROOT

LATENCY_ENV = "SWITCHBOARD_BENCH_LATENCY_MS"
ECHO = "You asked: "
SLOW = "(take your time)"
SLOW_S = 4.0


def echo(messages: list[BaseMessage]) -> str:
    """The generalist's answer: the question back (its user message ends with it)."""
    text = str(messages[-1].content)
    return ECHO + (text.rsplit("Question:", 1)[-1] if "Question:" in text else text).strip()


SCRIPT = by_system_prompt({
    "SQLite SELECT": sql_reply,
    "help-center passages": "Here is what the help center says about it [1].",
    "support assistant of Chinook": echo,
    "image a customer uploaded": "The total on this receipt is 13.86.",
    TRIAGE_PROMPT: "general",
}, default="OK")


def write_registry(path: Path, price_per_million: float = 0.0) -> Path:
    """The product's policies over one fake model (vision-capable, so no OCR path is taken)."""
    product = yaml.safe_load((REPO_ROOT / "switchboard" / "config" / "models.yaml").read_text(encoding="utf-8"))
    model: dict[str, Any] = {"provider": "fake", "model": BENCH_MODEL, "version": "1", "tier": "light",
                             "capabilities": ["vision", "tools", "json"], "enabled": True}
    if price_per_million:
        model["price"] = {"input": price_per_million, "output": price_per_million}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": {BENCH_MODEL: model}, "policies": product["policies"]}),
                    encoding="utf-8")
    return path


def install(services: Any) -> None:
    latency_s = float(os.environ.get(LATENCY_ENV, "200")) / 1000

    def latency(messages: list[BaseMessage]) -> float:
        return SLOW_S if SLOW in str(messages[-1].content) else latency_s

    # a server answers for as long as it runs: it keeps no call
    fake = BenchChatModel(respond=SCRIPT, latency=latency, keep_calls=0)
    services.registry.use_chat_model(BENCH_MODEL, fake)
