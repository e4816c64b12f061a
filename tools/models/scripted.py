"""Scripted chat models, for tests and benchmarks about orchestration, not model output.

Shipped with the library (as pydantic-ai ships ``FunctionModel``), so benchmarks and users'
own tests script a model without importing Switchboard's test suite.

``ScriptedChatModel`` answers with a function of the messages it gets, so a test states exactly
what "the model" says and can inspect what it was sent.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field


class ScriptedChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    respond: Callable[[list[BaseMessage]], str]
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    # awaited with the messages before each streamed reply: lets a test hold a call open
    before_reply: Callable[[list[BaseMessage]], Awaitable[None]] | None = None
    # > 0: the async stream yields word by word, this many seconds apart (a model writing), and
    # notes when each word was yielded (time.monotonic) in ``token_times``
    token_delay_s: float = 0.0
    token_times: list[float] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _usage(self, messages: list[BaseMessage], text: str) -> UsageMetadata:
        n_in = sum(len(str(m.content).split()) for m in messages)
        n_out = len(text.split())
        return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        self.calls.append(messages)
        text = self.respond(messages)
        msg = AIMessage(content=text, usage_metadata=self._usage(messages, text))
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Iterator[ChatGenerationChunk]:
        self.calls.append(messages)
        text = self.respond(messages)
        yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=self._usage(messages, text)))

    async def _astream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                       **kw: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self.before_reply is not None:
            await self.before_reply(messages)
        if self.token_delay_s <= 0:
            for chunk in self._stream(messages, stop=stop, **kw):
                yield chunk
            return
        self.calls.append(messages)
        text = self.respond(messages)
        for word in re.findall(r"\S+\s*|\s+", text):
            await asyncio.sleep(self.token_delay_s)
            self.token_times.append(time.monotonic())
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=self._usage(messages, text)))


def by_system_prompt(rules: dict[str, str | Callable[[list[BaseMessage]], str]], default: str = "OK") -> Callable[[list[BaseMessage]], str]:
    """Answer according to which agent is calling (matched on a phrase of its system prompt)."""

    def respond(messages: list[BaseMessage]) -> str:
        system = str(messages[0].content) if messages else ""
        for phrase, reply in rules.items():
            if phrase in system:
                return reply(messages) if callable(reply) else reply
        return default

    return respond
