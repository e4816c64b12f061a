"""Fake chat models for benchmarks about orchestration, not model output.

:class:`BenchChatModel` is the tests' :class:`tests.fakes.ScriptedChatModel` (a reply is a
function of the messages; every call is kept in ``calls``) plus what a benchmark needs on top:

* native async paths (``_agenerate``/``_astream``), so an async caller never pays for a hop to
  a worker thread that a real async provider client would not make either; the gateway streams
  (``astream``), LangGraph's prebuilt agents ``ainvoke``;
* a fixed ``latency_s`` per call (``asyncio.sleep``: it occupies no CPU, like a remote model), or
  ``latency``, a function of the messages that overrides it;
* tool calls: the script may return an ``AIMessage`` with ``tool_calls``, and ``bind_tools``
  works, so tool-calling agents (``create_react_agent``, ``langgraph-supervisor``) can run on it;
* the replies (``replies``, parallel to ``calls``; ``keep_calls`` bounds both, for a long-running
  server) and the peak number of calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # run as a script; ahead of site-packages, which has a stray `tests` (literalai)
    sys.path.insert(0, str(ROOT))

from tools.models.scripted import ScriptedChatModel, by_system_prompt  # noqa: E402

__all__ = ["BenchChatModel", "by_system_prompt"]

Reply = str | AIMessage


class BenchChatModel(ScriptedChatModel):
    """A scripted chat model with a fixed latency, async paths and tool calls.

    ``respond`` returns the reply text, or an ``AIMessage`` (e.g. one with ``tool_calls``).
    """

    respond: Callable[[list[BaseMessage]], Reply]
    latency_s: float = 0.0
    latency: Callable[[list[BaseMessage]], float] | None = None  # per call; overrides latency_s
    keep_calls: int | None = None  # keep only the last N calls and replies (None: all)
    replies: list[AIMessage] = Field(default_factory=list)
    paths: dict[str, int] = Field(default_factory=dict)  # which of the four entry points served the calls
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def _llm_type(self) -> str:
        return "bench-scripted"

    def reset(self) -> None:
        self.calls.clear()
        self.replies.clear()
        self.paths.clear()
        self.max_in_flight = self.in_flight

    # --- the reply -------------------------------------------------------------------------
    def _delay(self, messages: list[BaseMessage]) -> float:
        return self.latency(messages) if self.latency is not None else self.latency_s

    def _start(self, messages: list[BaseMessage], path: str) -> AIMessage:
        self.calls.append(messages)
        self.paths[path] = self.paths.get(path, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        out = self.respond(messages)
        msg = out if isinstance(out, AIMessage) else AIMessage(content=out)
        msg = AIMessage(content=msg.content, tool_calls=msg.tool_calls, name=msg.name,
                        usage_metadata=self._usage(messages, str(msg.content)))
        self.replies.append(msg)
        if self.keep_calls is not None:
            del self.calls[:len(self.calls) - self.keep_calls]
            del self.replies[:len(self.replies) - self.keep_calls]
        return msg

    def _done(self) -> None:
        self.in_flight -= 1

    @staticmethod
    def _chunks(msg: AIMessage) -> list[ChatGenerationChunk]:
        first = AIMessageChunk(
            content=msg.content,
            tool_call_chunks=[
                tool_call_chunk(name=tc["name"], args=json.dumps(tc["args"]), id=tc["id"], index=i)
                for i, tc in enumerate(msg.tool_calls)
            ],
        )
        usage = AIMessageChunk(content="", usage_metadata=msg.usage_metadata)
        return [ChatGenerationChunk(message=first), ChatGenerationChunk(message=usage)]

    # --- the four ways LangChain calls a model ---------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        msg = self._start(messages, "generate")
        try:
            if delay := self._delay(messages):
                time.sleep(delay)
            return ChatResult(generations=[ChatGeneration(message=msg)])
        finally:
            self._done()

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                         **kw: Any) -> ChatResult:
        msg = self._start(messages, "agenerate")
        try:
            if delay := self._delay(messages):
                await asyncio.sleep(delay)
            return ChatResult(generations=[ChatGeneration(message=msg)])
        finally:
            self._done()

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                **kw: Any) -> Iterator[ChatGenerationChunk]:
        msg = self._start(messages, "stream")
        try:
            if delay := self._delay(messages):
                time.sleep(delay)
            yield from self._chunks(msg)
        finally:
            self._done()

    async def _astream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                       **kw: Any) -> AsyncIterator[ChatGenerationChunk]:
        msg = self._start(messages, "astream")
        try:
            if delay := self._delay(messages):
                await asyncio.sleep(delay)
            for chunk in self._chunks(msg):
                yield chunk
        finally:
            self._done()

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, parallel_tool_calls: bool | None = None,
                   **kwargs: Any) -> Runnable:
        """Like a provider's ``bind_tools``: the schemas ride along with each call (the script
        ignores them; it knows which tools its caller has)."""
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)
