"""A local runtime that dies by a signal (simulated: the self-check child's ``llama_cpp`` is a
stand-in that raises SIGILL, tests/fixtures/fake_llama_cpp) gives a clear error at every door, and
the process lives on: the CLI exits 1 with the cause and the fix, ``serve`` answers an
OpenAI-shaped 503 and stays up. The chat UI's door is tests/e2e/test_runtime_error_ui.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.server import create_app
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings
from tests.stacks import serve_in_thread

SIGILL_RUNTIME = REPO_ROOT / "tests" / "fixtures" / "fake_llama_cpp" / "sigill"
KEY = "runtime-door-key-0123456789"
QUESTION = "How many customers are from Brazil?"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF-fixture")
    return path


def run_cli(tmp_path: Path, model_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(PYTHONPATH=str(SIGILL_RUNTIME), SWITCHBOARD_DATA_DIR=str(tmp_path / "data"),
               SWITCHBOARD_LOCAL_GGUF=str(model_file), SWITCHBOARD_MODEL_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "switchboard.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_exits_1_with_the_cause_and_the_fix_and_the_thread_moves_on(tmp_path, model_file):
    first = run_cli(tmp_path, model_file, "ask", QUESTION, "--thread", "t1")
    assert first.returncode == 1, first.stderr[-2000:]  # an exit, not death by a signal (-4)
    assert "SIGILL" in first.stderr and "uv sync --reinstall-package llama-cpp-python" in first.stderr
    assert "Traceback" not in first.stderr

    again = run_cli(tmp_path, model_file, "ask", QUESTION, "--thread", "t1", "--json")
    assert again.returncode == 1
    body = json.loads(again.stdout)
    assert "SIGILL" in body["error"] and body["subtasks"][0]["agent"] == "sql"


async def test_serve_answers_an_openai_shaped_503_and_stays_up(tmp_path, model_file, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(SIGILL_RUNTIME))  # what the self-check's child imports
    settings = Settings(data_dir=tmp_path / "data", local_gguf=model_file, model_cache_dir=tmp_path / "cache")
    services = Services(settings)
    board = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    app = create_app(settings, board, api_keys=[KEY])
    body = {"model": "switchboard", "messages": [{"role": "user", "content": QUESTION}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    with serve_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 503
            error = r.json()["error"]
            assert error["code"] == "local_runtime_unavailable" and error["type"] == "server_error"
            assert "SIGILL" in error["message"] and "uv sync --reinstall-package llama-cpp-python" in error["message"]

            assert (await client.get("/healthz")).status_code == 200  # the server lives on
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                events = [json.loads(line[6:]) for line in [x async for x in s.aiter_lines()]
                          if line.startswith("data: {")]
            assert events[-1]["error"]["code"] == "local_runtime_unavailable"
            assert "SIGILL" in events[-1]["error"]["message"]
