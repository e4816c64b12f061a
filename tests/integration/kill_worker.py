"""A Switchboard process to be killed mid-turn, then run again to recover the turn.

Used by ``tests/integration/test_kill_and_resume.py`` and ``bench/kill_resume.py``; run as its own
process (``sys.executable tests/integration/kill_worker.py MODE --work DIR``) with
``SWITCHBOARD_DATA_DIR`` pointing at a scratch folder. Everything is real (support graph,
Services, SQLite checkpointer, audit trail, gateway ledger, Chinook, Chroma knowledge base)
except the models, which are scripted fakes, one per agent role.

* ``first``: ask a two-part turn (SQL + RAG). The SQL model answers at once; the RAG model
  writes ``DIR/rag-started`` and then blocks forever, so the process sits between specialists
  (SQL done, RAG mid-call) until it is killed.
* ``resume``: the same graph with models that all answer at once; prints
  ``{"unfinished_before", "unfinished_after", "turn", "recover_s", "process_s"}`` as one JSON line.

Both modes append JSON lines to ``DIR/events.jsonl``, in the order they happen:
``{"event": "call", "agent", "pid"}`` when a model is called (before it answers), and
``{"event": "node-start"|"node-end", "node", "pid"}`` around every graph node run, so a test
counts across both processes which specialists ran and which model calls were made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from uuid import UUID

PROCESS_STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[2]
# run as a script: the project's own tests/ must win over any "tests" package in site-packages
sys.path.insert(0, str(REPO))

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.tracers.context import register_configure_hook  # noqa: E402

from graphs.support import build_support_graph  # noqa: E402
from switchboard.api import Switchboard  # noqa: E402
from switchboard.persistence import open_checkpointer  # noqa: E402
from switchboard.services import Services  # noqa: E402
from switchboard.settings import Settings  # noqa: E402
from tests.fakes import ScriptedChatModel, by_system_prompt  # noqa: E402

LOCAL = "local-qwen2.5-coder-1.5b"
QUESTION = "How many customers do we have, and what is your refund policy?"
ROLES = ("default", "triage", "sql", "rag", "vision", "general", "validator")
REPLIES = by_system_prompt({
    "SQLite SELECT": "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers.",
    "help-center passages": "Refunds are possible within 14 days [1].",
    "support assistant of Chinook": "Hello! How can I help?",
    "route one customer-support": "general",
})


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, **event: Any) -> None:
        # one write() per line, file closed at once: a SIGKILL right after cannot lose it
        line = json.dumps({**event, "pid": os.getpid(), "t": time.time()}) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)


class NodeRuns(BaseCallbackHandler):
    """Logs every graph node run (its callback run named like the node it is)."""

    run_inline = True  # write in order, on the event loop, not from an executor thread

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.nodes: dict[UUID, str] = {}

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, metadata: dict[str, Any] | None = None,
                       **kwargs: Any) -> None:
        node = (metadata or {}).get("langgraph_node")
        if node and kwargs.get("name") == node:
            self.nodes[run_id] = node
            self.log.write(event="node-start", node=node)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if (node := self.nodes.pop(run_id, None)) is not None:
            self.log.write(event="node-end", node=node)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if (node := self.nodes.pop(run_id, None)) is not None:
            self.log.write(event="node-error", node=node, error=repr(error))


_node_runs: ContextVar[NodeRuns | None] = ContextVar("kill_worker_node_runs", default=None)
register_configure_hook(_node_runs, inheritable=True)  # every run in this context gets the handler


def scripted(role: str, log: EventLog, work: Path, *, block_rag: bool) -> ScriptedChatModel:
    async def before_reply(messages: object) -> None:
        log.write(event="call", agent=role)
        if block_rag and role == "rag":
            (work / "rag-started").write_text(str(os.getpid()))
            await asyncio.Event().wait()  # mid-call until the process is killed

    return ScriptedChatModel(respond=REPLIES, before_reply=before_reply)


async def run(mode: str, work: Path, thread: str) -> None:
    settings = Settings()  # SWITCHBOARD_* from the environment: the data dir is the test's
    log = EventLog(work / "events.jsonl")
    _node_runs.set(NodeRuns(log))
    services = Services(settings)
    for role in ROLES:
        services.registry.use_chat_model(LOCAL, scripted(role, log, work, block_rag=mode == "first"), roles=(role,))
    async with open_checkpointer(settings) as saver:
        sb = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
        if mode == "first":
            log.write(event="ask", thread=thread)
            await sb.ask(QUESTION, thread_id=thread)
            raise SystemExit("the first run was supposed to block in the RAG call until killed")
        before = await sb.unfinished(thread)
        started = time.monotonic()
        turn = await sb.recover(thread)
        recover_s = time.monotonic() - started
        after = await sb.unfinished(thread)
    print(json.dumps({
        "unfinished_before": before, "unfinished_after": after,
        "turn": {**turn.as_json(), "answer_id": turn.answer_id, "results": turn.results, "ledger": turn.ledger},
        "recover_s": round(recover_s, 3), "process_s": round(time.monotonic() - PROCESS_STARTED, 3),
    }, default=str), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("mode", choices=["first", "resume"])
    p.add_argument("--work", type=Path, required=True, help="folder for the marker file and events.jsonl")
    p.add_argument("--thread", default="durable")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args.mode, args.work, args.thread))


if __name__ == "__main__":
    main()
