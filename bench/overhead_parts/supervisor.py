"""The baseline for figure 2: a ``langgraph-supervisor`` graph (``create_supervisor`` over one
``create_react_agent`` worker per specialist) on a fake model scripted as a competent LLM: one
handoff per needed worker, in turn, then the final answer."""

from __future__ import annotations

import base64
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from bench.fake_models import BenchChatModel, by_system_prompt
from bench.overhead_parts.stack import IMAGE, Request

WORKERS = {  # worker -> (system prompt phrase, tool it uses or None)
    "sql": "You are the sql worker",
    "rag": "You are the help-center worker",
    "vision": "You are the vision worker",
    "general": "You are the general worker",
}
WORKER_TOOL = {"sql": "run_sql", "rag": "search_help_center"}
SUPERVISOR_PROMPT = ("You are a supervisor managing four workers: sql (store database), rag (help center), "
                     "vision (attached images) and general (anything else). Hand each part of the request to "
                     "the worker that can answer it, one at a time; when all parts are answered, reply to the user.")


def _request_of(messages: list[BaseMessage], catalogue: dict[str, Request]) -> Request:
    for m in messages:
        if isinstance(m, HumanMessage):
            content = m.content
            text = content if isinstance(content, str) else " ".join(
                c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
            return catalogue[text]
    raise ValueError("no user message")


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def supervisor_script(catalogue: dict[str, Request]) -> Callable[[list[BaseMessage]], AIMessage | str]:
    """A competent supervisor LLM and its workers, scripted from the request's known parts.

    (Not measured: ``parallel_tool_calls=True`` with several handoffs in one call. With
    langgraph-supervisor 0.0.31 only the last handoff's worker runs and the supervisor never sees
    the others come back, so it loops; langgraph-supervisor-py issue #230.)"""

    def supervisor(messages: list[BaseMessage]) -> AIMessage | str:
        request = _request_of(messages, catalogue)
        needed = list(dict.fromkeys(request.agents))  # each needed worker once, in order of first need
        handed = [tc["name"].removeprefix("transfer_to_") for m in messages if isinstance(m, AIMessage)
                  for tc in m.tool_calls if tc["name"].startswith("transfer_to_")]
        todo = [w for w in needed if w not in handed]
        if todo:  # the next worker (one handoff per call: parallel_tool_calls=False, the default)
            return AIMessage(content="", tool_calls=[
                {"name": f"transfer_to_{todo[0]}", "args": {}, "id": _call_id(), "type": "tool_call"}])
        answers = [str(m.content) for m in messages if isinstance(m, AIMessage) and m.name in WORKERS
                   and not m.tool_calls and m.content]
        return "\n\n".join(answers) or "Done."

    def worker(name: str) -> Callable[[list[BaseMessage]], AIMessage | str]:
        def respond(messages: list[BaseMessage]) -> AIMessage | str:
            request = _request_of(messages, catalogue)
            mine = [p for a, p in request.parts if a == name]
            tool = WORKER_TOOL.get(name)
            last_handoff = max((i for i, m in enumerate(messages) if isinstance(m, AIMessage)
                                and any(tc["name"] == f"transfer_to_{name}" for tc in m.tool_calls)), default=0)
            used = any(isinstance(m, ToolMessage) and m.name == tool for m in messages[last_handoff:])
            if tool and not used:  # one tool call per part, all in one message
                return AIMessage(content="", tool_calls=[
                    {"name": tool, "args": {"query": p}, "id": _call_id(), "type": "tool_call"} for p in mine])
            return f"[{name}] " + " ".join(f"Answer to: {p}" for p in mine)
        return respond

    rules: dict[str, Any] = {"You are a supervisor": supervisor}
    rules.update({phrase: worker(w) for w, phrase in WORKERS.items()})
    return by_system_prompt(rules)


def build_supervisor(fake: BenchChatModel) -> Any:
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent
    from langgraph_supervisor import create_supervisor

    @tool
    def run_sql(query: str) -> str:
        """Run one read-only SQL query on the store database."""
        return "[(5,)]"

    @tool
    def search_help_center(query: str) -> str:
        """Search the help center for passages about the query."""
        return "[1] Refunds: you can ask for a refund within 14 days of purchase."

    tools = {"run_sql": run_sql, "search_help_center": search_help_center}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_react_agent moved to langchain.agents
        workers = [
            create_react_agent(fake, tools=[tools[WORKER_TOOL[w]]] if w in WORKER_TOOL else [], name=w,
                               prompt=f"{phrase}. Answer the part of the user's request that is yours.")
            for w, phrase in WORKERS.items()
        ]
        return create_supervisor(workers, model=fake, prompt=SUPERVISOR_PROMPT).compile()


def classify_supervisor_calls(fake: BenchChatModel) -> dict[str, int]:
    out = {"routing": 0, "final": 0, "worker_tool": 0, "worker_answer": 0}
    for messages, reply in zip(fake.calls, fake.replies, strict=True):
        system = str(messages[0].content) if messages else ""
        if system.startswith("You are a supervisor"):
            out["routing" if reply.tool_calls else "final"] += 1
        else:
            out["worker_tool" if reply.tool_calls else "worker_answer"] += 1
    return out


def image_message(text: str) -> HumanMessage:
    data = base64.b64encode(IMAGE.read_bytes()).decode()
    return HumanMessage(content=[{"type": "text", "text": text},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}])


