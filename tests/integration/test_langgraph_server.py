"""The LangGraph-server door: ``langgraph dev`` serves ``langgraph.json`` offline and answers a run.

The real CLI starts the in-memory LangGraph server on a free loopback port with everything that
would reach the internet switched off (CLI analytics, the PyPI version check, LangSmith tracing,
the browser). The server process answers its model calls from this test's cassette
(``SWITCHBOARD_RECORD_MODE``/``SWITCHBOARD_CASSETTE_PATH`` in its environment); re-record with
``SWITCHBOARD_RECORD_MODE=record`` (runs the real local model inside the server).

The server runs in a scratch directory (it writes ``.langgraph_api/`` there) that links to the
repository's ``langgraph.json`` and ``switchboard/``, so the relative paths in the real config are tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from switchboard.settings import REPO_ROOT, Settings

QUESTION = "How many customers are from Brazil?"
STARTUP_TIMEOUT_S = 120
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",     # langgraph-cli posts usage analytics otherwise
    "LANGGRAPH_NO_VERSION_CHECK": "true",  # langgraph-api asks PyPI for newer versions otherwise
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_API_KEY": "",
    "ANONYMIZED_TELEMETRY": "False",       # Chroma
    "DO_NOT_TRACK": "1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SWITCHBOARD_", "LANGSMITH_", "LANGCHAIN_")) and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(OFFLINE_ENV)
    env.update({
        "SWITCHBOARD_RECORD_MODE": settings.record_mode,
        "SWITCHBOARD_CASSETTE_PATH": str(settings.cassette_path),
        "SWITCHBOARD_DATA_DIR": str(settings.data_dir),
        "SWITCHBOARD_CACHE_TTL_S": "0",      # every call goes to the cassette
    })
    return env


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"langgraph dev did not answer /ok within {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def langgraph_server(cassette_settings: Settings, tmp_path: Path) -> Iterator[str]:
    workdir = tmp_path / "lg"
    workdir.mkdir()
    (workdir / "langgraph.json").symlink_to(REPO_ROOT / "langgraph.json")
    (workdir / "switchboard").symlink_to(REPO_ROOT / "switchboard")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "langgraph-dev.log"
    cli = Path(sys.executable).parent / "langgraph"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(cli), "dev", "--no-browser", "--no-reload", "--allow-blocking", "--host", "127.0.0.1",
             "--port", str(port), "--config", "langgraph.json"],
            cwd=workdir, env=server_env(cassette_settings), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def test_langgraph_dev_serves_the_support_graph_offline(langgraph_server: str, cassette_settings: Settings) -> None:
    client = get_client(url=langgraph_server)
    assert [a["graph_id"] for a in await client.assistants.search(graph_id="support")] == ["support"]
    thread = await client.threads.create()
    state = await client.runs.wait(
        thread["thread_id"], "support",
        input={"question": QUESTION, "image_path": None, "messages": [{"role": "user", "content": QUESTION}]},
        context={"policy": "balanced"},
    )
    assert "5" in state["answer"] and "Brazil" in state["answer"]
    assert [s["agent"] for s in state["subtasks"]] == ["sql"]
    replaying = cassette_settings.record_mode == "replay"
    assert [(e["agent"], e["replayed"]) for e in state["ledger"]] == [("sql", replaying)]
    # the server persisted the thread itself (the module-level graph has no checkpointer)
    saved = await client.threads.get_state(thread["thread_id"])
    assert [m["type"] for m in saved["values"]["messages"]] == ["human", "ai"]
    assert QUESTION in saved["values"]["summary"]


def test_the_module_level_graph_has_no_checkpointer() -> None:
    from switchboard.langgraph_app import graph

    assert graph.checkpointer is None
    assert set(graph.get_graph().nodes) >= {"triage", "sql", "rag", "vision", "general", "synthesize"}


REFUND_QUESTION = "What's your refund policy?"


async def test_langgraph_dev_streams_the_answer_as_message_chunks(langgraph_server: str) -> None:
    """``stream_mode="messages-tuple"``: the SDK gets the answer's model tokens as message chunks, each
    tagged with the part it belongs to (``tools/models/gateway.py`` ``stream_config``).

    The cassette holds the real local model's answer to this request (the same exchange as in
    ``tests/e2e/cassettes/chat.yaml``). Replay yields it word by word without delay, so this shows
    the server forwards each token as its own event, not that they are spread in time (the
    timing is proved at the HTTP door and in the browser: test_http_streaming.py, test_streaming_ui.py)."""
    client = get_client(url=langgraph_server)
    thread = await client.threads.create()
    chunks: list[tuple[dict, dict]] = []
    final: dict = {}
    async for part in client.runs.stream(
        thread["thread_id"], "support",
        input={"question": REFUND_QUESTION, "image_path": None,
               "messages": [{"role": "user", "content": REFUND_QUESTION}]},
        context={"policy": "balanced"}, stream_mode=["messages-tuple", "values"],
    ):
        if part.event == "messages":
            message, metadata = part.data
            chunks.append((message, metadata))
        elif part.event == "values":
            final = part.data
    answer = final["answer"]
    assert "14 days" in answer and [s["agent"] for s in final["subtasks"]] == ["rag"]
    tokens = [(m["content"], meta) for m, meta in chunks if meta.get("switchboard_answer")]
    assert len(tokens) > 10  # word by word, not the finished answer in one piece
    assert all(m["type"] == "AIMessageChunk" for m, meta in chunks if meta.get("switchboard_answer"))
    assert {(meta["switchboard_agent"], meta["langgraph_node"]) for _, meta in tokens} == {("rag", "rag")}
    # each token is answer text (the RAG specialist then adds citation markers before end marks) ...
    words = [text.strip().rstrip(".,") for text, _ in tokens if text.strip() and "[" not in text]
    assert words and all(word in answer for word in words)
    raw = "".join(text for text, _ in tokens)
    assert raw.split(".")[1].strip() in answer  # ... and together they are the answer as the model wrote it
    # ... and they all came before the finished answer's message (from the synthesize node)
    last_token = max(i for i, (_, meta) in enumerate(chunks) if meta.get("switchboard_answer"))
    finished = next(i for i, (m, _) in enumerate(chunks) if m["content"] == answer)
    assert last_token < finished and chunks[finished][1]["langgraph_node"] == "synthesize"
