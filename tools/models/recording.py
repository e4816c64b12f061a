"""Record real model exchanges once, replay them deterministically.

A cassette is a readable YAML file of ``{request, response}`` pairs at the chat-model level
(model id, messages, sampling parameters -> text and token usage). Because it records messages,
not HTTP, it works the same for the in-process llama.cpp model and for hosted APIs, and no
header or API key can reach it; text is still scrubbed of anything that looks like a secret.

Personal data (e-mails, phones, cards, IBANs) and secrets are masked by ``tools.observability.redaction``
before a cassette is written. Replay must still find a recording when the live request holds the
real values (a customer's e-mail in an SQL result, say), so requests are compared in their
redacted form: ``Cassette.key`` redacts both sides. Cassettes recorded before redaction existed
replay unchanged, since redacting their requests and the live ones gives the same key.

Modes: ``record`` calls the real model and saves; ``replay`` serves recorded answers and fails
loudly (naming the request) when one is missing -- never a silent real call.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

from tools.observability.redaction import redact, redact_obj

_SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "SWITCHBOARD_API_KEYS")


class MissingRecording(LookupError):
    """Replay mode met a model request that no cassette holds."""


def scrub(text: str) -> str:
    """Text bound for a cassette without the configured API keys (exact values, ``[REDACTED]``),
    other keys and bearer tokens (``[secret]``) or personal data (``tools.observability.redaction.redact``)."""
    for name in _SECRET_ENV:
        for value in filter(None, (os.environ.get(name) or "").split(",")):
            if len(value.strip()) >= 8:
                text = text.replace(value.strip(), "[REDACTED]")
    return redact(text)


def message_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": m.type, "content": str(m.content)} for m in messages]


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


class Cassette:
    """An ordered list of recorded exchanges, loaded from and saved to one YAML file."""

    def __init__(self, path: Path, interactions: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.interactions = interactions or []
        self._served: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> Cassette:
        path = Path(path)
        if not path.exists():
            return cls(path)
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls(path, data.get("interactions", []))

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        """What identifies a request: redacted, so a live request matches its redacted recording."""
        return json.dumps(redact_obj(request), sort_keys=True, ensure_ascii=False)

    def find(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The next unserved recording of an identical request (identical repeats replay in order)."""
        k = self.key(request)
        with self._lock:
            matches = [i for i, it in enumerate(self.interactions) if self.key(it["request"]) == k]
            if not matches:
                return None
            n = self._served.get(hash(k), 0)
            self._served[hash(k)] = n + 1
            return self.interactions[matches[min(n, len(matches) - 1)]]

    def add(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        with self._lock:
            self.interactions.append({"request": request, "response": response})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Scrub the values, not the YAML text: YAML may fold a long line inside a card number.
        body = {"interactions": redact_obj(self.interactions, scrub)}
        text = yaml.dump(body, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path)

    def describe_missing(self, request: dict[str, Any]) -> str:
        last = request["messages"][-1]["content"] if request["messages"] else ""
        return (
            f"no recording for a call to model {request['model']!r} in cassette {self.path} "
            f"({len(self.interactions)} recorded). Last message: {last[:400]!r}. "
            "Re-record with SWITCHBOARD_RECORD_MODE=record."
        )


class RecordingChatModel(BaseChatModel):
    """Wraps a chat model: records its exchanges, or replays them without calling it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_id: str
    mode: str  # "record" | "replay"
    cassette: Any
    inner_factory: Callable[[], BaseChatModel]
    _inner: BaseChatModel | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return f"recording-{self.mode}"

    def _inner_model(self) -> BaseChatModel:
        if self._inner is None:
            self._inner = self.inner_factory()
        return self._inner

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> dict:
        params = {k: v for k, v in kwargs.items() if k in ("max_tokens", "temperature")}
        if stop:
            params["stop"] = list(stop)
        return {"model": self.model_id, "messages": message_dicts(messages), "params": params}

    def _replayed(self, request: dict) -> dict:
        found = self.cassette.find(request)
        if found is None:
            raise MissingRecording(self.cassette.describe_missing(request))
        return found["response"]

    @staticmethod
    def _message(resp: dict) -> AIMessage:
        usage = resp.get("usage", {})
        return AIMessage(
            content=resp["content"],
            usage_metadata={
                "input_tokens": usage.get("input_tokens", 0),
                "output_tokens": usage.get("output_tokens", 0),
                "total_tokens": usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
            },
            response_metadata={"recorded_latency_ms": resp.get("latency_ms"), "replayed": True},
        )

    def _record(self, request: dict, msg: BaseMessage, started: float) -> None:
        usage = getattr(msg, "usage_metadata", None) or {}
        self.cassette.add(
            request,
            {
                "content": str(msg.content),
                "usage": {
                    "input_tokens": usage.get("input_tokens", 0),
                    "output_tokens": usage.get("output_tokens", 0),
                },
                "latency_ms": round((time.monotonic() - started) * 1000),
            },
        )
        self.cassette.save()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        if self.mode == "replay":
            return ChatResult(generations=[ChatGeneration(message=self._message(self._replayed(request)))])
        started = time.monotonic()
        msg = self._inner_model().invoke(messages, stop=stop, **kwargs)
        self._record(request, msg, started)
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        if self.mode == "replay":
            resp = self._replayed(request)
            for piece in re.findall(r"\S+\s*|\s+", resp["content"]):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
            final = self._message(resp)
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="", usage_metadata=final.usage_metadata, response_metadata=final.response_metadata
                )
            )
            return
        started = time.monotonic()
        full: AIMessageChunk | None = None
        for part in self._inner_model().stream(messages, stop=stop, **kwargs):
            full = part if full is None else full + part
            gen = ChatGenerationChunk(message=part)
            if run_manager and part.content:
                run_manager.on_llm_new_token(str(part.content), chunk=gen)
            yield gen
        if full is not None:
            self._record(request, full, started)
